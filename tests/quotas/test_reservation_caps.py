"""A reservation covers what may be generated: the output cap of every API shape, times `n` (or
`best_of`), plus the input estimate, through the whole stack (issue 13, item 2)."""

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
from asgi_identity import get_identity, get_rate_limiter
from asgi_identity.testing import LocalIssuer

MESSAGES = [{"role": "user", "content": "Say hello."}]

# (path, body, the output that may be generated)
SHAPES = [
    pytest.param(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 300},
        300,
        id="openai-chat-max_tokens",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "o3", "messages": MESSAGES, "max_completion_tokens": 300},
        300,
        id="openai-chat-max_completion_tokens",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 100, "n": 3},
        300,
        id="openai-chat-n",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "o3", "messages": MESSAGES, "max_completion_tokens": 100, "n": 4},
        400,
        id="openai-chat-max_completion_tokens-n",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "o3", "messages": MESSAGES, "max_tokens": 50, "max_completion_tokens": 200},
        200,
        id="openai-chat-both-caps-the-largest",
    ),
    pytest.param(
        "/v1/responses",
        {"model": "gpt-4.1", "input": "Say hello.", "max_output_tokens": 300},
        300,
        id="openai-responses-max_output_tokens",
    ),
    pytest.param(
        "/v1/messages",
        {"model": "claude-sonnet-4", "max_tokens": 300, "messages": MESSAGES},
        300,
        id="anthropic-max_tokens",
    ),
    pytest.param(
        "/v1/completions",
        {"model": "davinci-002", "prompt": "Hello", "max_tokens": 100, "n": 2, "best_of": 5},
        500,
        id="openai-completions-best_of",
    ),
    pytest.param(
        "/v1/completions",
        {"model": "davinci-002", "prompt": "Hello", "max_tokens": 100, "n": 5, "best_of": 2},
        500,
        id="openai-completions-n-above-best_of",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "n": 2},
        2 * 64,
        id="no-cap-default_max_tokens-times-n",
    ),
]


async def _reserved_while_running(request: Request) -> JSONResponse:
    """What the caller's token window holds while its own request runs: its reservation."""
    windows = await get_rate_limiter(request).usage(get_identity(request))
    return JSONResponse({"used": [w.used for w in windows if w.kind == "tokens"]})


def _app() -> Starlette:
    return Starlette(routes=[Route("/v1/{api:path}", _reserved_while_running, methods=["POST"])])


def _stack(issuer: LocalIssuer, tokens: str) -> Any:
    return full_stack(_app(), issuer, limits=None, tokens=tokens, default_max_tokens=64)


async def _post(app: Any, issuer: LocalIssuer, path: str, body: dict[str, Any]) -> httpx.Response:
    token = issuer.mint(sub="alice", email="alice@acme.com")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.post(
            path, content=json.dumps(body), headers={"authorization": f"Bearer {token}"}
        )


@pytest.mark.parametrize(("path", "body", "output"), SHAPES)
async def test_the_reservation_is_the_output_cap_times_completions_plus_the_input(
    issuer: LocalIssuer, path: str, body: dict[str, Any], output: int
) -> None:
    app = _stack(issuer, "100000/day")
    response = await _post(app, issuer, path, body)
    assert response.status_code == 200
    assert response.json() == {"used": [output + len(json.dumps(body)) // 4]}
    await limiter_in(app).aclose()


@pytest.mark.parametrize(("path", "body", "output"), SHAPES)
async def test_a_reservation_one_token_over_the_budget_is_refused_before_the_app(
    issuer: LocalIssuer, path: str, body: dict[str, Any], output: int
) -> None:
    estimate = output + len(json.dumps(body)) // 4
    app = _stack(issuer, f"{estimate - 1}/day")
    response = await _post(app, issuer, path, body)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "token_quota_exceeded"
    assert f"may use up to {estimate} tokens" in error["message"]
    # Exactly the budget fits.
    app = _stack(issuer, f"{estimate}/day")
    assert (await _post(app, issuer, path, body)).status_code == 200
