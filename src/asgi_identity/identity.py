"""The normalized identity that every layer and the app consume."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Literal, overload

# Imported at run time, not only for type checkers: frameworks that read the dataclass's type
# hints (Litestar's dependency injection, FastAPI/pydantic) must be able to resolve APIKey.
from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.errors import MiddlewareOrderError
from asgi_identity.types import Scope

IdentitySource = Literal["jwt", "header", "api_key", "anonymous"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: The scope key (and `scope["state"]` key) the identity lives under.
SCOPE_KEY = "identity"


@dataclass(frozen=True, slots=True)
class Actor:
    """The party acting for the user (RFC 8693 `act` claim); `actor` continues the chain."""

    subject: str
    issuer: str | None = None
    client_id: str | None = None
    actor: Actor | None = None

    @property
    def chain(self) -> tuple[str, ...]:
        """Subjects from the direct actor to the earliest one."""
        subjects: list[str] = []
        current: Actor | None = self
        while current is not None:
            subjects.append(current.subject)
            current = current.actor
        return tuple(subjects)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is behind a request, as verified by IdentityMiddleware."""

    source: IdentitySource
    user_id: str | None = None
    email: str | None = None
    email_verified: bool | None = None
    domain: str | None = None
    name: str | None = None
    tenant: str | None = None
    group: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    actor: Actor | None = None
    client_id: str | None = None
    issuer: str | None = None
    api_key: APIKey | None = None
    conversation_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)
    #: The token names only an OAuth client (client credentials), no person behind it.
    client_only: bool = False

    @property
    def has_user(self) -> bool:
        """A verified token or a trusted email header names someone, not only an API key."""
        return self.source == "jwt" or self.source == "header"

    @property
    def is_person(self) -> bool:
        """A human is behind the request: not only an API key, nor a client's own token."""
        return (self.source == "jwt" and not self.client_only) or self.source == "header"

    @property
    def subject(self) -> str | None:
        """The most specific stable name for rate limits and telemetry."""
        return self.user_id or self.email or self.client_id

    def replace(self, **changes: Any) -> Identity:
        """A copy with `changes` applied (layers use it to add what they learn, e.g. a conversation)."""
        if not _FIELD_SET.issuperset(changes):
            unknown = sorted(changes.keys() - _FIELD_SET)
            raise TypeError(f"Identity has no field {unknown[0]!r}")
        # dataclasses.replace() re-runs __init__ and costs twice as much; this is on the hot path
        # (a conversation id is added per request): copy every slot at C speed, then the changes.
        new = object.__new__(Identity)
        for set_slot, value in zip(_SLOT_SETTERS, _all_fields(self), strict=True):
            set_slot(new, value)
        for name, value in changes.items():
            object.__setattr__(new, name, value)
        return new


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Identity))
_FIELD_SET: frozenset[str] = frozenset(_FIELD_NAMES)
_all_fields = attrgetter(*_FIELD_NAMES)
# The slot descriptors' own setters: frozen only guards __setattr__, which these bypass.
_SLOT_SETTERS: tuple[Callable[[Identity, Any], None], ...] = tuple(
    Identity.__dict__[name].__set__ for name in _FIELD_NAMES
)


ANONYMOUS = Identity(source="anonymous")


def _scope_of(obj: Any) -> Scope:
    if isinstance(obj, Mapping):
        return obj  # type: ignore[return-value]
    scope = getattr(obj, "scope", None)
    if scope is None:
        raise TypeError(
            f"get_identity() takes an ASGI scope or a request, not {type(obj).__name__}"
        )
    return scope  # type: ignore[no-any-return]


_MISSING: Any = object()


@overload
def get_identity(request_or_scope: Any) -> Identity: ...
@overload
def get_identity(request_or_scope: Any, default: Identity | None) -> Identity | None: ...
def get_identity(request_or_scope: Any, default: Identity | None = _MISSING) -> Identity | None:
    """The identity of a request (Starlette/Litestar request, WebSocket, or a raw ASGI scope)."""
    identity = _scope_of(request_or_scope).get(SCOPE_KEY)
    if identity is None:
        if default is _MISSING:
            raise MiddlewareOrderError("get_identity()")
        return default
    return identity  # type: ignore[no-any-return]


def set_identity(scope: Scope, identity: Identity) -> None:
    """Publish `identity` in the scope, and in `scope["state"]` for `request.state.identity`."""
    scope[SCOPE_KEY] = identity
    state = scope.get("state")
    if state is None:
        scope["state"] = {SCOPE_KEY: identity}
    else:
        state[SCOPE_KEY] = identity


def require_identity(scope: Scope, layer: str) -> Identity:
    """The identity set by IdentityMiddleware, or a loud configuration error naming `layer`."""
    identity = scope.get(SCOPE_KEY)
    if identity is None:
        raise MiddlewareOrderError(layer)
    return identity  # type: ignore[no-any-return]
