"""Email address normalization and domain matching, as a careful mail administrator would do it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple, cast

# A plain dot-atom local part (RFC 5322 atext); quoted strings, comments and display names are
# refused: an identity carries a bare address, not a mail header.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# RFC 6531 widens atext with every non-ASCII character; of those, controls, format characters
# (bidi overrides, zero-width joiners), unassigned, private-use and spaces are still refused.
_NOT_IN_LOCAL = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
MAX_EMAIL_LENGTH = 254
MAX_LOCAL_LENGTH = 64
MAX_DOMAIN_LENGTH = 253
# Scripts whose letters pass for one another; a label that mixes them is a homograph, not a name.
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


class EmailAddress(NamedTuple):
    address: str
    local: str
    domain: str


def _mixes_scripts(label: str) -> bool:
    scripts = set()
    for ch in label:
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ", 1)[0]
            if script in _CONFUSABLE_SCRIPTS:
                scripts.add(script)
    return len(scripts) > 1


def _unicode_domain(domain: str) -> str:
    """IDNA-encode a non-ASCII domain, refusing every input that IDNA would quietly rewrite."""
    # NFKC would fold full-width letters into ASCII look-alikes; refuse instead of folding, so
    # that a full-width "a" never passes as an ASCII one.
    if unicodedata.normalize("NFKC", domain) != domain:
        raise ValueError("domain is not in normalized form")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
        round_trip = ascii_domain.encode("ascii").decode("idna")
    except UnicodeError as exc:
        raise ValueError("domain is not a valid internationalized name") from exc
    # Nameprep maps some characters to nothing (variation selectors, U+034F), treats "。" and
    # other dots as label separators and "ß" as "ss": each would make a different string match
    # a listed domain. Only a name that survives the round trip unchanged is the name it shows.
    if round_trip != domain.lower():
        raise ValueError("domain changes under IDNA normalization")
    if any(_mixes_scripts(label) for label in round_trip.split(".")):
        raise ValueError("domain mixes Latin, Cyrillic or Greek letters in one label")
    return ascii_domain


def normalize_domain(domain: str) -> str:
    """Lower-case, IDNA-encoded (punycode), without a trailing dot; ValueError when malformed."""
    if not domain or domain != domain.strip():
        raise ValueError("empty domain or surrounding whitespace")
    if domain.endswith("."):
        # The DNS root: `acme.com.` is `acme.com`.
        domain = domain[:-1]
    if len(domain) > MAX_DOMAIN_LENGTH * 4:
        raise ValueError("domain is too long")
    if domain.isascii():
        # The host name pattern below refuses ASCII controls and spaces on its own.
        ascii_domain = domain.lower()
        if " " in ascii_domain or not ascii_domain.isprintable():
            raise ValueError("domain contains control, format or space characters")
    else:
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in domain):
            raise ValueError("domain contains control, format or space characters")
        ascii_domain = _unicode_domain(domain)
    if len(ascii_domain) > MAX_DOMAIN_LENGTH:
        raise ValueError("domain is too long")
    if not _HOST.fullmatch(ascii_domain):
        raise ValueError("domain is not a valid host name")
    if ascii_domain.rpartition(".")[2].isdigit():
        raise ValueError("an IP address is not a mail domain")
    if domain.isascii() and "xn--" in ascii_domain:
        # A punycode label must be one IDNA itself would produce, and its Unicode form must pass
        # the same checks as a Unicode name typed directly.
        try:
            unicode_form = ascii_domain.encode("ascii").decode("idna")
        except UnicodeError as exc:
            raise ValueError("domain has an invalid punycode label") from exc
        if not unicode_form.isascii():
            _unicode_domain(unicode_form)
    return ascii_domain


def _plain_local(local: str) -> bool:
    if local.isascii():
        return _LOCAL.fullmatch(local) is not None
    for atom in local.split("."):
        if not atom:
            return False
        for ch in atom:
            if ch.isascii():
                if not _LOCAL.fullmatch(ch):
                    return False
            elif unicodedata.category(ch) in _NOT_IN_LOCAL:
                return False
    return True


def _split_email(raw: Any) -> tuple[str, str]:
    """(local part in NFC and lower case, domain as given); ValueError when not an address."""
    if not isinstance(raw, str):
        raise ValueError("email address must be a string")
    # Checked again after IDNA; this first check keeps the work on a huge input small.
    if len(raw) > MAX_EMAIL_LENGTH:
        raise ValueError("email address is too long")
    if raw.count("@") != 1:
        raise ValueError("email address must contain exactly one @")
    local, _, domain = raw.partition("@")
    # An internationalized address (RFC 6531) compares in NFC: the same name typed with a
    # combining accent or a precomposed one is one mailbox.
    if len(local) > MAX_LOCAL_LENGTH:
        raise ValueError("email local part is too long")
    local = unicodedata.normalize("NFC", local)
    if not _plain_local(local):
        raise ValueError("email local part is empty or not a plain address")
    if not local.isascii():
        # Lower case can leave a string that is not NFC (a dotted capital I): normalize again.
        local = unicodedata.normalize("NFC", local.lower())
        # RFC 6531 keeps RFC 5321's limit in octets.
        if len(local.encode("utf-8")) > MAX_LOCAL_LENGTH:
            raise ValueError("email local part is too long")
        return local, domain
    return local.lower(), domain


def parse_email(raw: Any) -> EmailAddress:
    """One plain address (`local@domain`), normalized; ValueError saying what is wrong.

    The local part may be internationalized (RFC 6531, kept in NFC); the domain is IDNA-encoded
    and refused when it is a look-alike (mixed scripts, forms IDNA would rewrite).
    """
    local, domain = _split_email(raw)
    return _joined(local, normalize_domain(domain))


def _joined(local: str, domain: str) -> EmailAddress:
    address = f"{local}@{domain}"
    # IDNA makes a Unicode domain longer: the limit holds for the address as it is kept.
    if len(address) > MAX_EMAIL_LENGTH:
        raise ValueError("email address is too long")
    return EmailAddress(address, local, domain)


def parse_signed_email(raw: Any) -> tuple[str, str | None]:
    """(address, domain) of an email claim a trusted issuer signed; ValueError when it is not an
    address at all. A domain no allowlist can match (a look-alike, a single label, an IP
    address) gives a None domain, and the address as signed: refusing it is DomainAllowlist's
    403, not a reason to refuse the person's token."""
    local, domain = _split_email(raw)
    try:
        ascii_domain = normalize_domain(domain)
    except ValueError:
        if not domain or any(unicodedata.category(ch) in _NOT_IN_LOCAL for ch in domain):
            raise
        return f"{local}@{unicodedata.normalize('NFC', domain).lower()}", None
    return _joined(local, ascii_domain)[::2]


def normalize_domain_pattern(pattern: str) -> str:
    """`acme.com` (exact), `.acme.com` or `*.acme.com` (subdomains only), normalized."""
    if not isinstance(cast(object, pattern), str):
        raise TypeError(f"a domain must be a string, not {type(pattern).__name__}")
    try:
        if pattern.startswith("*."):
            return "." + normalize_domain(pattern[2:])
        if pattern.startswith("."):
            return "." + normalize_domain(pattern[1:])
        return normalize_domain(pattern)
    except ValueError as exc:
        raise ValueError(f"invalid domain {pattern!r}: {exc}") from None


def compile_domains(patterns: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact domains, subdomain suffixes) from patterns, normalized once at start-up."""
    exact: set[str] = set()
    suffixes: list[str] = []
    for pattern in patterns:
        normalized = normalize_domain_pattern(pattern)
        if normalized.startswith("."):
            suffixes.append(normalized)
        else:
            exact.add(normalized)
    return frozenset(exact), tuple(suffixes)


def domain_allowed(domain: str, exact: frozenset[str], suffixes: tuple[str, ...]) -> bool:
    """Exact match on the normalized domain, or a proper subdomain of a listed suffix."""
    return domain in exact or domain.endswith(suffixes)


def domain_listed(domain: str, patterns: Collection[str]) -> bool:
    """`domain_allowed` against one set of normalized patterns (as `APIKey.allowed_domains` holds).

    A `.acme.com` entry matches `x.acme.com` and `y.x.acme.com`, never `acme.com` or `evilacme.com`:
    each parent of `domain` that starts at a dot is looked up, a few set lookups in all.
    """
    if domain in patterns:
        return True
    dot = domain.find(".")
    while dot != -1:
        if domain[dot:] in patterns:
            return True
        dot = domain.find(".", dot + 1)
    return False
