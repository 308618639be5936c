"""Telemetry overhead: the engine with node telemetry on against the same engine with it off.

    .venv/bin/python bench/telemetry.py [--cases 300] [--repeats 3] [--concurrency 1]

The CPU-light workload of `bench/engine.py` (5 trivial nodes, SqliteSaver, `run_batch`),
where per-node bookkeeping weighs the most. Rows, each the median of `--repeats` runs, the
settings interleaved so drift on a shared machine hits them alike; wall time and this
process's CPU time (every thread of the batch runs in it, and other load on a shared machine
does not count in it):

- `WTB_TELEMETRY=off` — the baseline = 1.00;
- on: node events stored with the rows, the usage callback in every graph config, Prometheus
  metrics (no tracer: spans cost nothing without an endpoint);
- on, with an OpenTelemetry SDK tracer (in-memory exporter): one span per thread and per node.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.synthetic import chain_workflow
from wtb_dagster import tracing
from wtb_dagster.batches import run_batch
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore

TARGET = 1.10


def batch_times(n_cases: int, folder: Path, concurrency: int) -> tuple[float, float]:
    """(wall s, CPU s) of one batch."""
    workflow = chain_workflow(n_cases=n_cases)
    store = ResultsStore(f"sqlite:///{folder}/results.db")
    store.setup()
    started, cpu = time.perf_counter(), time.process_time()
    summary = run_batch(
        workflow,
        store,
        f"sqlite:///{folder}/checkpoints.db",
        executor=LocalExecutor(max_concurrency=concurrency),
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert summary.statuses == {"succeeded": n_cases}, summary.statuses
    expected_events = 0 if os.environ["WTB_TELEMETRY"] == "off" else n_cases * 5
    assert len(store.events_frame(workflow.name)) == expected_events
    store.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    settings = {
        "telemetry off (baseline)": ("off", None),
        "telemetry on: events, usage callback, metrics": ("on", None),
        "telemetry on + OTel SDK spans (in-memory)": ("on", "spans"),
    }
    walls: dict[str, list[float]] = {name: [] for name in settings}
    cpus: dict[str, list[float]] = {name: [] for name in settings}
    exporter = InMemorySpanExporter()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, (switch, spans)) in enumerate(settings.items()):
                os.environ["WTB_TELEMETRY"] = switch
                provider = None
                if spans:
                    provider = TracerProvider()
                    provider.add_span_processor(SimpleSpanProcessor(exporter))
                tracing.set_tracer_provider(provider)
                folder = Path(tmp) / f"r{repeat}-{index}"
                folder.mkdir()
                wall, cpu = batch_times(args.cases, folder, args.concurrency)
                walls[name].append(wall)
                cpus[name].append(cpu)
                exporter.clear()
    tracing.set_tracer_provider(None)
    baseline = statistics.median(walls["telemetry off (baseline)"])
    cpu_baseline = statistics.median(cpus["telemetry off (baseline)"])
    print(
        f"\nTelemetry overhead: 5 trivial nodes × {args.cases} cases, SqliteSaver, "
        f"{args.concurrency} thread(s), median of {args.repeats} (wall ÷ off; lower is better)\n"
    )
    print("| setting | wall s | cases/s | wall ratio | CPU s | CPU ratio | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in walls.items():
        wall, cpu = statistics.median(values), statistics.median(cpus[name])
        target = f"≤ {TARGET:.2f}" if "metrics" in name else ""
        verdict = (" ✓" if wall / baseline <= TARGET else " ✗") if target else ""
        print(
            f"| {name} | {wall:.2f} | {args.cases / wall:.1f} | {wall / baseline:.2f} | "
            f"{cpu:.2f} | {cpu / cpu_baseline:.2f} | {target}{verdict} |"
        )


if __name__ == "__main__":
    main()
