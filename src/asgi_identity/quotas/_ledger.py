"""UserRateLimit's token ledger: reserve an estimate up front, settle the difference afterwards.

Token budgets are fixed-window counters driven directly on the `limits` storage: settling means
adding a (possibly negative) correction to a counter, which only a plain counter can take.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from limits.aio.storage import Storage

from asgi_identity.identity import Identity
from asgi_identity.quotas._windows import SweptMemoryStorage, Window, seconds_until
from asgi_identity.quotas.usage import TokenUsage, UsageReader, reader_for
from asgi_identity.types import Message, Send

BoundedCall = Callable[[Awaitable[Any]], Awaitable[Any]]


class Reservation:
    """Tokens set aside up front for one request, settled against its real usage afterwards."""

    __slots__ = (
        "estimate",
        "identity",
        "keys",
        "reported",
        "resets",
        "settled",
        "windows",
    )

    def __init__(
        self,
        identity: Identity,
        windows: tuple[Window, ...],
        keys: tuple[str, ...],
    ) -> None:
        self.identity = identity
        self.windows = windows
        self.keys = keys  # the counter of each window (TokenLedger.key)
        self.estimate = 0
        # When each window the reservation was made in ends: a refund after that is dropped.
        self.resets: list[float] = []
        self.reported: TokenUsage | None = None
        self.settled = False


class TokenRefusal(NamedTuple):
    window: Window
    estimate: int
    left: int  # tokens left in the window before this request
    retry: int  # seconds until the window frees up

    @property
    def spent(self) -> bool:
        return self.left <= 0


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


class TokenLedger:
    """Token counters on a `limits` storage, every call bounded by `call`.

    With `memory` (limits' synchronous memory storage) the counters live in this process and are
    updated without awaiting anything.
    """

    __slots__ = ("_call", "_memory", "_pttl", "key_prefix", "storage")

    def __init__(
        self,
        storage: Storage,
        call: BoundedCall,
        key_prefix: str,
        memory: SweptMemoryStorage | None = None,
    ) -> None:
        self.storage = storage
        self._call = call
        self.key_prefix = key_prefix
        self._memory = memory
        self._pttl = _pttl_reader(storage)

    def key(self, parts: tuple[str, ...], window: Window) -> str:
        return "/".join((self.key_prefix, "tokens", *parts, str(window.seconds)))

    async def _incr(self, key: str, window: Window, amount: int) -> int:
        if self._memory is not None:
            return self._memory.incr(key, window.seconds, amount=amount)
        value: int = await self._call(self.storage.incr(key, window.seconds, amount=amount))
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
        if self._memory is not None:
            return self._memory.get_expiry(key)
        if self._pttl is not None:
            milliseconds: int = await self._call(self._pttl(key))
            if milliseconds == -1:
                return None
            return time.time() + max(0, milliseconds) / 1000
        reset: float = await self._call(self.storage.get_expiry(key))
        return reset

    async def reserve(
        self,
        reservation: Reservation,
        estimate: int,
        states: list[tuple[Window, int, int]],
    ) -> TokenRefusal | None:
        """Set `estimate` aside in every window, or in none and say which window refused."""
        if self._memory is not None:
            return self._reserve_in_memory(self._memory, reservation, estimate, states)
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
                    return self._refused(reservation, window, estimate, used, retry, now, states)
                reservation.resets.append(reset)
                states.append((window, window.amount - used, retry))
        except Exception:
            # The storage failed half-way: the request goes on (or is refused) without a
            # reservation, so nothing may stay set aside in the windows already charged.
            for undo_key, undo_window in charged:
                with contextlib.suppress(Exception):
                    await self._take_back(undo_key, undo_window, estimate)
            raise
        reservation.estimate = estimate
        return None

    def _reserve_in_memory(
        self,
        memory: SweptMemoryStorage,
        reservation: Reservation,
        estimate: int,
        states: list[tuple[Window, int, int]],
    ) -> TokenRefusal | None:
        # reserve() without a single await: counting in memory never suspends.
        now = time.time()
        resets = reservation.resets
        windows, keys = reservation.windows, reservation.keys
        for index, window in enumerate(windows):
            # The exact moment the counter ends: a refund is sent to this window only before it.
            used, reset = memory.count(keys[index], window.seconds, estimate, now)
            retry = seconds_until(reset, now)
            if used > window.amount:
                for undo in range(index + 1):
                    memory.count(keys[undo], windows[undo].seconds, -estimate, now)
                return self._refused(reservation, window, estimate, used, retry, now, states)
            resets.append(reset)
            states.append((window, window.amount - used, retry))
        reservation.estimate = estimate
        return None

    @staticmethod
    def _refused(
        reservation: Reservation,
        window: Window,
        estimate: int,
        used: int,
        retry: int,
        now: float,
        states: list[tuple[Window, int, int]],
    ) -> TokenRefusal:
        left = max(0, window.amount - (used - estimate))
        states.append((window, left, retry))
        # Nothing stays set aside; in observe mode the request still goes on and is charged what
        # it really uses.
        reservation.resets = [now] * len(reservation.windows)
        return TokenRefusal(window, estimate, left, retry)

    async def settle(self, reservation: Reservation, charge: int) -> None:
        """Correct the counters from the reservation to `charge`, the tokens really used."""
        if self._memory is not None:
            self.settle_in_memory(self._memory, reservation, charge)
            return
        delta = charge - reservation.estimate
        if delta == 0:
            return
        now = time.time()
        for window, key, reset in zip(
            reservation.windows, reservation.keys, reservation.resets, strict=True
        ):
            if delta > 0:
                await self._incr(key, window, delta)
            elif now < reset:  # after it, the window the reservation was made in left with it
                await self._take_back(key, window, -delta)

    @staticmethod
    def settle_in_memory(memory: SweptMemoryStorage, reservation: Reservation, charge: int) -> None:
        """settle() without a single await: counting in memory never suspends."""
        delta = charge - reservation.estimate
        if delta == 0:
            return
        now = time.time()
        expirations = memory.expirations
        for window, key, reset in zip(
            reservation.windows, reservation.keys, reservation.resets, strict=True
        ):
            # A refund after the reservation's window is over left with it; sent on, it would
            # start the next window in debt.
            if delta < 0 and (now >= reset or expirations.get(key, 0) <= now):
                continue
            memory.count(key, window.seconds, delta, now)

    async def charge(
        self, parts: tuple[str, ...], windows: tuple[Window, ...], amount: int
    ) -> None:
        for window in windows:
            await self._incr(self.key(parts, window), window, amount)

    async def used(self, parts: tuple[str, ...], window: Window) -> tuple[int, float]:
        """(tokens used, when the window ends) for one window."""
        key = self.key(parts, window)
        if self._memory is not None:
            used = max(0, self._memory.get(key))
        else:
            used = max(0, int(await self._call(self.storage.get(key))))
        reset = await self._expiry(key) if used else time.time()
        return used, time.time() + window.seconds if reset is None else reset


class UsageMeter:
    """Wraps `send` to read the response's usage as it passes, and decides what to charge."""

    __slots__ = ("_extra", "_reader", "_send", "status")

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._extra = extra
        self._reader: UsageReader | None = None
        self.status = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            reader = self._reader
            if reader is not None:
                # Read as it passes: the chunk goes out right after, unchanged.
                reader.feed(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = status = message["status"]
            headers = message.get("headers", ())
            if status < 400:
                content_type = None
                for name, value in headers:
                    if name.lower() == b"content-type":
                        content_type = value
                self._reader = reader_for(content_type)
            if self._extra:
                message["headers"] = [*headers, *self._extra]
        await self._send(message)

    def outcome(self, reservation: Reservation) -> tuple[int, TokenUsage | None]:
        """(tokens to charge, the usage seen or reported, if any)."""
        found = reservation.reported
        if found is None and self._reader is not None:
            found = self._reader.result()
        if found is not None:
            return found.total_tokens, found
        if self.status and self.status < 400:
            return reservation.estimate, None  # no usage in the response: keep the estimate
        return 0, None  # refused or failed upstream: nothing was generated
