"""Token usage reaches the server span of the OpenTelemetry ASGI instrumentation.

The instrumentation ends its span when the response is complete; the usage meter reads the
response as it passes and sets `gen_ai.usage.*` before the last body chunk is forwarded, so the
span people actually export carries it, for JSON and streamed (SSE) responses, on memory and Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from _asgi import http_client, running
from asgi_identity import identity_stack, telemetry
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import LocalIssuer

REDIS = "async+redis://127.0.0.1:6379"
USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


async def chat(request: Request) -> Any:
    body = json.loads(await request.body())
    if not body.get("stream"):
        return JSONResponse({"object": "chat.completion", "choices": [], "usage": USAGE})

    async def events() -> AsyncIterator[bytes]:
        for word in ("hel", "lo"):
            chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": word}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        final = {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}
        yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure_telemetry(tracer_provider=provider)
    yield exporter, provider
    telemetry.configure_telemetry()
    provider.shutdown()


def gateway(issuer: LocalIssuer, provider: TracerProvider, storage: str) -> Any:
    app = identity_stack(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
        identity={"issuers": [JWTIssuer(issuer.issuer, audience="gateway", jwks=issuer.jwks)]},
        rate_limit={
            "limits": "100/minute",
            "tokens": "100000/day",
            "storage": storage,
            "key_prefix": f"test-span-{uuid.uuid4().hex}",
        },
    )
    # Outermost, as in a deployment: the span that is exported is this one.
    return OpenTelemetryMiddleware(app, tracer_provider=provider)


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    return span


@pytest.mark.parametrize(
    "storage", ["async+memory://", pytest.param(REDIS, marks=pytest.mark.redis)]
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_server_span_carries_the_token_usage(
    spans: tuple[InMemorySpanExporter, TracerProvider],
    issuer: LocalIssuer,
    storage: str,
    stream: bool,
) -> None:
    exporter, provider = spans
    app = gateway(issuer, provider, storage)
    token = issuer.mint(sub="alice", aud="gateway")
    async with running(app), http_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": stream, "max_tokens": 100},
            headers={"authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    attributes = dict(server_span(exporter).attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 30
    assert attributes["user.id"] == "alice"
