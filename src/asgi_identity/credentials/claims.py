"""Mapping verified token claims onto an Identity: dotted paths, string-or-list claims, presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from asgi_identity.credentials._claim_paths import (
    ABSENT,
    MAX_ACTOR_DEPTH,
    ClaimPaths,
    WrongType,
    actor_chain,
    boolean,
    compile_paths,
    email_address,
    freeze_claims,
    lookup,
    many,
    single,
)
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity

__all__ = ["MAX_ACTOR_DEPTH", "PRESETS", "ClaimMap", "ClaimPaths", "resolve_claim_map"]


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
            name: compile_paths(name, getattr(self, name))
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
            return single(claims, self._compiled["client_id"])
        except WrongType as exc:
            raise _invalid(str(exc)) from None

    def to_identity(self, claims: Mapping[str, Any], issuer: str) -> Identity:
        """The Identity (source "jwt") of verified `claims`; IdentityError when a claim is malformed."""
        paths = self._compiled
        try:
            email = single(claims, paths["email"])
            domain = None
            if email is not None:
                try:
                    email, domain = email_address(email)
                except ValueError as exc:
                    raise _invalid(f"claim email: {exc}") from None
            actor = None
            for path, parts in paths["actor"]:
                value = lookup(claims, path, parts)
                if value is not ABSENT:
                    actor = actor_chain(value)
                    break
            user_id = single(claims, paths["user_id"])
            client_id = single(claims, paths["client_id"])
            return Identity(
                source="jwt",
                user_id=user_id,
                email=email,
                email_verified=boolean(claims, paths["email_verified"]),
                domain=domain,
                name=single(claims, paths["name"]),
                tenant=single(claims, paths["tenant"]),
                group=single(claims, paths["group"]),
                roles=many(claims, paths["roles"], split=False),
                scopes=many(claims, paths["scopes"], split=True),
                actor=actor,
                client_id=client_id,
                issuer=issuer,
                claims=freeze_claims(claims),
                client_only=names_only_a_client(claims, user_id, client_id, email),
            )
        except WrongType as exc:
            raise _invalid(str(exc)) from None


def names_only_a_client(
    claims: Mapping[str, Any], user_id: str | None, client_id: str | None, email: str | None
) -> bool:
    """Whether a token names only an OAuth client (client credentials), no person behind it."""
    # Auth0 says so in `gty`; Entra ID in `idtyp` (an optional claim worth enabling).
    if claims.get("gty") == "client-credentials" or claims.get("idtyp") == "app":
        return True
    if email is not None:
        return False
    # Okta, Cognito and most others issue a client's own token with the client as its subject.
    return user_id is None or user_id == client_id


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
