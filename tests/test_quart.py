"""Quart: the getting-started snippet (`app.asgi_app = IdentityMiddleware(...)`) and
`identity_stack(Quart(...))`, under httpx's ASGITransport, lifespan included."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from quart import Quart, request

import asgi_identity
from _asgi import http_client, lifespan
from _snippets import code_blocks
from asgi_identity import JWTIssuer, get_identity, identity_stack
from asgi_identity.testing import LocalIssuer

IDP = LocalIssuer(issuer="https://login.acme.com/", audience="gateway", algorithm="ES256")


def bearer(**claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {IDP.mint(**claims)}"}


async def get(app: Any, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with http_client(app, base_url="http://gateway.test") as client:
        return await client.get(path, headers=headers)


async def test_quart_snippet_of_getting_started_wraps_asgi_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_issuer = asgi_identity.JWTIssuer

    def offline_issuer(**options: Any) -> JWTIssuer:
        # The snippet's issuer as written, with its key set inline instead of discovered.
        assert options.pop("discovery") is True
        return real_issuer(**options, jwks=IDP.jwks)

    monkeypatch.setattr(asgi_identity, "JWTIssuer", offline_issuer)
    (snippet,) = [
        block
        for block in code_blocks("docs/getting-started.md", section="The smallest useful gateway")
        if "from quart import" in block
    ]
    namespace: dict[str, Any] = {"__name__": "quart_snippet"}
    exec(compile(snippet, "getting-started.md", "exec"), namespace)  # noqa: S102 - the docs' code
    app = namespace["app"]
    assert isinstance(app, Quart)

    assert await lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    alice = await get(app, "/v1/me", bearer(sub="alice", email="alice@acme.com"))
    assert alice.status_code == 200, alice.text
    assert alice.json() == {"user": "alice", "email": "alice@acme.com"}
    nobody = await get(app, "/v1/me")
    assert nobody.status_code == 401
    assert nobody.json()["error"]["code"] == "missing_credentials"


async def test_identity_stack_wraps_a_quart_app() -> None:
    quart_app = Quart(__name__)

    @quart_app.get("/v1/me")
    async def me() -> dict[str, Any]:
        identity = get_identity(request)
        return {"user": identity.user_id, "conversation": identity.conversation_id}

    issuer = JWTIssuer(issuer=IDP.issuer, audience="gateway", jwks=IDP.jwks)
    app = identity_stack(
        quart_app,
        identity={"issuers": [issuer]},
        domains={"domains": ["acme.com"]},
        rate_limit={"limits": "2/minute"},
    )

    assert await lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    headers = {**bearer(sub="bob", email="bob@acme.com"), "X-Conversation-Id": "conv-1"}
    bob = await get(app, "/v1/me", headers)
    assert bob.status_code == 200, bob.text
    assert bob.json() == {"user": "bob", "conversation": "conv-1"}
    assert (await get(app, "/v1/me", headers)).status_code == 200
    limited = await get(app, "/v1/me", headers)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    mallory = await get(app, "/v1/me", bearer(sub="mallory", email="mallory@evil.test"))
    assert mallory.status_code == 403
    assert mallory.json()["error"]["code"] == "domain_not_allowed"
