"""The OpenTelemetry SDK as an app installs it, with exporters that drop what they receive.

Spans go through a SimpleSpanProcessor, so their whole cost (ending, processing, exporting) lands
inside the request being measured instead of in a background thread competing for the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from asgi_identity.types import ASGIApp, Receive, Scope, Send

_installed = False


def install_sdk() -> None:
    """Install a TracerProvider and a MeterProvider globally (once per process)."""
    global _installed
    if _installed:
        return
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DroppingExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(tracer_provider)
    # Collected only on demand, so recording a measurement is the whole per-request cost.
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    _installed = True


class RequestSpan:
    """A server span around each request, standing in for the app's HTTP instrumentation."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("benchmarks")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.tracer.start_as_current_span(scope["path"], kind=SpanKind.SERVER):
            await self.app(scope, receive, send)
