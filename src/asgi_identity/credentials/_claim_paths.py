"""Reading claims by path for ClaimMap: dotted paths, string-or-list values, actor chains, and a
read-only copy of the claims for the Identity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from asgi_identity.credentials.email import parse_signed_email
from asgi_identity.identity import Actor

#: One claim path, or several tried in order (single values) / merged (roles and scopes).
ClaimPaths: TypeAlias = str | Sequence[str] | None

ABSENT: Final[Any] = object()
# A deeper `act` chain is not a delegation anyone configured; it is a token built to hurt.
MAX_ACTOR_DEPTH: Final = 8
_FROZEN_DEPTH: Final = 32
# Addresses already parsed: every new token of a person (a refresh, a new session) carries the
# same one. Emptied when full, so there is no eviction order to keep per token.
_PARSED_EMAILS: dict[str, tuple[str, str | None]] = {}
_PARSED_EMAILS_SIZE: Final = 4096


class WrongType(Exception):
    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(f"claim {path!r} must be {expected}, not {type(value).__name__}")


def compile_paths(name: str, paths: ClaimPaths) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if paths is None:
        return ()
    if isinstance(paths, str):
        paths = (paths,)
    if not isinstance(paths, Sequence):
        raise ValueError(f"ClaimMap.{name}: {paths!r} is not a claim name or a list of them")
    compiled = []
    for path in paths:
        if not isinstance(path, str) or not path or path.startswith(".") or path.endswith("."):
            raise ValueError(f"ClaimMap.{name}: {path!r} is not a claim name or dotted path")
        compiled.append((path, tuple(path.split("."))))
    return tuple(compiled)


def lookup(claims: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    # A claim whose own name contains dots (Auth0's "https://acme.com/roles") is found as is;
    # only a name that is not a claim is read as a path into nested objects.
    value = claims.get(path, ABSENT)
    if value is not ABSENT or len(parts) == 1:
        return ABSENT if value is None else value
    node: Any = claims
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            raise WrongType(".".join(parts[:depth]), "an object", node)
        node = node.get(part, ABSENT)
        if node is ABSENT or node is None:
            return ABSENT
    return node


def single(claims: Mapping[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for path, parts in paths:
        value = lookup(claims, path, parts)
        if value is ABSENT:
            continue
        if isinstance(value, str):
            return value
        # Numeric ids (a tenant number, a numeric user id) are names too; booleans are not.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise WrongType(path, "a string", value)
    return None


def many(
    claims: Mapping[str, Any],
    paths: tuple[tuple[str, tuple[str, ...]], ...],
    *,
    split: bool,
) -> frozenset[str]:
    values: set[str] = set()
    for path, parts in paths:
        value = lookup(claims, path, parts)
        if value is ABSENT:
            continue
        if isinstance(value, str):
            # OAuth scopes travel as one space-separated string (RFC 6749 section 3.3); a role
            # given as a string is one role, since role names may contain spaces.
            values.update(value.split() if split else (value,))
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise WrongType(path, "a list of strings", item)
                values.add(item)
        else:
            raise WrongType(path, "a string or a list of strings", value)
    values.discard("")
    return frozenset(values)


def boolean(
    claims: Mapping[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]
) -> bool | None:
    for path, parts in paths:
        value = lookup(claims, path, parts)
        if value is ABSENT:
            continue
        if isinstance(value, bool):
            return value
        # Some providers (older Cognito pools) send "true" / "false" as strings.
        if value == "true":
            return True
        if value == "false":
            return False
        raise WrongType(path, "a boolean", value)
    return None


def actor_chain(value: Any, depth: int = 1) -> Actor:
    if depth > MAX_ACTOR_DEPTH:
        raise WrongType("act", f"a chain of at most {MAX_ACTOR_DEPTH} actors", value)
    if not isinstance(value, Mapping):
        raise WrongType("act", "an object", value)
    fields: dict[str, str | None] = {}
    for name in ("sub", "iss", "client_id"):
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            raise WrongType(f"act.{name}", "a string", item)
        fields[name] = item
    subject = fields["sub"] or fields["client_id"]
    if not subject:
        raise WrongType("act.sub", "a string", None)
    nested = value.get("act")
    return Actor(
        subject=subject,
        issuer=fields["iss"],
        client_id=fields["client_id"],
        actor=None if nested is None else actor_chain(nested, depth + 1),
    )


def email_address(raw: str) -> tuple[str, str | None]:
    """(address, domain or None) of a signed email claim; see `parse_signed_email`."""
    parsed = _PARSED_EMAILS.get(raw)
    if parsed is None:
        # ValueError for what is not an address at all (or too long): not kept.
        parsed = parse_signed_email(raw)
        if len(_PARSED_EMAILS) >= _PARSED_EMAILS_SIZE:
            _PARSED_EMAILS.clear()
        _PARSED_EMAILS[raw] = parsed
    return parsed


def freeze_claims(value: Any, depth: int = 0) -> Any:
    """A read-only copy: objects become read-only mappings and arrays tuples.

    Verified identities are cached and shared between requests, so nothing a handler does to
    `identity.claims` may leak into the next request.
    """
    if depth > _FROZEN_DEPTH:
        raise WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
    if isinstance(value, dict):
        frozen = dict(value)
        if frozen and depth == _FROZEN_DEPTH:
            raise WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
        # Most claims are strings and numbers, already immutable: only containers are copied.
        for key, item in frozen.items():
            if isinstance(item, (dict, list)):
                frozen[key] = freeze_claims(item, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list):
        if value and depth == _FROZEN_DEPTH:
            raise WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
        return tuple(
            freeze_claims(item, depth + 1) if isinstance(item, (dict, list)) else item
            for item in value
        )
    return value
