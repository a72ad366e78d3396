"""Fixtures of the adversarial suite; the stack and the forging tools live in `_attack.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_identity.testing import JWKSServer, LocalIssuer

from ._attack import AUDIENCE, Gateway, build_gateway, static_issuer


@pytest.fixture
def gateway(rsa_issuer: LocalIssuer) -> Gateway:
    """The stack trusting the session's RS256 issuer (static JWKS), with an app and a backend key."""
    return build_gateway([static_issuer(rsa_issuer)])


@pytest.fixture
def es_gateway(issuer: LocalIssuer) -> Gateway:
    """The stack trusting a fresh ES256 issuer."""
    return build_gateway([static_issuer(issuer)])


@pytest.fixture
def attacker_server() -> Iterator[JWKSServer]:
    """A second JWKS server with keys of the attacker's own, for `jku`/`x5u` and discovery abuse."""
    attacker = LocalIssuer(issuer="https://attacker.test", audience=AUDIENCE, algorithm="ES256")
    with attacker.serve() as server:
        yield server
