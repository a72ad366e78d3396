"""Start-up and shutdown work of a layer, run inside the app's own lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from asgi_identity.types import Message, Receive, Send

logger = logging.getLogger("asgi_identity")


class LifespanHooks:
    """Runs `startup` when the server starts the app (waiting at most `timeout` seconds, then
    letting it finish in the background) and `shutdown` before the app reports it has stopped.

    A layer wraps the lifespan's `receive` and `send` with `receive()` and `send()`; the app's
    own lifespan handling is untouched. Failures are logged, never raised: a layer must not
    keep the app from starting or stopping.
    """

    __slots__ = ("_pending", "_shutdown", "_startup", "name", "timeout")

    def __init__(
        self,
        name: str,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        timeout: float,
    ) -> None:
        self.name = name
        self._startup = startup
        self._shutdown = shutdown
        self.timeout = timeout
        self._pending: asyncio.Future[None] | None = None

    def receive(self, receive: Receive) -> Receive:
        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._pending = asyncio.ensure_future(self._logged(self._startup, "start"))
                await asyncio.wait({self._pending}, timeout=self.timeout)
            return message

        return receive_and_start

    def send(self, send: Send) -> Send:
        async def send_and_stop(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                pending = self._pending
                if pending is not None and not pending.done():
                    pending.cancel()
                    await asyncio.gather(pending, return_exceptions=True)
                await self._logged(self._shutdown, "stop")
            await send(message)

        return send_and_stop

    async def _logged(self, work: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            await work()
        except Exception:
            logger.warning("%s could not %s cleanly", self.name, what, exc_info=True)
