"""IdentityMiddleware's options that name credentials, checked once at start-up."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from asgi_identity.credentials.apikeys import APIKey, APIKeyStore, StaticAPIKeyStore
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier


def build_verifier(
    issuers: Sequence[JWTIssuer], verifier: TokenVerifier | None
) -> TokenVerifier | None:
    if isinstance(issuers, JWTIssuer):
        raise TypeError("IdentityMiddleware: issuers must be a list of JWTIssuer, not one")
    issuers = list(issuers)
    for issuer in issuers:
        if not isinstance(issuer, JWTIssuer):
            raise TypeError(
                f"IdentityMiddleware: issuers must be JWTIssuer instances, not "
                f"{type(issuer).__name__}"
            )
    if verifier is not None:
        if issuers:
            raise ValueError("IdentityMiddleware: pass issuers= or token_verifier=, not both")
        return verifier
    return TokenVerifier(issuers) if issuers else None


def build_store(records: list[APIKey], store: APIKeyStore | None) -> APIKeyStore | None:
    for record in records:
        if not isinstance(record, APIKey):
            raise TypeError(
                f"IdentityMiddleware: api_keys must be APIKey records, not "
                f"{type(record).__name__} (store digests, see hash_api_key)"
            )
    if store is not None:
        if records:
            raise ValueError("IdentityMiddleware: pass api_keys= or api_key_store=, not both")
        if not isinstance(store, APIKeyStore):
            raise TypeError(
                "IdentityMiddleware: api_key_store must have an async lookup(digest) method"
            )
        return store
    return StaticAPIKeyStore(records) if records else None


def build_groups(
    groups: Collection[str] | None, default: str | None, keys: list[APIKey]
) -> frozenset[str] | None:
    if groups is None:
        if default is not None and not isinstance(default, str):
            raise TypeError("IdentityMiddleware: default_group must be a string")
        return None
    if isinstance(groups, str):
        raise TypeError("IdentityMiddleware: groups must be a list of group names")
    allowed = frozenset(groups)
    if not allowed or not all(isinstance(g, str) and g for g in allowed):
        raise ValueError("IdentityMiddleware: groups must be non-empty strings")
    if default is not None and default not in allowed:
        raise ValueError(f"IdentityMiddleware: default_group {default!r} is not one of groups")
    for key in keys:
        if key.group is not None and key.group not in allowed:
            raise ValueError(
                f"IdentityMiddleware: API key {key.id!r} has group {key.group!r}, "
                "which is not one of groups"
            )
    return allowed
