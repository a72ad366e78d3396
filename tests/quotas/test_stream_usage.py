"""Which streamed usage is final, and how `ensure_stream_usage` rewrites a body (issue 13, item 3)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _limits_support import full_stack, limiter_in
from asgi_identity import Rule
from asgi_identity.quotas._stream_usage import with_usage_requested
from asgi_identity.quotas.usage import SSEUsageReader, TokenUsage
from asgi_identity.testing import LocalIssuer


def _events(*documents: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(d)}\n\n".encode() for d in documents)


@pytest.mark.parametrize(
    ("stream", "usage", "final"),
    [
        (_events({"type": "message_start", "message": {"usage": {"input_tokens": 9}}}),
         TokenUsage(9, 0), False),
        (_events({"type": "message_start", "message": {"usage": {"input_tokens": 9}}},
                 {"type": "message_delta", "usage": {"output_tokens": 4}}),
         TokenUsage(9, 4), True),
        (_events({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
         TokenUsage(3, 1), False),
        (_events({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 8}}),
         TokenUsage(3, 8), True),
        (_events({"type": "response.completed",
                  "response": {"usage": {"input_tokens": 2, "output_tokens": 5}}}),
         TokenUsage(2, 5), True),
        (_events({"choices": [{"delta": {}}], "usage": None}), None, False),
    ],
)  # fmt: skip
def test_the_reader_says_whether_the_usage_it_saw_is_the_streams_last_word(
    stream: bytes, usage: TokenUsage | None, final: bool
) -> None:
    reader = SSEUsageReader()
    reader.feed(stream)
    assert reader.result() == usage
    assert reader.final is final


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        (b' {"stream":true}', b' {"stream_options":{"include_usage":true},"stream":true}'),
        (b'{"stream":true,"stream_options":null}',
         b'{"stream":true,"stream_options":{"include_usage":true}}'),
        (b'{"stream":true,"stream_options":{"include_usage":null,"x":"\\u00e9"}}',
         '{"stream":true,"stream_options":{"include_usage":true,"x":"\u00e9"}}'.encode()),
        (b'{"stream":true,"stream_options":{"include_usage":false}}', None),
        (b'{"stream":true,"stream_options":"yes"}', None),
    ],
)  # fmt: skip
def test_a_body_is_asked_for_its_usage_unless_it_answered_itself(
    body: bytes, asked: bytes | None
) -> None:
    assert with_usage_requested(body) == asked


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse(
        {"body": (await request.body()).decode(), "length": request.headers["content-length"]}
    )


async def test_the_rewritten_body_reaches_the_app_after_a_policy_read_it_first(
    issuer: LocalIssuer,
) -> None:
    app = full_stack(
        Starlette(routes=[Route("/v1/chat/completions", _echo, methods=["POST"])]),
        issuer,
        limits=None,
        tokens="100000/day",
        ensure_stream_usage=True,
        # A rule that names models: RoutePolicy reads the body before UserRateLimit does.
        policy={"rules": [Rule(id="models", models=["gpt-*"])], "default": "deny"},
    )
    token = issuer.mint(sub="alice", email="alice@acme.com")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        sent = b'{"model":"gpt-4o","stream":true}'
        response = await http.post(
            "/v1/chat/completions", content=sent, headers={"authorization": f"Bearer {token}"}
        )
    expected = '{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true}'
    assert response.json() == {"body": expected, "length": str(len(expected))}
    await limiter_in(app).aclose()
