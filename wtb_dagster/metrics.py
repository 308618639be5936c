"""Prometheus metrics of the threads a process stores, with `prometheus_client`.

Recorded by the process that stores results (the `wtb` command, or the Dagster run of a
batch: the Ray driver), from the node events the threads bring back — so a batch on Ray
workers and one on the local executor give the same series, from one place to scrape. With
`WTB_METRICS_PORT` set, that process serves them on `http://$WTB_METRICS_ADDR:$WTB_METRICS_PORT/metrics`
(address default 127.0.0.1; port 0 picks a free one, logged) from the first stored result.

Processes that come and go (Dagster runs each step in a process of its own) are better
scraped through prometheus_client's multiprocess mode: give them all
`PROMETHEUS_MULTIPROC_DIR` (an empty folder), and run `wtb metrics --port 9464`, a
long-lived process that serves the sum over every process that wrote there (`serve_collected`).

| metric | labels |
| --- | --- |
| `wtb_threads_total` | workflow, combo, status |
| `wtb_node_duration_seconds` (histogram) | workflow, combo, node, status |
| `wtb_llm_calls_total` | workflow, combo, model, priced |
| `wtb_tokens_total` | workflow, combo, model, kind (input / output) |
| `wtb_cost_usd_total` | workflow, combo, model (priced models only) |
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from wtb_dagster.errors import ConfigError
from wtb_dagster.threads import ThreadResult

log = logging.getLogger(__name__)

PORT_ENV = "WTB_METRICS_PORT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ADDR_ENV = "WTB_METRICS_ADDR"

THREADS = Counter(
    "wtb_threads", "Threads stored, by how they ended", ["workflow", "combo", "status"]
)
NODE_SECONDS = Histogram(
    "wtb_node_duration_seconds",
    "Duration of node executions",
    ["workflow", "combo", "node", "status"],
    # trivial nodes take milliseconds, LLM calls seconds, agents' tool loops minutes
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LLM_CALLS = Counter(
    "wtb_llm_calls",
    "Chat-model calls made inside nodes; priced=false: no price in wtb.yaml, cost unknown",
    ["workflow", "combo", "model", "priced"],
)
TOKENS = Counter(
    "wtb_tokens", "Chat-model tokens used inside nodes", ["workflow", "combo", "model", "kind"]
)
COST = Counter(
    "wtb_cost_usd", "USD spent on priced chat models inside nodes", ["workflow", "combo", "model"]
)

_served: tuple[str, int] | None = None
_lock = threading.Lock()


def serve(port: int, addr: str = "127.0.0.1") -> tuple[str, int]:
    """Serve this process's metrics on `addr:port` (once; later calls return where)."""
    global _served
    with _lock:
        if _served is None:
            try:
                server, _ = start_http_server(port, addr=addr)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); set "
                    f"{PORT_ENV} to a free port (0 picks one), or unset it"
                ) from None
            _served = (addr, int(server.server_port))
            log.info("serving Prometheus metrics on http://%s:%d/metrics", *_served)
        return _served


def serve_collected(port: int, addr: str = "127.0.0.1") -> tuple[str, int]:
    """Serve the metrics every process wrote to `PROMETHEUS_MULTIPROC_DIR`, summed."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder or not os.path.isdir(folder):
        raise ConfigError(
            f"{MULTIPROC_ENV} is {'not set' if not folder else f'{folder!r}, not a folder'}; "
            "set it to one folder for the processes that run batches and for this one"
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    try:
        server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); choose a free --port"
        ) from None
    return addr, int(server.server_port)


def _serve_from_env() -> None:
    value = os.environ.get(PORT_ENV)
    if not value or _served is not None:
        return
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{PORT_ENV}={value!r} is not a port number; e.g. 9464") from None
    serve(port, os.environ.get(ADDR_ENV) or "127.0.0.1")


def record(results: Iterable[ThreadResult]) -> None:
    """Count stored threads and their node events into the metrics."""
    _serve_from_env()
    for result in results:
        THREADS.labels(result.workflow, result.combo, result.status).inc()
        for event in result.events:
            _record_event(result, event)


def _record_event(result: ThreadResult, event: dict[str, Any]) -> None:
    labels = (result.workflow, result.combo)
    NODE_SECONDS.labels(*labels, event["node"], event["status"]).observe(event["duration_s"])
    for model, usage in (event.get("usage") or {}).items():
        priced = usage.get("cost_usd") is not None
        LLM_CALLS.labels(*labels, model, str(priced).lower()).inc(usage.get("calls", 0))
        TOKENS.labels(*labels, model, "input").inc(usage.get("input", 0))
        TOKENS.labels(*labels, model, "output").inc(usage.get("output", 0))
        if priced:
            COST.labels(*labels, model).inc(usage["cost_usd"])
