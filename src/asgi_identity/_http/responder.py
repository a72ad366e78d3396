"""The one responder of a request: everything the layers add to the response, in one place.

Layers register what they add while they decide (rate-limit headers, the conversation echo) and
what watches the response (usage metering); the first layer that needs it wraps `send` once. Watchers
see each body chunk before it is forwarded, so a watcher that reads usage from the last chunk
sets its span attributes while the server span of the ASGI instrumentation is still open.
"""

from __future__ import annotations

from collections.abc import Callable

from asgi_identity.types import Message, Send

#: A response watcher: called with the start and each body message before it is forwarded.
Watcher = Callable[[Message], None]
_STARTS = frozenset({"http.response.start", "websocket.accept"})


class Responder:
    __slots__ = ("_send", "headers", "started", "status", "watchers")

    def __init__(self) -> None:
        self._send: Send | None = None
        #: Added to the response's headers unless the app already set a header of that name.
        self.headers: list[tuple[bytes, bytes]] = []
        self.watchers: list[Watcher] = []
        self.started = False
        self.status = 0

    def wrap(self, send: Send) -> Send:
        """The `send` to pass on: a wrapper the first time, `send` itself after that (the
        wrapper already sits outside every later layer)."""
        if self._send is not None:
            return send
        self._send = send
        return self._forward

    async def _forward(self, message: Message) -> None:
        if message["type"] in _STARTS:
            self.started = True
            self.status = message.get("status", 0)
            if self.headers:
                message["headers"] = _merged(message.get("headers", ()), self.headers)
        for watch in self.watchers:
            watch(message)
        assert self._send is not None
        await self._send(message)


def _merged(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
    extra: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    # An app that sets one of these headers itself keeps its own value. Always a new list: the
    # app's may be one it sends again (a Response object reused across requests).
    if not headers:
        return list(extra)
    own = {name.lower() for name, _ in headers}
    return [*headers, *(pair for pair in extra if pair[0] not in own)]
