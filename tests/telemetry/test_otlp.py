"""The whole stack, instrumented with the OpenTelemetry SDK and the real OTLP/HTTP exporters,
sending to a loopback receiver that decodes the protobuf: what a Collector would receive."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import http_client
from asgi_identity import APIKey, get_identity, hash_api_key, telemetry
from asgi_identity.audit import configure_audit, shutdown_audit
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
)
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.testing import JWKSServer, LocalIssuer
from asgi_identity.types import ASGIApp
from otlp_receiver import OTLPReceiver, Point

APP_KEY = "sk-ai-otlp-test-key-000000001"
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@dataclass
class Pipeline:
    receiver: OTLPReceiver
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider

    def flush(self) -> None:
        assert self.tracer_provider.force_flush(10_000)
        assert self.meter_provider.force_flush(10_000)
        assert self.logger_provider.force_flush(10_000)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    resource = Resource.create({"service.name": "llm-gateway"})
    with OTLPReceiver() as receiver:
        endpoint = receiver.endpoint
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=5))
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=5),
            export_interval_millis=3_600_000,  # exported on force_flush only
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", timeout=5))
        )
        telemetry.configure_telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        configure_audit(logger_provider=logger_provider, policy_version="v3")
        try:
            yield Pipeline(receiver, tracer_provider, meter_provider, logger_provider)
        finally:
            telemetry.configure_telemetry()
            shutdown_audit()
            tracer_provider.shutdown()
            meter_provider.shutdown()
            logger_provider.shutdown()


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"user": get_identity(request).user_id})


async def chat(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
    )


def gateway(pipeline: Pipeline, issuer: LocalIssuer, jwks_server: JWKSServer) -> ASGIApp:
    app: ASGIApp = Starlette(
        routes=[Route("/whoami", whoami), Route("/v1/chat/completions", chat, methods=["POST"])]
    )
    app = ConversationTagger(app)
    app = UserRateLimit(app, limits="3/minute", tokens="100000/day")
    app = DomainAllowlist(app, domains=["acme.com"])
    app = EnforceIdentity(app)
    app = IdentityMiddleware(
        app,
        issuers=[
            JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks_url=jwks_server.jwks_url)
        ],
        api_keys=[APIKey(id="chat-app", sha256=hash_api_key(APP_KEY), tenant="acme", group="pro")],
    )
    return OpenTelemetryMiddleware(
        app,
        tracer_provider=pipeline.tracer_provider,
        meter_provider=pipeline.meter_provider,
    )


def total(points: list[Point], **attributes: object) -> float:
    """Sum of the points whose attributes include these (keyword `user_id` means `user.id`)."""
    wanted = {_NAMES.get(name, name): value for name, value in attributes.items()}
    return sum(
        point.value
        for point in points
        if all(point.attributes.get(name) == value for name, value in wanted.items())
    )


_NAMES = {
    "user_id": "user.id",
    "error_type": "error.type",
    "outcome": "asgi_identity.outcome",
    "group": "asgi_identity.group",
    "token_type": "gen_ai.token.type",
}


async def test_spans_metrics_and_audit_logs_arrive_keyed_by_user(
    pipeline: Pipeline, issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    alice = {
        "authorization": f"Bearer {issuer.mint(sub='alice', email='alice@acme.com', act={'sub': 'agent-7'})}",
        "x-api-key": APP_KEY,
        "x-conversation-id": "conv-1",
    }
    bob = {"authorization": f"Bearer {issuer.mint(sub='bob', email='bob@acme.com')}"}
    mallory = {"authorization": f"Bearer {issuer.mint(sub='mallory', email='m@evil.example')}"}
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
    async with http_client(gateway(pipeline, issuer, jwks_server)) as http:
        statuses = [
            (await http.post("/v1/chat/completions", headers=alice, json=body)).status_code,
            (await http.post("/v1/chat/completions", headers=alice, json=body)).status_code,
            (await http.get("/whoami", headers=alice)).status_code,
            (await http.get("/whoami", headers=alice)).status_code,
            (await http.get("/whoami", headers=bob)).status_code,
            (await http.get("/whoami", headers=mallory)).status_code,
            (await http.get("/whoami")).status_code,
        ]
        await asyncio.sleep(0.05)  # token usage is settled after the response went out
    assert statuses == [200, 200, 200, 429, 200, 403, 401]
    pipeline.flush()
    received = pipeline.receiver

    # -- spans: one server span per request, keyed by user; auth spans only when cold
    spans = received.spans()
    server = [s for s in spans if s.name.startswith(("GET", "POST"))]
    server = [
        s for s in server if "http.request.method" in s.attributes or "http.method" in s.attributes
    ]
    assert Counter(s.attributes.get("user.id") for s in server) == {
        "alice": 4,
        "bob": 1,
        "mallory": 1,
        None: 1,
    }
    first = next(s for s in server if s.attributes.get("user.id") == "alice")
    assert first.attributes["enduser.id"] == "alice"
    assert first.attributes["asgi_identity.actor.id"] == "agent-7"
    assert first.attributes["asgi_identity.group"] == "pro"
    assert first.attributes["asgi_identity.client_id"] == "chat-app"
    assert first.attributes["gen_ai.conversation.id"] == "conv-1"
    refused = {
        s.attributes.get("asgi_identity.decision.layer"): s
        for s in server
        if s.status_code == STATUS_ERROR
    }
    assert set(refused) == {"UserRateLimit", "DomainAllowlist", "IdentityMiddleware"}
    assert (
        "asgi_identity.rejected",
        {"asgi_identity.layer": "DomainAllowlist", "error.type": "domain_not_allowed"},
    ) in [
        (name, {k: v for k, v in attrs.items() if k != "asgi_identity.detail"})
        for name, attrs in refused["DomainAllowlist"].events
    ]
    assert refused["UserRateLimit"].attributes["error.type"] == "rate_limited"
    assert refused["IdentityMiddleware"].attributes["error.type"] == "missing_credentials"
    assert len([s for s in spans if s.name == telemetry.SPAN_VERIFY]) == 3  # alice, bob, mallory
    assert len([s for s in spans if s.name == telemetry.SPAN_JWKS_FETCH]) == 1
    assert all("user.email" not in s.attributes for s in spans)

    # -- metrics: per user, bounded, with units
    requests = received.points(telemetry.METRIC_REQUESTS)
    assert total(requests, user_id="alice") == 4
    assert total(requests, user_id="bob") == 1
    assert total(requests, outcome="rejected") == 1
    rejections = received.points(telemetry.METRIC_REJECTIONS)
    assert total(rejections, user_id="mallory", error_type="domain_not_allowed") == 1
    assert total(rejections, user_id="alice", error_type="rate_limited") == 1
    hits = received.points(telemetry.METRIC_RATE_LIMIT_HITS)
    assert total(hits, user_id="alice", group="pro") == 1
    tokens = received.points(telemetry.METRIC_TOKENS)
    assert tokens
    assert tokens[0].unit == "{token}"
    assert total(tokens, user_id="alice", token_type="input") == 24
    assert total(tokens, user_id="alice", token_type="output") == 60
    [fetches] = received.points(telemetry.METRIC_JWKS_FETCHES)
    assert (fetches.attributes, fetches.value) == ({"asgi_identity.outcome": "ok"}, 1)
    [duration] = received.points(telemetry.METRIC_AUTH_DURATION)
    assert duration.unit == "s"
    assert duration.count == 3

    # -- audit log records: one per decision, on the trace of the request that made it
    logs = [log for log in received.logs() if log.scope == "asgi_identity.audit"]
    outcomes = Counter((log.body["layer"], log.body["outcome"]) for log in logs)
    assert outcomes == {
        ("IdentityMiddleware", "allow"): 6,
        ("UserRateLimit", "deny"): 1,
        ("DomainAllowlist", "deny"): 1,
        ("IdentityMiddleware", "deny"): 1,
        ("UserRateLimit", "usage"): 2,  # the two completions' tokens
    }
    usage = [log.body for log in logs if log.body["outcome"] == "usage"]
    assert sorted((u["input_tokens"], u["output_tokens"], u["model"]) for u in usage) == [
        (12, 30, "gpt"),
        (12, 30, "gpt"),
    ]
    deny = next(log for log in logs if log.body["layer"] == "DomainAllowlist")
    assert deny.event_name == "asgi_identity.audit"
    assert deny.attributes["user.id"] == "mallory"
    assert deny.body["policy_version"] == "v3"
    assert deny.trace_id == refused["DomainAllowlist"].trace_id
    assert received.received.content_types == {"application/x-protobuf"}
