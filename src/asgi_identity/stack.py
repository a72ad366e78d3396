"""The whole chain in the right order, for users who want one call instead of five."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from asgi_identity.middleware.conversation import ConversationTagger
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.middleware.enforce import EnforceIdentity
from asgi_identity.middleware.identity import IdentityMiddleware
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.types import ASGIApp

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
    path_policy: str | None = None,
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
    return layers


def identity_stack(
    app: ASGIApp,
    *,
    identity: Mapping[str, Any],
    enforce: LayerOptions = True,
    domains: LayerOptions = None,
    policy: LayerOptions = None,
    rate_limit: LayerOptions = None,
    conversation: LayerOptions = True,
    exclude_paths: Iterable[str] = (),
    path_policy: str | None = None,
) -> ASGIApp:
    """Wrap `app` in every chosen layer, in the order DESIGN.md's flow gives.

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
    wrapped = app
    for cls, options in reversed(layers):
        wrapped = cls(wrapped, **options)
    return wrapped


def _with_excluded(options: Mapping[str, Any], excluded: list[str]) -> dict[str, Any]:
    merged = dict(options)
    if excluded and "exclude_paths" not in merged:
        merged["exclude_paths"] = excluded
    return merged
