"""The `wtb` command line: what is awkward in the Dagster UI.

Every user mistake ends with a one-line `error: …` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from wtb_dagster.api import Bench
from wtb_dagster.comparison import markdown_table
from wtb_dagster.comparison_queries import compare_stored
from wtb_dagster.errors import ConfigError, ThreadNotFoundError, WTBError
from wtb_dagster.execution import Executor, LocalExecutor
from wtb_dagster.progress import TerminalBar

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


RAY_WORKERS = 2  # the Ray executor's default number of workers (RayExecutor, ExecutorResource)


def _width(kind: str, workers: int | None, concurrency: int | None) -> dict[str, int]:
    """The executor settings of `--workers W --concurrency N`, which mean the same on both
    executors: N threads at once — in the one process (local), or over W Ray worker processes,
    N / W each (ray). Unset ones keep the executor's defaults."""
    for flag, value in (("--workers", workers), ("--concurrency", concurrency)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if kind == "local":
        if workers is not None:
            raise ConfigError(
                "--workers is the number of Ray worker processes; the local executor runs its "
                "threads in this one process: use --concurrency alone, or --executor ray"
            )
        return {} if concurrency is None else {"max_concurrency": concurrency}
    width = {} if workers is None else {"num_workers": workers}
    if concurrency is not None:
        count = workers or RAY_WORKERS
        if concurrency % count:
            raise ConfigError(
                f"--concurrency {concurrency} does not split evenly over {count} Ray workers "
                f"({'--workers' if workers else 'the default'}): give a multiple of {count}, "
                "or set --workers to a divisor of it"
            )
        width["concurrency_per_worker"] = concurrency // count
    return width


def _executor(args: argparse.Namespace) -> Executor | None:
    kind = getattr(args, "executor", None) or "local"
    width = _width(kind, getattr(args, "workers", None), getattr(args, "concurrency", None))
    if kind == "ray":
        from wtb_dagster.ray_execution import RayExecutor

        return RayExecutor(**width)  # reads RAY_ADDRESS itself, and names it in its errors
    if width:
        return LocalExecutor(**width)
    return None


def _bench(args: argparse.Namespace) -> Bench:
    executor = _executor(args)
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
        trials=args.trials,
    )
    bar.close()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.statuses.items())) or "nothing to run"
    print(
        f"{summary.workflow}: {summary.executed} threads executed, {summary.skipped} already stored "
        f"(use --force to run them again); {counts}; {summary.wall_s:.1f} s"
    )
    if summary.shared:
        print(
            f"shared prefixes: {summary.shared} threads started from another combo's checkpoint; "
            f"{summary.nodes_executed} node executions"
        )
    if summary.files_written:
        print(
            f"workspace files: {summary.files_written} file versions stored, "
            f"{summary.bytes_written} bytes, {summary.bytes_stored} of them new to the blob "
            "store (the rest deduplicated); see `wtb files <thread>`"
        )
    print()
    print(bench.compare(workflow).to_markdown())
    return 0


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    bench = _bench(args)
    # aggregated in the results database: no thread row is loaded, whatever their number
    comparison = compare_stored(
        bench.store, bench.workflow(args.workflow).name, include_forks=args.forks
    )
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


def _installed_from() -> Path | None:
    """The repository checkout this package was installed from (editable install), if any: the
    parent of the `wtb_dagster/` folder, when it holds `definitions.py` and `workspace.yaml`."""
    import wtb_dagster

    repository = Path(wtb_dagster.__file__).resolve().parent.parent
    if (repository / "definitions.py").is_file() and (repository / "workspace.yaml").is_file():
        return repository
    return None


def _code_location(explicit: str | None = None) -> Path:
    """The folder of the Dagster code location `wtb bench` runs: `--code-location`, else
    `WTB_CODE_LOCATION`, else the repository this package was installed from. Never searched
    for from the working directory: that may be another Dagster project with its own `assets`."""
    setting = explicit or os.environ.get("WTB_CODE_LOCATION")
    if setting:
        folder = Path(setting).expanduser().resolve()
        if not (folder / "definitions.py").is_file():
            named = f"--code-location {folder}" if explicit else f"WTB_CODE_LOCATION={folder}"
            raise ConfigError(
                f"{named} has no definitions.py; point it at the folder holding the bench's "
                "definitions.py (the root of a wtb_dagster checkout)"
            )
        return folder
    repository = _installed_from()
    if repository is None:
        raise ConfigError(
            "no Dagster code location: set WTB_CODE_LOCATION (or pass --code-location) to the "
            "folder holding the bench's definitions.py (the root of a wtb_dagster checkout); "
            "wtb_dagster is not installed from one"
        )
    return repository


def _load_code_location(folder: Path) -> ModuleType:
    """Import `folder/definitions.py` by its path, with the code location's own packages
    (`assets`, `jobs`, `resources`, …) taken from `folder` and nowhere else."""
    packages = sorted(
        p.name
        for p in folder.iterdir()
        if (p / "__init__.py").is_file() and p.name != "wtb_dagster"
    )  # the engine is the installed wtb_dagster, wherever the code location sits

    def check_origins() -> None:
        for name in ("definitions", *packages):
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) if module is not None else None
            if module is not None and (
                origin is None or not Path(origin).resolve().is_relative_to(folder)
            ):
                raise ConfigError(
                    f"module {name!r} is already imported from {origin or 'elsewhere'}, not from "
                    f"the code location {folder}; run `wtb bench` in a fresh process"
                )

    check_origins()
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("definitions", folder / "definitions.py")
    assert spec is not None and spec.loader is not None  # a .py file path always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["definitions"] = module
    spec.loader.exec_module(module)
    check_origins()
    return module


def _dagster_home(location: Path) -> Path:
    """The instance of `wtb bench` and `wtb ui`: DAGSTER_HOME, default ./.dagster_home; a new
    one gets the code location's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").expanduser().resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = location / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and instance_yaml.is_file():
        shutil.copy(instance_yaml, home / "dagster.yaml")
    return home


def _registry_path(args: argparse.Namespace) -> Path:
    """The wtb.yaml the code location is to serve: --config, else WTB_CONFIG, else ./wtb.yaml."""
    return Path(args.config or os.environ.get("WTB_CONFIG") or "wtb.yaml").expanduser().resolve()


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _ui_hint(args: argparse.Namespace) -> str:
    wtb = Path(sys.executable).parent / "wtb"
    parts = [_shown(wtb) if wtb.is_file() else "wtb"]
    if args.config:
        parts += ["--config", _shown(_registry_path(args))]
    parts.append("ui")
    if args.code_location:
        parts += ["--code-location", args.code_location]
    return " ".join(parts)


@command("bench")
def _bench_dagster(args: argparse.Namespace) -> int:
    """The Dagster path: the code location's jobs run for the whole workflow on DAGSTER_HOME."""
    # The Dagster layer is a code location (definitions.py, assets/, jobs/, …), not part of
    # this package: it is loaded from the folder `_code_location` names. Its resources read
    # these variables when definitions.py is imported, so they are set first.
    location = _code_location(args.code_location)
    if args.config:
        os.environ["WTB_CONFIG"] = str(_registry_path(args))
    if args.executor is not None:
        os.environ["WTB_EXECUTOR"] = args.executor
    kind = os.environ.get("WTB_EXECUTOR") or "ray"
    if kind not in ("local", "ray"):
        raise ConfigError(f"WTB_EXECUTOR={kind!r} is unknown; use 'local' or 'ray'")
    width = _width(kind, args.workers, args.concurrency)
    _dagster_home(location)
    # The code location uses Dagster beta/preview APIs on purpose (listed in the README);
    # their notices would bury the progress lines.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    definitions = _load_code_location(location)
    if not (location / "jobs" / "bench_runner.py").is_file():
        raise ConfigError(f"code location {location} has no jobs/bench_runner.py to run")
    # by name, not a static import: the engine does not depend on the code location
    runner = importlib.import_module("jobs.bench_runner")
    resources = {"executor": definitions.executor_resource(**width)} if width else None
    # Dagster comes with the code location too (the engine itself never imports it)
    with runner.DagsterInstance.get() as instance:
        return runner.run_whole_workflow(
            args.workflow,
            definitions.defs,
            instance,
            combos=args.combo,
            batch_config={"force": args.force},
            resources=resources,
            ui_hint=_ui_hint(args),
        )


@command("ui")
def _ui(args: argparse.Namespace) -> int:
    """`dagster dev` on the instance and code location `wtb bench` uses, on 127.0.0.1."""
    location = _code_location(args.code_location)
    home = _dagster_home(location)
    dagster = Path(sys.executable).parent / "dagster"
    if not dagster.is_file():
        raise ConfigError(
            f"no `dagster` command beside {sys.executable}; install the UI into this "
            "environment: pip install dagster-webserver"
        )
    from wtb_dagster import settings

    # Pinned as absolute paths: the code server runs in the code location's folder and must
    # find the registry and the stores that this command's working directory means.
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "WTB_CONFIG": str(_registry_path(args)),
        "WTB_DATA_DIR": str(settings.data_dir().expanduser().resolve()),
    }
    command_line = [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(args.port),
                    "-w", str(location / "workspace.yaml")]  # fmt: skip
    print(
        f"Dagster UI: http://127.0.0.1:{args.port} (instance {home}, code location "
        f"{location}); Ctrl-C stops it",
        flush=True,
    )
    # run from DAGSTER_HOME: `dagster dev` warns about a dagster.yaml in its working directory
    # that is not the instance's (the code location's template is)
    process = subprocess.Popen(command_line, cwd=home, env=env)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # not to orphan dagster dev
    try:
        return process.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached dagster dev too, which is shutting down; an interrupt
        # sent to this process alone is passed on. Either way it gets a deadline.
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=True))


def _assignments(pairs: list[str] | None) -> dict[str, Any] | None:
    """`key=value` pairs; values are JSON when they parse, strings otherwise."""
    if not pairs:
        return None
    patch: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set question='hi'")
        try:
            patch[key] = json.loads(raw)
        except json.JSONDecodeError:
            patch[key] = raw
    return patch


def _print_result(result: Any) -> None:
    values = result.final_values or {}
    print(f"{result.thread_id}: {result.status}" + (f" — {result.error}" if result.error else ""))
    if result.parent_thread_id:
        print(f"  forked from {result.parent_thread_id} at {result.parent_checkpoint_id}")
    print(f"  nodes executed: {', '.join(result.node_timings) or 'none'}")
    if result.scores:
        print("  scores: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(result.scores.items())))
    shown = {k: v for k, v in values.items() if not isinstance(v, list | dict)}
    if shown:
        print("  final: " + json.dumps(shown, default=str)[:300])


@command("threads")
def _threads(args: argparse.Namespace) -> int:
    frame = _bench(args).threads(args.workflow, combo=args.combo, status=args.status)
    if frame.empty:
        print(f"no stored threads for {args.workflow!r} with these filters")
        return 1
    columns = ["thread_id", "status", "latency_s", "parent_thread_id"]
    print(markdown_table(frame[[c for c in columns if c in frame.columns]].head(args.limit)))
    if len(frame) > args.limit:
        print(f"… {len(frame) - args.limit} more (use --limit)")
    return 0


@command("history")
def _history(args: argparse.Namespace) -> int:
    import pandas as pd

    bench = _bench(args)
    checkpoints = bench.history(args.thread_id)
    stored = bench.store.get_result(args.thread_id) or {}
    donor, last_shared = stored.get("shared_from"), stored.get("shared_checkpoint_id")
    ids = [c.checkpoint_id for c in checkpoints]
    # the checkpoints copied from the thread it shares a prefix with: up to the shared one
    shared = set(ids[: ids.index(last_shared) + 1]) if donor and last_shared in ids else set()
    with_files = any(c.files for c in checkpoints)  # a thread with a workspace
    rows = [
        {
            "step": c.step,
            "writer": c.writer or "",
            "checkpoint_id": c.checkpoint_id,
            "next": ", ".join(c.next) or "(end)",
            "changed": ", ".join(c.changed_keys),
            "time": (c.created_at or "")[11:23],
            **({"shared": "shared" if c.checkpoint_id in shared else ""} if shared else {}),
            **({"files": _files_cell(c.files)} if with_files else {}),
        }
        for c in checkpoints
    ]
    print(markdown_table(pd.DataFrame(rows)))
    if shared:
        print(
            f"{len(shared)} checkpoints shared with {donor} (same node code up to "
            f"{last_shared}); this thread ran from there"
        )
    return 0


def _files_cell(files: dict[str, Any] | None) -> str:
    return f"{files['files']} ({files['bytes']} B)" if files else "(parent's)"


@command("events")
def _events(args: argparse.Namespace) -> int:
    import pandas as pd

    from wtb_dagster.costs import usd

    bench = _bench(args)
    stored = bench.store.get_result(args.thread_id)
    if stored is None:
        raise ThreadNotFoundError(
            f"thread {args.thread_id!r} has no stored result; list a workflow's threads with "
            "`wtb threads <workflow>`"
        )
    events = bench.store.events(args.thread_id)
    if events.empty:
        print(
            f"no node events stored for {args.thread_id!r} (it ran with WTB_TELEMETRY=off, "
            "before the results store recorded events, or it executed no node)"
        )
        return 1
    rows = pd.DataFrame(
        {
            "attempt": events.attempt,
            "step": events.step.astype("Int64"),
            "node": events.node,
            "status": events.status,
            "start": [
                t.strftime("%H:%M:%S.%f")[:-3] if pd.notna(t) else "" for t in events.started_at
            ],
            "duration_s": [f"{d:.4f}" for d in events.duration_s],
            "tokens_in": events.tokens_in,
            "tokens_out": events.tokens_out,
            "cost_usd": [
                usd(c) if t or o else ""
                for c, t, o in zip(
                    events.cost_usd, events.tokens_in, events.tokens_out, strict=True
                )
            ],
            "models": [", ".join(sorted(u or {})) for u in events.usage],
            "error": [str(e)[:80] if isinstance(e, str) else "" for e in events.error],
        }
    )
    print(markdown_table(rows))
    unknown = events.cost_usd.isna() & (events.tokens_in + events.tokens_out > 0)
    total = "unknown" if unknown.any() else usd(float(events.cost_usd.fillna(0).sum()))
    print(
        f"{len(events)} node executions in {events.attempt.nunique()} attempt(s); tokens "
        f"{int(events.tokens_in.sum())} in, {int(events.tokens_out.sum())} out; cost {total} USD"
    )
    if stored.get("shared_from"):
        print(
            f"the nodes before {stored.get('shared_checkpoint_id')} ran in "
            f"{stored['shared_from']} (a shared prefix): their events are that thread's"
        )
    return 0


@command("files")
def _files(args: argparse.Namespace) -> int:
    import pandas as pd

    bench = _bench(args)
    if args.diff:
        before, after = args.diff
        changes = bench.file_changes(args.thread_id, before, after)
        if not changes:
            print(f"no file changed between {before} and {after}")
            return 0
        rows = pd.DataFrame(
            {
                "change": [c.change for c in changes],
                "path": [c.path for c in changes],
                "size_before": [
                    c.size_before if c.size_before is not None else "" for c in changes
                ],
                "size_after": [c.size_after if c.size_after is not None else "" for c in changes],
            }
        )
        print(markdown_table(rows))
        return 0
    if args.restore:
        if not args.to:
            raise ConfigError("--restore C needs --to DIR: the empty folder to write the files to")
        written = bench.export_files(args.thread_id, args.restore, args.to)
        print(
            f"wrote the workspace of {args.thread_id} at {args.restore} to {args.to} ({written} bytes)"
        )
        return 0
    manifest = bench.files(args.thread_id, args.checkpoint)
    where = f"at {args.checkpoint}" if args.checkpoint else "at its newest checkpoint"
    if not manifest:
        print(f"{args.thread_id} has no workspace files {where}")
        return 0
    rows = pd.DataFrame(
        {
            "path": list(manifest),
            "bytes": [e.size for e in manifest.values()],
            "mode": [oct(e.mode) for e in manifest.values()],
            "sha256": [e.digest[:12] for e in manifest.values()],
        }
    )
    print(markdown_table(rows))
    print(f"{len(manifest)} files, {int(rows.bytes.sum())} bytes {where}")
    return 0


@command("gc")
def _gc(args: argparse.Namespace) -> int:
    report = _bench(args).collect_garbage(min_age_s=args.min_age, apply=args.apply)
    verb = "deleted" if report.deleted else "would delete (dry run; --apply deletes)"
    print(
        f"{report.blobs} blobs: {report.referenced} referenced by a checkpoint, "
        f"{report.young} unreferenced but younger than {args.min_age:g} s (kept); "
        f"{verb} {report.deletable} blobs, {report.bytes_deletable} bytes"
    )
    return 0


@command("metrics")
def _metrics(args: argparse.Namespace) -> int:
    import time

    from wtb_dagster.metrics import serve_collected

    addr, port = serve_collected(args.port, args.addr)
    print(f"serving the metrics of every process in $PROMETHEUS_MULTIPROC_DIR on "
          f"http://{addr}:{port}/metrics (Ctrl-C stops)", flush=True)  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


@command("state")
def _state(args: argparse.Namespace) -> int:
    snapshot = _bench(args).get_state(args.thread_id, args.checkpoint)
    _print_json(
        {
            "checkpoint_id": snapshot.config["configurable"].get("checkpoint_id"),
            "step": (snapshot.metadata or {}).get("step"),
            "next": list(snapshot.next),
            "values": snapshot.values,
        }
    )
    return 0


@command("rollback")
def _rollback(args: argparse.Namespace) -> int:
    _print_result(_bench(args).rollback(args.thread_id, args.checkpoint, args.to_node))
    return 0


@command("fork")
def _fork(args: argparse.Namespace) -> int:
    result = _bench(args).fork(
        args.thread_id,
        checkpoint_id=args.checkpoint,
        before_node=args.before_node,
        after_node=args.after_node,
        state_patch=_assignments(args.set),
        variant=args.variant,
        force=args.force,
    )
    _print_result(result)
    return 0


@command("resume")
def _resume(args: argparse.Namespace) -> int:
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value
    _print_result(_bench(args).resume(args.thread_id, value))
    return 0


@command("rerun")
def _rerun(args: argparse.Namespace) -> int:
    bench = _bench(args)
    request_id = bench.request_rerun(
        args.workflow,
        thread_ids=args.thread or None,
        combo=args.combo,
        status_filter=args.status,
        checkpoint_id=args.checkpoint,
        before_node=args.before_node,
        after_node=args.after_node,
        variant=args.variant,
        state_patch=_assignments(args.set),
        reason=args.reason,
    )
    if not args.now:
        print(f"rerun request {request_id} stored; rerun_requests_sensor will launch it")
        return 0
    results = bench.execute_rerun(request_id)
    print(f"rerun request {request_id}: {len(results)} forks")
    for result in results:
        _print_result(result)
    return 0


@command("reruns")
def _reruns(args: argparse.Namespace) -> int:
    import pandas as pd

    rows = _bench(args).store.rerun_requests(status=args.status)
    if not rows:
        print("no rerun requests")
        return 0
    columns = ["id", "workflow", "combo", "before_node", "after_node", "checkpoint_id",
               "variant", "status", "dagster_run_id", "reason"]  # fmt: skip
    print(markdown_table(pd.DataFrame([r.model_dump() for r in rows])[columns]))
    return 0


@command("parity")
def _parity(args: argparse.Namespace) -> int:
    from wtb_dagster.parity import check_parity

    bench = _bench(args)
    report = check_parity(
        bench.workflow(args.workflow),
        combos=args.combo or None,
        case_ids=_csv(args.cases),
        ignore_metrics=["within_latency"],
    )
    print(report.to_markdown())
    return 0 if report.ok else 1


CONCURRENCY_HELP = (
    "threads run at once: in one process (local; default {local}), or over the Ray workers, "
    "an equal share each (ray; default 2 workers × 16)"
)
WORKERS_HELP = "ray: worker processes (default 2); the local executor refuses it"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wtb", description="Workflow Test Bench for LangGraph")
    parser.add_argument("--config", help="path of wtb.yaml (default: $WTB_CONFIG or ./wtb.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def stores(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpointer", help="checkpointer URL (default: $WTB_CHECKPOINT_URL)")
        p.add_argument("--results", help="results store URL (default: $WTB_RESULTS_URL)")

    def code_location(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--code-location",
            metavar="DIR",
            help="folder holding the bench's definitions.py (default: $WTB_CODE_LOCATION, "
            "else the repository wtb_dagster is installed from)",
        )

    def fork_point_and_change(p: argparse.ArgumentParser) -> None:
        point = p.add_mutually_exclusive_group(required=True)
        point.add_argument("--checkpoint", help="from this checkpoint id (see `wtb history`)")
        point.add_argument("--before-node", help="from just before this node")
        point.add_argument("--after-node", help="from just after this node")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="patch the state")
        p.add_argument("--variant", help="node=variant to run in the fork(s)")

    sub.add_parser("workflows", help="list the registered workflows")

    run = sub.add_parser("run", help="run a workflow's variant matrix over its dataset")
    run.add_argument("workflow")
    run.add_argument("--combo", action="append", help="combo key (repeatable); default: the matrix")
    run.add_argument("--cases", help="comma-separated case ids; default: every case")
    run.add_argument("--force", action="store_true", help="run stored threads again from scratch")
    run.add_argument("--retry-failed", action="store_true", help="resume failed/timed-out threads")
    run.add_argument("--timeout", type=float, help="per-case timeout in seconds")
    run.add_argument(
        "--trials", type=int, help="runs of every (combo, case); default: the workflow's trials"
    )
    run.add_argument("--concurrency", type=int, help=CONCURRENCY_HELP.format(local=8))
    run.add_argument("--workers", type=int, help=WORKERS_HELP)
    run.add_argument("--executor", choices=["local", "ray"], default="local")
    stores(run)

    bench = sub.add_parser(
        "bench",
        help="materialize a whole workflow through Dagster (runs visible in `dagster dev`)",
    )
    bench.add_argument("workflow")
    bench.add_argument("--combo", action="append", help="only these combos (repeatable)")
    bench.add_argument("--executor", choices=["local", "ray"], help="default: $WTB_EXECUTOR or ray")
    bench.add_argument("--concurrency", type=int, help=CONCURRENCY_HELP.format(local=16))
    bench.add_argument("--workers", type=int, help=WORKERS_HELP)
    bench.add_argument("--force", action="store_true", help="run stored threads again")
    code_location(bench)

    ui = sub.add_parser("ui", help="the Dagster UI (dagster dev) on the instance of `wtb bench`")
    ui.add_argument("--port", type=int, default=3000, help="on 127.0.0.1 (default 3000)")
    code_location(ui)

    threads = sub.add_parser("threads", help="list a workflow's stored threads")
    threads.add_argument("workflow")
    threads.add_argument("--combo")
    threads.add_argument("--status", choices=["succeeded", "failed", "timed_out", "interrupted"])
    threads.add_argument("--limit", type=int, default=50)
    stores(threads)

    history = sub.add_parser("history", help="a thread's checkpoints, oldest first")
    history.add_argument("thread_id")
    stores(history)

    events = sub.add_parser(
        "events", help="a thread's node events: attempt, step, status, duration, tokens, cost"
    )
    events.add_argument("thread_id")
    stores(events)

    files = sub.add_parser(
        "files", help="a thread's workspace files at a checkpoint; --diff, --restore … --to"
    )
    files.add_argument("thread_id")
    shown = files.add_mutually_exclusive_group()
    shown.add_argument("--checkpoint", help="list the files at this checkpoint (default newest)")
    shown.add_argument("--diff", nargs=2, metavar=("C1", "C2"), help="what changed from C1 to C2")
    shown.add_argument("--restore", metavar="C", help="export the files at checkpoint C (--to)")
    files.add_argument("--to", metavar="DIR", help="the empty folder --restore writes to")
    stores(files)

    gc = sub.add_parser("gc", help="delete workspace blobs no checkpoint references (dry run)")
    gc.add_argument("--apply", action="store_true", help="delete them (default: only count)")
    gc.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="keep blobs younger than this (default 3600): a running batch may be using them",
    )
    stores(gc)

    served = sub.add_parser(
        "metrics", help="serve the Prometheus metrics of every batch process (multiprocess mode)"
    )
    served.add_argument("--port", type=int, default=9464)
    served.add_argument("--addr", default="127.0.0.1", help="default 127.0.0.1")

    state = sub.add_parser("state", help="a thread's state at its newest (or a given) checkpoint")
    state.add_argument("thread_id")
    state.add_argument("--checkpoint")
    stores(state)

    rollback = sub.add_parser("rollback", help="continue a thread from a past checkpoint")
    rollback.add_argument("thread_id")
    point = rollback.add_mutually_exclusive_group(required=True)
    point.add_argument("--checkpoint")
    point.add_argument("--to-node", help="from just before this node")
    stores(rollback)

    fork = sub.add_parser("fork", help="a new thread from a checkpoint; runs only what follows")
    fork.add_argument("thread_id")
    fork_point_and_change(fork)
    fork.add_argument("--force", action="store_true", help="run an existing fork again")
    stores(fork)

    resume = sub.add_parser("resume", help="answer an interrupted thread's interrupt()")
    resume.add_argument("thread_id")
    resume.add_argument("--value", required=True, help="JSON or a plain string")
    stores(resume)

    rerun = sub.add_parser("rerun", help="request a rerun (forks) of threads from a checkpoint")
    rerun.add_argument("workflow")
    rerun.add_argument("--thread", action="append", help="thread id (repeatable)")
    rerun.add_argument("--combo", help="the threads of this combo")
    rerun.add_argument("--status", help="only threads with this status, e.g. failed")
    fork_point_and_change(rerun)
    rerun.add_argument("--reason")
    rerun.add_argument("--now", action="store_true", help="execute here instead of via Dagster")
    stores(rerun)

    reruns = sub.add_parser("reruns", help="list rerun requests")
    reruns.add_argument("--status")
    stores(reruns)

    parity = sub.add_parser("parity", help="same batch on the local and the Ray executor")
    parity.add_argument("workflow")
    parity.add_argument("--combo", action="append")
    parity.add_argument("--cases", help="comma-separated case ids")

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
