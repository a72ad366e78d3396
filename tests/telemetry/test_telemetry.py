"""What the layers report to OpenTelemetry: span attributes per user, metrics, baggage, spans."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from opentelemetry import propagate
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import http_client
from asgi_identity import APIKey, Identity, get_identity, hash_api_key, telemetry
from asgi_identity.audit import shutdown_audit
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.identity import Actor
from asgi_identity.middleware import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
)
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.telemetry import _config, events
from asgi_identity.testing import JWKSServer, LocalIssuer
from asgi_identity.types import ASGIApp

APP_KEY = "sk-ai-telemetry-test-key-0001"
PSEUDONYM_KEY = b"a-secret-of-at-least-16-bytes"


@dataclass
class OTel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def configure(self, **options: Any) -> None:
        telemetry.configure_telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def server_span(self) -> ReadableSpan:
        [span] = [s for s in self.spans.get_finished_spans() if s.kind.name == "SERVER"]
        return span

    def span_named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, Any], float]]:
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], float]] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name != metric:
                        continue
                    for point in item.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found.append((dict(point.attributes or {}), value))
        return found


@pytest.fixture
def otel() -> Iterator[OTel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    # The SDK caps each instrument at 2000 attribute sets; the per-user bound is tested alone.
    views = [
        View(meter_name="asgi_identity", instrument_name="*", aggregation_cardinality_limit=10_000)
    ]
    meter_provider = MeterProvider(metric_readers=[reader], views=views)
    state = OTel(spans, reader, tracer_provider, meter_provider)
    state.configure()
    yield state
    telemetry.configure_telemetry()
    shutdown_audit()
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def whoami(request: Request) -> JSONResponse:
    identity = get_identity(request)
    outgoing: dict[str, str] = {}
    propagate.inject(outgoing)  # what an instrumented HTTP client would send downstream
    return JSONResponse(
        {"user_id": identity.user_id, "source": identity.source, "outgoing": outgoing}
    )


async def chat(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
    )


def stack(
    otel: OTel,
    issuer: LocalIssuer,
    *,
    jwks_server: JWKSServer | None = None,
    domain_mode: Literal["enforce", "observe"] = "enforce",
    limits: str = "100/minute",
) -> ASGIApp:
    app: ASGIApp = Starlette(
        routes=[Route("/whoami", whoami), Route("/v1/chat/completions", chat, methods=["POST"])]
    )
    app = ConversationTagger(app)
    app = UserRateLimit(app, limits=limits, tokens="100000/day")
    app = DomainAllowlist(app, domains=["acme.com"], mode=domain_mode)
    app = EnforceIdentity(app)
    keys = JWTIssuer(
        issuer=issuer.issuer,
        audience="gateway",
        **(
            {"jwks_url": jwks_server.jwks_url} if jwks_server is not None else {"jwks": issuer.jwks}
        ),
    )
    app = IdentityMiddleware(
        app,
        issuers=[keys],
        api_keys=[APIKey(id="app-1", sha256=hash_api_key(APP_KEY), tenant="acme", group="pro")],
    )
    # The server span the OpenTelemetry ASGI instrumentation makes, as in a real deployment.
    return OpenTelemetryMiddleware(
        app, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )


def alice(issuer: LocalIssuer, **claims: Any) -> dict[str, str]:
    token = issuer.mint(
        sub="alice",
        email="alice@acme.com",
        roles=["admin", "analyst"],
        act={"sub": "agent-7", "act": {"sub": "planner"}},
        **claims,
    )
    return {"authorization": f"Bearer {token}", "x-api-key": APP_KEY}


def hashed(user_id: str, key: bytes = PSEUDONYM_KEY) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


# ------------------------------------------------------------------------------ span attributes


async def test_authenticated_request_puts_the_user_on_the_server_span(
    otel: OTel, issuer: LocalIssuer
) -> None:
    async with http_client(stack(otel, issuer)) as http:
        response = await http.get(
            "/whoami", headers={**alice(issuer), "x-conversation-id": "conv-42"}
        )
    assert response.status_code == 200
    span = otel.server_span()
    attributes = dict(span.attributes or {})
    assert attributes["user.id"] == "alice"
    assert attributes["enduser.id"] == "alice"
    assert attributes["user.roles"] == ("admin", "analyst")
    assert attributes["asgi_identity.source"] == "jwt"
    assert attributes["asgi_identity.tenant"] == "acme"
    assert attributes["asgi_identity.group"] == "pro"
    assert attributes["asgi_identity.client_id"] == "app-1"
    assert attributes["asgi_identity.api_key.id"] == "app-1"
    assert attributes["asgi_identity.actor.id"] == "agent-7"
    assert attributes["asgi_identity.actor.chain"] == ("agent-7", "planner")
    assert attributes["gen_ai.conversation.id"] == "conv-42"
    assert attributes["asgi_identity.decision"] == "allow"
    assert "user.email" not in attributes, "email is PII: only on request"
    assert span.status.status_code is not StatusCode.ERROR


async def test_email_is_on_the_span_only_when_enabled(otel: OTel, issuer: LocalIssuer) -> None:
    otel.configure(record_email=True)
    async with http_client(stack(otel, issuer)) as http:
        assert (await http.get("/whoami", headers=alice(issuer))).status_code == 200
    assert (otel.server_span().attributes or {})["user.email"] == "alice@acme.com"


async def test_pseudonymous_mode_shows_a_stable_hash_and_never_the_user_id(
    otel: OTel, issuer: LocalIssuer
) -> None:
    otel.configure(pseudonymize_key=PSEUDONYM_KEY)
    async with http_client(stack(otel, issuer)) as http:
        assert (await http.get("/whoami", headers=alice(issuer))).status_code == 200
    attributes = dict(otel.server_span().attributes or {})
    assert attributes["user.hash"] == hashed("alice")
    assert hashed("alice") != hashed("alice", b"another-secret-of-16-bytes")
    assert "user.id" not in attributes
    assert "enduser.id" not in attributes
    [(point, _)] = otel.points(telemetry.METRIC_REQUESTS)
    assert point["user.hash"] == hashed("alice")
    assert "user.id" not in point


async def test_rejection_sets_error_status_and_an_event_with_the_code(
    otel: OTel, issuer: LocalIssuer
) -> None:
    async with http_client(stack(otel, issuer)) as http:
        forged = issuer.mint(sub="alice")[:-8] + "AAAAAAAA"
        response = await http.get("/whoami", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    span = otel.server_span()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["asgi_identity.decision"] == "deny"
    assert (span.attributes or {})["asgi_identity.decision.layer"] == "IdentityMiddleware"
    [event] = [e for e in span.events if e.name == telemetry.EVENT_REJECTED]
    assert (event.attributes or {})["error.type"] == "invalid_token"
    assert (event.attributes or {})["asgi_identity.layer"] == "IdentityMiddleware"
    assert otel.points(telemetry.METRIC_REJECTIONS) == [
        (
            {
                "asgi_identity.layer": "IdentityMiddleware",
                "error.type": "invalid_token",
                "asgi_identity.mode": "enforce",
            },
            1,
        )
    ]
    assert otel.points(telemetry.METRIC_REQUESTS) == [
        ({"asgi_identity.outcome": "rejected", "error.type": "invalid_token"}, 1)
    ]


async def test_domain_refusal_is_counted_for_the_user_it_refused(
    otel: OTel, issuer: LocalIssuer
) -> None:
    token = issuer.mint(sub="mallory", email="mallory@evil.example")
    async with http_client(stack(otel, issuer)) as http:
        response = await http.get("/whoami", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 403
    span = otel.server_span()
    assert (span.attributes or {})["user.id"] == "mallory"
    assert (span.attributes or {})["asgi_identity.decision"] == "deny"
    assert (span.attributes or {})["asgi_identity.decision.layer"] == "DomainAllowlist"
    assert (
        {
            "asgi_identity.layer": "DomainAllowlist",
            "error.type": "domain_not_allowed",
            "asgi_identity.mode": "enforce",
            "user.id": "mallory",
        },
        1,
    ) in otel.points(telemetry.METRIC_REJECTIONS)


async def test_observe_mode_adds_an_event_but_no_error(otel: OTel, issuer: LocalIssuer) -> None:
    token = issuer.mint(sub="mallory", email="mallory@evil.example")
    async with http_client(stack(otel, issuer, domain_mode="observe")) as http:
        response = await http.get("/whoami", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    span = otel.server_span()
    assert span.status.status_code is not StatusCode.ERROR
    assert (span.attributes or {})["asgi_identity.decision"] == "allow"
    [event] = [e for e in span.events if e.name == telemetry.EVENT_OBSERVED]
    assert (event.attributes or {})["error.type"] == "domain_not_allowed"
    [(point, count)] = otel.points(telemetry.METRIC_REJECTIONS)
    assert point["asgi_identity.mode"] == "observe"
    assert count == 1


# ------------------------------------------------------------------------------ metrics


async def test_rate_limit_hits_are_counted_per_user_and_tier(
    otel: OTel, issuer: LocalIssuer
) -> None:
    async with http_client(stack(otel, issuer, limits="2/minute")) as http:
        statuses = [(await http.get("/whoami", headers=alice(issuer))).status_code for _ in "abc"]
    assert statuses == [200, 200, 429]
    assert otel.points(telemetry.METRIC_RATE_LIMIT_HITS) == [
        (
            {
                "error.type": "rate_limited",
                "asgi_identity.mode": "enforce",
                "asgi_identity.group": "pro",
                "user.id": "alice",
            },
            1,
        )
    ]
    [(requests, count)] = otel.points(telemetry.METRIC_REQUESTS)
    assert requests["user.id"] == "alice"
    assert requests["asgi_identity.outcome"] == "authenticated"
    assert count == 3


async def test_llm_tokens_are_counted_per_user_and_tier(otel: OTel, issuer: LocalIssuer) -> None:
    async with http_client(stack(otel, issuer)) as http:
        response = await http.post(
            "/v1/chat/completions", headers=alice(issuer), json={"model": "m", "messages": []}
        )
        assert response.status_code == 200
        # Usage is settled once the body has gone out; give that task its turn.
        for _ in range(100):
            if otel.points(telemetry.METRIC_TOKENS):
                break
            await asyncio.sleep(0.01)
    tokens = {
        point["gen_ai.token.type"]: (point, value)
        for point, value in otel.points("asgi_identity.tokens")
    }
    assert tokens["input"][1] == 12
    assert tokens["output"][1] == 30
    assert tokens["input"][0]["user.id"] == "alice"
    assert tokens["input"][0]["asgi_identity.group"] == "pro"
    assert tokens["input"][0]["asgi_identity.client_id"] == "app-1"


def identity_of(number: int) -> Identity:
    return Identity(source="jwt", user_id=f"user-{number}", group="free", client_id="chat-app")


def test_distinct_users_per_metric_are_bounded_with_10000_users(otel: OTel) -> None:
    otel.configure(max_users=1000)
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": []}

    def work(start: int) -> None:
        for number in range(start, 10_000, 4):
            identity = identity_of(number)
            events.authenticated(scope, identity)
            events.llm_tokens(identity, 1, 2)

    # Four threads at once: a worker pool or several event loops in one process.
    threads = [threading.Thread(target=work, args=(start,)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    requests = otel.points(telemetry.METRIC_REQUESTS)
    users = {point["user.id"] for point, _ in requests}
    assert len(users) == 1001
    assert telemetry.OVERFLOW in users
    assert sum(value for _, value in requests) == 10_000
    overflow = [value for point, value in requests if point["user.id"] == telemetry.OVERFLOW]
    assert sum(overflow) == 9_000
    token_users = {point["user.id"] for point, _ in otel.points(telemetry.METRIC_TOKENS)}
    assert len(token_users) == 1001
    total = sum(value for _, value in otel.points(telemetry.METRIC_TOKENS))
    assert total == 30_000


def test_no_sdk_means_no_metrics_work_and_no_error() -> None:
    telemetry.configure_telemetry()  # the global providers: the API's placeholders in tests
    identity = identity_of(1)
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": []}
    events.authenticated(scope, identity)
    events.llm_tokens(identity, 3, 4)
    assert not _config.current.counters.metrics_on()
    assert len(_config.current.counters.requests.users) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_metrics_false_turns_off_a_given_meter_provider(otel: OTel, enabled: bool) -> None:
    otel.configure(metrics=enabled)
    identity = identity_of(1)
    events.authenticated({"type": "http", "path": "/", "headers": []}, identity)
    events.llm_tokens(identity, 3, 4)
    telemetry.record_auth_duration(0.001, "verified")
    exported = {
        name: bool(otel.points(name))
        for name in (telemetry.METRIC_REQUESTS, telemetry.METRIC_TOKENS)
    }
    assert exported == {telemetry.METRIC_REQUESTS: enabled, telemetry.METRIC_TOKENS: enabled}
    data = otel.reader.get_metrics_data()
    names = {
        metric.name
        for resource in (data.resource_metrics if data is not None else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if any(True for _ in metric.data.data_points)
    }
    assert (telemetry.METRIC_AUTH_DURATION in names) is enabled


def test_an_sdk_installed_after_import_is_honoured(tmp_path: Any) -> None:
    # A fresh interpreter: global providers can be set only once per process.
    script = textwrap.dedent(
        """
        from asgi_identity import telemetry
        from asgi_identity.identity import Identity
        from asgi_identity.telemetry import events
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        identity = Identity(source="jwt", user_id="alice")
        events.authenticated({}, identity)  # before any SDK: nothing to see, nothing breaks

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        with trace.get_tracer("app").start_as_current_span("request"):
            events.authenticated({}, identity)
            with telemetry.verify_span():
                pass
        names = sorted(
            m.name
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )
        spans = {s.name: dict(s.attributes) for s in exporter.get_finished_spans()}
        print(names)
        print(spans["request"]["user.id"], sorted(spans))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    metric_names, span_line = result.stdout.strip().splitlines()
    assert metric_names == "['asgi_identity.requests']"
    assert span_line == "alice ['asgi_identity.verify_token', 'request']"


# ------------------------------------------------------------------------------ baggage


async def test_incoming_baggage_never_sets_identity_nor_travels_downstream(
    otel: OTel, issuer: LocalIssuer
) -> None:
    spoofed = "user.id=mallory,enduser.id=mallory,asgi_identity.group=enterprise,theme=dark"
    async with http_client(stack(otel, issuer)) as http:
        response = await http.get("/whoami", headers={**alice(issuer), "baggage": spoofed})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == "alice"
    outgoing = body["outgoing"].get("baggage", "")
    assert "mallory" not in outgoing
    assert "enterprise" not in outgoing
    assert "theme=dark" in outgoing, "baggage that names no identity is left alone"
    assert (otel.server_span().attributes or {})["user.id"] == "alice"


async def test_identity_goes_into_outgoing_baggage_only_when_enabled(
    otel: OTel, issuer: LocalIssuer
) -> None:
    async with http_client(stack(otel, issuer)) as http:
        off = (await http.get("/whoami", headers=alice(issuer))).json()["outgoing"]
        otel.configure(identity_in_baggage=True)
        on = (
            await http.get("/whoami", headers={**alice(issuer), "baggage": "user.id=mallory"})
        ).json()["outgoing"]
    assert "baggage" not in off
    entries = dict(item.split("=", 1) for item in on["baggage"].split(","))
    assert entries == {
        "user.id": "alice",
        "asgi_identity.tenant": "acme",
        "asgi_identity.group": "pro",
    }


# ------------------------------------------------------------------------------ authentication spans


async def test_cold_verification_and_jwks_fetch_get_spans_and_cached_requests_do_not(
    otel: OTel, issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    headers = alice(issuer)
    async with http_client(stack(otel, issuer, jwks_server=jwks_server)) as http:
        for _ in range(3):
            assert (await http.get("/whoami", headers=headers)).status_code == 200
    [verify] = otel.span_named(telemetry.SPAN_VERIFY)
    [fetch] = otel.span_named(telemetry.SPAN_JWKS_FETCH)
    assert (fetch.attributes or {})["url.full"] == jwks_server.jwks_url
    assert fetch.parent is not None
    assert fetch.parent.span_id == verify.context.span_id
    assert len([s for s in otel.spans.get_finished_spans() if s.kind.name == "SERVER"]) == 3
    assert otel.points(telemetry.METRIC_JWKS_FETCHES) == [({"asgi_identity.outcome": "ok"}, 1)]
    [(point, count)] = otel.points(telemetry.METRIC_AUTH_DURATION)
    assert point == {"asgi_identity.outcome": "verified"}
    assert count == 1


async def test_failed_jwks_fetch_marks_its_span_and_counts_an_error(
    otel: OTel, issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.status = 500
    async with http_client(stack(otel, issuer, jwks_server=jwks_server)) as http:
        response = await http.get("/whoami", headers=alice(issuer))
    assert response.status_code == 503
    [fetch] = otel.span_named(telemetry.SPAN_JWKS_FETCH)
    assert fetch.status.status_code is StatusCode.ERROR
    assert otel.points(telemetry.METRIC_JWKS_FETCHES) == [({"asgi_identity.outcome": "error"}, 1)]
    [(point, _)] = otel.points(telemetry.METRIC_AUTH_DURATION)
    assert point == {"asgi_identity.outcome": "invalid"}


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"pseudonymize_key": b"short"}, ValueError),
        ({"pseudonymize_key": PSEUDONYM_KEY, "record_email": True}, ValueError),
        ({"pseudonymize_key": 1234}, TypeError),
        ({"max_users": 0}, ValueError),
        ({"max_users": True}, ValueError),
        ({"record_email": "yes"}, TypeError),
    ],
)
def test_bad_telemetry_settings_fail_at_start_up(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        telemetry.configure_telemetry(**options)


def test_actor_chain_is_only_set_for_nested_actors() -> None:
    attributes = telemetry.identity_attributes(
        Identity(source="jwt", user_id="bob", actor=Actor(subject="agent-1"))
    )
    assert attributes["asgi_identity.actor.id"] == "agent-1"
    assert "asgi_identity.actor.chain" not in attributes


# ------------------------------------------------------------------------------ cost-saving caches


def test_counts_survive_reconfiguring_and_each_identity_keeps_its_own_series(otel: OTel) -> None:
    # Counters are summed in the package and read by the SDK at collection; configuring again
    # must neither lose the totals nor register a second callback that would double them.
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": []}
    alice = Identity(source="jwt", user_id="alice", group="pro")
    bob = Identity(source="jwt", user_id="bob", group="free")
    events.authenticated(scope, alice)
    events.authenticated(scope, alice)
    otel.configure(max_users=5)
    events.authenticated(scope, alice)
    events.authenticated(scope, bob)
    counts = {
        (point["user.id"], point["asgi_identity.group"]): value
        for point, value in otel.points(telemetry.METRIC_REQUESTS)
    }
    assert counts == {("alice", "pro"): 3, ("bob", "free"): 1}


def test_span_attributes_follow_the_settings_after_reconfiguring(otel: OTel) -> None:
    # The attributes of an identity are built once per configuration, not once per process.
    identity = Identity(source="jwt", user_id="alice", email="alice@acme.com")
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("before"):
        events.authenticated({"type": "http"}, identity)
    otel.configure(record_email=True)
    with tracer.start_as_current_span("after"):
        events.authenticated({"type": "http"}, identity)
    [before] = otel.span_named("before")
    [after] = otel.span_named("after")
    assert "user.email" not in (before.attributes or {})
    assert (after.attributes or {})["user.email"] == "alice@acme.com"
    assert (after.attributes or {})["user.id"] == "alice"


def test_usage_reported_with_a_per_request_identity_lands_on_the_same_series(otel: OTel) -> None:
    # ConversationTagger gives each request its own Identity object; the series is the user's.
    identity = Identity(source="jwt", user_id="alice", group="pro", client_id="chat-app")
    events.llm_tokens(identity.replace(conversation_id="c-1"), 10, 1)
    events.llm_tokens(identity.replace(conversation_id="c-2"), 5, 2)
    events.llm_tokens(identity, -7, 0)  # a counter never goes down
    tokens = {
        point["gen_ai.token.type"]: (point, value)
        for point, value in otel.points(telemetry.METRIC_TOKENS)
    }
    assert tokens["input"][1] == 15
    assert tokens["output"][1] == 3
    assert tokens["input"][0] == {
        "user.id": "alice",
        "asgi_identity.group": "pro",
        "asgi_identity.client_id": "chat-app",
        "gen_ai.token.type": "input",
    }


def test_delta_temporality_exports_what_happened_since_the_last_collection() -> None:
    reader = InMemoryMetricReader(
        preferred_temporality={
            ObservableCounter: AggregationTemporality.DELTA,
            Counter: AggregationTemporality.DELTA,
        }
    )
    provider = MeterProvider(metric_readers=[reader])
    telemetry.configure_telemetry(meter_provider=provider)
    scope: dict[str, Any] = {"type": "http", "path": "/", "headers": []}
    identity = Identity(source="jwt", user_id="alice")

    def requests_counted() -> list[float]:
        data = reader.get_metrics_data()
        assert data is not None
        return [
            point.value  # type: ignore[union-attr]
            for resource in data.resource_metrics
            for scope_metrics in resource.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == telemetry.METRIC_REQUESTS
            for point in metric.data.data_points
        ]

    try:
        for _ in range(3):
            events.authenticated(scope, identity)
        assert requests_counted() == [3]
        events.authenticated(scope, identity)
        assert requests_counted() == [1]
    finally:
        telemetry.configure_telemetry()
        provider.shutdown()
