from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_identity.testing import JWKSServer, LocalIssuer


@pytest.fixture(scope="session")
def rsa_issuer() -> LocalIssuer:
    """An RS256 issuer; key generation is slow, so one per session (do not rotate it)."""
    return LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="RS256")


@pytest.fixture
def issuer() -> LocalIssuer:
    """A fresh ES256 issuer per test (cheap keys), free to rotate."""
    return LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")


@pytest.fixture
def jwks_server(issuer: LocalIssuer) -> Iterator[JWKSServer]:
    with issuer.serve() as server:
        yield server
