"""Ray executor benchmark: ratios measured in one run, on this machine.

    .venv/bin/python bench/ray.py [--quick] [--workers 2] [--repeats 3]

a) Latency-bound: 5 nodes × 50 ms sleep, 200 cases, 2 workers × 16 threads = 32 at once:
   wall ÷ ideal (cases × 250 ms ÷ 32). Target ≤ 1.5. "cold" includes starting the worker
   processes (a batch on a fresh executor); "warm" reuses them (`keep_workers=True`).
b) CPU-light: 5 trivial nodes, 2,000 cases, with SqliteSaver and with PostgresSaver (a
   throwaway database on the local server): Ray throughput ÷ a plain sequential
   `graph.invoke` loop on the same kind of saver. Target ≥ 1.5 with 2 workers. Baseline and
   Ray runs alternate, `--repeats` times each, and the medians are compared: other processes
   on the machine slow both alike. One thread per worker: nodes that only use the CPU gain
   nothing from more threads in a process (the GIL), only contention.
c) 10,000 cases × 1 combo, trivial nodes, SQLite: cases/s and peak RSS of the driver (sampled)
   and of each worker (the kernel's high-water mark).

Every batch writes fresh stores. Ray itself is started once, before the clock starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# This file is named ray.py: its folder must not shadow the ray package.
HERE = Path(__file__).resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
sys.path.insert(0, str(HERE.parents[1]))

import psycopg  # noqa: E402
import ray  # noqa: E402

from bench.synthetic import chain_graph, chain_workflow  # noqa: E402
from wtb_dagster.batches import run_batch  # noqa: E402
from wtb_dagster.checkpoints import open_checkpointer  # noqa: E402
from wtb_dagster.execution import LocalExecutor  # noqa: E402
from wtb_dagster.ray_execution import RayExecutor  # noqa: E402
from wtb_dagster.store import ResultsStore  # noqa: E402

PG_ADMIN = os.environ.get("WTB_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by this process and each of its descendants (Ray's daemons and
    workers, which a local Ray starts under the driver), by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree: dict[int, float] = {}
    stack = [os.getpid()]
    while stack:
        pid = stack.pop()
        tree[pid] = used.get(pid, 0.0)
        stack += children.get(pid, [])
    return tree


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the processes alive now used since `before` (new ones: all of theirs).
    Workers of an earlier batch that exit meanwhile are not subtracted."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in tree_cpu_s().items())


@contextmanager
def sampled_peak_rss() -> Iterator[list[float]]:
    """The driver's RSS sampled every 50 ms while the block runs: [before, peak]."""
    box = [rss_mb(), rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            box[1] = max(box[1], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        done.set()
        thread.join()
        box[1] = max(box[1], rss_mb())


@contextmanager
def stores(kind: str, root: Path) -> Iterator[tuple[str, str]]:
    """Fresh (checkpoint URL, results URL): SQLite files, or a throwaway PostgreSQL database."""
    if kind == "sqlite":
        folder = root / uuid.uuid4().hex[:8]
        folder.mkdir()
        yield f"sqlite:///{folder}/checkpoints.db", f"sqlite:///{folder}/results.db"
        return
    name = f"wtb_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        yield url, url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain_loop(n_cases: int, checkpoint_url: str) -> float:
    """Wall seconds of `graph.invoke` over the cases, one after the other, on a fresh saver."""
    with open_checkpointer(checkpoint_url) as saver:
        graph = chain_graph(5).compile(checkpointer=saver)
        started = time.perf_counter()
        for i in range(n_cases):
            graph.invoke({"x": i}, {"configurable": {"thread_id": f"t{i}"}})
        return time.perf_counter() - started


def batch(executor, n_cases: int, urls: tuple[str, str], sleep_s: float = 0.0) -> float:
    """Wall seconds of `run_batch` (planning, execution, results store) on fresh stores."""
    checkpoint_url, results_url = urls
    store = ResultsStore(results_url)
    store.setup()
    started = time.perf_counter()
    summary = run_batch(
        chain_workflow(n_cases=n_cases, sleep_s=sleep_s), store, checkpoint_url, executor=executor
    )
    wall = time.perf_counter() - started
    store.close()
    assert summary.statuses == {"succeeded": n_cases}, summary.statuses
    return wall


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def latency_bound(args: argparse.Namespace, root: Path) -> None:
    n, per_worker = args.latency_cases, 32 // args.workers
    ideal = n * 5 * 0.05 / 32
    rows = []
    with RayExecutor(
        num_workers=args.workers, concurrency_per_worker=per_worker, keep_workers=True
    ) as executor:
        for label in ("cold (starts the workers)", "warm (workers kept)"):
            with stores("sqlite", root) as urls:
                wall = batch(executor, n, urls, sleep_s=0.05)
            start = executor.stats.start_s
            rows.append(
                [
                    f"ray {label}",
                    f"{wall:.2f}",
                    f"{start:.2f}",
                    f"{ideal:.2f}",
                    f"{wall / ideal:.2f}",
                ]
            )
    with stores("sqlite", root) as urls:
        wall = batch(LocalExecutor(max_concurrency=32), n, urls, sleep_s=0.05)
    rows.append(
        ["local, 32 threads (reference)", f"{wall:.2f}", "-", f"{ideal:.2f}", f"{wall / ideal:.2f}"]
    )
    table(
        f"a) Latency-bound: 5 nodes × 50 ms × {n} cases, {args.workers} workers × "
        f"{per_worker} threads (target wall ÷ ideal ≤ 1.5)",
        ["executor", "wall s", "of which start s", "ideal s", "wall ÷ ideal"],
        rows,
    )


def cpu_light(args: argparse.Namespace, root: Path) -> None:
    n, repeats = args.light_cases, args.repeats
    rows = []

    def measured(run: Callable[[], float]) -> tuple[float, float]:
        """(cases/s, CPU ms per case of this process tree) of one run."""
        before = tree_cpu_s()
        wall = run()
        return n / wall, cpu_since(before) / n * 1000

    for kind in ("sqlite", "postgres"):
        plain: list[tuple[float, float]] = []
        warm: list[tuple[float, float]] = []
        with RayExecutor(
            num_workers=args.workers,
            concurrency_per_worker=args.light_threads,
            keep_workers=True,
        ) as executor:
            with stores(kind, root) as urls:
                cold = measured(lambda: batch(executor, n, urls))
            for _ in range(repeats):
                with stores(kind, root) as urls:
                    plain.append(measured(lambda: plain_loop(n, urls[0])))
                with stores(kind, root) as urls:
                    warm.append(measured(lambda: batch(executor, n, urls)))
        base = statistics.median(rate for rate, _ in plain)
        base_cpu = statistics.median(cpu for _, cpu in plain)
        for label, runs in (
            ("plain invoke loop (baseline)", plain),
            ("ray, first batch (cold)", [cold]),
            ("ray, workers kept (warm)", warm),
        ):
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            spread = f"{min(r for r, _ in runs):.0f}–{max(r for r, _ in runs):.0f}"
            ceiling = f"{os.cpu_count() * base_cpu / cpu:.2f}" if runs is warm else ""
            rows.append(
                [kind, label, f"{rate:.0f}", spread, f"{rate / base:.2f}", f"{cpu:.2f}", ceiling]
            )
    table(
        f"b) CPU-light: 5 trivial nodes × {n} cases, {args.workers} workers × "
        f"{args.light_threads} thread(s); medians of {repeats} alternating runs "
        "(target ray ÷ plain ≥ 1.5)",
        ["saver", "run", "cases/s", "range", "÷ plain", "CPU ms/case", "idle-cores ceiling"],
        rows,
    )
    print(
        "\nCPU ms/case: this process and its descendants (the Ray daemons and workers; not "
        "the PostgreSQL server). Idle-cores ceiling: cores × plain CPU ÷ Ray CPU per case, the "
        "ratio Ray would reach if it had every core to itself (SQLite; for PostgreSQL the "
        "server's own CPU is not counted, so it is optimistic)."
    )


def big_batch(args: argparse.Namespace, root: Path) -> None:
    n = args.big_cases
    with RayExecutor(
        num_workers=args.workers, concurrency_per_worker=args.light_threads
    ) as executor:
        with stores("sqlite", root) as urls, sampled_peak_rss() as driver:
            wall = batch(executor, n, urls)
        workers = executor.stats.worker_peak_rss_mb
    rows = [
        [
            f"{n:,}",
            f"{wall:.1f}",
            f"{n / wall:.0f}",
            f"{driver[0]:.0f} → {driver[1]:.0f}",
            ", ".join(f"{w:.0f}" for w in workers),
        ]
    ]
    table(
        f"c) {n:,} cases × 1 combo, trivial nodes, SQLite, {args.workers} workers",
        ["cases", "wall s", "cases/s", "driver RSS MB (before → peak)", "worker peak RSS MB"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-cases", type=int, default=200)
    parser.add_argument("--light-cases", type=int, default=2000)
    parser.add_argument("--light-threads", type=int, default=1, help="threads per worker in b, c")
    parser.add_argument("--big-cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["a", "b", "c"], action="append")
    args = parser.parse_args()
    if args.quick:
        args.latency_cases, args.light_cases, args.big_cases, args.repeats = 64, 300, 1000, 1
    sections: dict[str, Callable[[argparse.Namespace, Path], None]] = {
        "a": latency_bound,
        "b": cpu_light,
        "c": big_batch,
    }
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(
        f"Ray {ray.__version__} started in {time.perf_counter() - started:.1f} s; "
        f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="wtb-bench-ray-") as tmp:
            for key in args.only or list(sections):
                sections[key](args, Path(tmp))
    finally:
        ray.shutdown()
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
