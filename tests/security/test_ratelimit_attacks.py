"""Getting more than one's share: bucket collisions, spoofed addresses, floods, under-declared usage.

References: OWASP API Security Top 10 2023 API4 (unrestricted resource consumption), RFC 7239 /
X-Forwarded-For (client-written hops prove nothing), and DESIGN's rule that buckets are namespaced
by identity source and escaped so that no two identities share one.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest

from asgi_identity import Identity, IdentityMiddleware
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.quotas._windows import bucket_key
from asgi_identity.testing import LocalIssuer

from ._attack import (
    APP_KEY,
    INSIDE,
    Gateway,
    Seen,
    app_key_record,
    bearer,
    build_gateway,
    starlette_app,
    static_issuer,
)


async def test_forged_tokens_naming_the_victim_never_spend_the_victims_quota(
    rsa_issuer: LocalIssuer,
) -> None:
    # Counting happens after verification: a refused token is nobody's request.
    gateway = build_gateway([static_issuer(rsa_issuer)], limits="2/minute")
    forged = rsa_issuer.mint(sub="alice")[:-4] + "AAAA"
    for _ in range(20):
        await gateway.refused([bearer(forged)], 401, "invalid_token")
    token = rsa_issuer.mint(sub="alice")
    assert (await gateway.request([bearer(token)])).status == 200
    assert (await gateway.request([bearer(token)])).status == 200
    reply = await gateway.refused([bearer(token)], 429, "rate_limited")
    assert reply.header("retry-after") is not None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("a/b", "a"),
        ("a/b", "a%2Fb"),
        ("alice", "alice/"),
        ("requests/jwt/x", "x"),
        ("ALICE", "alice"),
        ("alice\u200b", "alice"),  # a NUL is refused with the token (401) before any bucket
    ],
    ids=["slash", "percent", "trailing-slash", "key-shaped", "case", "zero-width"],
)
async def test_look_alike_subjects_have_buckets_of_their_own(
    rsa_issuer: LocalIssuer, first: str, second: str
) -> None:
    # Key parts are percent-encoded before joining: ("a/b",) and ("a", "b") never meet.
    gateway = build_gateway([static_issuer(rsa_issuer)], limits="1/minute")
    assert (await gateway.request([bearer(rsa_issuer.mint(sub=first))])).status == 200
    assert (await gateway.request([bearer(rsa_issuer.mint(sub=second))])).status == 200
    await gateway.refused([bearer(rsa_issuer.mint(sub=first))], 429, "rate_limited")


async def test_the_same_subject_at_two_issuers_is_two_people(
    rsa_issuer: LocalIssuer, issuer: LocalIssuer
) -> None:
    # Issuers assign `sub` independently (OIDC Core 2: unique within the issuer only).
    other = LocalIssuer(issuer="https://other.test", audience="gateway", algorithm="ES256")
    gateway = build_gateway([static_issuer(rsa_issuer), static_issuer(other)], limits="1/minute")
    assert (await gateway.request([bearer(rsa_issuer.mint(sub="alice"))])).status == 200
    assert (await gateway.request([bearer(other.mint(sub="alice"))])).status == 200
    await gateway.refused([bearer(other.mint(sub="alice"))], 429, "rate_limited")


def test_bucket_keys_are_namespaced_by_source() -> None:
    # A JWT subject, a header email, an API key id and an address that spell the same string.
    same = "alice@acme.com"
    keys = {
        bucket_key(Identity(source="jwt", user_id=same, issuer="https://i.test"), None),
        bucket_key(Identity(source="header", user_id=same, email=same), None),
        bucket_key(Identity(source="api_key", client_id=same), None),
        bucket_key(Identity(source="anonymous"), same),
    }
    assert len(keys) == 4


async def test_email_case_does_not_buy_a_second_bucket(rsa_issuer: LocalIssuer) -> None:
    # Emails are normalized before counting: ALICE@ACME.COM is alice@acme.com.
    gateway = build_gateway([static_issuer(rsa_issuer)], limits="1/minute")
    assert (
        await gateway.request([("x-user-email", "alice@acme.com")], client=INSIDE)
    ).status == 200
    await gateway.refused([("x-user-email", "ALICE@Acme.COM.")], 429, "rate_limited", client=INSIDE)


async def test_anonymous_flood_with_spoofed_forwarded_for_is_counted_by_peer(
    rsa_issuer: LocalIssuer,
) -> None:
    # Without trusted proxies, X-Forwarded-For is the client's own writing: ignored.
    gateway = build_gateway([static_issuer(rsa_issuer)], allow_anonymous=True, limits="5/minute")
    statuses = [
        (await gateway.request([("x-forwarded-for", f"198.51.100.{i}")])).status for i in range(8)
    ]
    assert statuses == [200] * 5 + [429] * 3


async def test_behind_a_trusted_proxy_only_the_hop_it_wrote_counts(
    rsa_issuer: LocalIssuer,
) -> None:
    # The proxy appends the address it saw; everything left of it was sent by the client.
    gateway = build_gateway(
        [static_issuer(rsa_issuer)],
        allow_anonymous=True,
        limits="5/minute",
        trusted_proxies=["10.9.9.9"],
    )
    proxy = ("10.9.9.9", 5000)
    statuses = [
        (
            await gateway.request([("x-forwarded-for", f"192.0.2.{i}, 198.51.100.7")], client=proxy)
        ).status
        for i in range(8)
    ]
    assert statuses == [200] * 5 + [429] * 3
    # Another real client behind the same proxy has its own bucket.
    other = await gateway.request([("x-forwarded-for", "198.51.100.8")], client=proxy)
    assert other.status == 200


async def test_unauthenticated_flood_never_reaches_the_app_or_the_limiter(
    rsa_issuer: LocalIssuer,
) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], limits="2/minute")
    for i in range(100):
        await gateway.refused([("x-api-key", f"sk-guess-{i:04d}")], 401, "invalid_api_key")
        await gateway.refused([], 401, "missing_credentials")
    # The real key's budget is untouched by the flood.
    assert (await gateway.request([("x-api-key", APP_KEY)])).status == 200
    assert (await gateway.request([("x-api-key", APP_KEY)])).status == 200
    await gateway.refused([("x-api-key", APP_KEY)], 429, "rate_limited")


async def test_anonymous_refused_when_configured(rsa_issuer: LocalIssuer) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], allow_anonymous=True, anonymous="refuse")
    await gateway.refused([], 401, "missing_credentials")


async def test_under_declared_max_tokens_is_settled_from_real_usage(
    rsa_issuer: LocalIssuer,
) -> None:
    # Asking for max_tokens=1 reserves little, but the response's usage is what is charged.
    gateway = build_gateway([static_issuer(rsa_issuer)], tokens="1000/minute")
    token = rsa_issuer.mint(sub="alice")
    body = {"max_tokens": 1, "respond_usage": {"prompt_tokens": 600, "completion_tokens": 600}}
    first = await gateway.request([bearer(token)], method="POST", body=json.dumps(body).encode())
    assert first.status == 200
    await gateway.refused(
        [bearer(token)],
        429,
        "token_quota_exceeded",
        method="POST",
        body=json.dumps({"max_tokens": 1}).encode(),
    )


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1_000_000, "completion_tokens": -1_000_000},
        {"prompt_tokens": "999", "completion_tokens": True},
        {"prompt_tokens": 1e30, "completion_tokens": 0.5},
        # As large as the one body parser lets through (longer numbers are a 400 on the way in).
        {"prompt_tokens": 2**62},
    ],
    ids=["negative", "wrong-types", "floats", "huge"],
)
async def test_absurd_usage_never_refunds_or_breaks_the_quota(
    rsa_issuer: LocalIssuer, usage: dict[str, object]
) -> None:
    # Negative counts would hand quota back; none of these is a token count, so the reservation
    # (max_tokens plus the input estimate) stays charged.
    gateway = build_gateway([static_issuer(rsa_issuer)], tokens="300/minute")
    token = rsa_issuer.mint(sub="alice")
    body = json.dumps({"max_tokens": 200, "respond_usage": usage}).encode()
    assert (await gateway.request([bearer(token)], method="POST", body=body)).status == 200
    await gateway.refused(
        [bearer(token)],
        429,
        "token_quota_exceeded",
        method="POST",
        body=json.dumps({"max_tokens": 200}).encode(),
    )


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_unreachable_storage_is_503_or_open_never_500(
    rsa_issuer: LocalIssuer, policy: Literal["open", "closed"]
) -> None:
    seen: list[Seen] = []
    app = UserRateLimit(
        starlette_app(seen),
        limits="10/minute",
        storage="async+redis://127.0.0.1:1",  # nothing listens on port 1
        on_storage_error=policy,
        storage_timeout=2.0,
    )
    gateway = Gateway(IdentityMiddleware(app, api_keys=[app_key_record()]))
    if policy == "closed":
        reply = await gateway.refused([("x-api-key", APP_KEY)], 503, "rate_limit_unavailable")
        assert reply.header("retry-after") is not None
    else:
        assert (await gateway.request([("x-api-key", APP_KEY)])).status == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_padding_a_request_past_max_body_does_not_escape_the_token_quota(
    rsa_issuer: LocalIssuer, chunked: bool
) -> None:
    # Found by this suite: a body too large to peek at was taken for "not an LLM call", so it
    # was neither reserved nor charged: padding a prompt past max_body made it free.
    gateway = build_gateway([static_issuer(rsa_issuer)], tokens="300000/minute")
    token = rsa_issuer.mint(sub="alice")
    usage = {"prompt_tokens": 200_000, "completion_tokens": 100_000}
    padded = json.dumps({"respond_usage": usage, "pad": " " * (1024 * 1024 + 10)}).encode()
    headers = [bearer(token)]
    if not chunked:
        headers.append(("content-length", str(len(padded))))
    first = await gateway.request(headers, method="POST", body=padded)
    assert first.status == 200
    # About 266,000 tokens were reserved for the megabyte, then the response's 300,000 charged.
    await gateway.refused(
        [bearer(token)],
        429,
        "token_quota_exceeded",
        method="POST",
        body=json.dumps({"max_tokens": 1}).encode(),
    )


async def test_group_header_from_outside_cannot_buy_a_higher_tier(rsa_issuer: LocalIssuer) -> None:
    # The tier decides the limits; only a trusted backend (or the token) may name it.
    gateway = build_gateway(
        [static_issuer(rsa_issuer)],
        limits="1/minute",
        group_limits={"enterprise": None},
        groups=["free", "enterprise"],
        default_group="free",
    )
    headers = [bearer(rsa_issuer.mint(sub="alice")), ("x-user-group", "enterprise")]
    seen = await gateway.accepted(headers)
    assert seen.identity.group == "free"
    await gateway.refused(headers, 429, "rate_limited")
    # From a trusted peer the same header is an assertion the deployment chose to believe.
    inside = [bearer(rsa_issuer.mint(sub="bob")), ("x-user-group", "enterprise")]
    for _ in range(3):
        assert (await gateway.accepted(inside, client=INSIDE)).identity.group == "enterprise"


async def test_cors_preflight_reaches_the_app_only_as_anonymous(rsa_issuer: LocalIssuer) -> None:
    # Preflights carry no credentials (Fetch standard), so every layer lets them through; the app
    # sees them as anonymous, never with a forged or spoofed identity. Put CORSMiddleware
    # outermost so preflights are answered before the app (docs/security.md).
    gateway = build_gateway([static_issuer(rsa_issuer)], limits="1/minute")
    forged = rsa_issuer.mint(sub="alice")[:-4] + "AAAA"
    headers = [
        ("access-control-request-method", "POST"),
        ("origin", "https://evil.example"),
        bearer(forged),
        ("x-user-id", "admin"),
    ]
    for _ in range(3):  # not rate limited either: a preflight is not a use of the API
        seen = await gateway.accepted(headers, method="OPTIONS")
        assert seen.identity.source == "anonymous"
        assert seen.header("x-user-id") == []
        assert seen.header("x-user-source") == [b"anonymous"]
