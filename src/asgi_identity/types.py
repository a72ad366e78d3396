"""ASGI type aliases, shared by every layer (asgiref's typing would force TypedDict unions on users)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The public face of every layer. Servers and frameworks type the scope and the messages their own
# way (TypedDicts in asgiref, Litestar and Quart), which the mappings above do not accept: a layer
# wraps any app and is called with any scope, and reads them inside as the mappings above.
AnyASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
AnyScope = Any
AnyReceive = Callable[[], Awaitable[Any]]
AnySend = Callable[[Any], Awaitable[None]]
