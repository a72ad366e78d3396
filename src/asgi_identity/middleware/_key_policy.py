"""An API key's own policy when the layer that reads it is not in the stack.

`APIKey.allowed_domains` is DomainAllowlist's to apply and `APIKey(enforce_identity=True)`
EnforceIdentity's. A stack built without that layer would ignore them silently; instead
IdentityMiddleware looks along the chain it wraps, once, and applies what no later layer will,
with the same rule and the same error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.middleware.enforce import IDENTITY_REQUIRED_MESSAGE, EnforceIdentity
from asgi_identity.types import AnyASGIApp

logger = logging.getLogger("asgi_identity")

# Middlewares between IdentityMiddleware and the app, followed by their `app` attribute.
_MAX_CHAIN = 64


def layers_after(app: object) -> set[type]:
    """The classes along `app`, `app.app`, ... (every middleware that keeps its `app`)."""
    found: set[type] = set()
    node: object = app
    for _ in range(_MAX_CHAIN):
        found.add(type(node))
        try:
            node = getattr(node, "app", None)
        except Exception:  # a property that fails says nothing about the stack
            break
        if node is None or not callable(node):
            break
    return found


class KeyPolicy:
    """Checks the parts of an API key's policy that no later layer will check."""

    __slots__ = ("_domains", "_enforce", "_identity_required")

    def __init__(self, app: AnyASGIApp, keys: Iterable[APIKey]) -> None:
        after = layers_after(app)
        # With no global list, DomainAllowlist.check applies only the key's own list.
        self._domains = (
            DomainAllowlist(app) if not any(issubclass(t, DomainAllowlist) for t in after) else None
        )
        self._enforce = not any(issubclass(t, EnforceIdentity) for t in after)
        self._identity_required = IdentityError(
            "identity_required",
            IDENTITY_REQUIRED_MESSAGE,
            detail="API key with enforce_identity=True, without a person",
        )
        keys = list(keys)
        applied = []
        with_domains = sorted(key.id for key in keys if key.allowed_domains)
        if self._domains is not None and with_domains:
            applied.append(f"allowed_domains of the API keys {with_domains} (no DomainAllowlist)")
        with_enforce = sorted(key.id for key in keys if key.enforce_identity)
        if self._enforce and with_enforce:
            applied.append(f"enforce_identity of the API keys {with_enforce} (no EnforceIdentity)")
        if applied:
            # Said once, at start-up: the stack does what the keys say, by another layer.
            logger.info(
                "IdentityMiddleware applies the %s itself: that layer is not after it",
                " and the ".join(applied),
            )

    @property
    def active(self) -> bool:
        return self._domains is not None or self._enforce

    def check(self, identity: Identity) -> IdentityError | None:
        key = identity.api_key
        if key is None:
            return None
        if self._enforce and key.enforce_identity is True and not identity.is_person:
            return self._identity_required
        if self._domains is not None and key.allowed_domains:
            return self._domains.check(identity)
        return None
