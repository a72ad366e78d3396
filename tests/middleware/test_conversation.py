from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from _asgi import http_client, request
from asgi_identity import Identity, MiddlewareOrderError, get_identity
from asgi_identity.middleware.conversation import ConversationTagger
from asgi_identity.telemetry import ATTR_CONVERSATION, ATTR_ERROR_TYPE, ATTR_LAYER
from asgi_identity.testing import with_identity
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

MALFORMED = (
    "The x-conversation-id header must be 1 to 128 characters from A-Z, a-z, 0-9, "
    "'.', '_', ':' and '-'."
)


async def whoami(request: Request) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse({"user": identity.user_id, "conversation": identity.conversation_id})


async def own_header(request: Request) -> JSONResponse:
    return JSONResponse({}, headers={"x-conversation-id": "set-by-app"})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for n in range(3):
            yield f"data: {n}\n\n".encode()

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"conversation": get_identity(websocket).conversation_id})
    await websocket.close()


APP = Starlette(
    routes=[
        Route("/v1/chat", whoami, methods=["POST"]),
        Route("/own", own_header),
        Route("/stream", stream),
        WebSocketRoute("/ws", chat),
    ]
)
ALICE = Identity(source="jwt", user_id="alice", email="alice@acme.com")


async def post(
    layer: ASGIApp, headers: list[tuple[str, str]] | None = None, path: str = "/v1/chat"
) -> httpx.Response:
    async with http_client(with_identity(layer, ALICE)) as http:
        # Sent as UTF-8 bytes, as a client may, so that non-ASCII ids reach the layer.
        raw = [(name.encode(), value.encode()) for name, value in headers or ()]
        return await http.request("POST" if path == "/v1/chat" else "GET", path, headers=raw)


@pytest.mark.parametrize(
    "conversation_id",
    [
        "c",
        "conv_01HZX3K9V8",
        "3f2c9e1a-7b64-4c1e-9a55-0d7c1f8e2b90",
        "thread:support.ticket-42",
        "A" * 128,
    ],
)
async def test_a_well_formed_id_reaches_the_app_and_is_echoed(conversation_id: str) -> None:
    response = await post(ConversationTagger(APP), [("X-Conversation-Id", conversation_id)])
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "conversation": conversation_id}
    assert response.headers["x-conversation-id"] == conversation_id


async def test_each_request_gets_its_own_conversation_and_the_caller_stays_untagged() -> None:
    layer = ConversationTagger(APP)
    seen = []
    for conversation_id in ["conv-a", "conv-b", "conv-a", None, "conv-b"]:
        headers = [] if conversation_id is None else [("x-conversation-id", conversation_id)]
        response = await post(layer, headers)
        assert response.status_code == 200
        seen.append(response.json()["conversation"])
    assert seen == ["conv-a", "conv-b", "conv-a", None, "conv-b"]
    assert ALICE.conversation_id is None  # the identity it was given is never changed


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "A" * 129,
        "has space",
        " padded",
        "slash/es",
        "semi;colon",
        'quote"d',
        "per%63ent",
        "tab\there",
        "café",
        "zero\u200bwidth",
        "line\u2028sep",
        "\uff41\uff42",
    ],
)
async def test_a_malformed_id_is_refused_and_never_replaced(raw: str) -> None:
    response = await post(ConversationTagger(APP), [("x-conversation-id", raw)])
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": MALFORMED,
        "type": "invalid_request_error",
        "code": "invalid_conversation_id",
    }
    assert "x-conversation-id" not in response.headers


async def test_raw_bytes_outside_utf8_are_refused() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat",
        "headers": [(b"x-conversation-id", b"\xff\xfe\x00")],
    }
    reply = await request(
        with_identity(ConversationTagger(APP), ALICE),
        scope=scope,
        messages=[{"type": "http.request", "body": b""}],
    )
    assert reply.messages[0]["status"] == 400


async def test_two_values_are_refused() -> None:
    response = await post(
        ConversationTagger(APP), [("x-conversation-id", "a"), ("X-Conversation-ID", "b")]
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "The x-conversation-id header must appear only once."
    )


async def test_a_missing_id_passes_unless_required() -> None:
    response = await post(ConversationTagger(APP))
    assert response.status_code == 200
    assert response.json()["conversation"] is None
    assert "x-conversation-id" not in response.headers

    response = await post(ConversationTagger(APP, required=True))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The x-conversation-id header is required."


async def test_a_custom_header_and_length() -> None:
    layer = ConversationTagger(APP, header="X-Thread-ID", max_length=8)
    response = await post(layer, [("x-thread-id", "t-1")])
    assert response.json()["conversation"] == "t-1"
    assert response.headers["x-thread-id"] == "t-1"
    response = await post(layer, [("x-thread-id", "t-123456789")])
    assert response.status_code == 400
    assert "x-thread-id header must be 1 to 8 characters" in response.json()["error"]["message"]
    # The default header means nothing to this layer now.
    assert (await post(layer, [("x-conversation-id", "c-1")])).json()["conversation"] is None


async def test_echo_can_be_turned_off_and_the_apps_own_value_wins() -> None:
    response = await post(ConversationTagger(APP, echo=False), [("x-conversation-id", "c-1")])
    assert response.json()["conversation"] == "c-1"
    assert "x-conversation-id" not in response.headers
    response = await post(ConversationTagger(APP), [("x-conversation-id", "c-1")], path="/own")
    assert response.headers.get_list("x-conversation-id") == ["set-by-app"]


async def test_a_streamed_response_carries_the_id_and_an_untouched_body() -> None:
    response = await post(ConversationTagger(APP), [("x-conversation-id", "c-9")], path="/stream")
    assert response.headers["x-conversation-id"] == "c-9"
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_the_id_goes_on_the_span_as_gen_ai_conversation_id() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    inner = ConversationTagger(APP)

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("request"):
            await inner(scope, receive, send)

    await post(traced, [("x-conversation-id", "c-42")])
    [span] = exporter.get_finished_spans()
    assert (span.attributes or {})[ATTR_CONVERSATION] == "c-42"


async def test_observe_mode_passes_a_malformed_id_without_using_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    inner = ConversationTagger(APP, mode="observe")

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with tracer.start_as_current_span("request"):
            await inner(scope, receive, send)

    with caplog.at_level(logging.INFO, logger="asgi_identity"):
        response = await post(traced, [("x-conversation-id", "bad id")])
    assert response.status_code == 200
    assert response.json()["conversation"] is None
    assert "x-conversation-id" not in response.headers
    [span] = exporter.get_finished_spans()
    events = [(e.name, e.attributes or {}) for e in span.events]
    assert [(name, a[ATTR_LAYER], a[ATTR_ERROR_TYPE]) for name, a in events] == [
        ("asgi_identity.would_reject", "ConversationTagger", "invalid_conversation_id")
    ]
    assert ATTR_CONVERSATION not in (span.attributes or {})
    assert "ConversationTagger would refuse POST /v1/chat: invalid_conversation_id" in (
        caplog.messages
    )


async def websocket(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": headers,
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    return (await request(with_identity(app, ALICE), scope=scope)).messages


async def test_websocket_gets_the_id_and_it_is_echoed_on_accept() -> None:
    sent = await websocket(ConversationTagger(APP), [(b"x-conversation-id", b"c-7")])
    assert sent[0]["type"] == "websocket.accept"
    assert (b"x-conversation-id", b"c-7") in sent[0]["headers"]
    assert json.loads(sent[1]["text"]) == {"conversation": "c-7"}


async def test_websocket_with_a_malformed_id_is_refused_before_accept() -> None:
    sent = await websocket(ConversationTagger(APP), [(b"x-conversation-id", b"a b")])
    assert sent[0] == {
        "type": "websocket.http.response.start",
        "status": 400,
        "headers": sent[0]["headers"],
    }


async def test_without_identity_middleware_the_error_says_how_to_order_the_layers() -> None:
    async with http_client(ConversationTagger(APP)) as http:
        with pytest.raises(MiddlewareOrderError, match="add ConversationTagger before"):
            await http.post("/v1/chat", headers={"x-conversation-id": "c-1"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"header": "x conversation"}, "not a valid header name"),
        ({"header": ""}, "not a valid header name"),
        ({"max_length": 0}, "max_length must be"),
        ({"max_length": 5000}, "max_length must be"),
        ({"max_length": True}, "max_length must be"),
        ({"max_length": "64"}, "max_length must be"),
        ({"mode": "strict"}, "mode must be"),
    ],
)
def test_bad_options_fail_at_start_up(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConversationTagger(APP, **options)
