"""Start-up errors about a storage URI never show its password, and name the fix (issue 13,
item 14): a `redis://` URI, an unknown scheme, a missing client library."""

from __future__ import annotations

import logging

import pytest
from limits.errors import ConfigurationError

from asgi_identity import identity_stack
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.quotas._storage_errors import redact_uri, storage_error

SECRET = "s3cr3t-Pa55"


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379", "'async+redis://...'"),
        (f"rediss://user:{SECRET}@cache.internal:6380/0", "'async+rediss://...'"),
        (f"memory://{SECRET}@x", "'async+memory://...'"),
        (f"bogus://u:{SECRET}@h", "unknown scheme"),
        (f"async+bogus://u:{SECRET}@h", "unknown scheme"),
        (f"async+memcached://u:{SECRET}@h:11211", "pip install 'limits[async-memcached]'"),
    ],
)
def test_a_bad_storage_uri_names_the_fix_without_its_password(
    uri: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises((ValueError, TypeError)) as caught:
        identity_stack(
            _app,
            identity={"allow_anonymous": True},
            rate_limit={"limits": "10/minute", "storage": uri},
        )
    message = str(caught.value)
    assert SECRET not in message
    assert "***" in message
    assert says in message
    assert SECRET not in caplog.text


def test_a_missing_redis_client_names_the_extra() -> None:
    # limits' own words when coredis is not installed.
    missing = ConfigurationError(
        "'coredis' prerequisite not available. A minimum version of 3.4 is required."
    )
    message = storage_error(f"async+redis://:{SECRET}@h:6379", missing)
    assert "pip install 'asgi-identity[redis]'" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"async+redis://:{SECRET}@h:6379/0", "async+redis://:***@h:6379/0"),
        (f"async+redis://alice:{SECRET}@h", "async+redis://alice:***@h"),
        (f"async+redis://{SECRET}@h", "async+redis://***@h"),
        (f"async+redis://h:6379?password={SECRET}&db=1", "async+redis://h:6379?password=***&db=1"),
        (
            f"async+redis+sentinel://:{SECRET}@s1:26379,s2:26379/main",
            "async+redis+sentinel://:***@s1:26379,s2:26379/main",
        ),
        (f"async+redis://:p@ss{SECRET}@h", "async+redis://:***@h"),
        ("async+memory://", "async+memory://"),
    ],
)
def test_redacted_uris(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_a_valid_redis_uri_still_builds() -> None:
    UserRateLimit(_app, limits="1/minute", storage=f"async+redis://:{SECRET}@127.0.0.1:6379")


def test_a_key_set_url_with_a_password_is_never_echoed() -> None:
    with pytest.raises(ValueError, match="https://") as caught:
        JWTIssuer(
            issuer="https://issuer.test",
            audience="gateway",
            jwks_url=f"http://user:{SECRET}@idp.example/jwks?sig={SECRET}",
        )
    assert SECRET not in str(caught.value)
