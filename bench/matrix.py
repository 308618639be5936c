"""Shared-prefix benchmark: a variant matrix with and without shared prefixes, in one run.

    .venv/bin/python bench/matrix.py [--cases 40] [--concurrency 32] [--skip-dagster]
                                     [--only-dagster] [--repeat N]

Rows:
- (a) the demo matrix (every combo × every case, `LocalExecutor(8)`): node executions and wall
  with sharing ÷ without; target executions ≤ 0.5;
- (b) a latency-bound matrix: 5 nodes of 50 ms, the last three varied with 3 variants each
  (27 combos), `--cases` cases, `LocalExecutor(--concurrency)`: node executions (ideal 41 of
  135 per case) and wall with sharing ÷ without; target wall ≤ 0.4;
- (c) matrix (b) through `wtb bench` (Dagster: prepare, one run over the 27 combo partitions,
  compare) ÷ the engine directly (`wtb run`), each a whole process as a user runs it, with the
  same executor width; target ≤ 1.5. `--repeat N` measures it N times (alternating which goes
  first) and reports the range: on a shared machine one pair is noise.
Every row starts from empty stores in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import chain_cases, matrix_workflow
from wtb_dagster.batches import run_batch
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.workflows import Workflow, load_registry

ROOT = Path(__file__).resolve().parents[1]


def engine_run(workflow: Workflow, folder: Path, concurrency: int) -> tuple[int, float, dict]:
    """(node executions, wall, rows) of one batch of the whole matrix on fresh SQLite stores."""
    folder.mkdir(parents=True)
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    started = time.perf_counter()
    summary = run_batch(
        workflow,
        store,
        f"sqlite:///{folder}/checkpoints.db",
        executor=LocalExecutor(max_concurrency=concurrency),
    )
    wall = time.perf_counter() - started
    store.close()
    assert set(summary.statuses) == {"succeeded"}, summary.statuses
    rows = {r.thread_id: (r.scores, r.final_values) for r in summary.results}
    return sum(r.nodes_executed for r in summary.results), wall, rows


def paired(name: str, make, folder: Path, concurrency: int) -> dict:
    shared = engine_run(make(True), folder / f"{name}-shared", concurrency)
    alone = engine_run(make(False), folder / f"{name}-alone", concurrency)
    assert shared[2] == alone[2], f"{name}: sharing changed a row"
    return {"shared": shared[:2], "alone": alone[:2], "threads": len(shared[2])}


def demo(share: bool) -> Workflow:
    workflow = load_registry(ROOT / "wtb.yaml").get("demo")
    workflow.share_prefix = share
    return workflow


MATRIX_YAML = """
workflows:
  matrix:
    graph: bench.synthetic:latency_chain
    dataset: cases.jsonl
    variants:
      n2: {v1: "bench.synthetic:plus2", v2: "bench.synthetic:plus3"}
      n3: {v1: "bench.synthetic:plus2", v2: "bench.synthetic:plus3"}
      n4: {v1: "bench.synthetic:plus2_last", v2: "bench.synthetic:plus3_last"}
    scorers:
      - use: exact_match
        field: answer
"""


def process_wall(args: list[str], folder: Path, concurrency: int, n_cases: int) -> float:
    """Wall of one `wtb …` process on the matrix of (b), fresh stores and Dagster instance."""
    folder.mkdir(parents=True)
    (folder / "wtb.yaml").write_text(MATRIX_YAML)
    with (folder / "cases.jsonl").open("w") as handle:
        for case in chain_cases(n_cases):
            handle.write(json.dumps({"id": case.id, "input": case.input}) + "\n")
    env = {
        **os.environ,
        "WTB_CONFIG": str(folder / "wtb.yaml"),
        "WTB_DATA_DIR": str(folder / "data"),
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "PYTHONPATH": str(ROOT),
    }
    wtb = str(Path(sys.executable).parent / "wtb")
    command = [wtb, *args, "matrix", "--executor", "local", "--concurrency", str(concurrency)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip-dagster", action="store_true", help="leave out row (c)")
    parser.add_argument("--only-dagster", action="store_true", help="row (c) alone")
    parser.add_argument("--repeat", type=int, default=1, help="measurements of row (c)")
    args = parser.parse_args()
    rows = []
    pairs: list[tuple[float, float]] = []  # (c): (wtb bench s, wtb run s)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.only_dagster:
            rows.append(("(a) demo matrix", paired("demo", demo, folder, 8), "executions ≤ 0.5"))
            b = paired(
                "matrix",
                lambda share: matrix_workflow(n_cases=args.cases, share_prefix=share),
                folder,
                args.concurrency,
            )
            rows.append((f"(b) 27 combos × {args.cases} cases × 5 × 50 ms", b, "wall ≤ 0.4"))
        if not args.skip_dagster:
            for index in range(args.repeat):
                walls = {}
                # alternate which goes first: neither always finds the disk cache warmer
                for kind in ("run", "bench") if index % 2 == 0 else ("bench", "run"):
                    walls[kind] = process_wall(
                        [kind], folder / f"{kind}-{index}", args.concurrency, args.cases
                    )
                pairs.append((walls["bench"], walls["run"]))
    print(
        "| row | threads | node executions (shared / alone) | ratio | wall s (shared / alone) | ratio | target |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, row, target in rows:
        (n_s, w_s), (n_a, w_a) = row["shared"], row["alone"]
        print(
            f"| {name} | {row['threads']} | {n_s} / {n_a} | {n_s / n_a:.2f} | "
            f"{w_s:.2f} / {w_a:.2f} | {w_s / w_a:.2f} | {target} |"
        )
    for dagster_s, engine_s in pairs:
        print(
            f"| (c) matrix (b): `wtb bench` ÷ `wtb run` (whole processes) | {27 * args.cases} | "
            f"| | {dagster_s:.2f} / {engine_s:.2f} | {dagster_s / engine_s:.2f} | ≤ 1.5 |"
        )
    if len(pairs) > 1:
        ratios = sorted(d / e for d, e in pairs)
        print(f"\n(c) over {len(pairs)} pairs: {ratios[0]:.2f}–{ratios[-1]:.2f}")
    print(
        f"\nideal for (b): {41}/{135} = {41 / 135:.2f} of the node executions "
        "(every distinct prefix of a case once)"
    )


if __name__ == "__main__":
    main()
