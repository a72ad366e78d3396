"""Mapping verified token claims onto an Identity: dotted paths, string-or-list claims, presets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from asgi_identity.credentials.email import EmailAddress, parse_email
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Actor, Identity

#: One claim path, or several tried in order (single values) / merged (roles and scopes).
ClaimPaths: TypeAlias = str | Sequence[str] | None

_ABSENT: Final[Any] = object()
# A deeper `act` chain is not a delegation anyone configured; it is a token built to hurt.
MAX_ACTOR_DEPTH: Final = 8
_FROZEN_DEPTH: Final = 32
# Addresses already parsed: every new token of a person (a refresh, a new session) carries the
# same one. Emptied when full, so there is no eviction order to keep per token.
_PARSED_EMAILS: dict[str, EmailAddress] = {}
_PARSED_EMAILS_SIZE: Final = 4096


class _WrongType(Exception):
    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(f"claim {path!r} must be {expected}, not {type(value).__name__}")


def _compile(name: str, paths: ClaimPaths) -> tuple[tuple[str, tuple[str, ...]], ...]:
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


def _lookup(claims: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    # A claim whose own name contains dots (Auth0's "https://acme.com/roles") is found as is;
    # only a name that is not a claim is read as a path into nested objects.
    value = claims.get(path, _ABSENT)
    if value is not _ABSENT or len(parts) == 1:
        return _ABSENT if value is None else value
    node: Any = claims
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping):
            raise _WrongType(".".join(parts[:depth]), "an object", node)
        node = node.get(part, _ABSENT)
        if node is _ABSENT or node is None:
            return _ABSENT
    return node


def _single(
    claims: Mapping[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]
) -> str | None:
    for path, parts in paths:
        value = _lookup(claims, path, parts)
        if value is _ABSENT:
            continue
        if isinstance(value, str):
            return value
        # Numeric ids (a tenant number, a numeric user id) are names too; booleans are not.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _WrongType(path, "a string", value)
    return None


def _many(
    claims: Mapping[str, Any],
    paths: tuple[tuple[str, tuple[str, ...]], ...],
    *,
    split: bool,
) -> frozenset[str]:
    values: set[str] = set()
    for path, parts in paths:
        value = _lookup(claims, path, parts)
        if value is _ABSENT:
            continue
        if isinstance(value, str):
            # OAuth scopes travel as one space-separated string (RFC 6749 section 3.3); a role
            # given as a string is one role, since role names may contain spaces.
            values.update(value.split() if split else (value,))
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise _WrongType(path, "a list of strings", item)
                values.add(item)
        else:
            raise _WrongType(path, "a string or a list of strings", value)
    values.discard("")
    return frozenset(values)


def _boolean(
    claims: Mapping[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]
) -> bool | None:
    for path, parts in paths:
        value = _lookup(claims, path, parts)
        if value is _ABSENT:
            continue
        if isinstance(value, bool):
            return value
        # Some providers (older Cognito pools) send "true" / "false" as strings.
        if value == "true":
            return True
        if value == "false":
            return False
        raise _WrongType(path, "a boolean", value)
    return None


def _actor(value: Any, depth: int = 1) -> Actor:
    if depth > MAX_ACTOR_DEPTH:
        raise _WrongType("act", f"a chain of at most {MAX_ACTOR_DEPTH} actors", value)
    if not isinstance(value, Mapping):
        raise _WrongType("act", "an object", value)
    fields: dict[str, str | None] = {}
    for name in ("sub", "iss", "client_id"):
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            raise _WrongType(f"act.{name}", "a string", item)
        fields[name] = item
    subject = fields["sub"] or fields["client_id"]
    if not subject:
        raise _WrongType("act.sub", "a string", None)
    nested = value.get("act")
    return Actor(
        subject=subject,
        issuer=fields["iss"],
        client_id=fields["client_id"],
        actor=None if nested is None else _actor(nested, depth + 1),
    )


def _email(raw: str) -> EmailAddress:
    parsed = _PARSED_EMAILS.get(raw)
    if parsed is None:
        parsed = parse_email(raw)  # ValueError for a malformed (or too long) address: not kept
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
        raise _WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
    if isinstance(value, dict):
        frozen = dict(value)
        if frozen and depth == _FROZEN_DEPTH:
            raise _WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
        # Most claims are strings and numbers, already immutable: only containers are copied.
        for key, item in frozen.items():
            if isinstance(item, (dict, list)):
                frozen[key] = freeze_claims(item, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list):
        if value and depth == _FROZEN_DEPTH:
            raise _WrongType("claims", f"nested at most {_FROZEN_DEPTH} levels deep", value)
        return tuple(
            freeze_claims(item, depth + 1) if isinstance(item, (dict, list)) else item
            for item in value
        )
    return value


@dataclass(frozen=True)
class ClaimMap:
    """Where each Identity field is read from in a verified token.

    Every field takes a claim name, a dotted path into nested objects (`realm_access.roles`), a
    sequence of them, or None for "not mapped". Single-valued fields take the first claim
    present; `roles` and `scopes` merge every claim listed.
    """

    user_id: ClaimPaths = "sub"
    email: ClaimPaths = "email"
    email_verified: ClaimPaths = "email_verified"
    name: ClaimPaths = "name"
    tenant: ClaimPaths = None
    group: ClaimPaths = None
    roles: ClaimPaths = ("roles",)
    scopes: ClaimPaths = ("scope", "scp")
    client_id: ClaimPaths = ("azp", "client_id")
    actor: ClaimPaths = "act"
    _compiled: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        compiled = {
            name: _compile(name, getattr(self, name))
            for name in (
                "user_id",
                "email",
                "email_verified",
                "name",
                "tenant",
                "group",
                "roles",
                "scopes",
                "client_id",
                "actor",
            )
        }
        object.__setattr__(self, "_compiled", compiled)

    def replace(self, **changes: ClaimPaths) -> ClaimMap:
        """A copy with some fields changed: `PRESETS["auth0"].replace(roles="https://acme.com/roles")`."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def client_id_of(self, claims: Mapping[str, Any]) -> str | None:
        """The OAuth client the token was issued to (`azp`, `client_id`, ...), for allowlists."""
        try:
            return _single(claims, self._compiled["client_id"])
        except _WrongType as exc:
            raise _invalid(str(exc)) from None

    def to_identity(self, claims: Mapping[str, Any], issuer: str) -> Identity:
        """The Identity (source "jwt") of verified `claims`; IdentityError when a claim is malformed."""
        paths = self._compiled
        try:
            email = _single(claims, paths["email"])
            domain = None
            if email is not None:
                try:
                    email, _, domain = _email(email)
                except ValueError as exc:
                    raise _invalid(f"claim email: {exc}") from None
            actor = None
            for path, parts in paths["actor"]:
                value = _lookup(claims, path, parts)
                if value is not _ABSENT:
                    actor = _actor(value)
                    break
            return Identity(
                source="jwt",
                user_id=_single(claims, paths["user_id"]),
                email=email,
                email_verified=_boolean(claims, paths["email_verified"]),
                domain=domain,
                name=_single(claims, paths["name"]),
                tenant=_single(claims, paths["tenant"]),
                group=_single(claims, paths["group"]),
                roles=_many(claims, paths["roles"], split=False),
                scopes=_many(claims, paths["scopes"], split=True),
                actor=actor,
                client_id=_single(claims, paths["client_id"]),
                issuer=issuer,
                claims=freeze_claims(claims),
            )
        except _WrongType as exc:
            raise _invalid(str(exc)) from None


def _invalid(detail: str) -> IdentityError:
    return IdentityError(
        "invalid_token", "The access token carries malformed claims.", detail=detail
    )


#: Claim maps for the common identity providers; see docs/providers.md for each one's recipe.
PRESETS: Final[Mapping[str, ClaimMap]] = MappingProxyType(
    {
        "default": ClaimMap(),
        # Auth0: RBAC puts API permissions in `permissions`; roles and organisation come from
        # namespaced claims an Action adds, and `org_id` when Organizations are on.
        "auth0": ClaimMap(
            tenant="org_id",
            roles=("roles",),
            scopes=("scope", "permissions"),
        ),
        # Okta access tokens: `uid` is the user's id (`sub` is the login), `cid` the client,
        # `scp` a list; groups appear when a groups claim is configured.
        "okta": ClaimMap(
            user_id=("uid", "sub"),
            roles=("groups",),
            scopes=("scp", "scope"),
            client_id=("cid", "azp", "client_id"),
        ),
        # Entra ID: `oid` is stable across applications (`sub` is per application), `tid` the
        # tenant, `scp` a space-separated string, `roles` app roles, `azp` / `appid` the client.
        # `xms_edov` (an optional claim) says the email domain is verified by its owner.
        "entra": ClaimMap(
            user_id=("oid", "sub"),
            email=("email", "upn"),
            email_verified="xms_edov",
            tenant="tid",
            roles=("roles",),
            scopes=("scp",),
            client_id=("azp", "appid"),
        ),
        "keycloak": ClaimMap(
            roles=("realm_access.roles",),
            scopes=("scope",),
            client_id=("azp", "client_id"),
        ),
        # Google ID tokens: `hd` is the Workspace domain; there are no roles or scopes.
        "google": ClaimMap(tenant="hd", roles=None, scopes=None, client_id="azp"),
        "dex": ClaimMap(roles=("groups",), scopes=None, client_id="azp"),
        # Cognito access tokens carry `client_id`, `scope` and `cognito:groups`; ID tokens carry
        # `email` and `email_verified` and name the client in `aud`.
        "cognito": ClaimMap(
            roles=("cognito:groups",),
            scopes=("scope",),
            client_id=("client_id", "azp"),
        ),
    }
)


def resolve_claim_map(claims: str | ClaimMap) -> ClaimMap:
    """The ClaimMap for a preset name or a ClaimMap; ValueError naming the presets otherwise."""
    if isinstance(claims, ClaimMap):
        return claims
    if isinstance(claims, str) and claims in PRESETS:
        return PRESETS[claims]
    raise ValueError(
        f"claims must be a ClaimMap or one of {', '.join(sorted(PRESETS))}: {claims!r}"
    )
