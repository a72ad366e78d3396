from __future__ import annotations

from collections.abc import Iterator

import pytest

from _redis import missing_redis_message, redis_answers
from asgi_identity.testing import JWKSServer, LocalIssuer


def pytest_collection_finish(session: pytest.Session) -> None:
    # Without Redis, the tests marked `redis` would fail one by one, deep inside, with counts that
    # say nothing about the cause. Stop before the first one instead; never skip them: CI must run
    # them.
    if session.config.option.collectonly:
        return
    needing = [item for item in session.items if item.get_closest_marker("redis") is not None]
    if needing and not redis_answers():
        pytest.exit(missing_redis_message(len(needing)), returncode=pytest.ExitCode.USAGE_ERROR)


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
