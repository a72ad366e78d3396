"""UserRateLimit in requests: limits per user and tier, keys, anonymous traffic, headers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from _asgi import request
from _ratelimit_support import (
    REDIS_URI,
    client,
    delete_redis_keys,
    identify,
    llm_app,
    unique_prefix,
)
from asgi_identity.credentials.apikeys import APIKey, hash_api_key
from asgi_identity.errors import MiddlewareOrderError
from asgi_identity.identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.testing import with_identity
from asgi_identity.types import Message, Scope

Backend = tuple[str, str]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """(storage URI, unique key prefix); Redis keys made under the prefix are deleted after."""
    prefix = unique_prefix()
    if request.param == "memory":
        yield "async+memory://", prefix
    else:
        yield REDIS_URI, prefix
        await delete_redis_keys(prefix)
    for limiter in _made.pop(prefix, []):
        await limiter.aclose()


_made: dict[str, list[UserRateLimit]] = {}


def limited(backend: Backend, app: Any = None, **options: Any) -> UserRateLimit:
    """A limiter on the test's backend, closed when the test ends."""
    storage, prefix = backend
    limiter = UserRateLimit(app or llm_app(), storage=storage, key_prefix=prefix, **options)
    _made.setdefault(prefix, []).append(limiter)
    return limiter


async def statuses(app: Any, count: int, **headers: str) -> list[int]:
    async with client(app, headers=headers) as http:
        responses = [await http.get("/") for _ in range(count)]
    return [r.status_code for r in responses]


# -- counting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "fixed-window", "moving-window"])
async def test_200_concurrent_requests_on_10_per_minute_admit_exactly_10(
    backend: Backend, strategy: str
) -> None:
    # Exactness, not timeouts: on a loaded machine 200 queued Redis calls may pass the default
    # 1 s deadline and fail open, which is the documented policy, not a miscount.
    app = identify(limited(backend, limits="10/minute", strategy=strategy, storage_timeout=30.0))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        responses = await asyncio.gather(*(http.get("/") for _ in range(200)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10
    assert codes.count(429) == 190


async def test_429_follows_the_error_contract_with_retry_after(backend: Backend) -> None:
    app = identify(limited(backend, limits="2/minute"))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        await http.get("/")
        await http.get("/")
        refused = await http.get("/")
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "message": refused.json()["error"]["message"],
            "type": "rate_limit_error",
            "code": "rate_limited",
        }
    }
    assert refused.json()["error"]["message"].startswith(
        "Rate limit exceeded: 2 requests per minute"
    )
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-policy"] == '"requests-minute";q=2;w=60'
    assert re.fullmatch(r'"requests-minute";r=0;t=\d+', refused.headers["ratelimit"])


async def test_admitted_responses_carry_ietf_ratelimit_headers(backend: Backend) -> None:
    app = identify(limited(backend, limits="5/second;100/day"))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        first = await http.get("/")
        second = await http.get("/")
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == (
        '"requests-second";q=5;w=1, "requests-day";q=100;w=86400'
    )
    assert re.fullmatch(
        r'"requests-second";r=4;t=[01], "requests-day";r=99;t=\d+', first.headers["ratelimit"]
    )
    assert re.fullmatch(
        r'"requests-second";r=3;t=[01], "requests-day";r=98;t=\d+', second.headers["ratelimit"]
    )
    assert "retry-after" not in first.headers


async def test_headers_can_be_turned_off(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute", headers=False))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        admitted = await http.get("/")
        refused = await http.get("/")
    assert "ratelimit" not in admitted.headers
    assert refused.status_code == 429
    assert "ratelimit" not in refused.headers
    assert int(refused.headers["retry-after"]) >= 1


async def test_a_burst_refused_by_the_short_window_does_not_spend_the_long_one(
    backend: Backend,
) -> None:
    limiter = limited(backend, limits="2/minute;5/day")
    app = identify(limiter)
    assert await statuses(app, 4, **{"x-test-user": "alice"}) == [200, 200, 429, 429]
    usage = {
        w.name: w
        for w in await limiter.usage(
            Identity(source="jwt", user_id="alice", issuer="https://issuer.test")
        )
    }
    assert (usage["requests-minute"].used, usage["requests-minute"].remaining) == (2, 0)
    assert (usage["requests-day"].used, usage["requests-day"].remaining) == (2, 3)


async def test_each_user_has_a_bucket_of_their_own(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute"))
    assert await statuses(app, 2, **{"x-test-user": "alice"}) == [200, 429]
    assert await statuses(app, 2, **{"x-test-user": "bob"}) == [200, 429]


# -- tiers and per-key overrides -------------------------------------------------------------

TIERS = {"free": "2/minute", "pro": "4/minute", "enterprise": None}


@pytest.mark.parametrize(
    ("group", "admitted"),
    [
        ("free", 2),
        ("pro", 4),
        ("enterprise", 8),  # None: unlimited, every one of the 8 passes
        ("unknown-tier", 3),  # not in `groups`: the default limit
        (None, 3),  # no group at all: the default limit
    ],
)
async def test_tier_decides_the_limit(backend: Backend, group: str | None, admitted: int) -> None:
    app = identify(limited(backend, limits="3/minute", groups=TIERS))
    headers = {"x-test-user": "alice"}
    if group is not None:
        headers["x-test-group"] = group
    codes = await statuses(app, 8, **headers)
    assert codes == [200] * admitted + [429] * (8 - admitted)


async def test_unlimited_tier_sends_no_ratelimit_headers(backend: Backend) -> None:
    app = identify(limited(backend, limits="3/minute", groups=TIERS))
    async with client(app, headers={"x-test-user": "a", "x-test-group": "enterprise"}) as http:
        response = await http.get("/")
    assert "ratelimit-policy" not in response.headers


def key_record(**policy: Any) -> APIKey:
    return APIKey(id="ci-bot", sha256=hash_api_key("sk-test"), group="free", **policy)


@pytest.mark.parametrize(
    ("rate_limit", "admitted"),
    [
        (None, 2),  # no override: the key's tier (free)
        ("1/minute", 1),
        ("5/minute", 5),
        ("unlimited", 6),
        ("not a limit", 2),  # a bad record falls back to the tier, it never 500s
    ],
)
async def test_api_key_record_overrides_the_tier(
    backend: Backend, rate_limit: str | None, admitted: int
) -> None:
    record = key_record(rate_limit=rate_limit)
    identity = Identity(source="api_key", client_id=record.id, group="free", api_key=record)
    app = with_identity(limited(backend, limits="3/minute", groups=TIERS), identity)
    assert await statuses(app, 6) == [200] * admitted + [429] * (6 - admitted)


# -- whose bucket ---------------------------------------------------------------------------


def jwt_user(user: str, issuer: str = "https://issuer.test") -> Identity:
    return Identity(source="jwt", user_id=user, issuer=issuer)


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        (jwt_user("alice"), jwt_user("alice"), True),
        (jwt_user("alice"), jwt_user("bob"), False),
        (jwt_user("alice", "https://a.test"), jwt_user("alice", "https://b.test"), False),
        (jwt_user("a/b"), jwt_user("a"), False),
        (jwt_user("a/b", "x"), jwt_user("b", "x/a"), False),
        (jwt_user("a%2Fb"), jwt_user("a/b"), False),
        (
            Identity(source="header", email="Alice@Example.com"),
            Identity(source="header", email="alice@example.com"),
            True,
        ),
        (
            Identity(source="header", email="alice@example.com"),
            jwt_user("alice@example.com"),
            False,
        ),
        (Identity(source="api_key", client_id="alice"), jwt_user("alice"), False),
        (
            Identity(source="api_key", client_id="k1"),
            Identity(source="api_key", client_id="k2"),
            False,
        ),
    ],
)
async def test_identities_share_a_bucket_only_when_they_are_the_same(
    backend: Backend, first: Identity, second: Identity, shared: bool
) -> None:
    limiter = limited(backend, limits="1/minute")
    assert await statuses(with_identity(limiter, first), 1) == [200]
    assert await statuses(with_identity(limiter, second), 1) == ([429] if shared else [200])


# -- anonymous traffic and proxies ------------------------------------------------------------


async def test_anonymous_requests_are_limited_by_client_address(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute"))
    async with client(app) as http:
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/")).status_code == 429
    # another address has its own bucket
    async with client(app, peer=("10.0.0.9", 1234)) as http:
        assert (await http.get("/")).status_code == 200


async def test_anonymous_refuse_answers_401(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute", anonymous="refuse"))
    async with client(app) as http:
        response = await http.get("/")
        signed_in = await http.get("/", headers={"x-test-user": "alice"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_credentials"
    assert signed_in.status_code == 200


async def test_anonymous_unlimited_lets_every_request_through(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute", anonymous="unlimited"))
    assert await statuses(app, 5) == [200] * 5


# -- modes, paths and the shape of the stack -------------------------------------------------


async def test_observe_mode_counts_but_lets_everyone_through(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute", mode="observe"))
    assert await statuses(app, 3, **{"x-test-user": "alice"}) == [200, 200, 200]


async def test_excluded_paths_are_not_counted(backend: Backend) -> None:
    app = identify(limited(backend, limits="1/minute", exclude_paths=["/health"]))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        health = [(await http.get("/health")).status_code for _ in range(3)]
        assert health == [200, 200, 200]
        assert (await http.get("/")).status_code == 200


async def test_without_identity_middleware_the_error_says_how_to_order_them() -> None:
    app = UserRateLimit(llm_app())
    async with client(app) as http:
        with pytest.raises(MiddlewareOrderError, match="IdentityMiddleware must run before it"):
            await http.get("/")


async def test_websocket_over_the_limit_is_refused_before_accept(backend: Backend) -> None:
    accepted: list[bool] = []

    async def ws_app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        accepted.append(True)
        await send({"type": "websocket.close", "code": 1000})

    limiter = limited(backend, ws_app, limits="1/minute")
    app = with_identity(limiter, jwt_user("alice"))

    async def connect() -> list[Message]:
        scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("1.2.3.4", 1)}
        return (await request(app, scope=scope)).messages

    await connect()
    sent = await connect()
    assert accepted == [True]
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "rate_limited"}


async def test_usage_reports_used_remaining_and_reset(backend: Backend) -> None:
    app = identify(limited(backend, limits="10/minute"))
    async with client(app, headers={"x-test-user": "alice"}) as http:
        for _ in range(3):
            await http.get("/")
        usage = (await http.get("/usage")).json()
    assert len(usage) == 1
    (window,) = usage
    assert window["kind"] == "requests"
    assert window["name"] == "requests-minute"
    assert (window["limit"], window["used"], window["remaining"]) == (10, 4, 6)
    assert window["window"] == 60
    assert window["reset"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limits": "ten per minute"}, "is not a limit"),
        ({"limits": 10}, "must be a limit string"),
        ({"groups": {"free": "2/fortnight"}}, r"groups\['free'\]"),
        ({"tokens": "lots"}, "is not a limit"),
        ({"strategy": "leaky-bucket"}, "strategy must be one of"),
        ({"storage": "async+nosuch://x"}, "storage"),
        ({"storage": "memory://"}, "async storage"),
        ({"anonymous": "allow"}, "anonymous must be one of"),
        ({"on_storage_error": "ignore"}, "on_storage_error"),
        ({"storage_timeout": 0}, "storage_timeout"),
        ({"trusted_proxies": "10.0.0.1"}, "list of networks"),
        ({"trusted_proxies": ["proxy.internal"]}, "not an IP address"),
        ({"key_prefix": "a/b"}, "key_prefix"),
        ({"mode": "shadow"}, "mode must be"),
        ({"default_max_tokens": -1}, "default_max_tokens"),
        ({"token_paths": "/v1/"}, "token_paths"),
        ({"max_body": 0}, "max_body"),
    ],
)
def test_bad_configuration_fails_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        UserRateLimit(llm_app(), **options)


def test_usage_is_json_serializable() -> None:
    # WindowUsage is a NamedTuple: an app can return it as JSON as is.
    from asgi_identity.middleware.ratelimit import WindowUsage

    usage = WindowUsage("requests", "requests-minute", 10, 4, 6, 1.0, 60)
    assert json.loads(json.dumps(usage._asdict()))["remaining"] == 6


async def test_behind_identity_middleware_an_api_keys_own_limit_applies(backend: Backend) -> None:
    from asgi_identity import IdentityMiddleware, generate_api_key

    key, digest = generate_api_key()
    other_key, other_digest = generate_api_key()
    records = [
        APIKey(id="ci-bot", sha256=digest, rate_limit="2/minute"),
        APIKey(id="dashboard", sha256=other_digest),
    ]
    app = IdentityMiddleware(limited(backend, limits="3/minute"), api_keys=records)
    assert await statuses(app, 4, **{"x-api-key": key}) == [200, 200, 429, 429]
    assert await statuses(app, 4, **{"x-api-key": other_key}) == [200, 200, 200, 429]


async def test_litestar_handler_reads_its_usage_through_get_rate_limiter(backend: Backend) -> None:
    from litestar import Litestar, Request, get
    from litestar.middleware import DefineMiddleware

    from asgi_identity import get_rate_limiter

    seen: list[UserRateLimit] = []

    @get("/me/usage")
    async def my_usage(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        limiter = get_rate_limiter(request)
        assert limiter is request.state.rate_limiter
        seen.append(limiter)
        return [w._asdict() for w in await limiter.usage(request.state.identity)]

    storage, prefix = backend
    litestar = Litestar(
        route_handlers=[my_usage],
        middleware=[
            DefineMiddleware(
                UserRateLimit,
                limits="5/minute",
                storage=storage,
                key_prefix=prefix,
            )
        ],
    )
    app = identify(litestar)  # type: ignore[arg-type]
    async with client(app, headers={"x-test-user": "alice"}) as http:
        await http.get("/me/usage")
        response = await http.get("/me/usage")
    assert response.status_code == 200
    assert response.headers["ratelimit"].startswith('"requests-minute";r=3;')
    [window] = response.json()
    assert (window["used"], window["remaining"]) == (2, 3)
    await seen[0].aclose()  # Litestar built it; without a lifespan run, close it here


async def test_a_bad_key_override_falls_back_to_each_requests_own_tier(backend: Backend) -> None:
    limiter = limited(backend, limits="3/minute", groups=TIERS)
    for group, admitted in (("free", 2), ("pro", 4)):
        record = APIKey(
            id=f"key-{group}", sha256=hash_api_key(group), group=group, rate_limit="often"
        )
        identity = Identity(source="api_key", client_id=record.id, group=group, api_key=record)
        codes = await statuses(with_identity(limiter, identity), 5)
        assert codes == [200] * admitted + [429] * (5 - admitted)
