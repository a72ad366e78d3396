"""`bucket_by`: one person reaching the gateway through two credential paths (her JWT, and a
trusted backend's `X-User-Email`) counts in one bucket (issue 13, item 5)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from _limits_support import BACKEND_KEY, full_stack, limiter_in
from _ratelimit_support import REDIS_URI, delete_redis_keys, llm_app, unique_prefix
from asgi_identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.testing import LocalIssuer


def _as_jwt(issuer: LocalIssuer, user: str, email: str, **claims: Any) -> dict[str, str]:
    token = issuer.mint(sub=user, email=email, **claims)
    return {"authorization": f"Bearer {token}"}


def _as_backend(email: str) -> dict[str, str]:
    return {"x-api-key": BACKEND_KEY, "x-user-email": email}


async def _statuses(app: Any, callers: list[dict[str, str]]) -> list[int]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return [(await http.get("/", headers=headers)).status_code for headers in callers]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def storage(request: pytest.FixtureRequest) -> Any:
    prefix = unique_prefix()
    yield {"key_prefix": prefix} | ({"storage": REDIS_URI} if request.param == "redis" else {})
    if request.param == "redis":
        await delete_redis_keys(prefix)


@pytest.mark.parametrize(
    ("bucket_by", "expected"),
    [
        # The default: a JWT subject and an asserted email are two buckets.
        ("user_id", [200, 200, 200, 200]),
        # By email: Alice's token and the backend speaking for her share 2/minute.
        ("email", [200, 200, 429, 429]),
    ],
)
async def test_one_person_through_two_credential_paths_shares_one_bucket_by_email(
    issuer: LocalIssuer, storage: dict[str, Any], bucket_by: str, expected: list[int]
) -> None:
    app = full_stack(llm_app(), issuer, limits="2/minute", bucket_by=bucket_by, **storage)
    alice_jwt = _as_jwt(issuer, "00u-alice", "Alice@Acme.com", email_verified=True)
    alice_backend = _as_backend("alice@acme.com")
    callers = [alice_jwt, alice_backend, alice_jwt, alice_backend]
    assert await _statuses(app, callers) == expected
    # Bob is counted apart either way.
    assert await _statuses(app, [_as_jwt(issuer, "00u-bob", "bob@acme.com")]) == [200]
    await limiter_in(app).aclose()


async def test_an_email_its_token_says_is_unverified_keeps_the_user_id_bucket(
    issuer: LocalIssuer,
) -> None:
    app = full_stack(llm_app(), issuer, limits="2/minute", bucket_by="email")
    mallory = _as_jwt(issuer, "00u-mallory", "alice@acme.com", email_verified=False)
    # Mallory's token claims Alice's address without verifying it: she cannot spend Alice's.
    assert await _statuses(app, [mallory, mallory, mallory]) == [200, 200, 429]
    assert await _statuses(app, [_as_backend("alice@acme.com")] * 2) == [200, 200]


async def test_a_callable_names_the_bucket(issuer: LocalIssuer) -> None:
    def by_domain(identity: Identity) -> str | None:
        return identity.domain  # everyone at one company shares its budget

    app = full_stack(llm_app(), issuer, limits="3/minute", bucket_by=by_domain)
    callers = [
        _as_jwt(issuer, "alice", "alice@acme.com"),
        _as_backend("bob@acme.com"),
        _as_jwt(issuer, "carol", "carol@acme.com"),
        _as_jwt(issuer, "dave", "dave@acme.com"),
        _as_jwt(issuer, "erin", "erin@other.org"),
    ]
    assert await _statuses(app, callers) == [200, 200, 200, 429, 200]
    windows = await limiter_in(app).usage(Identity(source="jwt", domain="acme.com", user_id="z"))
    assert [w.used for w in windows] == [3]


async def test_token_quotas_follow_the_same_bucket(issuer: LocalIssuer) -> None:
    app = full_stack(llm_app(), issuer, limits=None, tokens="1000/day", bucket_by="email")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        for headers in (
            _as_jwt(issuer, "00u-alice", "alice@acme.com", email_verified=True),
            _as_backend("alice@acme.com"),
        ):
            response = await http.post(
                "/v1/chat/completions",
                json={"max_tokens": 100, "x_prompt": 10, "x_completion": 20},
                headers=headers,
            )
            assert response.status_code == 200
    alice = Identity(source="header", email="alice@acme.com", user_id="alice@acme.com")
    assert [w.used for w in await limiter_in(app).usage(alice)] == [60]


@pytest.mark.parametrize(
    ("value", "error"), [("name", ValueError), (42, TypeError), (None, TypeError)]
)
def test_bucket_by_is_checked_at_start_up(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="bucket_by"):
        UserRateLimit(llm_app(), bucket_by=value)
