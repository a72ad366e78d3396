"""A verified token leaves the cache when its key leaves the key set, and no cache entry outlives
the key set's TTL (DESIGN: JWT verification). Real key sets over loopback, rotated for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from asgi_identity import identity_stack
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier
from asgi_identity.testing import JWKSServer, LocalIssuer

# Every wait below is a guard against a hang, never a measurement.
GUARD = 5.0


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def served() -> Iterator[tuple[LocalIssuer, JWKSServer]]:
    local = LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")
    with local.serve() as server:
        yield local, server


def _gateway(local: LocalIssuer, server: JWKSServer, **options: Any) -> tuple[Any, TokenVerifier]:
    verifier = TokenVerifier(
        [JWTIssuer(issuer=local.issuer, audience="gateway", jwks_url=server.jwks_url, **options)]
    )
    return identity_stack(_app, identity={"token_verifier": verifier}), verifier


async def _status(app: Any, token: str) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {token}"})
        return response.status_code


async def test_a_cached_token_is_refused_once_a_refresh_removes_its_key(
    served: tuple[LocalIssuer, JWKSServer],
) -> None:
    local, server = served
    app, _ = _gateway(local, server, jwks_refresh_cooldown=0.01)
    old = local.mint(sub="alice")
    assert await _status(app, old) == 200
    assert await _status(app, old) == 200  # served from the cache
    local.rotate()  # the old key is compromised: the provider stops publishing it
    await asyncio.sleep(0.02)  # past the refresh cool-down
    # A token signed by the new key makes the gateway refetch (unknown kid)...
    assert await _status(app, local.mint(sub="bob")) == 200
    # ...and the old key's token is not served from the cache any more.
    assert await _status(app, old) == 401


async def test_a_cached_token_is_checked_again_after_the_key_set_ttl(
    served: tuple[LocalIssuer, JWKSServer],
) -> None:
    # Only the old token is ever presented: no unknown kid announces the rotation. The cache
    # entry ends with the key set's TTL, the check that follows refreshes the keys, and the
    # refresh drops the token.
    local, server = served
    app, verifier = _gateway(local, server, jwks_ttl=0.2, jwks_refresh_cooldown=0.01)
    old = local.mint(sub="alice")
    assert await _status(app, old) == 200
    local.rotate()
    deadline = time.monotonic() + GUARD
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(await _status(app, old))
        if statuses[-1] == 401:
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 401, statuses
    assert verifier.cached(old) is None


async def test_a_key_still_published_keeps_its_tokens_cached(
    served: tuple[LocalIssuer, JWKSServer],
) -> None:
    # A refresh that brings the same keys (new objects, same material) is no rotation.
    local, server = served
    app, verifier = _gateway(local, server, jwks_refresh_cooldown=0.01)
    token = local.mint(sub="alice")
    assert await _status(app, token) == 200
    cached = verifier.cached(token)
    assert cached is not None
    local.add_key()  # a new key is announced; the old one stays
    await asyncio.sleep(0.02)
    assert await _status(app, local.mint(sub="bob")) == 200
    assert verifier.cached(token) is cached


async def test_a_key_whose_material_changes_under_the_same_kid_drops_its_tokens(
    served: tuple[LocalIssuer, JWKSServer],
) -> None:
    local, server = served
    app, verifier = _gateway(local, server, jwks_ttl=0.1, jwks_refresh_cooldown=0.01)
    kid = local.signing_key.kid
    token = local.mint(sub="alice")
    assert await _status(app, token) == 200
    replacement = local.rotate()
    replacement.kid = kid  # same kid, another key: the old signature no longer verifies
    new_token = local.mint(sub="bob")
    deadline = time.monotonic() + GUARD
    while await _status(app, new_token) != 200:  # once the TTL has brought the new key
        assert time.monotonic() < deadline, "the key set was never refreshed"
        await asyncio.sleep(0.05)
    assert verifier.cached(token) is None
    assert await _status(app, token) == 401


async def test_no_cache_entry_outlives_the_key_set_ttl(
    served: tuple[LocalIssuer, JWKSServer],
) -> None:
    local, server = served
    _, verifier = _gateway(local, server, jwks_ttl=60)
    token = local.mint(sub="alice", exp=int(time.time()) + 3600)
    before = time.time()
    await verifier.verify(token)
    (entry,) = verifier._cache.values()
    assert before + 60 <= entry[1] <= time.time() + 60
    await verifier.aclose()
