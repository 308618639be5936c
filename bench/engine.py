"""Engine benchmark: the local executor against plain `graph.invoke` loops, in one run.

    .venv/bin/python bench/engine.py [--cases 300] [--latency-cases 100] [--repeat 2]
                                     [--pg-admin URL | --no-postgres]

Rows (all on the same SqliteSaver file kind, fresh per row):
- plain loop of `graph.invoke` (durability "async", LangGraph's default) — the baseline = 1.00;
- the same loop with durability "sync" (each checkpoint written before the next node, which is
  what the engine uses so a killed thread resumes from its last node);
- floors: the loop without a checkpointer, and with durability "exit";
- the engine (`run_batch`: scoring, results store, checkpoint bookkeeping) with 1 and 8 threads.
The plain loops use LangGraph's own SqliteSaver; the engine rows use what `open_checkpointer`
picks (on SQLite, LangGraph's SqliteSaver unless WTB_GROUP_COMMIT=on).

Then the checkpoint cost at 32 concurrent threads, SQLite and PostgreSQL (a fresh database per
row on the `--pg-admin` server): the engine with durability "sync" — LangGraph's saver, and
the group-committing one — ÷ the same engine with durability "exit" (one checkpoint per thread,
at its end: the floor); on SQLite also a bound: the group-committing saver running no SQL. Each row runs `--repeat` times, interleaved; walls are min–max, ratios
are of the fastest runs.

Then the latency-bound rows: 5 nodes × 50 ms, cases at max_concurrency=32, wall ÷ ideal.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import chain_graph, chain_workflow
from wtb_dagster.batches import run_batch
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.execution import BatchPlan, LocalExecutor, ThreadResult
from wtb_dagster.group_commit import GroupCommitSqliteSaver
from wtb_dagster.store import ResultsStore


@contextmanager
def group_commit(on: bool) -> Iterator[None]:
    """Rows opened inside use the group-committing savers (on) or LangGraph's own (off)."""
    before = os.environ.get("WTB_GROUP_COMMIT")
    os.environ["WTB_GROUP_COMMIT"] = "on" if on else "off"
    try:
        yield
    finally:
        if before is None:
            del os.environ["WTB_GROUP_COMMIT"]
        else:
            os.environ["WTB_GROUP_COMMIT"] = before


class DurabilityExecutor(LocalExecutor):
    """The local executor running its plans with another durability (the "exit" floor)."""

    def __init__(self, durability: str, max_concurrency: int) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.durability = durability

    def run(self, plan: BatchPlan, on_result: Callable[[ThreadResult], None]) -> None:
        super().run(dataclasses.replace(plan, durability=self.durability), on_result)


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


def engine(
    n_cases: int,
    folder: Path,
    concurrency: int,
    sleep_s: float = 0.0,
    checkpoint_url: str | None = None,
    durability: str = "sync",
) -> float:
    workflow = chain_workflow(n_cases=n_cases, sleep_s=sleep_s)
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    store.setup()
    started = time.perf_counter()
    summary = run_batch(
        workflow,
        store,
        checkpoint_url or f"sqlite:///{folder}/checkpoints.db",
        executor=DurabilityExecutor(durability, max_concurrency=concurrency),
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
    parser.add_argument("--repeat", type=int, default=2, help="runs of each 32-thread row")
    parser.add_argument(
        "--pg-admin",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server where the bench may create and drop databases",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL rows")
    args = parser.parse_args()
    n = args.cases
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def folder(name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

        with group_commit(False):  # the loops: LangGraph's own SqliteSaver
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

        checkpoint_cost(n, folder, args)

        m = args.latency_cases
        ideal = m * 5 * 0.05 / 32
        # 32 slots run equal cases in whole waves: no executor can beat ceil(m / 32) waves.
        waves = math.ceil(m / 32) * 5 * 0.05
        latency: dict[bool, list[float]] = {True: [], False: []}
        for run in range(args.repeat):
            for on in (True, False):
                with group_commit(on):
                    place = folder(f"latency{run}{'gc' if on else ''}")
                    latency[on].append(engine(m, place, 32, sleep_s=0.05))
        print(f"\nLatency-bound: 5 nodes × 50 ms × {m} cases, max_concurrency=32\n")
        print("| workload | wall s | ideal s | wall ÷ ideal | target |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| floor: whole waves of 32 | {waves:.2f} | {ideal:.2f} | {waves / ideal:.2f} | |")
        for on, name, target in ((True, "group commit", "≤ 1.5"), (False, "LangGraph's saver", "")):
            walls = latency[on]
            print(
                f"| engine, 32 threads, {name} | {_span(walls)} | {ideal:.2f} "
                f"| {_span([w / ideal for w in walls])} | {target} |"
            )


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}"


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the admin URL's server, dropped afterwards."""
    import psycopg

    name = f"wtb_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def storing_nothing() -> Iterator[None]:
    """Group-committing SQLite savers opened inside run no SQL at all: the bound that no saver
    can beat, since LangGraph's own work per "sync" checkpoint (handing each put to a
    background thread and waiting for it, copying and serializing the checkpoint) remains."""
    transact = GroupCommitSqliteSaver._transact
    GroupCommitSqliteSaver._transact = lambda self, groups: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        GroupCommitSqliteSaver._transact = transact  # type: ignore[method-assign]


def checkpoint_cost(n: int, folder: Callable[[str], Path], args: Any) -> None:
    """Engine rows at 32 threads ÷ the same engine with durability "exit" (issue #19)."""
    floor_name = "floor: durability=exit"
    # (name, durability, group commit, store nothing, target); the last row is SQLite's only
    variants = [
        (floor_name, "exit", False, False, ""),
        ("durability=sync, LangGraph's saver", "sync", False, False, ""),
        ("durability=sync, group commit", "sync", True, False, "≤ 1.5"),
        ("bound: durability=sync, no SQL at all", "sync", True, True, ""),
    ]
    backends = ["SQLite"] + ([] if args.no_postgres else ["PostgreSQL"])
    walls: dict[tuple[str, str], list[float]] = {}
    runs = 0
    for _ in range(args.repeat):
        for backend in backends:
            for name, durability, on, nothing, _target in variants:
                if nothing and backend != "SQLite":
                    continue
                runs += 1
                place = folder(f"cost{runs}")
                with group_commit(on), storing_nothing() if nothing else nullcontext():
                    if backend == "SQLite":
                        wall = engine(n, place, 32, durability=durability)
                    else:
                        with postgres_database(args.pg_admin) as url:
                            wall = engine(n, place, 32, checkpoint_url=url, durability=durability)
                walls.setdefault((backend, name), []).append(wall)
    print(
        f"\nCheckpoint cost: 5 trivial nodes × {n} cases, engine at 32 threads "
        f"(wall ÷ the durability=exit floor of the same backend; {args.repeat} runs each)\n"
    )
    print(f"| {'backend':<10} | {'workload':<38} | {'wall s':>11} | {'ratio':>6} | target |")
    print(f"| {'-' * 10} | {'-' * 38} | {'-' * 11} | {'-' * 6} | ------ |")
    for backend in backends:
        floor = min(walls[backend, floor_name])
        for name, *_, target in variants:
            if (backend, name) not in walls:
                continue
            runs_of = walls[backend, name]
            print(
                f"| {backend:<10} | {name:<38} | {_span(runs_of):>11} "
                f"| {min(runs_of) / floor:6.2f} | {target} |"
            )


if __name__ == "__main__":
    main()
