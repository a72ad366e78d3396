"""pytest fixtures for testing an app behind asgi-identity with real signed tokens.

Enable in a conftest.py: `pytest_plugins = ["asgi_identity.pytest_plugin"]`. Override
`local_issuer` in your own conftest.py to change the issuer, audience or algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from asgi_identity.credentials.apikeys import APIKey, generate_api_key
from asgi_identity.testing import JWKSServer, LocalIssuer


class MintToken(Protocol):
    def __call__(self, **claims: Any) -> str: ...


class BearerHeaders(Protocol):
    def __call__(self, **claims: Any) -> dict[str, str]: ...


MakeAPIKey = Callable[..., tuple[str, APIKey]]


@pytest.fixture
def local_issuer() -> LocalIssuer:
    """A fresh ES256 issuer (`https://issuer.test`, audience `gateway`) for each test."""
    return LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")


@pytest.fixture
def jwks_server(local_issuer: LocalIssuer) -> Iterator[JWKSServer]:
    """`local_issuer` served on a loopback port: `.jwks_url`, `.url` (discovery), `.fetches`."""
    with local_issuer.serve() as server:
        yield server


@pytest.fixture
def mint_token(local_issuer: LocalIssuer) -> MintToken:
    """`mint_token(sub="alice", email="alice@acme.com", ...)`: a token signed by `local_issuer`."""

    def mint(**claims: Any) -> str:
        claims.setdefault("sub", "user-1")
        return local_issuer.mint(**claims)

    return mint


@pytest.fixture
def bearer_headers(mint_token: MintToken) -> BearerHeaders:
    """`bearer_headers(**claims)`: `{"Authorization": "Bearer <token>"}` for an HTTP client."""

    def headers(**claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(**claims)}"}

    return headers


@pytest.fixture
def make_api_key() -> MakeAPIKey:
    """`key, record = make_api_key("my-app", tenant="acme", ...)`: a new key and its APIKey."""

    def make(key_id: str = "test-app", **policy: Any) -> tuple[str, APIKey]:
        key, digest = generate_api_key()
        return key, APIKey(id=key_id, sha256=digest, **policy)

    return make
