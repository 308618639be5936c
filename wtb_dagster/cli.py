"""The `wtb` command line: what is awkward in the Dagster UI.

Every user mistake ends with a one-line `error: …` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wtb_dagster.api import Bench
from wtb_dagster.comparison import markdown_table
from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.progress import TerminalBar

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def _bench(args: argparse.Namespace) -> Bench:
    executor = None
    if getattr(args, "concurrency", None):
        executor = LocalExecutor(max_concurrency=args.concurrency)
    return Bench(
        registry=args.config,
        checkpoint_url=getattr(args, "checkpointer", None),
        results_url=getattr(args, "results", None),
        executor=executor,
    )


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@command("workflows")
def _workflows(args: argparse.Namespace) -> int:
    bench = _bench(args)
    rows = []
    for wf in bench.registry:
        varied = "; ".join(f"{n}: {', '.join(v)}" for n, v in wf.variant_names().items())
        cases = len(wf.cases()) if wf.dataset is not None else 0
        rows.append([wf.name, len(wf.node_names()), varied or "–", len(wf.matrix()), cases])
    import pandas as pd

    print(
        markdown_table(
            pd.DataFrame(rows, columns=["workflow", "nodes", "variants", "combos", "cases"])
        )
    )
    return 0


@command("run")
def _run(args: argparse.Namespace) -> int:
    bench = _bench(args)
    workflow = bench.workflow(args.workflow)
    combos = args.combo or None
    bar = TerminalBar()
    summary = bench.run_batch(
        workflow,
        combos=combos,
        cases=_csv(args.cases),
        force=args.force,
        retry_failed=args.retry_failed,
        timeout_s=args.timeout,
        progress=bar,
    )
    bar.close()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.statuses.items())) or "nothing to run"
    print(
        f"{summary.workflow}: {summary.executed} threads executed, {summary.skipped} already stored "
        f"(use --force to run them again); {counts}; {summary.wall_s:.1f} s"
    )
    print()
    print(bench.compare(workflow).to_markdown())
    return 0


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    bench = _bench(args)
    comparison = bench.compare(args.workflow, include_forks=args.forks)
    if comparison.summary.empty:
        print(
            f"no stored results for workflow {args.workflow!r}; run `wtb run {args.workflow}` first"
        )
        return 1
    if args.format == "markdown":
        print(comparison.to_markdown(max_cases=args.cases))
    elif args.format == "csv":
        print(comparison.summary.to_csv(index=False), end="")
    else:
        print(comparison.summary.to_json(orient="records", indent=2))
    return 0


def _code_location() -> Path:
    start = Path(os.environ.get("WTB_CODE_LOCATION") or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "workspace.yaml").is_file() and (folder / "definitions.py").is_file():
            return folder
    raise ConfigError(
        f"no Dagster code location (workspace.yaml + definitions.py) in {start} or above; "
        "run from the repository root or set WTB_CODE_LOCATION"
    )


@command("bench")
def _bench_dagster(args: argparse.Namespace) -> int:
    """The Dagster path: materialize the whole workflow as Dagster runs on DAGSTER_HOME."""
    # The Dagster layer is the code location beside workspace.yaml, not part of this package.
    location = _code_location()
    sys.path.insert(0, str(location))
    from assets.whole_workflow import run_whole_workflow

    return run_whole_workflow(
        args.workflow, combos=args.combo, executor=args.executor, force=args.force
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wtb", description="Workflow Test Bench for LangGraph")
    parser.add_argument("--config", help="path of wtb.yaml (default: $WTB_CONFIG or ./wtb.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def stores(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpointer", help="checkpointer URL (default: $WTB_CHECKPOINT_URL)")
        p.add_argument("--results", help="results store URL (default: $WTB_RESULTS_URL)")

    sub.add_parser("workflows", help="list the registered workflows")

    run = sub.add_parser("run", help="run a workflow's variant matrix over its dataset")
    run.add_argument("workflow")
    run.add_argument("--combo", action="append", help="combo key (repeatable); default: the matrix")
    run.add_argument("--cases", help="comma-separated case ids; default: every case")
    run.add_argument("--force", action="store_true", help="run stored threads again from scratch")
    run.add_argument("--retry-failed", action="store_true", help="resume failed/timed-out threads")
    run.add_argument("--timeout", type=float, help="per-case timeout in seconds")
    run.add_argument("--concurrency", type=int, default=8, help="threads run at once (default 8)")
    stores(run)

    bench = sub.add_parser(
        "bench",
        help="materialize a whole workflow through Dagster (runs visible in `dagster dev`)",
    )
    bench.add_argument("workflow")
    bench.add_argument("--combo", action="append", help="only these combos (repeatable)")
    bench.add_argument("--executor", choices=["local", "ray"], help="default: $WTB_EXECUTOR or ray")
    bench.add_argument("--force", action="store_true", help="run stored threads again")

    cmp_ = sub.add_parser("compare", help="print the comparison matrix of stored results")
    cmp_.add_argument("workflow")
    cmp_.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    cmp_.add_argument("--cases", type=int, default=0, help="also show the first N cases")
    cmp_.add_argument("--forks", action="store_true", help="include forked threads")
    stores(cmp_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except WTBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished threads are stored, run again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
