"""Numbers are bounded before they are stored, and a storage reply that rejects a value is about
that one request, never an outage that switches limiting off for everyone (issue 13, item 1)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import coredis.exceptions
import pytest

from _limits_support import call, full_stack, limiter_in
from _ratelimit_support import REDIS_URI, delete_redis_keys, llm_app, redis_client, unique_prefix
from asgi_identity.identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.quotas._guard import rejects_value
from asgi_identity.quotas.usage import MAX_TOKENS, usage_from_json
from asgi_identity.testing import LocalIssuer

CHAT = "/v1/chat/completions"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = unique_prefix()
    yield prefix
    await delete_redis_keys(prefix)


def _stack(issuer: LocalIssuer, prefix: str, **options: Any) -> Any:
    options.setdefault("limits", "5/minute")
    options.setdefault("tokens", "100000/day")
    options.setdefault("storage_cooldown", 30.0)
    return full_stack(llm_app(), issuer, storage=REDIS_URI, key_prefix=prefix, **options)


def _bearer(issuer: LocalIssuer, user: str) -> list[tuple[str, str]]:
    token = issuer.mint(sub=user, email=f"{user}@acme.com")
    return [("authorization", f"Bearer {token}"), ("content-type", "application/json")]


async def _chat(app: Any, headers: list[tuple[str, str]], **body: Any) -> tuple[int, Any, Any]:
    data = json.dumps({"model": "m", "max_tokens": 10, **body}).encode()
    headers = [*headers, ("content-length", str(len(data)))]
    status, response_headers, content = await call(app, "POST", CHAT, headers, data)
    return status, response_headers, json.loads(content) if content[:1] in b"{[" else content


@pytest.mark.redis
@pytest.mark.parametrize("on_storage_error", ["open", "closed"])
async def test_a_declared_length_that_would_overflow_a_counter_is_a_400_and_others_stay_limited(
    issuer: LocalIssuer, prefix: str, on_storage_error: str
) -> None:
    app = _stack(issuer, prefix, on_storage_error=on_storage_error)
    # Larger than max_body: not read, but still metered by its declared size. 10**20 / 4 tokens
    # is past what a 64-bit counter holds; sent to Redis, INCRBY is refused.
    headers = [*_bearer(issuer, "mallory"), ("content-length", str(10**20))]
    status, _, body = await call(app, "POST", CHAT, headers, b"{}")
    assert status == 400
    assert body
    assert json.loads(body)["error"]["code"] == "invalid_request"

    status, response_headers, _ = await _chat(app, _bearer(issuer, "bob"))
    assert status == 200
    assert response_headers["ratelimit"].startswith('"requests-minute";r=4')
    assert limiter_in(app).storage_errors == 0
    await limiter_in(app).aclose()


@pytest.mark.redis
async def test_a_counter_the_storage_refuses_fails_that_request_closed_and_nobody_else(
    issuer: LocalIssuer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Fail open for outages: a rejected value must still not let its request through uncounted.
    app = _stack(issuer, prefix, on_storage_error="open")
    limiter = limiter_in(app)
    mallory = Identity(source="jwt", issuer=issuer.issuer, user_id="mallory")
    parts = limiter._planner.parts(mallory, None)
    windows = limiter.limits_for(mallory)[1]
    assert windows is not None
    key = "LIMITS:" + limiter._planner.token_key(parts, windows[0])
    async with redis_client() as redis:
        await redis.hset(key, {"not": "a counter"})  # WRONGTYPE for INCRBY
    with caplog.at_level(logging.ERROR, logger="asgi_identity"):
        status, _, body = await _chat(app, _bearer(issuer, "mallory"))
    assert status == 503
    assert body["error"]["code"] == "rate_limit_unavailable"
    assert "rejected a value" in caplog.text

    for expected_remaining in (4, 3):
        status, response_headers, _ = await _chat(app, _bearer(issuer, "bob"))
        assert status == 200
        assert f'"requests-minute";r={expected_remaining}' in response_headers["ratelimit"]
    assert limiter.storage_errors == 0
    await limiter.aclose()


@pytest.mark.redis
async def test_a_rejected_settlement_is_logged_and_the_limiter_stays_up(
    issuer: LocalIssuer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _stack(issuer, prefix)
    limiter = limiter_in(app)
    alice = Identity(source="jwt", issuer=issuer.issuer, user_id="alice")
    key = "LIMITS:" + limiter._planner.token_key(
        limiter._planner.parts(alice, None), (limiter.limits_for(alice)[1] or ())[0]
    )
    # The counter is replaced between the reservation and the settlement.
    async with redis_client() as redis:
        gate = asyncio.Event()
        inner = limiter.app

        async def app_then_corrupt(scope: Any, receive: Any, send: Any) -> None:
            await inner(scope, receive, send)
            await redis.delete([key])
            await redis.hset(key, {"not": "a counter"})
            gate.set()

        limiter.app = app_then_corrupt
        with caplog.at_level(logging.WARNING, logger="asgi_identity"):
            status, _, _ = await _chat(app, _bearer(issuer, "alice"))
        assert status == 200
        assert gate.is_set()
        assert "could not settle" in caplog.text
        limiter.app = inner
        status, response_headers, _ = await _chat(app, _bearer(issuer, "bob"))
        assert status == 200
        assert "ratelimit" in response_headers
        assert limiter.storage_errors == 0
        await redis.delete([key])
    await limiter.aclose()


@pytest.mark.parametrize(
    ("error", "rejected"),
    [
        (coredis.exceptions.ResponseError("value is not an integer or out of range"), True),
        (coredis.exceptions.ResponseError("increment or decrement would overflow"), True),
        (coredis.exceptions.WrongTypeError("Operation against a key holding the wrong kind"), True),
        (ValueError("cannot encode"), True),
        (OverflowError("int too large"), True),
        (coredis.exceptions.ReadOnlyError("You can't write against a read only replica."), False),
        (coredis.exceptions.ClusterDownError("The cluster is down"), False),
        (coredis.exceptions.ResponseError("LOADING Redis is loading the dataset"), False),
        (coredis.exceptions.ResponseError("OOM command not allowed"), False),
        (coredis.exceptions.NoScriptError("No matching script"), False),
        (coredis.exceptions.ConnectionError("Connection refused"), False),
        (coredis.exceptions.TimeoutError("timed out"), False),
        (ConnectionRefusedError(111, "refused"), False),
        (TimeoutError(), False),
    ],
)
def test_only_a_reply_refusing_a_value_counts_as_a_rejection(
    error: BaseException, rejected: bool
) -> None:
    assert rejects_value(error) is rejected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tokens": f"{MAX_TOKENS + 1}/day"}, "unlimited"),
        ({"limits": f"{MAX_TOKENS + 1}/second"}, "unlimited"),
        ({"group_tokens": {"pro": f"{2**63}/month"}}, "unlimited"),
        ({"default_max_tokens": 10**9}, "default_max_tokens"),
    ],
)
def test_window_amounts_and_the_default_cap_are_bounded_at_start_up(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        UserRateLimit(llm_app(), **options)


async def test_report_usage_refuses_counts_no_counter_can_hold() -> None:
    limiter = UserRateLimit(llm_app(), tokens="1000/day")
    alice = Identity(source="jwt", issuer="https://issuer.test", user_id="alice")
    with pytest.raises(ValueError, match="<= "):
        await limiter.report_usage(alice, input_tokens=MAX_TOKENS + 1)
    with pytest.raises(ValueError, match="<= "):
        await limiter.report_usage(alice, output_tokens=2**63)
    await limiter.report_usage(alice, input_tokens=3, output_tokens=4)
    assert [w.used for w in await limiter.usage(alice)] == [0, 7]


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 2**62, "completion_tokens": 5},
        {"prompt_tokens": 5, "completion_tokens": 10**30},
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"input_tokens": MAX_TOKENS, "cache_read_input_tokens": MAX_TOKENS, "output_tokens": 0},
    ],
)
def test_absurd_usage_in_a_response_is_ignored_or_clamped(usage: dict[str, int]) -> None:
    found = usage_from_json({"usage": usage})
    assert found is None or (found.input_tokens <= MAX_TOKENS and found.output_tokens <= MAX_TOKENS)


@pytest.mark.redis
async def test_a_response_claiming_absurd_usage_is_charged_its_reservation(
    issuer: LocalIssuer, prefix: str
) -> None:
    app = _stack(issuer, prefix)
    status, _, _ = await _chat(app, _bearer(issuer, "alice"), x_prompt=2**62, x_completion=5)
    assert status == 200
    alice = Identity(source="jwt", issuer=issuer.issuer, user_id="alice")
    used = [w.used for w in await limiter_in(app).usage(alice) if w.kind == "tokens"]
    assert 10 <= used[0] < 100  # max_tokens + the body's size / 4: the reservation kept
    await limiter_in(app).aclose()
