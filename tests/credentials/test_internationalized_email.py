"""Internationalized email claims (issue 13, item 10): a valid address is accepted in NFC, and a
look-alike domain is DomainAllowlist's 403, never a refusal of the person's token."""

from __future__ import annotations

import unicodedata
from typing import Any

import httpx
import pytest

from asgi_identity import get_identity, identity_stack
from asgi_identity.credentials.email import parse_email, parse_signed_email
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import LocalIssuer


async def _whoami(scope: Any, receive: Any, send: Any) -> None:
    identity = get_identity(scope)
    body = f"{identity.email}|{identity.domain}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _call(issuer: LocalIssuer, email: str, **stack: Any) -> httpx.Response:
    app = identity_stack(
        _whoami,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)]
        },
        **stack,
    )
    token = issuer.mint(sub="p-1", email=email, email_verified=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        return await client.get("/", headers={"authorization": f"Bearer {token}"})


DECOMPOSED = "jose\u0301@acme.com"  # e + combining acute accent
COMPOSED = "jos\u00e9@acme.com"


@pytest.mark.parametrize(
    ("claim", "kept"),
    [
        ("jösé@acme.com", "jösé@acme.com"),
        (DECOMPOSED, COMPOSED),
        ("用户@acme.com", "用户@acme.com"),
        ("Δοκιμή@acme.com", "δοκιμή@acme.com"),
        ("अजय@acme.com", "अजय@acme.com"),
    ],
)
async def test_an_internationalized_address_is_accepted_in_nfc(
    issuer: LocalIssuer, claim: str, kept: str
) -> None:
    response = await _call(issuer, claim, domains={"domains": ["acme.com"]})
    assert response.status_code == 200, response.text
    assert response.text == f"{kept}|acme.com"
    assert unicodedata.is_normalized("NFC", response.text)


@pytest.mark.parametrize(
    "claim",
    ["alice@\u0430cme.com", "alice@xn--cme-8cd.com", "alice@\uff41cme.com", "alice@acme\u00df.com"],
    ids=["cyrillic-a", "punycode", "full-width", "sharp-s"],
)
async def test_a_look_alike_domain_is_the_allowlists_403_not_a_401(
    issuer: LocalIssuer, claim: str
) -> None:
    response = await _call(issuer, claim, domains={"domains": ["acme.com"]})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "domain_not_allowed"
    # Without an allowlist the person is who the token says; the address is kept, no domain.
    response = await _call(issuer, claim)
    assert response.status_code == 200
    assert response.text.endswith("|None")


@pytest.mark.parametrize(
    "claim",
    [
        "alice@acme.com@evil.com",
        "Alice <alice@acme.com>",
        "al\u200bice@acme.com",
        "alice\u202e@acme.com",
        "alice@acme.com\u200b",
        "alice@",
        "\u00e9" * 40 + "@acme.com",  # 40 characters, 80 octets: over RFC 5321's 64
    ],
)
async def test_what_is_no_address_at_all_still_refuses_the_token(
    issuer: LocalIssuer, claim: str
) -> None:
    response = await _call(issuer, claim)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_header_and_claim_parsers_agree_on_valid_addresses() -> None:
    for raw in ("jösé@Bücher.de", DECOMPOSED, "ALICE@acme.com"):
        parsed = parse_email(raw)
        assert parse_signed_email(raw) == (parsed.address, parsed.domain)
        assert parse_email(parsed.address) == parsed
