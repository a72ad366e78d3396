"""A discovery document naming another issuer is a configuration error, said once with both
values, and a 503 that says "configuration" rather than an outage (issue 13, item 13)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from asgi_identity import identity_stack
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import JWKSServer, LocalIssuer


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    local = LocalIssuer(issuer="https://placeholder.test", audience="gateway", algorithm="ES256")
    with local.serve() as served:
        yield served


def _configured_and_named(server: JWKSServer, case: str) -> tuple[str, str]:
    port = server.url.rsplit(":", 1)[1]
    if case == "trailing-slash":
        return server.url + "/", server.url
    return f"http://localhost:{port}", f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("case", ["trailing-slash", "localhost"])
async def test_a_discovery_issuer_mismatch_is_a_configuration_error_logged_once(
    server: JWKSServer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    configured, named = _configured_and_named(server, case)
    server.issuer.issuer = configured  # the tokens carry what the gateway is configured with
    server.discovery = {"issuer": named, "jwks_uri": server.jwks_url}
    app = identity_stack(
        _app,
        identity={
            "issuers": [
                JWTIssuer(
                    issuer=configured,
                    audience="gateway",
                    discovery=True,
                    jwks_refresh_cooldown=0.01,
                )
            ]
        },
    )
    token = server.issuer.mint(sub="alice")
    transport = httpx.ASGITransport(app=app)
    caplog.set_level(logging.WARNING, logger="asgi_identity")
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        for _ in range(3):
            response = await client.get("/", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 503
            message = response.json()["error"]["message"]
            assert "configuration" in message
            assert "unavailable" not in message
            assert "reached" not in message
            assert response.headers["retry-after"]
            await asyncio.sleep(0.02)  # past the cool-down: every request fetched again
        assert server.discovery_fetches >= 3
        said = [record for record in caplog.records if record.name.startswith("asgi_identity")]
        assert len(said) == 1, [record.getMessage() for record in said]
        assert said[0].levelno == logging.ERROR
        assert repr(configured) in said[0].getMessage()
        assert repr(named) in said[0].getMessage()
        assert "configuration error" in said[0].getMessage()

        # The provider (or the configuration) is corrected: the next fetch recovers.
        server.discovery = {"issuer": configured, "jwks_uri": server.jwks_url}
        response = await client.get("/", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200


async def test_an_unreachable_provider_is_still_an_outage(server: JWKSServer) -> None:
    server.status = 500
    app = identity_stack(
        _app,
        identity={
            "issuers": [
                JWTIssuer(issuer="https://issuer.test", audience="g", jwks_url=server.jwks_url)
            ]
        },
    )
    token = LocalIssuer(issuer="https://issuer.test", audience="g", algorithm="ES256").mint()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert "cannot be reached" in response.json()["error"]["message"]
