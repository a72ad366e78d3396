"""Streams under real uvicorn: a stream the client cuts is charged at least what was delivered,
and its whole reservation when the final usage was never seen; `ensure_stream_usage` asks
OpenAI-style streams for their usage; the RateLimit header never shows a request its own
reservation as spent (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from _limits_support import full_stack, limiter_in
from _ratelimit_support import REDIS_URI, delete_redis_keys, unique_prefix
from _servers import serve
from asgi_identity import get_identity, get_rate_limiter
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp, Receive, Scope, Send


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def anthropic_messages(request: Request) -> Response:
    """An Anthropic messages stream: input tokens in `message_start`, output in `message_delta`.
    Without `x_finish` it keeps streaming text until the client goes away."""
    body = await request.json()

    async def events() -> AsyncIterator[bytes]:
        usage = {"input_tokens": body.get("x_input", 25), "output_tokens": 1}
        yield _sse("message_start", {"type": "message_start", "message": {"usage": usage}})
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0})
        words = 0
        while not body.get("x_finish") or words < 3:
            words += 1
            delta = {"type": "text_delta", "text": "word "}
            yield _sse("content_block_delta", {"type": "content_block_delta", "delta": delta})
            await asyncio.sleep(0.01)
        final = {"output_tokens": body.get("x_output", 3)}
        yield _sse("message_delta", {"type": "message_delta", "usage": final})
        yield _sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(events(), media_type="text/event-stream")


async def openai_chat(request: Request) -> Response:
    """OpenAI's chat completions: usage in a last chunk only when the request asks for it."""
    raw = await request.body()
    request.app.state.seen.append((raw, request.headers.get("content-length")))
    body = json.loads(raw)
    if not body.get("stream"):
        return JSONResponse({"choices": []})  # no usage: the reservation is the charge

    async def chunks() -> AsyncIterator[bytes]:
        yield _sse(None, {"object": "chat.completion.chunk", "choices": [{"delta": {}}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": 50, "total_tokens": 57}
            yield _sse(None, {"object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def tokens_used(request: Request) -> Response:
    windows = await get_rate_limiter(request).usage(get_identity(request))
    return JSONResponse([w.used for w in windows if w.kind == "tokens"])


def _app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/v1/chat/completions", openai_chat, methods=["POST"]),
            Route("/usage", tokens_used),
        ]
    )
    app.state.seen = []
    return app


class Finished:
    """Outermost: counts the requests the whole stack (settlement included) has finished."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                with self._lock:
                    self.count += 1

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout  # bounded wait for the server thread, not a timing
        while self.count < count:
            assert time.monotonic() < deadline, "the server never finished the request"
            time.sleep(0.01)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def storage(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    prefix = unique_prefix()
    if request.param == "memory":
        yield {"key_prefix": prefix}
        return
    yield {"storage": REDIS_URI, "key_prefix": prefix}
    asyncio.run(delete_redis_keys(prefix))


@pytest.fixture
def gateway(issuer: LocalIssuer, storage: dict[str, Any]) -> Callable[..., Any]:
    def build(**options: Any) -> tuple[Finished, Starlette]:
        upstream = _app()
        stack = full_stack(upstream, issuer, limits=None, tokens="100000/day", **storage, **options)
        return Finished(stack), upstream

    return build


def _headers(issuer: LocalIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.mint(sub='alice', email='alice@acme.com')}"}


def _cut_after(http: httpx.Client, path: str, body: dict[str, Any], events: int) -> None:
    """Read `events` server-sent events, then hang up."""
    with http.stream("POST", path, content=json.dumps(body)) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:")
            if seen >= events:
                break


@pytest.mark.parametrize(
    ("x_input", "charged"),
    [
        # Cut before `message_delta`: the output is unknown, so the reservation stays charged
        # (0.1 charged the 26 tokens `message_start` announced).
        (25, "reservation"),
        # The input alone is above the reservation: charged what was delivered.
        (5000, 5001),
    ],
)
def test_an_anthropic_stream_cut_before_its_final_usage_is_charged_at_least_its_reservation(
    gateway: Callable[..., Any], issuer: LocalIssuer, x_input: int, charged: Any
) -> None:
    app, _ = gateway()
    body = {"model": "claude", "max_tokens": 300, "messages": [], "x_input": x_input}
    reservation = 300 + len(json.dumps(body)) // 4
    with serve(app) as url, httpx.Client(base_url=url, headers=_headers(issuer)) as http:
        _cut_after(http, "/v1/messages", body, events=4)
        app.wait_for(1)
        used = http.get("/usage").json()
    assert used == [reservation if charged == "reservation" else charged]
    asyncio.run(limiter_in(app.app).aclose())


def test_an_anthropic_stream_read_to_its_end_is_charged_its_usage(
    gateway: Callable[..., Any], issuer: LocalIssuer
) -> None:
    app, _ = gateway()
    body = {"model": "claude", "max_tokens": 300, "x_finish": True, "x_output": 40}
    with serve(app) as url, httpx.Client(base_url=url, headers=_headers(issuer)) as http:
        response = http.post("/v1/messages", content=json.dumps(body))
        assert response.text.endswith('data: {"type": "message_stop"}\n\n')
        app.wait_for(1)
        assert http.get("/usage").json() == [25 + 40]
    asyncio.run(limiter_in(app.app).aclose())


STREAM = b'{ "model": "gpt-4o",\n  "stream": true, "max_tokens": 100, "x": "caf\\u00e9" }'
ASKED = b'{"stream_options":{"include_usage":true},' + STREAM[1:]


@pytest.mark.parametrize(
    ("sent", "forwarded", "charged"),
    [
        # Asked for its usage: charged the 57 tokens it used, not its reservation.
        (STREAM, ASKED, 57),
        # Not a stream, or a client that says no: forwarded byte for byte, reservation charged.
        (b'{"model": "gpt-4o" , "max_tokens": 100}', None, "reservation"),
        (
            b'{"model":"m","stream":true,"max_tokens":100,"stream_options":{"include_usage":false}}',
            None,
            "reservation",
        ),
        (
            b'{"model":"m","stream":true,"max_tokens":100,"stream_options":{"include_usage":true}}',
            None,
            57,
        ),
        # stream_options without include_usage: the object gains it.
        (
            b'{"model":"m","stream":true,"max_tokens":100,"stream_options":{}}',
            b'{"model":"m","stream":true,"max_tokens":100,"stream_options":{"include_usage":true}}',
            57,
        ),
    ],
)
def test_ensure_stream_usage_asks_openai_streams_for_their_usage(
    gateway: Callable[..., Any],
    issuer: LocalIssuer,
    sent: bytes,
    forwarded: bytes | None,
    charged: Any,
) -> None:
    app, upstream = gateway(ensure_stream_usage=True)
    with serve(app) as url, httpx.Client(base_url=url, headers=_headers(issuer)) as http:
        response = http.post("/v1/chat/completions", content=sent)
        assert response.status_code == 200
        if b'"stream":true' in sent.replace(b" ", b"") and charged == 57:
            # The client asked for a stream and sees the usage chunk it was given.
            assert '"usage": {"prompt_tokens": 7' in response.text
        app.wait_for(1)
        used = http.get("/usage").json()
    expected = forwarded or sent
    assert upstream.state.seen == [(expected, str(len(expected)))]
    assert used == [100 + len(sent) // 4 if charged == "reservation" else charged]
    asyncio.run(limiter_in(app.app).aclose())


def test_without_ensure_stream_usage_an_openai_stream_keeps_its_reservation(
    gateway: Callable[..., Any], issuer: LocalIssuer
) -> None:
    app, upstream = gateway()
    with serve(app) as url, httpx.Client(base_url=url, headers=_headers(issuer)) as http:
        assert http.post("/v1/chat/completions", content=STREAM).status_code == 200
        app.wait_for(1)
        assert http.get("/usage").json() == [100 + len(STREAM) // 4]
    assert upstream.state.seen == [(STREAM, str(len(STREAM)))]
    asyncio.run(limiter_in(app.app).aclose())


async def test_the_ratelimit_header_does_not_count_the_requests_own_reservation(
    issuer: LocalIssuer,
) -> None:
    upstream = _app()
    app = full_stack(upstream, issuer, limits=None, tokens="1000/day")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers=_headers(issuer)
    ) as http:
        body = b'{"model": "gpt-4o", "max_tokens": 100}'
        # The first request sees the whole budget; the second, what the first was charged (its
        # reservation: the response has no usage), not its own reservation as well.
        for remaining in (1000, 1000 - (100 + len(body) // 4)):
            response = await http.post("/v1/chat/completions", content=body)
            assert response.headers["ratelimit"].startswith(f'"tokens-day";r={remaining};t=')
    await limiter_in(app).aclose()
