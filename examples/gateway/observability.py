"""OpenTelemetry for the example: a server span per request, exported to the console or OTLP.

The package itself only uses the OpenTelemetry API; the app chooses the SDK and exporters, as
here. In production, prefer `opentelemetry-instrumentation-asgi` for the server span; the small
`RequestSpan` below is used when it is not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import metrics, trace

from asgi_identity.telemetry import configure_telemetry
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send


class RequestSpan:
    """One SERVER span around each HTTP request, so the identity layers have a span to annotate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("examples.gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_with_status)


def server_span_middleware() -> tuple[Callable[..., Any], dict[str, Any]]:
    """The middleware class that opens the server span, and its options."""
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:
        return RequestSpan, {}
    # One span per request is what the example shows; not one more per body chunk.
    return OpenTelemetryMiddleware, {"exclude_spans": ["receive", "send"]}


def _one_line(span: Any) -> str:
    # A readable line per span instead of the SDK's multi-line JSON.
    attributes: Mapping[str, Any] = span.attributes or {}
    shown = (
        "user.id",
        "asgi_identity.source",
        "asgi_identity.group",
        "asgi_identity.decision",
        "gen_ai.conversation.id",
        "http.response.status_code",
        "http.status_code",  # what opentelemetry-instrumentation-asgi records by default
    )
    parts = [f"{key}={attributes[key]}" for key in shown if key in attributes]
    parts += [f"event={event.name}" for event in span.events]
    return f"[otel] {span.name} " + " ".join(parts) + "\n"


def setup_telemetry(
    service_name: str, environ: Mapping[str, str] | None = None
) -> Callable[[], None]:
    """Install the SDK: OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else the console.

    Returns the function that flushes and shuts the exporters down.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    env = os.environ if environ is None else environ
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Both exporters read the endpoint and headers from the standard OTEL_* variables.
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    else:
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr, formatter=_one_line))
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    configure_telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shutdown
