"""Token quotas: reserved up front, settled from the response's usage, reported by the app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _asgi import request
from _ratelimit_support import (
    REDIS_URI,
    client,
    delete_redis_keys,
    identify,
    llm_app,
    redis_client,
    unique_prefix,
    until,
)
from asgi_identity.identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit, get_rate_limiter
from asgi_identity.types import Message, Receive, Scope, Send

Backend = tuple[str, str]
ALICE = Identity(source="jwt", user_id="alice", issuer="https://issuer.test")
_made: dict[str, list[UserRateLimit]] = {}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    prefix = unique_prefix()
    yield ("async+memory://" if request.param == "memory" else REDIS_URI), prefix
    for limiter in _made.pop(prefix, []):
        await limiter.aclose()
    if request.param == "redis":
        await delete_redis_keys(prefix)


def quota(backend: Backend, app: Any = None, **options: Any) -> UserRateLimit:
    storage, prefix = backend
    options.setdefault("limits", None)
    limiter = UserRateLimit(app or llm_app(), storage=storage, key_prefix=prefix, **options)
    _made.setdefault(prefix, []).append(limiter)
    return limiter


async def tokens_used(limiter: UserRateLimit, identity: Identity = ALICE) -> int:
    return sum(w.used for w in await limiter.usage(identity) if w.kind == "tokens")


async def complete(app: Any, **body: Any) -> Any:
    async with client(app, headers={"x-test-user": "alice"}) as http:
        return await http.post("/v1/chat/completions", json={"model": "m", **body})


async def test_json_completion_is_charged_its_usage(backend: Backend) -> None:
    limiter = quota(backend, tokens="1000/day")
    response = await complete(identify(limiter), max_tokens=100, x_prompt=12, x_completion=30)
    assert response.status_code == 200
    assert await tokens_used(limiter) == 42
    assert response.headers["ratelimit-policy"] == '"tokens-day";q=1000;w=86400'


async def test_streamed_completion_is_charged_from_the_last_event(backend: Backend) -> None:
    limiter = quota(backend, tokens="1000/day")
    response = await complete(
        identify(limiter), stream=True, max_tokens=100, x_prompt=7, x_completion=50
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    assert await tokens_used(limiter) == 57


async def test_spent_budget_is_refused_up_front_with_429(backend: Backend) -> None:
    limiter = quota(backend, tokens="100/day", default_max_tokens=10)
    await limiter.report_usage(ALICE, input_tokens=60, output_tokens=40)
    response = await complete(identify(limiter))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "token_quota_exceeded"
    assert error["type"] == "rate_limit_error"
    assert error["message"].startswith("Token quota exceeded: 100 tokens per day")
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["ratelimit"].startswith('"tokens-day";r=0;')
    assert await tokens_used(limiter) == 100  # the refused request cost nothing


async def test_a_request_that_may_not_fit_says_how_much_is_left(backend: Backend) -> None:
    limiter = quota(backend, tokens="100/day")
    await limiter.report_usage(ALICE, input_tokens=30)
    response = await complete(identify(limiter), max_tokens=500)
    assert response.status_code == 429
    assert "may use up to" in response.json()["error"]["message"]
    assert "70 remain" in response.json()["error"]["message"]
    # Asking for less output fits.
    assert (await complete(identify(limiter), max_tokens=20, x_completion=5)).status_code == 200


async def test_concurrent_requests_cannot_blow_through_the_budget(backend: Backend) -> None:
    """Twenty requests at once, each capped at 100 output tokens, on a budget of 1000."""
    app = llm_app()
    app.state.gate = gate = asyncio.Event()
    app.state.arrived = 0
    limiter = quota(backend, app, tokens="1000/day")
    body = json.dumps({"model": "m", "max_tokens": 100, "x_prompt": 0, "x_completion": 100})
    # Each request sets aside its 100 output tokens plus its body's size / 4 for input.
    estimate = 100 + len(body) // 4
    async with client(identify(limiter), headers={"x-test-user": "alice"}) as http:
        requests = [
            asyncio.ensure_future(http.post("/v1/chat/completions", content=body.encode()))
            for _ in range(20)
        ]

        # Admitted requests wait at the gate, refused ones are done.
        await until(lambda: app.state.arrived + sum(r.done() for r in requests) == 20)
        gate.set()
        responses = await asyncio.gather(*requests)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 1000 // estimate
    assert codes.count(429) == 20 - 1000 // estimate
    assert await tokens_used(limiter) == 100 * (1000 // estimate)


async def test_a_response_without_usage_keeps_the_estimate(backend: Backend) -> None:
    limiter = quota(backend, tokens="100000/day")
    response = await complete(identify(limiter), max_tokens=300, x_no_usage=True)
    assert response.status_code == 200
    assert await tokens_used(limiter) >= 300


async def test_a_failed_call_is_refunded(backend: Backend) -> None:
    limiter = quota(backend, tokens="100000/day")
    response = await complete(identify(limiter), max_tokens=300, x_status=502)
    assert response.status_code == 502
    assert await tokens_used(limiter) == 0


async def test_usage_reported_by_the_handler_replaces_the_estimate(backend: Backend) -> None:
    limiter = quota(backend, tokens="100000/day")
    response = await complete(
        identify(limiter), max_tokens=300, x_report=True, x_prompt=3, x_completion=4
    )
    assert response.text == "reported"
    assert await tokens_used(limiter) == 7


async def test_group_tokens_and_api_key_overrides(backend: Backend) -> None:
    limiter = quota(backend, tokens="50/day", group_tokens={"pro": "5000/day", "free": None})
    windows = {
        group: await limiter.usage(ALICE.replace(group=group)) for group in ("pro", "free", "x")
    }
    assert [w.limit for w in windows["pro"]] == [5000]
    assert windows["free"] == []  # None: no token quota for the tier
    assert [w.limit for w in windows["x"]] == [50]  # unknown tier: the default


async def test_requests_without_a_json_body_are_not_metered(backend: Backend) -> None:
    limiter = quota(backend, tokens="10/day", default_max_tokens=100)
    async with client(identify(limiter), headers={"x-test-user": "alice"}) as http:
        assert (await http.get("/")).status_code == 200
    assert await tokens_used(limiter) == 0


async def test_token_paths_restrict_metering(backend: Backend) -> None:
    limiter = quota(backend, tokens="10/day", token_paths=["/v1/embeddings"])
    response = await complete(identify(limiter), max_tokens=500)
    assert response.status_code == 200
    assert await tokens_used(limiter) == 0


async def test_observe_mode_lets_an_over_budget_call_through_and_charges_it(
    backend: Backend,
) -> None:
    limiter = quota(backend, tokens="100/day", mode="observe")
    await limiter.report_usage(ALICE, input_tokens=100)
    response = await complete(identify(limiter), max_tokens=50, x_prompt=1, x_completion=2)
    assert response.status_code == 200
    assert await tokens_used(limiter) == 103


async def test_streamed_chunks_go_out_as_they_come(backend: Backend) -> None:
    """The second chunk is only produced after the client saw the first: nothing is held back."""
    first_seen = asyncio.Event()

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await asyncio.wait_for(first_seen.wait(), 5)
        usage = b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n'
        await send({"type": "http.response.body", "body": usage})

    limiter = quota(backend, streaming_app, tokens="1000/day")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "identity": ALICE,
    }
    bodies: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            first_seen.set()

    await request(limiter, scope=scope, body=b'{"max_tokens": 10}', on_send=send)
    assert bodies[0] == b"data: {}\n\n"
    assert await tokens_used(limiter) == 5


async def test_report_usage_outside_a_request_charges_the_identity(backend: Backend) -> None:
    limiter = quota(backend, tokens="1000/day;100/minute")
    await limiter.report_usage(ALICE, input_tokens=10, output_tokens=5)
    windows = await limiter.usage(ALICE)
    assert [(w.name, w.used, w.remaining) for w in windows] == [
        ("tokens-minute", 15, 85),
        ("tokens-day", 15, 985),
    ]
    with pytest.raises(ValueError, match=">= 0"):
        await limiter.report_usage(ALICE, input_tokens=-1)


async def test_settled_tokens_are_exported_as_a_metric_keyed_by_user() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from asgi_identity import telemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.configure_telemetry(meter_provider=provider)
    try:
        limiter = UserRateLimit(llm_app(), limits=None, tokens="1000/day")
        response = await complete(
            identify(limiter), stream=True, max_tokens=100, x_prompt=7, x_completion=50
        )
        assert response.status_code == 200
        data = reader.get_metrics_data()
        assert data is not None
        points = {
            point.attributes["gen_ai.token.type"]: (
                point.value,  # type: ignore[union-attr]
                point.attributes["user.id"],
            )
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == telemetry.METRIC_TOKENS
            for point in metric.data.data_points
            if point.attributes is not None
        }
        assert points == {"input": (7, "alice"), "output": (50, "alice")}
    finally:
        telemetry.configure_telemetry()
        provider.shutdown()


async def test_settlement_holds_when_the_redis_counter_has_no_expiry_yet() -> None:
    """limits sets a new Redis counter's expiry in a second command; a request between the two
    must still be settled to what it used, not keep its whole estimate."""
    prefix = unique_prefix()
    limiter = quota((REDIS_URI, prefix), tokens="100000/day")
    try:
        assert (
            await complete(identify(limiter), max_tokens=300, x_completion=100)
        ).status_code == 200
        first = await tokens_used(limiter)
        assert 100 <= first < 300  # settled from the usage, not the estimate
        async with redis_client() as redis:
            keys = [key async for key in redis.scan_iter(match=f"*{prefix}*")]
            assert keys
            for key in keys:
                await redis.persist(key)  # as if another request's EXPIRE had not landed yet
        assert (
            await complete(identify(limiter), max_tokens=300, x_completion=100)
        ).status_code == 200
        assert await tokens_used(limiter) == 2 * first
    finally:
        for made in _made.pop(prefix, []):
            await made.aclose()
        await delete_redis_keys(prefix)


async def _post_raw(limiter: UserRateLimit, body: bytes, content_type: str) -> Any:
    async with client(identify(limiter), headers={"x-test-user": "alice"}) as http:
        return await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": content_type}
        )


async def test_a_cap_written_with_escapes_is_reserved_up_front(backend: Backend) -> None:
    # JSON may spell a key with escapes; it is the same field to the upstream.
    body = b'{"model": "m", "max\\u005ftokens": 5000}'
    limiter = quota(backend, tokens="1000/day", default_max_tokens=10)
    response = await _post_raw(limiter, body, "application/json")
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    assert message.startswith(f"This request may use up to {5000 + len(body) // 4} tokens")
    assert await tokens_used(limiter) == 0


@pytest.mark.parametrize(
    "body",
    [
        # Parsers disagree on which repeated key wins: no reading of it can be trusted.
        b'{"model": "m", "max_tokens": 10, "max_tokens": 5000}',
        b'{"model": "m", "max_tokens": 5000, "max_tokens": 10}',
        # A byte-order mark or UTF-16, which Python's json (and so many apps) accept.
        b'\xef\xbb\xbf{"model": "m", "max_tokens": 5000}',
        '{"model": "m", "max_tokens": 5000}'.encode("utf-16"),
        # A body that opens an object but is malformed, or another format altogether.
        b'{"model": "m",',
        b"model=m&max_tokens=5000",
        b'{"model": "m", "max_tokens": "5000"}',
        b'{"model": "m", "n": 0}',
    ],
)
async def test_a_body_with_no_one_reading_is_400_on_a_metered_route(
    backend: Backend, body: bytes
) -> None:
    limiter = quota(backend, tokens="1000/day", default_max_tokens=10)
    response = await _post_raw(limiter, body, "application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert await tokens_used(limiter) == 0


async def test_the_reservation_covers_every_completion_asked_for(backend: Backend) -> None:
    limiter = quota(backend, tokens="1000/day", default_max_tokens=10)
    body = b'{"model": "m", "max_tokens": 300, "n": 2, "best_of": 4}'
    response = await _post_raw(limiter, body, "application/json")
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    assert message.startswith(f"This request may use up to {300 * 4 + len(body) // 4} tokens")


async def test_a_cap_mentioned_only_in_the_prompt_is_not_the_cap(backend: Backend) -> None:
    limiter = quota(backend, tokens="1000/day", default_max_tokens=10)
    prompt = 'what does "max_tokens": 100000 do?'
    response = await complete(
        identify(limiter), messages=[{"role": "user", "content": prompt}], x_completion=5
    )
    assert response.status_code == 200
    assert await tokens_used(limiter) == 15


async def test_only_json_object_bodies_are_metered(backend: Backend) -> None:
    async def upload(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stored"})

    # Each metered call would set aside at least the default 100: more than the quota.
    limiter = quota(backend, upload, tokens="50/day", default_max_tokens=100)
    for body, content_type in [
        (b"[1, 2, 3]", "application/json"),
        (b"", "application/json"),
    ]:
        assert (await _post_raw(limiter, body, content_type)).status_code == 200
    assert (await _post_raw(limiter, b'{"model": "m"}', "application/json")).status_code == 429
    assert await tokens_used(limiter) == 0


async def test_a_refund_after_the_window_ended_does_not_feed_the_next_window(
    backend: Backend,
) -> None:
    """A call reserved in the last second of a window and refunded after it ended gives the
    next window nothing: a user cannot get twice their quota by timing failed calls."""
    app = llm_app()
    app.state.gate = gate = asyncio.Event()
    app.state.arrived = 0
    limiter = quota(backend, app, tokens="1000/2second")
    loop = asyncio.get_running_loop()
    async with client(identify(limiter), headers={"x-test-user": "alice"}) as http:
        start = loop.time()
        await limiter.report_usage(ALICE, input_tokens=10)  # the window begins here
        await asyncio.sleep(start + 1.5 - loop.time())  # half a second left in it
        failing = asyncio.ensure_future(
            http.post("/v1/chat/completions", json={"max_tokens": 900, "x_status": 502})
        )
        await until(lambda: app.state.arrived == 1)  # its 900 tokens are set aside
        await asyncio.sleep(start + 2.4 - loop.time())  # the window is over
        gate.set()
        assert (await asyncio.wait_for(failing, 10)).status_code == 502
        assert await tokens_used(limiter) == 0  # the refund went nowhere
        response = await http.post(
            "/v1/chat/completions", json={"max_tokens": 50, "x_prompt": 10, "x_completion": 20}
        )
    assert response.status_code == 200
    assert await tokens_used(limiter) == 30


async def test_usage_reported_several_times_in_one_request_adds_up(backend: Backend) -> None:
    """An agent that makes three LLM calls in one request reports each: all three are charged."""

    async def agent(request: Request) -> Response:
        await request.body()
        limiter = get_rate_limiter(request)
        for _ in range(3):
            await limiter.report_usage(request, input_tokens=100, output_tokens=20)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/v1/chat/completions", agent, methods=["POST"])])
    limiter = quota(backend, app, tokens="100000/day")
    response = await complete(identify(limiter), max_tokens=10)
    assert response.text == "done"
    assert await tokens_used(limiter) == 360
