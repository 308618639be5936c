"""Engine benchmark: the local executor against plain `graph.invoke` loops, in one run.

    .venv/bin/python bench/engine.py [--cases 300] [--latency-cases 100]

Rows (all on the same SqliteSaver file kind, fresh per row):
- plain loop of `graph.invoke` (durability "async", LangGraph's default) — the baseline = 1.00;
- the same loop with durability "sync" (each checkpoint written before the next node, which is
  what the engine uses so a killed thread resumes from its last node);
- floors: the loop without a checkpointer, and with durability "exit";
- the engine (`run_batch`: scoring, results store, checkpoint bookkeeping) with 1 and 8 threads.
Then the latency-bound row: 5 nodes × 50 ms, cases at max_concurrency=32, wall ÷ ideal.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import chain_graph, chain_workflow
from wtb_dagster.batches import run_batch
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore


def plain_loop(n_cases: int, url: str | None, durability: str | None) -> float:
    graph_builder = chain_graph(5)
    started = time.perf_counter()
    if url is None:
        graph = graph_builder.compile()
        for i in range(n_cases):
            graph.invoke({"x": i})
        return time.perf_counter() - started
    with open_checkpointer(url) as saver:
        graph = graph_builder.compile(checkpointer=saver)
        started = time.perf_counter()
        for i in range(n_cases):
            config = {"configurable": {"thread_id": f"t{i}"}}
            if durability:
                graph.invoke({"x": i}, config, durability=durability)
            else:
                graph.invoke({"x": i}, config)
    return time.perf_counter() - started


def engine(n_cases: int, folder: Path, concurrency: int, sleep_s: float = 0.0) -> float:
    workflow = chain_workflow(n_cases=n_cases, sleep_s=sleep_s)
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    store.setup()
    started = time.perf_counter()
    summary = run_batch(
        workflow,
        store,
        f"sqlite:///{folder}/checkpoints.db",
        executor=LocalExecutor(max_concurrency=concurrency),
    )
    wall = time.perf_counter() - started
    assert summary.statuses == {"succeeded": n_cases}, summary.statuses
    store.close()
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--latency-cases", type=int, default=100)
    args = parser.parse_args()
    n = args.cases
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def folder(name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

        baseline = plain_loop(n, f"sqlite:///{folder('plain')}/c.db", None)
        rows.append(("plain invoke loop, SqliteSaver (baseline)", baseline, ""))
        rows.append(
            (
                "plain invoke loop, durability=sync",
                plain_loop(n, f"sqlite:///{folder('sync')}/c.db", "sync"),
                "",
            )
        )
        rows.append(("floor: no checkpointer", plain_loop(n, None, None), ""))
        rows.append(
            (
                "floor: durability=exit",
                plain_loop(n, f"sqlite:///{folder('exit')}/c.db", "exit"),
                "",
            )
        )
        rows.append(("engine run_batch, 1 thread", engine(n, folder("e1"), 1), "target ≤ 1.25"))
        rows.append(("engine run_batch, 8 threads", engine(n, folder("e8"), 8), "target ≤ 1.25"))
        print(f"\nCPU-light: 5 trivial nodes × {n} cases (wall ÷ baseline; lower is better)\n")
        print(f"| {'workload':<44} | {'wall s':>7} | {'cases/s':>8} | {'ratio':>6} | target |")
        print(f"| {'-' * 44} | {'-' * 7} | {'-' * 8} | {'-' * 6} | ------ |")
        for name, wall, target in rows:
            print(
                f"| {name:<44} | {wall:7.2f} | {n / wall:8.1f} | {wall / baseline:6.2f} | {target} |"
            )

        m = args.latency_cases
        wall = engine(m, folder("latency"), 32, sleep_s=0.05)
        ideal = m * 5 * 0.05 / 32
        # 32 slots run equal cases in whole waves: no executor can beat ceil(m / 32) waves.
        waves = math.ceil(m / 32) * 5 * 0.05
        print(f"\nLatency-bound: 5 nodes × 50 ms × {m} cases, max_concurrency=32\n")
        print("| workload | wall s | ideal s | wall ÷ ideal | target |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| floor: whole waves of 32 | {waves:.2f} | {ideal:.2f} | {waves / ideal:.2f} | |")
        print(f"| engine, 32 threads | {wall:.2f} | {ideal:.2f} | {wall / ideal:.2f} | ≤ 1.5 |")


if __name__ == "__main__":
    main()
