"""RoutePolicy as a layer: the rule table end to end, request bodies, modes, frameworks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from litestar import Litestar, post
from litestar import Request as LitestarRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _asgi import Recorder, http_client, request
from _policy_support import DATA, IDENTITIES
from _servers import serve
from asgi_identity import MiddlewareOrderError, telemetry
from asgi_identity.audit import configure_audit, shutdown_audit
from asgi_identity.credentials.claims import ClaimMap
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.middleware.policy import PolicyDecision, RoutePolicy, Rule
from asgi_identity.testing import LocalIssuer, with_identity
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

SECRET_TOKEN = "Bearer sk-ai-very-secret-token"
SECRET_PROMPT = "my password is hunter2"

# identity, method, path, model (None: no body), the deciding rule, the status the client sees
TABLE = [
    ("anonymous", "GET", "/health", None, "health", 200),
    ("agent_for_pro_undelegated", "GET", "/health", None, "health", 200),
    ("free_user", "POST", "/v1/chat/completions", "gpt-3.5-turbo", "chat", 200),
    ("free_user", "POST", "/v1/chat/completions", "gpt-4o-mini", "premium-models", 403),
    ("free_user", "POST", "/v1/chat/completions", "GPT-4O", "premium-models", 403),
    ("free_user", "POST", "/v1/chat/completions/", "o1-preview", "premium-models", 403),
    ("pro_user", "POST", "/v1/chat/completions", "gpt-4o-mini", "premium-models-pro-tier", 200),
    ("pro_user", "POST", "/v1/responses", "o1", "premium-models-pro-tier", 200),
    ("pro_user", "POST", "/v1/embeddings", "gpt-4o", "premium-models", 403),
    ("pro_user", "POST", "/v1/chat/completions", "", "chat", 200),
    ("agent_for_pro_delegated", "POST", "/v1/chat/completions", "gpt-4o", "premium-models-pro-tier", 200),
    ("agent_for_pro_undelegated", "POST", "/v1/chat/completions", "gpt-3.5-turbo", "agents-need-delegation", 403),
    ("agent_for_free_delegated", "POST", "/v1/chat/completions", "o1-mini", "premium-models", 403),
    ("agent_for_free_delegated", "POST", "/v1/chat/completions", "gpt-3.5-turbo", "chat", 200),
    ("admin", "GET", "/admin/users", None, "admins", 200),
    ("admin", "DELETE", "/admin/users/42", None, "admins", 200),
    ("free_user", "GET", "/admin/users", None, "admin-only", 403),
    ("free_user", "GET", "/admin", None, "default", 403),
    ("admin", "POST", "/v1/chat/completions", "gpt-3.5-turbo", "default", 403),
    ("acme_key", "GET", "/v1/batches/b-1", None, "acme-batches", 200),
    ("globex_key", "GET", "/v1/batches/b-1", None, "default", 403),
    ("free_user", "GET", "/v1/batches/b-1", None, "default", 403),
    ("acme_key", "GET", "/v1/models", None, "list-models", 200),
    ("anonymous", "GET", "/v1/models/gpt-4o", None, "list-models", 200),
    ("anonymous", "HEAD", "/v1/models", None, "list-models", 200),
    ("free_user", "POST", "/v1/models", None, "default", 403),
    ("anonymous", "POST", "/v1/chat/completions", "gpt-3.5-turbo", "default", 403),
]  # fmt: skip


@pytest.fixture(params=["policy.toml", "policy.json"])
def policy_file(request: pytest.FixtureRequest) -> Path:
    return DATA / str(request.param)


async def call(
    app: ASGIApp, method: str, path: str, *, json_body: Any = None, content: bytes | None = None
) -> httpx.Response:
    async with http_client(app) as http:
        return await http.request(
            method, path, json=json_body, content=content, headers={"Authorization": SECRET_TOKEN}
        )


@pytest.mark.parametrize(
    ("who", "method", "path", "model", "rule_id", "status"),
    TABLE,
    ids=[f"{row[0]}-{row[1]}-{row[2]}-{row[3]}" for row in TABLE],
)
async def test_rule_table(
    policy_file: Path,
    who: str,
    method: str,
    path: str,
    model: str | None,
    rule_id: str,
    status: int,
) -> None:
    recorder = Recorder()
    policy = RoutePolicy(recorder, rules_file=policy_file)
    app = with_identity(policy, IDENTITIES[who])
    payload = None
    if model is not None:
        payload = {"model": model, "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        if model == "":
            del payload["model"]

    response = await call(app, method, path, json_body=payload)

    assert response.status_code == status
    assert policy.decide(IDENTITIES[who], method, path, model or None) == PolicyDecision(
        rule_id, status == 200, "2025-06-01"
    )
    if status == 200:
        assert recorder.identity is IDENTITIES[who]
        if payload is not None and method != "HEAD":
            assert json.loads(response.content) == payload
        return
    assert recorder.calls == 0
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    assert error["type"] == "permission_error"
    assert f"(rule '{rule_id}')" in error["message"]
    assert "hunter2" not in response.text
    assert "very-secret" not in response.text


async def test_denial_shows_the_rule_message() -> None:
    app = with_identity(
        RoutePolicy(Recorder(), rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]
    )
    response = await call(app, "POST", "/v1/chat/completions", json_body={"model": "gpt-4o"})
    assert response.json() == {
        "error": {
            "message": "This model is available on the Pro tier. (rule 'premium-models')",
            "type": "permission_error",
            "code": "policy_denied",
        }
    }
    assert response.headers["cache-control"] == "no-store"


async def test_python_rules_decide_like_the_rule_file() -> None:
    from_file = RoutePolicy(Recorder(), rules_file=DATA / "policy.toml")
    rules = [compiled.rule for compiled in from_file.rules.rules]
    from_code = RoutePolicy(Recorder(), rules=rules, version="2025-06-01")
    for who, method, path, model, _, _ in TABLE:
        identity = IDENTITIES[who]
        assert from_code.decide(identity, method, path, model) == from_file.decide(
            identity, method, path, model
        )


@pytest.mark.parametrize(
    ("default", "who", "status"),
    [
        ("allow", "free_user", 200),
        ("allow", "agent_for_pro_undelegated", 403),
        ("deny", "free_user", 403),
    ],
)
async def test_default_decides_when_no_rule_matches(
    default: Literal["allow", "deny"], who: str, status: int
) -> None:
    rules = [Rule(id="no-agents", effect="deny", agent=True)]
    app = with_identity(RoutePolicy(Recorder(), rules=rules, default=default), IDENTITIES[who])
    response = await call(app, "GET", "/anything")
    assert response.status_code == status


async def test_keyword_arguments_override_the_file() -> None:
    policy = RoutePolicy(
        Recorder(), rules_file=DATA / "policy.toml", default="allow", version="git-abc123"
    )
    assert policy.decide(IDENTITIES["admin"], "GET", "/unknown") == PolicyDecision(
        "default", True, "git-abc123"
    )


# --------------------------------------------------------------------------- request bodies


async def drive(app: ASGIApp, scope: Scope, messages: list[Message]) -> tuple[list[Message], int]:
    """Call `app` directly with these request messages; the sent messages and receive calls."""
    reply = await request(app, scope=scope, messages=messages)
    return reply.messages, reply.reads


def http_scope(
    path: str = "/v1/chat/completions", headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    return {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": headers or [], "asgi": {"version": "3.0"},
    }  # fmt: skip


async def test_chunked_body_reaches_the_app_exactly_as_sent() -> None:
    chunks = [b'{"model":', b' "gpt-4o-mi', b'ni", "messages": []', b"}"]
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml"), IDENTITIES["pro_user"]
    )
    sent, _ = await drive(app, http_scope(), [dict(m) for m in messages])
    assert sent[0]["status"] == 200
    assert recorder.messages == messages
    assert sent[1]["body"] == b"".join(chunks)


async def test_chunked_body_for_a_denied_model_is_refused() -> None:
    chunks = [b'{"model":', b' "gpt-4o-mini"}']
    messages: list[Message] = [
        {"type": "http.request", "body": chunks[0], "more_body": True},
        {"type": "http.request", "body": chunks[1], "more_body": False},
    ]
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]
    )
    sent, _ = await drive(app, http_scope(), messages)
    assert sent[0]["status"] == 403
    assert recorder.calls == 0


async def test_body_is_not_read_when_no_rule_looks_at_the_model() -> None:
    reads_when_app_started: list[int] = []
    reads = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reads_when_app_started.append(reads)
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b'{"model": "gpt-4o"}'}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    rules = [
        Rule(id="chat", paths=["/v1/chat/*"]),
        Rule(id="models", models=["gpt-4o"], paths=["/v1/responses"]),
    ]
    policy = with_identity(RoutePolicy(app, rules=rules), IDENTITIES["free_user"])
    await policy(http_scope(), receive, send)
    assert reads_when_app_started == [0]
    assert sent[1]["body"] == b'{"model": "gpt-4o"}'


async def test_body_is_not_read_when_the_identity_already_rules_out_model_rules() -> None:
    recorder = Recorder()
    rules = [Rule(id="pro-models", models=["gpt-4o"], groups=["pro"])]
    app = with_identity(RoutePolicy(recorder, rules=rules), IDENTITIES["free_user"])
    sent, reads = await drive(app, http_scope(), [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 403
    assert reads == 0


@pytest.mark.parametrize(
    "path", ["/v1//chat/completions", "/v1/./chat/completions", "/x/../v1/chat/completions"]
)
async def test_a_non_canonical_path_is_400_before_any_rule_is_read(
    policy_file: Path, path: str
) -> None:
    # Rules match one canonical path; a path an upstream would read differently is refused.
    recorder = Recorder()
    app = with_identity(RoutePolicy(recorder, rules_file=policy_file), IDENTITIES["pro_user"])
    scope = http_scope(path)
    sent, reads = await drive(app, scope, [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_request"
    assert reads == 0
    assert recorder.calls == 0


@pytest.mark.parametrize(
    "body", [b"not json", b'{"model": 42}', b'{"model": "a", "model": "gpt-4o"}', b"\xff{}"]
)
async def test_a_body_that_cannot_be_read_is_400_on_a_route_with_model_rules(body: bytes) -> None:
    # Fail closed: a body the one parser cannot read is never "no model".
    recorder = Recorder()
    rules = [Rule(id="no-gpt-4o", effect="deny", models=["gpt-4o"])]
    app = with_identity(
        RoutePolicy(recorder, rules=rules, default="allow"), IDENTITIES["free_user"]
    )
    sent, _ = await drive(app, http_scope(), [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_request"
    assert recorder.calls == 0


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"messages": []}', b""])
async def test_a_body_without_a_model_matches_no_model_rule(body: bytes) -> None:
    recorder = Recorder()
    rules = [Rule(id="no-gpt-4o", effect="deny", models=["*"])]
    app = with_identity(
        RoutePolicy(recorder, rules=rules, default="allow"), IDENTITIES["free_user"]
    )
    sent, _ = await drive(app, http_scope(), [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == body


async def test_oversized_body_by_content_length_is_413_without_reading_it() -> None:
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml", max_body=64),
        IDENTITIES["pro_user"],
    )
    scope = http_scope(headers=[(b"content-length", b"100000")])
    sent, reads = await drive(app, scope, [{"type": "http.request", "body": b"x" * 100000}])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert reads == 0
    assert recorder.calls == 0


async def test_oversized_chunked_body_is_413() -> None:
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml", max_body=64),
        IDENTITIES["free_user"],
    )
    padding = b" " * 100
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"model": "gpt-4o",', "more_body": True},
        {"type": "http.request", "body": padding, "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]
    sent, _ = await drive(app, http_scope(), messages)
    assert sent[0]["status"] == 413
    assert recorder.calls == 0


async def test_oversized_body_passes_whole_in_observe_mode() -> None:
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml", max_body=64, mode="observe"),
        IDENTITIES["pro_user"],
    )
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"model": "gpt-3.5-turbo",', "more_body": True},
        {"type": "http.request", "body": b" " * 100, "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]
    sent, _ = await drive(app, http_scope(), [dict(m) for m in messages])
    assert sent[0]["status"] == 200
    assert recorder.messages == messages


async def test_small_body_under_a_large_limit_is_read_whole() -> None:
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]
    )
    body = json.dumps({"model": "gpt-4o", "messages": [{"content": "x" * 50_000}]}).encode()
    scope = http_scope(headers=[(b"content-length", str(len(body)).encode())])
    sent, _ = await drive(app, scope, [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 403


# --------------------------------------------------------------------------- modes and scope types


async def test_observe_mode_lets_a_denied_request_through_and_records_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml", mode="observe"),
        IDENTITIES["free_user"],
    )
    body = b'{"model": "gpt-4o"}'
    with provider.get_tracer("test").start_as_current_span("request"):
        sent, _ = await drive(app, http_scope(), [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == body
    (span,) = exporter.get_finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert (
        telemetry.EVENT_OBSERVED,
        {
            telemetry.ATTR_LAYER: "RoutePolicy",
            telemetry.ATTR_ERROR_TYPE: "policy_denied",
            telemetry.ATTR_DETAIL: "rule premium-models, policy version 2025-06-01",
        },
    ) in events


async def test_refusal_is_recorded_on_the_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = with_identity(
        RoutePolicy(Recorder(), rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]
    )
    with provider.get_tracer("test").start_as_current_span("request"):
        sent, _ = await drive(app, http_scope("/admin/users"), [])
    assert sent[0]["status"] == 403
    (span,) = exporter.get_finished_spans()
    assert span.status.description == "policy_denied"
    (event,) = [e for e in span.events if e.name == telemetry.EVENT_REJECTED]
    assert dict(event.attributes or {})[telemetry.ATTR_DETAIL] == (
        "rule admin-only, policy version 2025-06-01"
    )


async def test_every_decision_is_audited_with_rule_and_policy_version(tmp_path: Path) -> None:
    audit_file = configure_audit(
        path=tmp_path / "audit.jsonl", signing_key=Ed25519PrivateKey.generate(), emit="none"
    )
    assert audit_file is not None
    try:
        policy = RoutePolicy(Recorder(), rules_file=DATA / "policy.toml")
        for who, path, model in [
            ("pro_user", "/v1/chat/completions", "gpt-4o"),
            ("free_user", "/v1/chat/completions", "gpt-4o"),
            ("admin", "/v1/unknown", "x"),
        ]:
            body = json.dumps({"model": model, "messages": [SECRET_PROMPT]}).encode()
            await drive(
                with_identity(policy, IDENTITIES[who]),
                http_scope(path),
                [{"type": "http.request", "body": body}],
            )
        assert audit_file.flush()
        lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    finally:
        shutdown_audit()
    records = [json.loads(line) for line in lines]
    seen = [
        (r["user_id"], r["outcome"], r.get("reason"), r["detail"], r["path"])
        for r in records
        if r.get("layer") == "RoutePolicy"  # genesis and digest lines have none
    ]
    assert seen == [
        ("bob", "allow", None, "rule premium-models-pro-tier, policy version 2025-06-01", "/v1/chat/completions"),
        ("alice", "deny", "policy_denied", "rule premium-models, policy version 2025-06-01", "/v1/chat/completions"),
        ("carol", "deny", "policy_denied", "no rule matched, default deny, policy version 2025-06-01", "/v1/unknown"),
    ]  # fmt: skip
    assert "hunter2" not in "\n".join(lines)


async def test_excluded_paths_skip_the_policy() -> None:
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules=[], exclude_paths=["/metrics"]), IDENTITIES["anonymous"]
    )
    assert (await call(app, "GET", "/metrics")).status_code == 200
    assert (await call(app, "GET", "/other")).status_code == 403


async def test_websocket_is_judged_by_path_and_refused_before_accept() -> None:
    rules = [Rule(id="realtime-pro", methods=["WEBSOCKET"], paths=["/v1/realtime"], groups=["pro"])]
    for who, expected in (("pro_user", "websocket.accept"), ("free_user", "websocket.close")):
        recorder = Recorder()
        app = with_identity(RoutePolicy(recorder, rules=rules), IDENTITIES[who])
        scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "query_string": b""}
        sent, _ = await drive(app, scope, [{"type": "websocket.connect"}])
        assert sent[0]["type"] == expected
        if expected == "websocket.close":
            assert sent[0]["code"] == 1008
            assert recorder.calls == 0


async def _never() -> Message:
    raise AssertionError("not expected to receive")


async def _never_send(message: Message) -> None:
    raise AssertionError("not expected to send")


async def test_missing_identity_middleware_fails_loudly() -> None:
    with pytest.raises(MiddlewareOrderError, match="RoutePolicy"):
        await RoutePolicy(Recorder(), rules=[])(http_scope(), _never, _never_send)


# --------------------------------------------------------------------------- real frameworks


async def test_fastapi_handler_reads_the_replayed_json_body() -> None:
    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"model": body["model"], "user": request.state.identity.user_id}

    app = with_identity(RoutePolicy(api, rules_file=DATA / "policy.toml"), IDENTITIES["pro_user"])
    response = await call(app, "POST", "/v1/chat/completions", json_body={"model": "gpt-4o"})
    assert response.json() == {"model": "gpt-4o", "user": "bob"}
    response = await call(
        with_identity(RoutePolicy(api, rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]),
        "POST", "/v1/chat/completions", json_body={"model": "gpt-4o"},
    )  # fmt: skip
    assert response.status_code == 403


async def test_litestar_handler_reads_the_replayed_json_body() -> None:
    @post("/v1/chat/completions")
    async def chat(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        body = await request.json()
        return {"model": body["model"]}

    api = cast(ASGIApp, Litestar([chat]))
    app = with_identity(RoutePolicy(api, rules_file=DATA / "policy.toml"), IDENTITIES["pro_user"])
    response = await call(app, "POST", "/v1/chat/completions", json_body={"model": "o1"})
    assert response.status_code == 201
    assert response.json() == {"model": "o1"}


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, TypeError, "exactly one of rules"),
        ({"rules": [], "rules_file": "x.toml"}, TypeError, "exactly one of rules"),
        ({"rules": Rule(id="a")}, TypeError, "list of Rule objects"),
        ({"rules": ["a"]}, TypeError, r"rules\[0\] must be a Rule"),
        ({"rules": [], "default": "block"}, ValueError, "default must be"),
        ({"rules": [], "mode": "audit"}, ValueError, "mode must be"),
        ({"rules": [], "max_body": 0}, ValueError, "max_body"),
        ({"rules": [], "exclude_paths": "/health"}, TypeError, "exclude_paths"),
    ],
)
def test_bad_options_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RoutePolicy(Recorder(), **kwargs)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[tuple[str, LocalIssuer]]:
    """A FastAPI gateway behind IdentityMiddleware and RoutePolicy, served by real uvicorn."""
    issuer = LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")
    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"bytes": len(body), "model": json.loads(body)["model"]}

    with issuer.serve() as jwks:
        api.add_middleware(RoutePolicy, rules_file=DATA / "policy.toml")
        api.add_middleware(
            IdentityMiddleware,
            issuers=[
                JWTIssuer(
                    issuer="https://issuer.test",
                    audience="gateway",
                    jwks_url=jwks.jwks_url,
                    claims=ClaimMap(group="tier"),
                )
            ],
        )
        with serve(api) as url:
            yield url, issuer


@pytest.mark.parametrize(
    ("claims", "model", "status", "rule_id"),
    [
        ({"tier": "pro", "scope": "chat"}, "gpt-4o", 200, None),
        ({"tier": "free", "scope": "chat"}, "gpt-4o", 403, "premium-models"),
        ({"tier": "free", "scope": "chat"}, "gpt-3.5-turbo", 200, None),
        ({"tier": "pro", "scope": "chat", "act": {"sub": "agent-7"}}, "gpt-4o", 403, "agents-need-delegation"),
        ({"tier": "pro", "scope": "ai:delegate", "act": {"sub": "agent-7"}}, "gpt-4o", 200, None),
    ],
)  # fmt: skip
async def test_signed_tokens_through_uvicorn_with_a_chunked_body(
    gateway_url: tuple[str, LocalIssuer],
    claims: dict[str, Any],
    model: str,
    status: int,
    rule_id: str | None,
) -> None:
    url, issuer = gateway_url
    token = issuer.mint(sub="user-1", **claims)
    body = json.dumps({"model": model, "messages": [{"content": SECRET_PROMPT * 500}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=chunks(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"bytes": len(body), "model": model}
    else:
        assert f"(rule '{rule_id}')" in response.json()["error"]["message"]
        assert token not in response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o-mini", "model": "cheap-model", "messages": []}',
        b'{"model": "cheap-model", "messages": [{"role": "user", "role": "system"}]}',
    ],
    ids=["model-twice", "nested-key-twice"],
)
async def test_a_body_repeating_a_key_is_refused_not_judged_on_one_reading(body: bytes) -> None:
    # Python keeps the last duplicate, other parsers the first: judging one value could let an
    # upstream act on the other, so the policy refuses to guess.
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml"), IDENTITIES["free_user"]
    )
    sent, _ = await drive(app, http_scope(), [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_request"
    assert recorder.calls == 0


async def test_a_body_repeating_a_key_passes_in_observe_mode_without_a_model() -> None:
    body = b'{"model": "gpt-4o-mini", "model": "cheap-model"}'
    recorder = Recorder()
    app = with_identity(
        RoutePolicy(recorder, rules_file=DATA / "policy.toml", mode="observe"),
        IDENTITIES["free_user"],
    )
    sent, _ = await drive(app, http_scope(), [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 200
    assert recorder.messages == [{"type": "http.request", "body": body}]
