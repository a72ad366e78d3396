"""The W3C baggage the app's outgoing calls carry: never a client's claim to an identity."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Final

from opentelemetry import baggage, context

from asgi_identity.identity import Identity
from asgi_identity.telemetry import _config
from asgi_identity.telemetry.names import ATTR_GROUP, ATTR_TENANT, BAGGAGE_KEYS

_NO_BAGGAGE_CHANGE: Final[AbstractContextManager[None]] = nullcontext()
# The context key the API keeps baggage under (private, so looked up guarded).
_BAGGAGE_KEY: Final[str | None] = getattr(baggage, "_BAGGAGE_KEY", None)


class _AttachedContext:
    __slots__ = ("_context", "_token")

    def __init__(self, ctx: context.Context) -> None:
        self._context = ctx
        self._token: object = None

    def __enter__(self) -> None:
        self._token = context.attach(self._context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context.detach(self._token)  # type: ignore[arg-type]


def outgoing_baggage(identity: Identity) -> AbstractContextManager[None]:
    """The baggage the app's outgoing calls carry while it handles this request.

    Identity keys a client put in its own `baggage` header are dropped (they never set
    identity, and must not reach services downstream as if verified). The verified identity is
    added only with `configure_telemetry(identity_in_baggage=True)`. Use it around the app call:
    `with outgoing_baggage(identity): await app(scope, receive, send)`.
    """
    enabled = _config.current.config.identity_in_baggage
    incoming: Mapping[str, object] | None = (
        # The baggage dict itself, without the read-only view get_all() wraps it in.
        context.get_value(_BAGGAGE_KEY)  # type: ignore[assignment]
        if _BAGGAGE_KEY is not None
        else baggage.get_all()
    )
    spoofed = [key for key in BAGGAGE_KEYS if key in incoming] if incoming else []
    if not enabled and not spoofed:
        return _NO_BAGGAGE_CHANGE
    ctx = context.get_current()
    for key in spoofed:
        ctx = baggage.remove_baggage(key, ctx)
    if enabled:
        for key, value in _baggage_entries(identity):
            ctx = baggage.set_baggage(key, value, ctx)
    return _AttachedContext(ctx)


def _baggage_entries(identity: Identity) -> Iterator[tuple[str, str]]:
    state = _config.current
    user_id = identity.user_id
    if user_id is not None:
        hash_user = state.hash_user
        yield state.user_attribute, user_id if hash_user is None else hash_user(user_id)
    if identity.tenant is not None:
        yield ATTR_TENANT, identity.tenant
    if identity.group is not None:
        yield ATTR_GROUP, identity.group
