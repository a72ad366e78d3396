"""Look-alike email domains against DomainAllowlist, through the header and the token paths.

References: UTS 39 (Unicode security mechanisms: mixed-script confusables), RFC 5890-5894 (IDNA),
RFC 5321 4.1.2 (the address grammar), oauth2-proxy CVE-2021-21291 (`.example.com` also matched
`evilexample.com`) and CVE-2026-40574 / GHSA-c5c4-8r6x-56w3 (`attacker@evil.com@company.com`
passed its email_domain check).
"""

from __future__ import annotations

import pytest

from asgi_identity.testing import LocalIssuer

from ._attack import (
    BACKEND_KEY,
    INSIDE,
    Gateway,
    backend_key_record,
    bearer,
    build_gateway,
    static_issuer,
)

ALLOWED = ["acme.com", "*.corp.example"]


@pytest.fixture
def allowlisted(rsa_issuer: LocalIssuer) -> Gateway:
    return build_gateway([static_issuer(rsa_issuer)], domains=ALLOWED)


ACCEPTED = [
    ("alice@acme.com", "alice@acme.com", "listed"),
    ("ALICE@ACME.COM", "alice@acme.com", "RFC 5321 2.4: domains ignore case"),
    ("alice@acme.com.", "alice@acme.com", "RFC 1034 3.1: the root label is implied"),
    ("alice@x.corp.example", "alice@x.corp.example", "a subdomain of a *. entry"),
    ("alice@a.b.corp.example", "alice@a.b.corp.example", "any depth under a *. entry"),
]


@pytest.mark.parametrize(
    ("email", "normalized", "reason"), ACCEPTED, ids=[email for email, _, _ in ACCEPTED]
)
async def test_listed_domains_pass_in_their_normal_form(
    allowlisted: Gateway, email: str, normalized: str, reason: str
) -> None:
    seen = await allowlisted.accepted([("x-user-email", email)], client=INSIDE)
    assert seen.identity.email == normalized


NOT_LISTED = [
    ("alice@acme.com.evil.com", "suffix appended: the registrable domain is evil.com"),
    ("alice@evilacme.com", "CVE-2021-21291 class: endswith() without a dot boundary"),
    ("alice@acme.co", "prefix of a listed name"),
    ("alice@sub.acme.com", "an exact entry does not cover subdomains"),
    ("alice%40acme.com@evil.com", "the local part may hold %40; the domain is evil.com"),
    ("alice@corp.example", "*.corp.example means subdomains only"),
    ("alice@evilcorp.example", "CVE-2021-21291 class: no dot boundary before corp.example"),
    ("alice@x.corp.example.evil", "suffix appended"),
    ("alice@\u0430\u0441\u043c\u0435.com", "all-Cyrillic homograph: one script, another name"),
    ("alice@xn--80akut.com", "the same homograph in punycode"),
]


@pytest.mark.parametrize(("email", "reason"), NOT_LISTED, ids=[email for email, _ in NOT_LISTED])
async def test_look_alike_domains_are_403(allowlisted: Gateway, email: str, reason: str) -> None:
    await allowlisted.refused(
        [(b"x-user-email", email.encode("utf-8"))], 403, "domain_not_allowed", client=INSIDE
    )


MALFORMED = [
    ("alice@\u0430cme.com", "UTS 39: Cyrillic a among Latin letters"),
    ("alice@xn--cme-8cd.com", "the same mixed-script label in punycode"),
    ("alice@\uff41cme.com", "full-width a folds to ASCII under NFKC"),
    ("alice@acme.com\u200b", "zero-width space vanishes under nameprep"),
    ("alice@acme\u00df.com", "IDNA 2003 maps sharp s to ss"),
    ("alice@acme\u3002com", "ideographic full stop is a label separator in IDNA"),
    ("alice@acme.com@evil.com", "CVE-2026-40574 (oauth2-proxy): two @, parser-dependent"),
    ("alice@evil.com@acme.com", "the same, with the listed domain last"),
    ("alice@[10.0.0.1]", "address literals are not mail domains here"),
    ("alice@10.0.0.1", "an IP address is not a mail domain"),
    ("alice@acme..com", "empty label"),
    ("alice@-acme.com", "RFC 5891 4.2.3.1: no leading hyphen"),
    ("alice@acme.com\u0000.evil.com", "NUL truncation"),
    ('"alice@acme.com"@evil.com', "quoted local parts are refused"),
]


@pytest.mark.parametrize(("email", "reason"), MALFORMED, ids=[email for email, _ in MALFORMED])
async def test_confusable_or_malformed_addresses_are_refused_before_matching(
    allowlisted: Gateway, email: str, reason: str
) -> None:
    # From a trusted header these are a 400: the backend sent something that is not an address.
    await allowlisted.refused(
        [(b"x-user-email", email.encode("utf-8"))], 400, "invalid_request", client=INSIDE
    )


@pytest.mark.parametrize("email", [email for email, _ in MALFORMED[:6]])
async def test_confusable_email_claim_in_a_token_is_403_or_401(
    allowlisted: Gateway, rsa_issuer: LocalIssuer, email: str
) -> None:
    # The same address in a signed token: a look-alike domain is no listed domain (403); a
    # zero-width character is no text an address can hold (401).
    token = rsa_issuer.mint(sub="mallory", email=email)
    if "\u200b" in email:
        await allowlisted.refused([bearer(token)], 401, "invalid_token")
    else:
        await allowlisted.refused([bearer(token)], 403, "domain_not_allowed")


@pytest.mark.parametrize("email", [email for email, _ in NOT_LISTED])
async def test_look_alike_email_claim_in_a_token_is_403(
    allowlisted: Gateway, rsa_issuer: LocalIssuer, email: str
) -> None:
    token = rsa_issuer.mint(sub="mallory", email=email)
    await allowlisted.refused([bearer(token)], 403, "domain_not_allowed")


async def test_unverified_email_claim_is_403(allowlisted: Gateway, rsa_issuer: LocalIssuer) -> None:
    # OIDC Core 5.1: email_verified false means the IdP does not vouch for the address; anyone
    # can sign up at an IdP with somebody else's address.
    token = rsa_issuer.mint(sub="mallory", email="ceo@acme.com", email_verified=False)
    await allowlisted.refused([bearer(token)], 403, "email_unverified")


async def test_token_without_email_is_403_when_a_list_applies(
    allowlisted: Gateway, rsa_issuer: LocalIssuer
) -> None:
    await allowlisted.refused([bearer(rsa_issuer.mint(sub="mallory"))], 403, "domain_not_allowed")


async def test_api_key_domain_list_overrides_the_global_one(rsa_issuer: LocalIssuer) -> None:
    # A partner's key may only speak for the partner's people, even for a globally listed domain.
    gateway = build_gateway(
        [static_issuer(rsa_issuer)],
        api_keys=[backend_key_record(allowed_domains=["partner.example"])],
        domains=ALLOWED,
    )
    key = ("x-api-key", BACKEND_KEY)
    await gateway.refused([key, ("x-user-email", "alice@acme.com")], 403, "domain_not_allowed")
    await gateway.refused(
        [key, ("x-user-email", "alice@partner.example.evil")], 403, "domain_not_allowed"
    )
    seen = await gateway.accepted([key, ("x-user-email", "bob@partner.example")])
    assert seen.identity.email == "bob@partner.example"
    assert seen.identity.client_id == "backend"


@pytest.mark.parametrize(
    "pattern", ["*", "*.com", "acme.com/evil", "ac me.com", "10.0.0.1", "\u0430cme.com", ""]
)
def test_unsafe_allowlist_entries_are_refused_at_start_up(pattern: str) -> None:
    # A typo in the list must not silently widen (or empty) it.
    with pytest.raises((ValueError, TypeError)):
        build_gateway(domains=[pattern], allow_anonymous=True)
