"""Counting on an async `limits` storage (Redis, Valkey, ...): every call bounded by the guard.

Mirrors `_memory.py` method for method; the storage's failure policy is the guard's (`_storage.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from limits.aio.storage import Storage
from limits.aio.strategies import RateLimiter

from asgi_identity.quotas._guard import RateLimitUnavailable, StorageGuard
from asgi_identity.quotas._ledger import Reservation
from asgi_identity.quotas._plan import Plan
from asgi_identity.quotas._windows import (
    NOTHING_COUNTED,
    Decision,
    Window,
    WindowState,
    decided,
    seconds_until,
)

logger = logging.getLogger("asgi_identity")


def _pttl_reader(storage: Storage) -> Callable[[str], Awaitable[int]] | None:
    """PTTL of a counter on limits' Redis storages (redis-py, coredis, valkey); None elsewhere."""
    bridge: Any = getattr(storage, "bridge", None)
    connection = getattr(bridge, "get_connection", None)
    if connection is None or not hasattr(bridge, "prefixed_key"):
        return None

    def pttl(key: str) -> Awaitable[int]:
        result: Awaitable[int] = connection().pttl(bridge.prefixed_key(key))
        return result

    return pttl


class AsyncQuotas:
    """Request windows and token counters on an async storage, asked through its guard."""

    __slots__ = (
        "__weakref__",
        "_fixed",
        "_limiter",
        "_pttl",
        "_settling",
        "_track",
        "guard",
        "storage",
    )

    def __init__(
        self,
        storage: Storage,
        limiter: RateLimiter,
        guard: StorageGuard,
        *,
        strategy: str,
        track_states: bool,
    ) -> None:
        self.storage = storage
        self._limiter = limiter
        self.guard = guard
        self._fixed = strategy == "fixed-window"
        # Without rate-limit headers, only a refusing window's state is needed (one call fewer).
        self._track = track_states
        self._pttl = _pttl_reader(storage)
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def storage_errors(self) -> int:
        return self.guard.errors

    async def count_requests(self, plan: Plan) -> Decision:
        """One hit in every request window, shortest first, up to the first that refuses."""
        guard = self.guard
        if not guard.usable():
            return guard.outage
        if plan.requests is None:
            return NOTHING_COUNTED
        return await guard.decide(self._count_requests(plan, plan.requests))

    async def _count_requests(self, plan: Plan, windows: tuple[Window, ...]) -> Decision:
        # Shortest window first: a burst refused by the per-second window does not eat into the
        # daily budget; a request refused by the daily window was counted by the short ones only.
        call, storage, track = self.guard.call, self.storage, self._track
        states: tuple[WindowState, ...] = ()
        for index, window in enumerate(windows):
            if self._fixed:
                # The counter's new value says whether it is admitted; its expiry is read only
                # when the headers (or the refusal) need it.
                key = plan.request_keys[index]
                count: int = await call(storage.incr(key, window.seconds))
                admitted = count <= window.amount
                if track or not admitted:
                    reset: float = await call(storage.get_expiry(key))
                    states += ((window, window.amount - count, seconds_until(reset, time.time())),)
            else:
                admitted = await call(self._limiter.hit(window.item, plan.request_ids))
                if track or not admitted:
                    reset, remaining = await self.request_stats(window, plan.request_ids)
                    states += ((window, remaining, seconds_until(reset, time.time())),)
            if not admitted:
                return decided(states, states[-1])
        return decided(states)

    async def reserve_tokens(
        self, reservation: Reservation, estimate: int, before: tuple[WindowState, ...]
    ) -> Decision:
        """Set `estimate` aside in every token window, or in none; `before` are the request
        windows' states, which the answer's states start with."""
        return await self.guard.decide(self._reserve(reservation, estimate, before))

    async def _reserve(
        self, reservation: Reservation, estimate: int, states: tuple[WindowState, ...]
    ) -> Decision:
        now = time.time()
        charged: list[tuple[str, Window]] = []
        try:
            for window, key in zip(reservation.windows, reservation.keys, strict=True):
                used = await self._incr(key, window, estimate)
                charged.append((key, window))
                reset = await self._expiry(key)
                if reset is None or (used == estimate and reset - now < 1.0):
                    # The window has just begun: the counter has no expiry yet, or this request
                    # started it (whatever a TTL rounded to whole seconds says). Only then: a
                    # counter found with less than a second left may really end now, and taking
                    # it for a whole window would send the refund into the next one.
                    reset = now + window.seconds
                retry = seconds_until(reset, now)
                if used > window.amount:
                    # Put back what this request set aside everywhere: it is not admitted.
                    # (Taken off the list first: should a put-back fail, none is done twice.)
                    undo, charged = charged, []
                    for undo_key, undo_window in undo:
                        await self._take_back(undo_key, undo_window, estimate)
                    refused = (window, max(0, window.amount - (used - estimate)), retry)
                    # Nothing stays set aside; in observe mode the request still goes on and is
                    # charged what it really uses.
                    reservation.resets = [now] * len(reservation.windows)
                    return decided((*states, refused), refused)
                reservation.resets.append(reset)
                # Its own reservation is not shown as spent: it is settled to what it uses.
                states += ((window, window.amount - used + estimate, retry),)
        except Exception:
            # The storage failed half-way: the request goes on (or is refused) without a
            # reservation, so nothing may stay set aside in the windows already charged.
            for undo_key, undo_window in charged:
                with contextlib.suppress(Exception):
                    await self._take_back(undo_key, undo_window, estimate)
            raise
        reservation.estimate = estimate
        return decided(states)

    async def settle(self, reservation: Reservation, charge: int) -> None:
        """Correct the counters from the reservation to `charge`, the tokens really used."""
        task = asyncio.ensure_future(self._settle(reservation, charge))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        # Shielded: a client that disconnects must not cancel the accounting.
        await asyncio.shield(task)

    async def _settle(self, reservation: Reservation, charge: int) -> None:
        delta = charge - reservation.estimate
        if delta == 0:
            return
        now = time.time()
        try:
            for window, key, reset in zip(
                reservation.windows, reservation.keys, reservation.resets, strict=True
            ):
                if delta > 0:
                    await self._incr(key, window, delta)
                elif now < reset:  # after it, the window the reservation was made in left with it
                    await self._take_back(key, window, -delta)
        except RateLimitUnavailable:
            logger.warning("could not settle %d tokens: rate-limit storage unavailable", delta)

    async def charge_tokens(
        self, keys: tuple[str, ...], windows: tuple[Window, ...], amount: int
    ) -> None:
        for key, window in zip(keys, windows, strict=True):
            await self._incr(key, window, amount)

    async def request_stats(self, window: Window, ids: str) -> tuple[float, int]:
        """(when the window frees up, requests remaining) for `ids` in `window`."""
        reset, remaining = await self.guard.call(self._limiter.get_window_stats(window.item, ids))
        return reset, remaining

    async def tokens_used(self, key: str, window: Window) -> tuple[int, float]:
        """(tokens used, when the window ends) for one token counter."""
        used = max(0, int(await self.guard.call(self.storage.get(key))))
        reset = await self._expiry(key) if used else time.time()
        return used, time.time() + window.seconds if reset is None else reset

    async def aclose(self) -> None:
        """Finish pending settlements and close the storage's connections (done at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.guard.drain()
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            closing = pool.disconnect()
            if inspect.isawaitable(closing):  # redis-py's pool closes asynchronously
                await closing

    async def _incr(self, key: str, window: Window, amount: int) -> int:
        value: int = await self.guard.call(self.storage.incr(key, window.seconds, amount=amount))
        return value

    async def _take_back(self, key: str, window: Window, amount: int) -> None:
        """Subtract `amount` from a counter on the storage, without ever starting one.

        A counter that is gone belongs to a window that is over; subtracting from it would start
        the next window in debt, handing its owner extra tokens. The storage creates the key and
        reports exactly the amount added when that happens: it is added back at once.
        """
        value = await self._incr(key, window, -amount)
        if value == -amount:
            await self._incr(key, window, amount)

    async def _expiry(self, key: str) -> float | None:
        """When the counter at `key` ends; None when it has no expiry yet.

        limits creates a Redis counter and sets its expiry in two commands, so a request landing
        between them finds no TTL: that window has just begun. `get_expiry()` reads that as "ends
        now", as it does a TTL rounded down to 0, so on limits' Redis storages the TTL is read in
        milliseconds, which tells the two apart.
        """
        if self._pttl is not None:
            milliseconds: int = await self.guard.call(self._pttl(key))
            if milliseconds == -1:
                return None
            return time.time() + max(0, milliseconds) / 1000
        reset: float = await self.guard.call(self.storage.get_expiry(key))
        return reset
