"""A storage's failure policy: a timeout on every call, a cool-down after an error, open or closed.

The async adapter (`_aio.py`) asks its storage through this guard, which decides what an outage
means, so the layer never has to: it only sees a `Decision` whose `outage` says open or closed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from limits.aio.storage import MemoryStorage, Storage

from asgi_identity.quotas._windows import Decision

logger = logging.getLogger("asgi_identity")

T = TypeVar("T")

_ON_STORAGE_ERROR = ("open", "closed")


class RateLimitUnavailable(RuntimeError):
    """The rate-limit storage did not answer within `storage_timeout` (or is in its cool-down)."""


if sys.version_info >= (3, 11):

    async def _within(call: Awaitable[T], seconds: float) -> T:
        # asyncio.timeout() cancels in place; wait_for() would wrap every call in a task.
        async with asyncio.timeout(seconds):
            return await call

else:  # pragma: no cover - Python 3.10

    async def _within(call: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(call, seconds)


class StorageGuard:
    """Every call to one storage bounded in time; after a failure, the storage rests a while.

    An outage becomes a `Decision` whose `outage` is `on_storage_error`; readers outside the
    request path (usage, reports, settlement) get RateLimitUnavailable instead.
    """

    __slots__ = (
        "_calls",
        "_down_until",
        "_in_process",
        "cooldown",
        "errors",
        "on_error",
        "outage",
        "timeout",
    )

    def __init__(self, storage: Storage, *, on_error: str, timeout: float, cooldown: float) -> None:
        if on_error not in _ON_STORAGE_ERROR:
            raise ValueError("UserRateLimit: on_storage_error must be 'open' or 'closed'")
        if not timeout > 0 or cooldown < 0:
            raise ValueError("UserRateLimit: storage_timeout must be > 0, storage_cooldown >= 0")
        mode: Literal["open", "closed"] = "open" if on_error == "open" else "closed"
        self.on_error = mode
        self.outage = Decision((), None, mode)
        self.timeout = float(timeout)
        self.cooldown = float(cooldown)
        #: Storage calls that failed or timed out (and requests decided without the storage).
        self.errors = 0
        self._down_until = 0.0
        self._calls: set[asyncio.Future[Any]] = set()
        # Memory answers without I/O; a timeout there would only cost a task per call.
        self._in_process = isinstance(storage, MemoryStorage)

    def usable(self) -> bool:
        """False while resting after an error (the request is then decided without the storage)."""
        if self._down_until and time.monotonic() < self._down_until:
            self.errors += 1
            return False
        return True

    async def decide(self, counting: Awaitable[Decision]) -> Decision:
        try:
            return await counting
        except RateLimitUnavailable:
            return self.outage

    def call(self, call: Awaitable[T]) -> Awaitable[T]:
        """One storage call, bounded by the timeout; RateLimitUnavailable when it fails."""
        if self._in_process:
            return call  # memory: no I/O to wait for, nothing that can go away
        return self._bounded(call)

    async def _bounded(self, call: Awaitable[T]) -> T:
        # limits' Redis counter is two commands (INCRBY, then EXPIRE for a new key): cancelled
        # between them, it would be left with no expiry and its owner limited for good. The
        # timeout stops the wait; the call itself runs to its end in its own task.
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        task.add_done_callback(self._call_done)
        try:
            return await _within(asyncio.shield(task), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors += 1
            self._down_until = time.monotonic() + self.cooldown
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
            logger.warning(
                "rate-limit storage unavailable (%s); failing %s for %.1fs",
                reason,
                self.on_error,
                self.cooldown,
            )
            raise RateLimitUnavailable(reason) from None

    def _call_done(self, task: asyncio.Future[Any]) -> None:
        self._calls.discard(task)
        if not task.cancelled():
            # Retrieved, so a call that failed after its caller gave up is not reported as an
            # exception nobody looked at (the caller already logged the storage as unavailable).
            task.exception()

    async def drain(self) -> None:
        """Calls their callers gave up on get one more timeout to finish, then are dropped."""
        if self._calls:
            _, late = await asyncio.wait(self._calls, timeout=self.timeout)
            for task in late:
                task.cancel()
