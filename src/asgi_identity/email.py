"""Email address normalization and domain matching, as a careful mail administrator would do it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

# A plain dot-atom local part (RFC 5322 atext); quoted strings, comments and display names are
# refused: an identity header carries a bare address, not a mail header.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
MAX_EMAIL_LENGTH = 254


class EmailAddress(NamedTuple):
    address: str
    local: str
    domain: str


def normalize_domain(domain: str) -> str:
    """Lower-case, IDNA-encoded (punycode), without a trailing dot; ValueError when malformed."""
    if not domain or domain != domain.strip():
        raise ValueError("empty domain or surrounding whitespace")
    if domain.endswith("."):
        domain = domain[:-1]
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in domain):
        raise ValueError("domain contains control, format or space characters")
    if domain.isascii():
        ascii_domain = domain.lower()
    else:
        # NFKC would fold full-width letters into ASCII look-alikes; refuse instead of folding, so
        # that a full-width "a" never passes as an ASCII one.
        if unicodedata.normalize("NFKC", domain) != domain:
            raise ValueError("domain is not in normalized form")
        try:
            ascii_domain = domain.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise ValueError("domain is not a valid internationalized name") from exc
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("domain is not a valid host name")
    return ascii_domain


def parse_email(raw: str) -> EmailAddress:
    """One plain address (`local@domain`), normalized; ValueError saying what is wrong."""
    if len(raw) > MAX_EMAIL_LENGTH:
        raise ValueError("email address is too long")
    if raw.count("@") != 1:
        raise ValueError("email address must contain exactly one @")
    local, _, domain = raw.partition("@")
    if not _LOCAL.fullmatch(local):
        raise ValueError("email local part is empty or not a plain address")
    domain = normalize_domain(domain)
    local = local.lower()
    return EmailAddress(f"{local}@{domain}", local, domain)


def normalize_domain_pattern(pattern: str) -> str:
    """`acme.com` (exact), `.acme.com` or `*.acme.com` (subdomains only), normalized."""
    if pattern.startswith("*."):
        return "." + normalize_domain(pattern[2:])
    if pattern.startswith("."):
        return "." + normalize_domain(pattern[1:])
    return normalize_domain(pattern)


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
