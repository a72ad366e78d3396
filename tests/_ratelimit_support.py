"""Shared by the rate-limit tests: identities from test headers, an LLM-shaped app, Redis clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import coredis
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from _asgi import http_client
from _redis import REDIS_URL
from asgi_identity.identity import Identity, set_identity
from asgi_identity.middleware.ratelimit import UserRateLimit, get_rate_limiter
from asgi_identity.types import ASGIApp, Receive, Scope, Send

REDIS_URI = f"async+{REDIS_URL}"
ISSUER = "https://issuer.test"


def identify(app: ASGIApp) -> ASGIApp:
    """Stand-in for IdentityMiddleware: `x-test-user` (+ `x-test-group`) names a JWT user."""

    async def with_identity(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope["headers"])
            user = headers.get(b"x-test-user")
            group = headers.get(b"x-test-group")
            if user is None:
                identity = Identity(source="anonymous")
            else:
                identity = Identity(
                    source="jwt",
                    user_id=user.decode(),
                    issuer=ISSUER,
                    group=group.decode() if group else None,
                )
            set_identity(scope, identity)
        await app(scope, receive, send)

    return with_identity


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (bounded) for state that other tasks change, e.g. requests reaching a handler."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - the state has no event of its own to wait on
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def chat_json(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def chat_sse(prompt: int, completion: int) -> list[bytes]:
    """An OpenAI chat completion stream with `stream_options.include_usage`."""
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"content": word}}], "usage": None}
        for word in ("Hello", " there")
    ]
    chunks.append(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )
    events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    return events


def llm_app() -> Starlette:
    """An OpenAI-shaped app: `/v1/chat/completions` answers with the usage the request asks for.

    The request body's `x_prompt`/`x_completion` set the usage reported back, `stream` picks SSE,
    `x_status` an error status, `x_report` makes the handler report usage itself.
    """

    async def completions(request: Request) -> Response:
        body = await request.json()
        prompt, completion = body.get("x_prompt", 10), body.get("x_completion", 20)
        gate = getattr(request.app.state, "gate", None)
        if gate is not None:
            request.app.state.arrived += 1
            await gate.wait()
        if "x_status" in body:
            return JSONResponse({"error": {"message": "upstream failed"}}, body["x_status"])
        if body.get("x_report"):
            limiter = get_rate_limiter(request)
            await limiter.report_usage(request, input_tokens=prompt, output_tokens=completion)
            return PlainTextResponse("reported")
        if body.get("x_no_usage"):
            return JSONResponse({"choices": []})
        if body.get("stream"):

            async def stream() -> AsyncIterator[bytes]:
                for event in chat_sse(prompt, completion):
                    yield event

            return StreamingResponse(stream(), media_type="text/event-stream")
        return JSONResponse(chat_json(prompt, completion))

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    async def usage(request: Request) -> Response:
        limiter = get_rate_limiter(request)
        windows = await limiter.usage(request.state.identity)
        return JSONResponse([w._asdict() for w in windows])

    return Starlette(
        routes=[
            Route("/", hello),
            Route("/health", hello),
            Route("/usage", usage),
            Route("/v1/chat/completions", completions, methods=["POST"]),
        ]
    )


def client(
    app: ASGIApp, *, peer: tuple[str, int] = ("127.0.0.1", 50000), **kwargs: Any
) -> httpx.AsyncClient:
    return http_client(app, base_url="http://testserver", peer=peer, **kwargs)


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def redis_client() -> AsyncIterator[coredis.Redis[bytes]]:
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(REDIS_URL)
    try:
        yield redis
    finally:
        redis.connection_pool.disconnect()


async def delete_redis_keys(prefix: str) -> None:
    async with redis_client() as redis:
        keys: list[str | bytes] = [key async for key in redis.scan_iter(match=f"*{prefix}*")]
        if keys:
            await redis.delete(keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {deadline}s")


@contextlib.contextmanager
def own_redis_server() -> Iterator[subprocess.Popen[bytes]]:
    """A private redis-server on a free port (the shared one must never be stopped)."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        process.port = port  # type: ignore[attr-defined]
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a storage that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def limiter_of(app: UserRateLimit | ASGIApp) -> UserRateLimit:
    assert isinstance(app, UserRateLimit)
    return app
