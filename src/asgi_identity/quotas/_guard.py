"""A storage's failure policy: a timeout on every call, a cool-down after an error, open or closed.

The async adapter (`_aio.py`) asks its storage through this guard, which decides what an outage
means, so the layer never has to: it only sees a `Decision` whose `outage` says open or closed.

An outage (connection refused, a timeout, a failover) is the storage's state and concerns every
request. A reply that rejects a value (a number out of range, a counter of the wrong type) is about
one request's numbers or one counter: it is logged and fails that request closed, and it never
starts the cool-down, so nothing one request sends can switch limiting off for anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import re
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


class StorageRejected(RateLimitUnavailable):
    """The storage answered, refusing a value of this call: not an outage."""


# Redis's replies that refuse a value or a counter, not the service: INCRBY past 64 bits, a number
# that is not one, a key holding another type. Cluster, failover, auth and script replies are also
# ResponseErrors, and they are outages.
_REJECTED_VALUE = re.compile(
    r"not an integer|out of range|would overflow|wrong kind of value|invalid expire", re.I
)


def rejects_value(exc: BaseException) -> bool:
    """True when `exc` is a storage's refusal of a value rather than a sign that it is down."""
    if isinstance(exc, ValueError | TypeError | OverflowError):
        return True  # raised before anything was sent (a value the client cannot encode)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "WrongTypeError" in names:
        return True
    return "ResponseError" in names and _REJECTED_VALUE.search(str(exc)) is not None


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
        "rejected",
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
        #: A request whose numbers the storage refused is refused (closed), whatever the policy:
        #: letting it through uncounted would be a way around the limits.
        self.rejected: Decision = Decision((), None, "closed")
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
        except StorageRejected:
            return self.rejected
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
            if rejects_value(exc):
                logger.error("rate-limit storage rejected a value of one request: %r", exc)
                raise StorageRejected(repr(exc)) from None
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
