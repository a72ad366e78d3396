"""Knocking the gateway over: huge values, deep nesting, many parts, floods of unknown keys.

Every case must end quickly (each request runs under a deadline, see `_attack.DEADLINE`) with the
documented refusal, never a 500 or a hang. References: OWASP API4:2023 (unrestricted resource
consumption), RFC 8725 3.x on untrusted input, CVE-2024-45809 (Envoy's JWT filter crashing on
remote JWKS handling), and JSON nesting bombs, which make Python's json raise RecursionError.
"""

from __future__ import annotations

import json

import pytest

from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.quotas.usage import JSONUsageReader, SSEUsageReader
from asgi_identity.testing import JWKSServer, LocalIssuer

from ._attack import (
    APP_KEY,
    AUDIENCE,
    INSIDE,
    Gateway,
    b64url,
    bearer,
    build_gateway,
    static_issuer,
)

MEGABYTE = 1024 * 1024


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([("authorization", "Bearer " + "e" * MEGABYTE)], 401, "invalid_token"),
        ([("authorization", "Bearer eyJ" + "A" * MEGABYTE + ".e30.sig")], 401, "invalid_token"),
        ([("x-api-key", "k" * MEGABYTE)], 401, "invalid_api_key"),
        # A trusted backend's assertion, not a caller's credential: a broken request.
        ([("x-user-email", "a" * MEGABYTE + "@acme.com")], 400, "invalid_request"),
    ],
    ids=["bearer", "jwt-shaped", "api-key", "email"],
)
async def test_megabyte_credentials_are_refused_before_any_parsing(
    gateway: Gateway, headers: list[tuple[str, str]], status: int, code: str
) -> None:
    await gateway.refused(headers, status, code, client=INSIDE)


async def test_megabyte_token_cookie_is_401(rsa_issuer: LocalIssuer) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], token_cookie="session")
    await gateway.refused([("cookie", "session=" + "e" * MEGABYTE)], 401, "invalid_token")


async def test_megabyte_conversation_id_is_400(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    headers = [bearer(rsa_issuer.mint(sub="alice")), ("x-conversation-id", "c" * MEGABYTE)]
    await gateway.refused(headers, 400, "invalid_conversation_id")


@pytest.mark.parametrize(
    "token",
    ["e" + "." * 5000, "eyJ" + ".a" * 3000, ".." * 2000, "eyJhbGciOiJSUzI1NiJ9" + "." * 4],
    ids=["dots", "many-segments", "only-dots", "five-empty-segments"],
)
async def test_many_dots_are_refused_without_splitting_work(gateway: Gateway, token: str) -> None:
    # Not a JWS (three segments) nor a JWE (five): an unknown API key, or a refused JWE.
    reply = await gateway.request([bearer(token)])
    assert reply.status == 401
    assert reply.code in ("invalid_api_key", "invalid_token")
    assert not gateway.seen


@pytest.mark.parametrize("where", ["header", "payload"])
async def test_deeply_nested_json_in_a_token_is_401(rsa_issuer: LocalIssuer, where: str) -> None:
    # Python's json raises RecursionError (not ValueError) past ~1000 levels: it must be caught.
    # Two issuers, so the payload is parsed to route the token before any signature check.
    other = LocalIssuer(issuer="https://other.test", audience=AUDIENCE, algorithm="ES256")
    gateway = build_gateway([static_issuer(rsa_issuer), static_issuer(other)])
    deep = b"[" * 2500 + b"]" * 2500
    header = (
        b64url(b'{"alg":"RS256","x":' + deep + b"}")
        if where == "header"
        else b64url(b'{"alg":"RS256"}')
    )
    payload = b64url(b'{"iss":' + deep + b"}") if where == "payload" else b64url(b"{}")
    await gateway.refused([bearer(f"{header}.{payload}.c2ln")], 401, "invalid_token")


async def test_ten_thousand_headers_are_read_once(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # One pass over the headers; every spoofed x-user-* copy is dropped.
    headers: list[tuple[str, str]] = [(f"x-junk-{i}", "v") for i in range(5000)]
    headers += [("X_User_Id", f"admin-{i}") for i in range(5000)]
    seen = await gateway.accepted([*headers, bearer(rsa_issuer.mint(sub="alice"))])
    user_ids = [value for name, value in seen.headers if name.lower() == b"x-user-id"]
    assert user_ids == [b"alice"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, b"nests deeper than 64 levels"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", 400, b"integer too large"),
        (b"{" * 3 + b"\xff" * 1000, 400, b"not valid UTF-8"),
        # Too large to read is not free: the default is reserved and the request goes on.
        (b'{"max_tokens": 10}' + b" " * (2 * MEGABYTE), 200, None),
    ],
    ids=["nesting-bomb", "5000-digit-int", "not-utf8", "over-max-body"],
)
async def test_hostile_request_bodies_on_metered_routes_are_refused_never_500(
    rsa_issuer: LocalIssuer, body: bytes, status: int, message: bytes | None
) -> None:
    # The body is read once, bounded, by the one parser; what it cannot give one meaning is a
    # 400 (fail closed), never a crash and never "no LLM call".
    gateway = build_gateway([static_issuer(rsa_issuer)], tokens="10000000/minute")
    reply = await gateway.request([bearer(rsa_issuer.mint(sub="alice"))], method="POST", body=body)
    assert reply.status == status
    if message is not None:
        assert b'"code":"invalid_request"' in reply.body
        assert message in reply.body


async def test_unknown_kid_flood_fetches_the_key_set_at_most_once_per_cooldown(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    # Each unknown kid could trigger a refetch; the cool-down keeps a flood from turning the
    # gateway into a amplifier against the identity provider.
    gateway = build_gateway(
        [JWTIssuer(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=jwks_server.jwks_url)]
    )
    assert (await gateway.request([bearer(issuer.mint(sub="alice"))])).status == 200
    for i in range(50):
        token = issuer.mint(sub="mallory", headers={"kid": f"unknown-{i}"})
        await gateway.refused([bearer(token)], 401, "invalid_token")
    assert jwks_server.fetches <= 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"x" * (2 * MEGABYTE), 200),
        (b'{"keys": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 200),
        (b"not json", 200),
        (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode(), 200),
        (b"", 500),
    ],
    ids=["two-megabytes", "nesting-bomb", "not-json", "only-symmetric", "server-error"],
)
async def test_hostile_key_set_is_503_never_trusted_never_500(
    issuer: LocalIssuer, body: bytes, status: int
) -> None:
    with issuer.serve() as server:
        server.body = body
        server.status = status
        gateway = build_gateway(
            [
                JWTIssuer(
                    issuer=issuer.issuer,
                    audience=AUDIENCE,
                    jwks_url=server.jwks_url,
                    jwks_max_bytes=64 * 1024,
                )
            ]
        )
        reply = await gateway.refused(
            [bearer(issuer.mint(sub="alice"))], 503, "identity_provider_unavailable"
        )
        assert reply.header("retry-after") is not None


async def test_key_set_redirect_to_the_attacker_is_not_followed(
    issuer: LocalIssuer, attacker_server: JWKSServer
) -> None:
    with issuer.serve() as server:
        server.redirect_to = attacker_server.jwks_url
        gateway = build_gateway(
            [JWTIssuer(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=server.jwks_url)]
        )
        token = attacker_server.issuer.mint(sub="admin", iss=issuer.issuer)
        await gateway.refused([bearer(token)], 503, "identity_provider_unavailable")
    assert attacker_server.fetches == 0


async def test_discovery_naming_another_issuer_is_not_trusted(
    attacker_server: JWKSServer,
) -> None:
    # OIDC Discovery 4.3: the document must name the issuer it was fetched for.
    victim = LocalIssuer(issuer="http://127.0.0.1:1/placeholder", algorithm="ES256")
    with victim.serve() as server:
        victim.issuer = server.url
        server.discovery = {"issuer": "https://attacker.test", "jwks_uri": attacker_server.jwks_url}
        gateway = build_gateway([JWTIssuer(issuer=server.url, audience=AUDIENCE, discovery=True)])
        token = attacker_server.issuer.mint(sub="admin", iss=server.url)
        await gateway.refused([bearer(token)], 503, "identity_provider_unavailable")
    assert attacker_server.fetches == 0


def test_usage_readers_stay_bounded_on_endless_responses() -> None:
    # A response of 20 MB without a newline (SSE) or with usage at the very end (JSON): the
    # readers keep a bounded tail and still find the usage where it is findable.
    sse = SSEUsageReader()
    for _ in range(20):
        sse.feed(b"data: " + b"x" * MEGABYTE)
    sse.feed(b'\n\ndata: {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n')
    found = sse.result()
    assert found is not None
    assert found.total_tokens == 7
    reader = JSONUsageReader()
    reader.feed(b'{"choices": [{"text": "')
    for _ in range(20):
        reader.feed(b"y" * MEGABYTE)
    reader.feed(b'"}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}')
    found = reader.result()
    assert found is not None
    assert found.total_tokens == 11


async def test_flood_of_api_key_guesses_is_401_each_and_locks_nobody_out(
    gateway: Gateway,
) -> None:
    # Guessing is answered 401 each time, in constant work; the real key still works after.
    for i in range(500):
        await gateway.refused([("x-api-key", f"sk-ai-guess-{i:06d}")], 401, "invalid_api_key")
    assert (await gateway.request([("x-api-key", APP_KEY)])).status == 200
