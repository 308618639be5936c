"""OpenTelemetry tracing of threads: where spans go.

Spans are recorded only when there is somewhere for them to go:

- a tracer provider set with `set_tracer_provider` (tests: the SDK's in-memory exporter), or
  one the host application installed globally with `opentelemetry.trace.set_tracer_provider`;
- else, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an SDK provider of this process with the
  OTLP/HTTP exporter (batching; the standard `OTEL_*` variables — service name, headers,
  timeouts — apply). Each process that runs threads (a Ray worker too) exports its own spans.

Otherwise nothing is recorded or exported, and a thread pays no span at all.
"""

from __future__ import annotations

import atexit
import os
import threading

from opentelemetry import trace

from wtb_dagster.errors import ConfigError

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACER_NAME = "wtb_dagster"

_lock = threading.Lock()
_provider: trace.TracerProvider | None = None
_tracer: trace.Tracer | None = None


def set_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Record this process's thread spans with `provider` (None: back to the default rule)."""
    global _provider, _tracer
    with _lock:
        _provider, _tracer = provider, None


def _otlp_provider() -> trace.TracerProvider:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"{ENDPOINT_ENV} is set, but the OTLP exporter is not installed ({exc}); "
            "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http, "
            f"or unset {ENDPOINT_ENV}"
        ) from None
    provider = TracerProvider()  # resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # the batch processor sends every few seconds: flush what is left when the process ends
    atexit.register(provider.shutdown)
    return provider


def tracer() -> trace.Tracer | None:
    """The tracer thread spans go to, or None when they would go nowhere (see the module)."""
    global _provider, _tracer
    if _tracer is not None:
        return _tracer
    with _lock:
        if _tracer is None:
            provider = _provider
            installed = trace.get_tracer_provider()
            if provider is None and not isinstance(
                installed, trace.ProxyTracerProvider | trace.NoOpTracerProvider
            ):
                provider = installed
            if provider is None and os.environ.get(ENDPOINT_ENV):
                provider = _provider = _otlp_provider()
            # not cached while there is none: a provider or endpoint set later takes effect
            _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None
        return _tracer
