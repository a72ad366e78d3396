"""`current_identity()`: the caller of the MCP message being handled, for tool code."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

from asgi_identity.identity import Identity

_current: Final[ContextVar[Identity | None]] = ContextVar("asgi_identity_mcp", default=None)


def current_identity() -> Identity | None:
    """The identity MCPGuard verified for the request being handled, or None outside one.

    Set per request by MCPGuard; tool code reads it instead of the bearer token, which never
    reaches the app.
    """
    return _current.get()


__all__ = ["current_identity"]
