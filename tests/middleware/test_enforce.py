from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from _asgi import http_client, request
from asgi_identity import APIKey, Identity, MiddlewareOrderError, get_identity, hash_api_key
from asgi_identity.errors import IdentityError
from asgi_identity.middleware.enforce import EnforceIdentity
from asgi_identity.telemetry import ATTR_ERROR_TYPE, ATTR_LAYER
from asgi_identity.testing import with_identity
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

IDENTITY_REQUIRED = "This API key requires identity context."


async def whoami(request: Request) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse({"source": identity.source, "user": identity.user_id})


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"source": get_identity(websocket).source})
    await websocket.close()


APP = Starlette(
    routes=[
        Route("/v1/chat", whoami, methods=["GET", "POST", "OPTIONS"]),
        Route("/health", whoami),
        WebSocketRoute("/ws", chat),
    ]
)


def key(enforce_identity: bool | None = None) -> APIKey:
    return APIKey(id="backend", sha256=hash_api_key("sk-test"), enforce_identity=enforce_identity)


JWT = Identity(source="jwt", user_id="alice", email="alice@acme.com")
HEADER = Identity(source="header", user_id="bob@acme.com", email="bob@acme.com")
ANONYMOUS = Identity(source="anonymous")


def key_only(record: APIKey) -> Identity:
    return Identity(source="api_key", client_id=record.id, api_key=record)


# (global required, the key's enforce_identity, who calls) -> (status, error code or None)
TABLE: list[tuple[bool, bool | None, str, int, str | None]] = [
    (True, None, "jwt", 200, None),
    (True, None, "header", 200, None),
    (True, None, "key only", 403, "identity_required"),
    (True, None, "anonymous", 401, "missing_credentials"),
    (False, None, "jwt", 200, None),
    (False, None, "header", 200, None),
    (False, None, "key only", 200, None),
    (False, None, "anonymous", 200, None),
    # The key's own flag wins over the global setting, both ways.
    (False, True, "jwt", 200, None),
    (False, True, "header", 200, None),
    (False, True, "key only", 403, "identity_required"),
    (True, False, "jwt", 200, None),
    (True, False, "header", 200, None),
    (True, False, "key only", 200, None),
    (True, True, "key only", 403, "identity_required"),
    (False, False, "key only", 200, None),
]


def caller(who: str, record: APIKey) -> Identity:
    if who == "key only":
        return key_only(record)
    if who == "anonymous":
        return ANONYMOUS
    identity = JWT if who == "jwt" else HEADER
    return identity.replace(api_key=record, client_id=record.id)


@pytest.mark.parametrize(("required", "per_key", "who", "status", "code"), TABLE)
async def test_who_gets_through(
    required: bool, per_key: bool | None, who: str, status: int, code: str | None
) -> None:
    identity = caller(who, key(per_key))
    app = with_identity(EnforceIdentity(APP, required=required), identity)
    async with http_client(app) as http:
        response = await http.get("/v1/chat")
    assert response.status_code == status
    if code is None:
        assert response.json()["source"] == identity.source
        return
    error = response.json()["error"]
    assert error["code"] == code
    if code == "identity_required":
        assert error["message"] == IDENTITY_REQUIRED
        assert error["type"] == "permission_error"
    else:
        assert response.headers["www-authenticate"] == "Bearer"
        assert error["type"] == "authentication_error"


async def test_without_identity_middleware_the_error_says_how_to_order_the_layers() -> None:
    async with http_client(EnforceIdentity(APP)) as http:
        with pytest.raises(MiddlewareOrderError, match="IdentityMiddleware must run before it"):
            await http.get("/v1/chat")


async def test_excluded_paths_and_cors_preflight_pass_without_a_person() -> None:
    record = key()
    app = with_identity(EnforceIdentity(APP, exclude_paths=["/health"]), key_only(record))
    async with http_client(app) as http:
        assert (await http.get("/health")).status_code == 200
        preflight = await http.options(
            "/v1/chat",
            headers={"origin": "https://app.test", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200
        assert (await http.options("/v1/chat")).status_code == 403


async def test_a_custom_renderer_replaces_the_body() -> None:
    def plain(error: IdentityError) -> tuple[bytes, str]:
        return f"{error.code}: {error.message}".encode(), "text/plain"

    app = with_identity(EnforceIdentity(APP, renderer=plain), key_only(key()))
    async with http_client(app) as http:
        response = await http.get("/v1/chat")
    assert response.status_code == 403
    assert response.text == f"identity_required: {IDENTITY_REQUIRED}"
    assert response.headers["content-type"] == "text/plain"


async def test_observe_mode_lets_a_bare_key_through_and_records_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    inner = with_identity(EnforceIdentity(APP, mode="observe"), key_only(key()))

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("request"):
            await inner(scope, receive, send)

    with caplog.at_level(logging.INFO, logger="asgi_identity"):
        async with http_client(traced) as http:
            response = await http.get("/v1/chat")
    assert response.status_code == 200
    assert response.json()["source"] == "api_key"
    [span] = exporter.get_finished_spans()
    events = [(e.name, e.attributes or {}) for e in span.events]
    assert [(name, a[ATTR_LAYER], a[ATTR_ERROR_TYPE]) for name, a in events] == [
        ("asgi_identity.would_reject", "EnforceIdentity", "identity_required")
    ]
    assert "EnforceIdentity would refuse GET /v1/chat: identity_required" in caplog.messages


async def test_a_refusal_marks_the_span_as_an_error() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    inner = with_identity(EnforceIdentity(APP), key_only(key()))

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("request"):
            await inner(scope, receive, send)

    async with http_client(traced) as http:
        assert (await http.get("/v1/chat")).status_code == 403
    [span] = exporter.get_finished_spans()
    assert span.status.description == "identity_required"
    assert [e.name for e in span.events] == ["asgi_identity.rejected"]


async def websocket(app: ASGIApp, *, http_response: bool = True) -> list[Message]:
    """Open /ws on `app` as a server would, and return what the app sent."""
    extensions: dict[str, Any] = {"websocket.http.response": {}} if http_response else {}
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
        "extensions": extensions,
    }
    return (await request(app, scope=scope)).messages


async def test_websocket_with_a_bare_key_is_refused_before_accept() -> None:
    sent = await websocket(with_identity(EnforceIdentity(APP), key_only(key())))
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"]["code"] == "identity_required"


async def test_websocket_with_a_person_is_accepted() -> None:
    sent = await websocket(with_identity(EnforceIdentity(APP), JWT))
    assert sent[0]["type"] == "websocket.accept"
    assert json.loads(sent[1]["text"]) == {"source": "jwt"}


async def test_websocket_without_the_response_extension_is_closed_with_1008() -> None:
    sent = await websocket(with_identity(EnforceIdentity(APP), ANONYMOUS), http_response=False)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_credentials"}]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"required": "yes"}, TypeError),
        ({"mode": "audit"}, ValueError),
        ({"exclude_paths": "/health"}, TypeError),
        ({"exclude_paths": ["health"]}, ValueError),
    ],
)
def test_bad_options_fail_at_start_up(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="EnforceIdentity"):
        EnforceIdentity(APP, **options)
