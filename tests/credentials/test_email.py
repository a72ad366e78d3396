from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_identity.credentials.email import (
    compile_domains,
    domain_allowed,
    domain_listed,
    normalize_domain,
    normalize_domain_pattern,
    parse_email,
)

# What a careful mail administrator accepts as one plain address, and how it is normalized.
ACCEPTED = [
    ("alice@acme.com", "alice@acme.com"),
    ("Alice@ACME.COM", "alice@acme.com"),
    ("alice@acme.com.", "alice@acme.com"),
    ("alice+llm@acme.com", "alice+llm@acme.com"),
    ("a.b-c_d@mail.acme.co.uk", "a.b-c_d@mail.acme.co.uk"),
    ("alice@bücher.de", "alice@xn--bcher-kva.de"),
    ("alice@BÜCHER.de", "alice@xn--bcher-kva.de"),
    ("alice@xn--bcher-kva.de", "alice@xn--bcher-kva.de"),
    # Wholly Cyrillic: a different domain with its own punycode name, never acme.com.
    ("alice@\u0430\u0441\u0435.com", "alice@xn--80ak9a.com"),
    # Internationalized local parts (RFC 6531), in NFC; the mailbox is the domain's business.
    ("\u0430lice@acme.com", "\u0430lice@acme.com"),
    ("jösé@acme.com", "jösé@acme.com"),
]

REFUSED = [
    ("", "exactly one @"),
    ("alice", "exactly one @"),
    ("alice@bob@acme.com", "exactly one @"),
    ("@acme.com", "local part"),
    ("alice@", "empty domain"),
    ('"alice"@acme.com', "local part"),
    ('"alice@acme.com"@evil.com', "exactly one @"),
    ("Alice <alice@acme.com>", "local part"),
    ("alice@acme.com <alice@acme.com>", "exactly one @"),
    ("alice(comment)@acme.com", "local part"),
    ("alice@(comment)acme.com", "valid host name"),
    ("alice@acme.com (comment)", "space characters"),
    (" alice@acme.com", "local part"),
    ("alice@acme.com ", "surrounding whitespace"),
    ("alice @acme.com", "local part"),
    ("alice@acme .com", "space characters"),
    ("alice@acme.com\t", "surrounding whitespace"),
    ("alice@acme.com\r\nx-admin: 1", "space characters"),
    ("al\u200bice@acme.com", "local part"),
    ("alice@ac\u200bme.com", "format"),
    ("alice@acme.com\u200d", "format"),
    ("alice@\ufeffacme.com", "format"),
    ("alice@acme\u00ad.com", "format"),
    ("alice@\u0430cme.com", "mixes Latin, Cyrillic or Greek"),
    ("alice@xn--cme-5cd.com", "mixes Latin, Cyrillic or Greek"),
    ("alice@payp\u03b1l.com", "mixes Latin, Cyrillic or Greek"),
    ("alice@\uff41cme.com", "normalized form"),
    ("alice@\uff21\uff23\uff2d\uff25.\uff23\uff2f\uff2d", "normalized form"),
    ("alice\uff20acme.com", "exactly one @"),
    ("alice@acme\uff0ecom", "normalized form"),
    ("alice@acme\u3002com", "changes under IDNA"),
    ("alice@acme\ufe0f.com", "changes under IDNA"),
    ("alice@ac\u034fme.com", "changes under IDNA"),
    ("alice@straße.de", "changes under IDNA"),
    ("alice@xn--zz.com", "invalid punycode"),
    ("alice@acme.com..", "valid host name"),
    ("alice@.acme.com", "valid host name"),
    ("alice@acme", "valid host name"),
    ("alice@-acme.com", "valid host name"),
    ("alice@acme_corp.com", "valid host name"),
    ("alice@1.2.3.4", "IP address"),
    ("alice@[1.2.3.4]", "valid host name"),
    ("alice..smith@acme.com", "local part"),
    (".alice@acme.com", "local part"),
    ("alice.@acme.com", "local part"),
    ("jos\u00e9\u202e@acme.com", "local part"),
    ("a" * 65 + "@acme.com", "local part is too long"),
    ("alice@" + "a" * 64 + ".com", "valid host name"),
    ("alice@" + ".".join(["a" * 60] * 5) + ".com", "too long"),
    # 220 characters as typed, 276 once the domain is punycode: the kept address is what counts.
    ("a" * 64 + "@" + ".".join(["bücherbücherbücher"] * 8) + ".com", "address is too long"),
]


@pytest.mark.parametrize(("raw", "normalized"), ACCEPTED)
def test_plain_addresses_are_accepted_and_normalized(raw: str, normalized: str) -> None:
    parsed = parse_email(raw)
    assert parsed.address == normalized
    assert parsed.address == f"{parsed.local}@{parsed.domain}"


@pytest.mark.parametrize(("raw", "reason"), REFUSED)
def test_anything_but_one_plain_address_is_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_email(raw)


@pytest.mark.parametrize("value", [None, 42, ["alice@acme.com"], b"alice@acme.com"])
def test_a_claim_that_is_not_a_string_is_a_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_email(value)


@pytest.mark.parametrize(
    ("pattern", "normalized"),
    [
        ("acme.com", "acme.com"),
        ("ACME.com.", "acme.com"),
        (".acme.com", ".acme.com"),
        ("*.Acme.com", ".acme.com"),
        ("bücher.de", "xn--bcher-kva.de"),
    ],
)
def test_domain_patterns_are_normalized_once(pattern: str, normalized: str) -> None:
    assert normalize_domain_pattern(pattern) == normalized


@pytest.mark.parametrize("pattern", ["", "com", "*acme.com", "acme.*", "*.com", "ac me.com"])
def test_a_bad_domain_pattern_names_itself(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid domain"):
        normalize_domain_pattern(pattern)


def test_a_domain_pattern_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        normalize_domain_pattern(42)  # type: ignore[arg-type]


LISTED = frozenset({"acme.com", ".partner.org"})


@pytest.mark.parametrize(
    ("domain", "listed"),
    [
        ("acme.com", True),
        ("evil.acme.com", False),
        ("acme.com.evil.com", False),
        ("evilacme.com", False),
        ("partner.org", False),
        ("eu.partner.org", True),
        ("a.eu.partner.org", True),
        ("evilpartner.org", False),
        ("partner.org.evil.com", False),
    ],
)
def test_exact_domains_and_listed_subdomains(domain: str, listed: bool) -> None:
    assert domain_listed(domain, LISTED) is listed
    exact, suffixes = compile_domains(["acme.com", "*.partner.org"])
    assert domain_allowed(domain, exact, suffixes) is listed


@given(st.text(max_size=40))
def test_parse_email_never_fails_with_anything_but_value_error(raw: str) -> None:
    try:
        parsed = parse_email(raw)
    except ValueError:
        return
    # Whatever is accepted is already in its normal form.
    assert parse_email(parsed.address) == parsed
    assert normalize_domain(parsed.domain) == parsed.domain
