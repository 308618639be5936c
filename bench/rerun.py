"""Rerun benchmark: forking every thread from before its last node vs running it all again.

    .venv/bin/python bench/rerun.py [--cases 64] [--concurrency 32] [--repeats 3]
                                    [--sleep 0.05] [--checkpointer URL --results URL]

Workload: the latency-bound chain (`bench.synthetic.chain_workflow(n_nodes=5, sleep_s=0.05)`), every
case run once first. Each repeat then times
- a full rerun: `run_batch(force=True)`, every node of every case again (new parent checkpoints,
  so the next fork rerun makes new forks rather than finding the stored ones);
- a fork rerun: a rerun request "every thread of the combo, from before n4", created and
  executed end to end (resolving checkpoints, copying chains, running n4, storing rows).
Prints a markdown table of median walls; the target is fork ÷ full ≤ 0.3. Without overheads the
ratio would be 1/5; what a fork adds is fixed work per thread (copying the parent's chain, one
more checkpoint), so `--sleep` shows how the ratio approaches 1/5 as nodes get slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import chain_workflow
from wtb_dagster.api import Bench
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.workflows import Registry

N_NODES, TARGET = 5, 0.3


def full_rerun(bench: Bench, n_cases: int) -> float:
    started = time.perf_counter()
    summary = bench.run_batch("chain", force=True)
    wall = time.perf_counter() - started
    assert summary.statuses == {"succeeded": n_cases}, summary.statuses
    return wall


def fork_rerun(bench: Bench, n_cases: int) -> float:
    started = time.perf_counter()
    request_id = bench.request_rerun("chain", combo="baseline", before_node=f"n{N_NODES - 1}")
    results = bench.execute_rerun(request_id)
    wall = time.perf_counter() - started
    assert len(results) == n_cases and {r.status for r in results} == {"succeeded"}
    assert {r.nodes_executed for r in results} == {1}, "a fork ran more than the last node"
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds per node")
    parser.add_argument("--checkpointer", help="checkpointer URL (default: a temporary SQLite)")
    parser.add_argument("--results", help="results store URL (default: a temporary SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(
            Registry([chain_workflow(n_nodes=N_NODES, sleep_s=args.sleep, n_cases=args.cases)]),
            checkpoint_url=args.checkpointer or f"sqlite:///{tmp}/checkpoints.db",
            results_url=args.results or f"sqlite:///{tmp}/results.db",
            executor=LocalExecutor(max_concurrency=args.concurrency),
        )
        bench.run_batch("chain")  # the parents; also warms imports and connections
        full, forks = [], []
        for _ in range(args.repeats):
            full.append(full_rerun(bench, args.cases))
            forks.append(fork_rerun(bench, args.cases))
        bench.close()
    full_s, fork_s = statistics.median(full), statistics.median(forks)
    ratio = fork_s / full_s
    waves = -(-args.cases // args.concurrency)
    print(
        f"{args.cases} cases × {N_NODES} nodes × {args.sleep * 1000:.0f} ms, "
        f"LocalExecutor(max_concurrency={args.concurrency}), median of {args.repeats}\n"
    )
    print("| rerun | nodes executed | wall (s) | ideal (s) | ratio to full |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| full (force) | {args.cases * N_NODES} | {full_s:.3f} | "
        f"{waves * N_NODES * args.sleep:.3f} | 1.00 |"
    )
    print(
        f"| fork from before n{N_NODES - 1} | {args.cases} | {fork_s:.3f} | "
        f"{waves * args.sleep:.3f} | {ratio:.2f} |"
    )
    print(f"\ntarget ratio ≤ {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
