"""The whole chain in the right order, for users who want one call instead of five."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from asgi_identity._http.target import PathPolicy
from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.credentials.claims import resolve_claim_map
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware.conversation import ConversationTagger
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.middleware.enforce import EnforceIdentity
from asgi_identity.middleware.identity import IdentityMiddleware
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.rules import PolicyFileError, Rule, load_policy_file
from asgi_identity.types import AnyASGIApp

logger = logging.getLogger("asgi_identity")

#: A layer's options: a mapping of its keyword arguments, True for its defaults, None/False to omit.
LayerOptions = Mapping[str, Any] | bool | None

# Outermost first: who is calling, is a person behind it, is the domain allowed, may they call this
# route, how much may they use, which conversation. Policy runs before the limiter so a refused
# request never spends anyone's quota.
_ORDER: tuple[tuple[str, type[Any]], ...] = (
    ("enforce", EnforceIdentity),
    ("domains", DomainAllowlist),
    ("policy", RoutePolicy),
    ("rate_limit", UserRateLimit),
    ("conversation", ConversationTagger),
)


def stack_layers(
    *,
    identity: Mapping[str, Any],
    enforce: LayerOptions = True,
    domains: LayerOptions = None,
    policy: LayerOptions = None,
    rate_limit: LayerOptions = None,
    conversation: LayerOptions = True,
    exclude_paths: Iterable[str] = (),
    path_policy: PathPolicy | None = None,
) -> list[tuple[type[Any], dict[str, Any]]]:
    """The layers as (class, options), outermost first.

    FastAPI / Starlette: `for cls, options in reversed(layers): app.add_middleware(cls, **options)`
    (the last added runs first). Litestar: `[DefineMiddleware(cls, **options) for cls, options in layers]`.
    `exclude_paths` is given to every layer that does not set its own, so a health check passes them all.
    `path_policy` ("refuse" or "normalize") is IdentityMiddleware's, which reads the request for all.
    """
    excluded = list(exclude_paths)
    chosen: dict[str, LayerOptions] = {
        "enforce": enforce,
        "domains": domains,
        "policy": policy,
        "rate_limit": rate_limit,
        "conversation": conversation,
    }
    identity_options = _with_excluded(identity, excluded)
    if path_policy is not None:
        identity_options.setdefault("path_policy", path_policy)
    if isinstance(conversation, Mapping) and "header" in conversation:
        # The identity carries its conversation from the first layer on: read the same header.
        identity_options.setdefault("conversation_header", conversation["header"])
    layers: list[tuple[type[Any], dict[str, Any]]] = [(IdentityMiddleware, identity_options)]
    for name, cls in _ORDER:
        options = chosen[name]
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, Mapping):
            raise TypeError(f"identity_stack(): {name} takes a mapping of options, True or None")
        layers.append((cls, _with_excluded(options, excluded)))
    _warn_when_no_group_can_be_set(layers)
    return layers


def identity_stack(
    app: AnyASGIApp,
    *,
    identity: Mapping[str, Any],
    enforce: LayerOptions = True,
    domains: LayerOptions = None,
    policy: LayerOptions = None,
    rate_limit: LayerOptions = None,
    conversation: LayerOptions = True,
    exclude_paths: Iterable[str] = (),
    path_policy: PathPolicy | None = None,
) -> IdentityMiddleware:
    """Wrap `app` (any ASGI app: FastAPI, Starlette, Litestar, Quart, a function) in every chosen
    layer, in the order DESIGN.md's flow gives; IdentityMiddleware is the outermost.

    ```python
    app = identity_stack(app, identity={"issuers": [...]}, domains={"domains": ["acme.com"]},
                         rate_limit={"limits": "60/minute"})
    ```
    """
    layers = stack_layers(
        identity=identity,
        enforce=enforce,
        domains=domains,
        policy=policy,
        rate_limit=rate_limit,
        conversation=conversation,
        exclude_paths=exclude_paths,
        path_policy=path_policy,
    )
    (_, identity_options), *inner = layers
    return IdentityMiddleware(wrap_layers(app, inner), **identity_options)


def wrap_layers(app: AnyASGIApp, layers: list[tuple[type[Any], dict[str, Any]]]) -> AnyASGIApp:
    """`app` inside `layers` (outermost first), built innermost first as a server would."""
    wrapped = app
    for cls, options in reversed(layers):
        wrapped = cls(wrapped, **options)
    return wrapped


def _with_excluded(options: Mapping[str, Any], excluded: list[str]) -> dict[str, Any]:
    merged = dict(options)
    if excluded and "exclude_paths" not in merged:
        merged["exclude_paths"] = excluded
    return merged


def _warn_when_no_group_can_be_set(layers: list[tuple[type[Any], dict[str, Any]]]) -> None:
    # Tier limits and group rules configured while no identity can ever have a group: every user
    # gets the default limit and no group rule ever matches. Valid, so not an error, but almost
    # always a forgotten claim map.
    options = dict(layers)
    users = _group_users(options.get(UserRateLimit), options.get(RoutePolicy))
    if users and not _can_set_group(options[IdentityMiddleware]):
        logger.warning(
            "asgi-identity: %s, but IdentityMiddleware gives no identity a group. Map a token "
            'claim to it (JWTIssuer(..., claims=ClaimMap(group="tier"))), set default_group=, '
            "give API keys a group, or read the group header from trusted_header_networks.",
            " and ".join(users),
        )


def _group_users(
    rate_limit: Mapping[str, Any] | None, policy: Mapping[str, Any] | None
) -> list[str]:
    """What reads the identity's group: tier limits, and route policy rules on groups."""
    users = []
    if rate_limit is not None:
        tiers = sorted({*(rate_limit.get("groups") or {}), *(rate_limit.get("group_tokens") or {})})
        if tiers:
            users.append(f"UserRateLimit has limits for the groups {', '.join(tiers)}")
    if policy is not None:
        rules: Iterable[Any] = policy.get("rules") or ()
        if policy.get("rules_file") is not None:
            try:
                rules = load_policy_file(policy["rules_file"]).rules
            except PolicyFileError:
                rules = ()  # RoutePolicy says what is wrong with the file when it is built
        on_groups = [
            rule.id
            for rule in rules
            if isinstance(rule, Rule) and (rule.groups or rule.without_groups)
        ]
        if on_groups:
            users.append(f"RoutePolicy has rules on groups ({', '.join(on_groups)})")
    return users


def _can_set_group(identity: Mapping[str, Any]) -> bool:
    """False only when IdentityMiddleware with these options surely sets no group."""
    if identity.get("default_group") is not None:
        return True
    # A verifier built elsewhere or a key store may well set one: they cannot be looked into.
    if identity.get("token_verifier") is not None or identity.get("api_key_store") is not None:
        return True
    issuers = identity.get("issuers") or ()
    keys = identity.get("api_keys") or ()
    if not isinstance(issuers, Collection) or not isinstance(keys, Collection):
        return True
    if any(
        isinstance(issuer, JWTIssuer) and resolve_claim_map(issuer.claims).group is not None
        for issuer in issuers
    ):
        return True
    if any(isinstance(key, APIKey) and key.group is not None for key in keys):
        return True
    reads_header = bool(identity.get("trusted_header_networks")) or any(
        isinstance(key, APIKey) and key.header_identity for key in keys
    )
    return reads_header and identity.get("group_header", "x-user-group") is not None
