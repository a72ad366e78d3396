"""Spoofed, duplicated, oversized and smuggled headers against the whole stack.

References: RFC 9110 5.3 (a repeated field is a list, so a credential sent twice is ambiguous),
RFC 6750 2.1 (bearer syntax), Envoy's CVE-2024-45806 (headers only the proxy may set were taken
from external clients because private address ranges were trusted by default), and
oauth2-proxy's practice of removing client-sent X-Forwarded-User/-Email before setting its own.
Proxies disagree on `_` in header names (nginx drops them, others map them to `-`), so every
spelling is treated as the same header.
"""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import unquote

import pytest

from _asgi import request
from asgi_identity.testing import LocalIssuer

from ._attack import (
    APP_KEY,
    ATTACKER,
    BACKEND_KEY,
    INSIDE,
    Gateway,
    bearer,
    build_gateway,
    static_issuer,
)

SPOOFED = [
    ("X-User-Id", "admin"),
    ("x_user_id", "admin"),
    ("X-USER-ROLES", "admin"),
    ("x-User_Tenant", "other-tenant"),
    ("X-User-Client-Id", "trusted-backend"),
    ("x-user-source", "header"),
    ("X_USER_EMAIL_VERIFIED", "true"),
]


def forwarded(seen_headers: list[tuple[bytes, bytes]]) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for name, value in seen_headers:
        normalized = name.decode("latin-1").lower().replace("_", "-")
        if normalized.startswith("x-user-"):
            found.setdefault(normalized, []).append(value)
    return found


# -- two values for one credential --------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")],
        [("Authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")],
        [("x-api-key", APP_KEY), ("X-API-KEY", APP_KEY)],
        [("x-api-key", APP_KEY), ("authorization", f"Bearer {BACKEND_KEY}")],
    ],
    ids=["two-authorization", "case-variant", "upper-case-twin", "key-in-both-places"],
)
async def test_a_credential_sent_twice_is_400(
    gateway: Gateway, headers: list[tuple[str, str]]
) -> None:
    # RFC 9110 5.3: two fields are one list; which one a proxy or a framework reads differs
    # (first, last, joined). Refusing is the only reading that cannot be steered.
    await gateway.refused(headers, 400, "ambiguous_credentials")


async def test_two_email_headers_from_a_trusted_peer_are_400(gateway: Gateway) -> None:
    headers = [("x-user-email", "alice@acme.com"), ("X-User-Email", "mallory@acme.com")]
    await gateway.refused(headers, 400, "ambiguous_credentials", client=INSIDE)


@pytest.mark.parametrize("twin", ["X_User_Email", "x_user_email", "X-USER_EMAIL", "x-user_email"])
async def test_an_underscore_twin_of_the_email_header_is_never_read(
    gateway: Gateway, twin: str
) -> None:
    # Identity headers are read in their exact spelling only; a twin is stripped, never read,
    # so a proxy that merges `_` into `-` cannot be made to carry a second address.
    seen = await gateway.accepted(
        [("x-user-email", "alice@acme.com"), (twin, "mallory@acme.com")], client=INSIDE
    )
    assert seen.identity.email == "alice@acme.com"
    assert seen.header(twin) == []
    await gateway.refused([(twin, "mallory@acme.com")], 401, "missing_credentials", client=INSIDE)


async def test_invalid_jwt_with_a_valid_api_key_is_401_not_a_fallback(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # DESIGN: a present but invalid credential is a 401, never a quiet downgrade to another.
    forged = rsa_issuer.mint(sub="alice")[:-4] + "AAAA"
    await gateway.refused([("x-api-key", APP_KEY), bearer(forged)], 401, "invalid_token")


# -- asserting identity without being trusted --------------------------------------------------


@pytest.mark.parametrize(
    "proxy_header",
    [
        ("x-forwarded-for", "10.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1"),
        ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
    ],
    ids=["xff", "x-real-ip", "forwarded", "xff-chain"],
)
async def test_email_header_from_outside_is_ignored_whatever_the_proxy_headers_say(
    gateway: Gateway, proxy_header: tuple[str, str]
) -> None:
    # CVE-2024-45806 (Envoy) class: only the socket peer decides trust; headers a client writes
    # about its own address prove nothing.
    headers = [proxy_header, ("x-user-email", "ceo@acme.com")]
    await gateway.refused(headers, 401, "missing_credentials", client=ATTACKER)


async def test_email_header_with_a_plain_app_key_does_not_name_a_person(gateway: Gateway) -> None:
    # The app key has header_identity off: its caller cannot assert who the user is.
    seen = await gateway.accepted([("x-api-key", APP_KEY), ("x-user-email", "ceo@acme.com")])
    assert seen.identity.source == "api_key"
    assert seen.identity.email is None
    assert b"ceo@acme.com" not in b"".join(value for _, value in seen.headers)


async def test_unix_socket_peer_is_never_trusted(gateway: Gateway) -> None:
    await gateway.refused(
        [("x-user-email", "ceo@acme.com")], 401, "missing_credentials", client=None
    )


async def test_ipv4_mapped_ipv6_peer_is_the_same_address(gateway: Gateway) -> None:
    # ::ffff:10.1.2.3 is 10.1.2.3 (RFC 4291 2.5.5.2); trust must not depend on the spelling.
    seen = await gateway.accepted(
        [("x-user-email", "alice@acme.com")], client=("::ffff:10.1.2.3", 4000)
    )
    assert seen.identity.email == "alice@acme.com"


@pytest.mark.parametrize(
    "value",
    [
        b"alice@acme.com\r\nx-user-roles: admin",
        b"Alice <alice@acme.com>",
        b"alice@acme.com, ceo@acme.com",
        b"\xff\xfe@acme.com",
        b"alice@acme.com\x00ceo@acme.com",
        b"",
    ],
    ids=["crlf", "display-name", "list", "not-utf8", "nul", "empty"],
)
async def test_malformed_email_header_from_a_trusted_peer_is_400(
    gateway: Gateway, value: bytes
) -> None:
    # A bare address or nothing: anything else is a header-smuggling or parser-confusion attempt.
    await gateway.refused([(b"x-user-email", value)], 400, "invalid_request", client=INSIDE)


@pytest.mark.parametrize(
    "value",
    [b"gold\r\nx-user-id: admin", b"", b"g" * 129, b"gold\x7f", b"\xff"],
    ids=["crlf", "empty", "too-long", "del", "not-utf8"],
)
async def test_malformed_group_header_from_a_trusted_peer_is_400(
    gateway: Gateway, value: bytes
) -> None:
    headers = [(b"x-user-email", b"alice@acme.com"), (b"x-user-group", value)]
    await gateway.refused(headers, 400, "invalid_group", client=INSIDE)


# -- spoofed forwarded identity headers ------------------------------------------------------------


async def test_spoofed_identity_headers_in_any_spelling_never_reach_the_app(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # CVE-2024-45806 (Envoy) class: a client-sent copy of a header the gateway sets must be
    # removed, including `_` and case variants.
    token = rsa_issuer.mint(sub="alice", email="alice@acme.com", roles=["reader"])
    seen = await gateway.accepted([bearer(token), *SPOOFED])
    sent = forwarded(seen.headers)
    assert sent["x-user-id"] == [b"alice"]
    assert sent["x-user-roles"] == [b"reader"]
    assert sent["x-user-source"] == [b"jwt"]
    assert "x-user-tenant" not in sent
    assert "x-user-email-verified" not in sent
    assert all(b"admin" not in value for values in sent.values() for value in values)
    # Only the lower-case, dash spelling the middleware writes is left.
    names = [name for name, _ in seen.headers if name.lower().replace(b"_", b"-")[:7] == b"x-user-"]
    assert all(name == name.lower() and b"_" not in name for name in names), names


async def test_spoofed_headers_are_removed_on_excluded_paths_too(rsa_issuer: LocalIssuer) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], exclude_paths=["/v1/chat"])
    seen = await gateway.accepted(SPOOFED)
    assert seen.identity.source == "anonymous"
    assert forwarded(seen.headers) == {"x-user-source": [b"anonymous"]}


async def test_spoofed_headers_are_removed_in_observe_mode_when_the_token_is_bad(
    rsa_issuer: LocalIssuer,
) -> None:
    # Observe mode lets a refused request through as anonymous: never with the client's claims.
    gateway = build_gateway([static_issuer(rsa_issuer)], mode="observe")
    seen = await gateway.accepted([bearer("eyJhbGciOiJub25lIn0.e30."), *SPOOFED])
    assert seen.identity.source == "anonymous"
    assert forwarded(seen.headers) == {"x-user-source": [b"anonymous"]}


async def test_baggage_never_sets_identity(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    # W3C Baggage is client-writable context, not a credential.
    seen = await gateway.accepted(
        [bearer(rsa_issuer.mint(sub="alice")), ("baggage", "user.id=admin,enduser.id=admin")]
    )
    assert seen.identity.user_id == "alice"


# -- claims that end up in forwarded headers --------------------------------------------------------

_HEADER_SAFE = re.compile(rb"[\x21-\x7e]*")


@pytest.mark.parametrize(
    "sub",
    [
        "alice\r\nx-user-roles: admin",
        "alice\nx-user-id: admin",
        "al,ice",
        "alice%2Cadmin",
        "ålice \u2028 \u0085",
        " alice ",
    ],
    ids=["crlf", "lf", "comma", "percent", "unicode-separators", "spaces"],
)
async def test_control_characters_in_claims_never_split_forwarded_headers(
    gateway: Gateway, rsa_issuer: LocalIssuer, sub: str
) -> None:
    # RFC 9110 5.5: field values exclude CR, LF and NUL; an IdP's claim is data, and a claim that
    # became a header line would let the token's subject write headers (response splitting).
    roles = ["admin,superuser", "a\r\nb", "r\u00f6le", "plain"]
    token = rsa_issuer.mint(sub=sub, roles=roles, azp="web\r\nx-user-id: admin")
    seen = await gateway.accepted([bearer(token)])
    sent = forwarded(seen.headers)
    for values in sent.values():
        assert len(values) == 1
        assert _HEADER_SAFE.fullmatch(values[0]), values
    # Percent-encoded UTF-8, comma-separated: the exact values come back.
    assert unquote(sent["x-user-id"][0].decode()) == sub
    assert {unquote(role) for role in sent["x-user-roles"][0].decode().split(",")} == set(roles)
    assert unquote(sent["x-user-client-id"][0].decode()) == "web\r\nx-user-id: admin"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice\x00admin"},
        {"sub": "alice", "roles": ["a\x00b"]},
        {"sub": "a", "azp": "w\x00"},
    ],
    ids=["sub", "roles", "azp"],
)
async def test_a_claim_holding_a_nul_is_401_never_forwarded(
    gateway: Gateway, rsa_issuer: LocalIssuer, claims: dict[str, Any]
) -> None:
    # DESIGN: claims that cannot become valid text (lone surrogates, NUL) are a 401.
    reply = await gateway.refused([bearer(rsa_issuer.mint(**claims))], 401, "invalid_token")
    assert b"\\u0000" not in reply.body


# -- bearer syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Bearer",
        "Bearer ",
        "Token {jwt}",
        "Bearer {jwt} extra",
        "Bearer {jwt},Bearer {jwt}",
        "{jwt}",
        "Bearer\t{jwt}",
    ],
    ids=[
        "basic",
        "scheme-only",
        "scheme-space",
        "other-scheme",
        "trailing-word",
        "list",
        "no-scheme",
        "tab",
    ],
)
async def test_malformed_authorization_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, value: str
) -> None:
    # RFC 6750 2.1: `Bearer` SP b64token, nothing else. A lenient parser that takes the first
    # word that looks right reads a different credential than the next proxy does.
    token = rsa_issuer.mint(sub="alice")
    await gateway.refused([("authorization", value.format(jwt=token))], 401, "invalid_token")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer  "])
async def test_bearer_scheme_is_case_insensitive(
    gateway: Gateway, rsa_issuer: LocalIssuer, scheme: str
) -> None:
    # RFC 9110 11.1: auth schemes are case-insensitive; this is a control, not an attack.
    seen = await gateway.accepted([("authorization", f"{scheme} {rsa_issuer.mint(sub='alice')}")])
    assert seen.identity.user_id == "alice"


@pytest.mark.parametrize(
    "raw",
    [
        b"Bearer \xc3\xa9yJhbGciOi.e30.sig",
        b"Bearer eyJ\xff.e30.sig",
        b"Bearer sk-ai-\xe2\x80\x8bkey",
    ],
    ids=["utf8-letter", "latin1-byte", "zero-width-space"],
)
async def test_non_ascii_credentials_are_401(gateway: Gateway, raw: bytes) -> None:
    await gateway.refused([(b"authorization", raw)], 401, "invalid_token")


@pytest.mark.parametrize(
    ("name", "size", "status", "code"),
    [
        ("authorization", 9000, 401, "invalid_token"),
        ("x-api-key", 1024 * 1024, 401, "invalid_api_key"),
        ("x-user-email", 64 * 1024, 400, "invalid_request"),
    ],
)
async def test_oversized_credential_headers_are_refused(
    gateway: Gateway, name: str, size: int, status: int, code: str
) -> None:
    # Refused by length before any parsing or hashing: a megabyte header costs a len().
    await gateway.refused([(name, "A" * size)], status, code, client=INSIDE)


async def test_sanitize_keeps_api_keys_from_the_app(rsa_issuer: LocalIssuer) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], sanitize=True)
    for headers in ([("x-api-key", APP_KEY)], [("authorization", f"Bearer {APP_KEY}")]):
        seen = await gateway.accepted(headers)
        assert APP_KEY.encode() not in b"".join(value for _, value in seen.headers)


# -- cookies and WebSockets ----------------------------------------------------------------------


async def test_token_cookie_sent_twice_is_400(rsa_issuer: LocalIssuer) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], token_cookie="session")
    token = rsa_issuer.mint(sub="alice")
    cookie = f"session={token}; other=1; session={rsa_issuer.mint(sub='bob')}"
    await gateway.refused([("cookie", cookie)], 400, "ambiguous_credentials")
    seen = await gateway.accepted([("cookie", f"session={token}")])
    assert seen.identity.user_id == "alice"


async def test_forged_token_over_websocket_is_refused_before_accept(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # The handshake is refused (HTTP 401 when the server can send one, else close 1008).
    token = rsa_issuer.mint(sub="alice")[:-4] + "AAAA"
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/v1/chat",
        "raw_path": b"/v1/chat",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": ATTACKER,
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    sent = (await request(gateway.app, scope=scope, then="wait")).messages
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401
    assert not gateway.seen


# -- conversation ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"conv-1\r\nx-user-id: admin", b"conv 1", b"c" * 129, b"", b"\xc3\xa9t\xc3\xa9", b"../../x"],
    ids=["crlf", "space", "too-long", "empty", "non-ascii", "path"],
)
async def test_malformed_conversation_id_is_400_never_echoed(
    gateway: Gateway, rsa_issuer: LocalIssuer, value: bytes
) -> None:
    # The id goes into a response header, logs and metric labels: refused, never rewritten.
    reply = await gateway.refused(
        [bearer(rsa_issuer.mint(sub="alice")), (b"x-conversation-id", value)],
        400,
        "invalid_conversation_id",
    )
    assert reply.header("x-conversation-id") is None


async def test_two_conversation_ids_are_400(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    headers = [
        bearer(rsa_issuer.mint(sub="alice")),
        ("x-conversation-id", "a"),
        ("X-Conversation-Id", "b"),
    ]
    await gateway.refused(headers, 400, "invalid_conversation_id")


# -- behind uvicorn's proxy headers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded_allow_ips", "peer", "trusted"),
    [
        ("127.0.0.1", ATTACKER, False),  # uvicorn's default: the header is ignored from outside
        ("127.0.0.1", ("127.0.0.1", 5000), True),  # a local proxy vouches for 10.0.0.1
        ("*", ATTACKER, True),  # the misconfiguration docs/security.md warns about
    ],
    ids=["default", "local-proxy", "allow-all"],
)
async def test_trust_follows_the_client_address_uvicorn_resolved(
    rsa_issuer: LocalIssuer, forwarded_allow_ips: str, peer: tuple[str, int], trusted: bool
) -> None:
    # IdentityMiddleware trusts scope["client"], which uvicorn's ProxyHeadersMiddleware rewrites
    # from X-Forwarded-For for the peers in --forwarded-allow-ips. With "*" every client picks its
    # own address, so trusted_header_networks must never be combined with it.
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    gateway = build_gateway([static_issuer(rsa_issuer)])
    # uvicorn types its scope and messages as TypedDicts; the stack takes plain mappings.
    proxied: Any = ProxyHeadersMiddleware(cast(Any, gateway.app), forwarded_allow_ips)
    served = Gateway(proxied, gateway.seen)
    headers = [("x-forwarded-for", "10.0.0.1"), ("x-user-email", "ceo@acme.com")]
    if trusted:
        seen = await served.accepted(headers, client=peer)
        assert seen.identity.email == "ceo@acme.com"
    else:
        await served.refused(headers, 401, "missing_credentials", client=peer)
