"""FastAPI dependencies that read the identity IdentityMiddleware put in the scope.

Importing this module needs FastAPI; the rest of the package never imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal

try:
    from fastapi import Depends, HTTPException
    from fastapi.responses import Response
    from starlette.requests import HTTPConnection, Request
except ImportError as exc:  # pragma: no cover - only without FastAPI installed
    raise ImportError(
        "asgi_identity.fastapi needs FastAPI (pip install fastapi); the middlewares themselves "
        "work without it"
    ) from exc

from asgi_identity.errors import ErrorRenderer, IdentityError, error_headers, render_json
from asgi_identity.identity import Identity, require_identity
from asgi_identity.telemetry import events

__all__ = [
    "CurrentIdentity",
    "IdentityHTTPException",
    "current_identity",
    "identity_error_handler",
    "install_error_handler",
    "require_roles",
    "require_scopes",
]

Match = Literal["all", "any"]
IdentityDependency = Callable[[HTTPConnection], Awaitable[Identity]]


class IdentityHTTPException(HTTPException):
    """A refusal from a dependency; FastAPI answers it with its status even without our handler.

    With `install_error_handler(app)` the body follows the package's error contract instead of
    FastAPI's `{"detail": ...}`.
    """

    def __init__(self, error: IdentityError) -> None:
        super().__init__(error.status, error.message, headers=dict(error_headers(error)))
        self.error = error


def current_identity(connection: HTTPConnection) -> Identity:
    """The request's identity: `identity: Identity = Depends(current_identity)`."""
    return require_identity(connection.scope, "current_identity")


#: `identity: CurrentIdentity` in a path operation's signature.
CurrentIdentity = Annotated[Identity, Depends(current_identity)]


def require_roles(*roles: str, match: Match = "all") -> IdentityDependency:
    """A dependency refusing with 403 `policy_denied` unless the identity has the roles.

    `match="any"` accepts any one of them. The dependency returns the identity.
    """
    return _requirement("require_roles", "role", roles, match, lambda i: i.roles)


def require_scopes(*scopes: str, match: Match = "all") -> IdentityDependency:
    """A dependency refusing with 403 `policy_denied` unless the identity has the scopes."""
    return _requirement("require_scopes", "scope", scopes, match, lambda i: i.scopes)


def _requirement(
    name: str,
    noun: str,
    wanted: Iterable[str],
    match: Match,
    held: Callable[[Identity], frozenset[str]],
) -> IdentityDependency:
    required = tuple(wanted)
    if not required:
        raise ValueError(f"{name}() needs at least one {noun}")
    for value in required:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name}(): each {noun} must be a non-empty string, not {value!r}")
    if match not in ("all", "any"):
        raise ValueError(f"{name}(): match must be 'all' or 'any', not {match!r}")
    needed = frozenset(required)
    # Built once: the message names what the route requires, never what the caller sent.
    denied = IdentityError(
        "policy_denied",
        _message(noun, required, match),
        detail=f"{name}({', '.join(required)}, match={match})",
    )
    unauthenticated = IdentityError(
        "missing_credentials", "Authentication required: send a bearer token or an API key."
    )

    async def dependency(connection: HTTPConnection) -> Identity:
        identity = require_identity(connection.scope, name)
        values = held(identity)
        allowed = needed <= values if match == "all" else not needed.isdisjoint(values)
        if allowed:
            return identity
        error = unauthenticated if identity.source == "anonymous" else denied
        events.refused(connection.scope, name, error)
        raise IdentityHTTPException(error)

    return dependency


def _message(noun: str, required: tuple[str, ...], match: Match) -> str:
    quoted = [f"'{value}'" for value in required]
    if len(quoted) == 1:
        return f"This route requires the {noun} {quoted[0]}."
    if match == "any":
        return f"This route requires one of the {noun}s {', '.join(quoted)}."
    return f"This route requires the {noun}s {', '.join(quoted[:-1])} and {quoted[-1]}."


def identity_error_handler(
    renderer: ErrorRenderer | None = None,
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler rendering refusals as the error contract (or with `renderer`)."""
    render = renderer or render_json

    async def handler(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, IdentityHTTPException):  # pragma: no cover - registered for it only
            raise exc
        body, content_type = render(exc.error)
        headers = dict(error_headers(exc.error))
        return Response(
            body, status_code=exc.error.status, media_type=content_type, headers=headers
        )

    return handler


def install_error_handler(app: Any, renderer: ErrorRenderer | None = None) -> None:
    """Answer dependency refusals with the package's error contract (`app` is a FastAPI app)."""
    app.add_exception_handler(IdentityHTTPException, identity_error_handler(renderer))
