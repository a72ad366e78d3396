"""A loopback OTLP/HTTP receiver: what a Collector would get, decoded with opentelemetry-proto."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]


@dataclass
class Point:
    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float
    count: int | None = None


@dataclass
class Log:
    body: Any
    attributes: dict[str, Any]
    severity_text: str
    trace_id: str
    event_name: str
    scope: str


@dataclass
class Received:
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[ExportLogsServiceRequest] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)


_DECODERS: dict[str, tuple[Any, Any, str]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, "traces"),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse, "metrics"),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, "logs"),
}


class OTLPReceiver:
    """Accepts OTLP/HTTP protobuf exports on 127.0.0.1 and keeps the decoded requests."""

    def __init__(self) -> None:
        self.received = Received()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                decoder = _DECODERS.get(self.path)
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if decoder is None:
                    self.send_error(404)
                    return
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request_type, response_type, kind = decoder
                request = request_type()
                request.ParseFromString(body)
                with receiver._lock:
                    getattr(receiver.received, kind).append(request)
                    receiver.received.content_types.add(self.headers.get("content-type", ""))
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------------ decoded views

    def spans(self) -> list[Span]:
        with self._lock:
            requests = list(self.received.traces)
        return [
            Span(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes=attributes(span.attributes),
                status_code=span.status.code,
                status_message=span.status.message,
                events=[(event.name, attributes(event.attributes)) for event in span.events],
            )
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def points(self, metric: str | None = None) -> list[Point]:
        """Data points of the newest export of each metric (cumulative temporality)."""
        with self._lock:
            requests = list(self.received.metrics)
        latest: dict[str, list[Point]] = {}
        for request in requests:
            for name, points in _metric_points(request):
                latest[name] = points
        if metric is not None:
            return latest.get(metric, [])
        return [point for points in latest.values() for point in points]

    def logs(self) -> list[Log]:
        with self._lock:
            requests = list(self.received.logs)
        return [
            Log(
                body=any_value(record.body),
                attributes=attributes(record.attributes),
                severity_text=record.severity_text,
                trace_id=record.trace_id.hex(),
                event_name=record.event_name,
                scope=scope_logs.scope.name,
            )
            for request in requests
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]


def _metric_points(request: ExportMetricsServiceRequest) -> Iterator[tuple[str, list[Point]]]:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points: list[Point] = []
                if kind == "sum":
                    for point in metric.sum.data_points:
                        value = point.as_int if point.HasField("as_int") else point.as_double
                        points.append(
                            Point(metric.name, metric.unit, attributes(point.attributes), value)
                        )
                elif kind == "histogram":
                    for hpoint in metric.histogram.data_points:
                        points.append(
                            Point(
                                metric.name,
                                metric.unit,
                                attributes(hpoint.attributes),
                                hpoint.sum,
                                hpoint.count,
                            )
                        )
                yield metric.name, points
