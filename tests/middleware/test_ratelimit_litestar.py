"""Litestar builds the middleware list once per route: the documented simple form,
`DefineMiddleware(UserRateLimit, limits=...)`, must still be one limiter (issue 13, item 6)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post
from litestar.middleware import DefineMiddleware

from _ratelimit_support import REDIS_URI, delete_redis_keys, unique_prefix
from asgi_identity import IdentityMiddleware, TokenVerifier, UserRateLimit
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import LocalIssuer


@get("/a")
async def route_a() -> str:
    return "a"


@get("/b")
async def route_b() -> str:
    return "b"


@post("/v1/chat/completions", status_code=200)
async def route_c() -> dict[str, Any]:
    return {"usage": {"prompt_tokens": 10, "completion_tokens": 20}}


def _litestar(issuer: LocalIssuer, **rate_limit: Any) -> Litestar:
    verifier = TokenVerifier(
        [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)]
    )
    return Litestar(
        route_handlers=[route_a, route_b, route_c],
        middleware=[
            DefineMiddleware(IdentityMiddleware, token_verifier=verifier),
            DefineMiddleware(UserRateLimit, **rate_limit),  # the simple form, one per route
        ],
    )


async def _close(app: Litestar) -> None:
    """Close the storage the app's limiters share (Litestar's lifespan does not pass through
    route middleware, so nothing else closes it)."""
    for quotas in app.state.asgi_identity_shared_quotas.values():
        await quotas.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def storage(request: pytest.FixtureRequest) -> Any:
    prefix = unique_prefix()
    yield {"key_prefix": prefix} | ({"storage": REDIS_URI} if request.param == "redis" else {})
    if request.param == "redis":
        await delete_redis_keys(prefix)


async def _call(app: Any, issuer: LocalIssuer, path: str, **kwargs: Any) -> httpx.Response:
    token = issuer.mint(sub="alice", email="alice@acme.com")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        method = "POST" if path.startswith("/v1/") else "GET"
        return await http.request(
            method, path, headers={"authorization": f"Bearer {token}"}, **kwargs
        )


async def test_a_limit_holds_across_the_routes_of_a_litestar_app(
    issuer: LocalIssuer, storage: dict[str, Any]
) -> None:
    app = _litestar(issuer, limits="2/minute", **storage)
    statuses = [
        (await _call(app, issuer, path)).status_code
        for path in ("/a", "/b", "/v1/chat/completions", "/a", "/b", "/v1/chat/completions")
    ]
    # 0.1 with memory storage: six admitted, two on each route.
    assert statuses == [200, 200, 429, 429, 429, 429]
    await _close(app)


async def test_a_token_budget_holds_across_the_routes_of_a_litestar_app(
    issuer: LocalIssuer, storage: dict[str, Any]
) -> None:
    app = _litestar(issuer, limits=None, tokens="100/day", default_max_tokens=30, **storage)
    body = {"model": "m"}  # reserves 30 + 3; charged 30
    statuses = [
        (await _call(app, issuer, "/v1/chat/completions", json=body)).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    response = await _call(app, issuer, "/a")
    assert response.status_code == 200
    await _close(app)


async def test_limiters_of_different_configurations_do_not_share_counters(
    issuer: LocalIssuer,
) -> None:
    prefix = unique_prefix()
    two = _litestar(issuer, limits="2/minute", key_prefix=prefix)
    three = _litestar(issuer, limits="3/minute", key_prefix=prefix)
    assert [(await _call(two, issuer, "/a")).status_code for _ in range(3)] == [200, 200, 429]
    assert [(await _call(three, issuer, "/a")).status_code for _ in range(4)] == [200] * 3 + [429]


async def test_identical_limiters_share_within_one_app_and_never_across_apps(
    issuer: LocalIssuer,
) -> None:
    # Two apps in one process (a test suite building an app per test): counted apart.
    first, second = _litestar(issuer, limits="2/minute"), _litestar(issuer, limits="2/minute")
    assert [(await _call(first, issuer, "/a")).status_code for _ in range(3)] == [200, 200, 429]
    assert [(await _call(second, issuer, "/b")).status_code for _ in range(2)] == [200, 200]
