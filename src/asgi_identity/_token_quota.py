"""UserRateLimit's token ledger: reserve an estimate up front, settle the difference afterwards.

Token budgets are fixed-window counters driven directly on the `limits` storage: settling means
adding a (possibly negative) correction to a counter, which only a plain counter can take.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from limits.aio.storage import Storage

from ._asgi import Message, Send
from ._ratelimit import SweptMemoryStorage, Window, seconds_until
from .identity import Identity
from .usage import TokenUsage, UsageReader, reader_for

BoundedCall = Callable[[Awaitable[Any]], Awaitable[Any]]


class Reservation:
    """Tokens set aside up front for one request, settled against its real usage afterwards."""

    __slots__ = (
        "estimate",
        "identity",
        "keys",
        "parts",
        "reported",
        "resets",
        "settled",
        "windows",
    )

    def __init__(
        self,
        identity: Identity,
        parts: tuple[str, ...],
        windows: tuple[Window, ...],
        keys: tuple[str, ...],
    ) -> None:
        self.identity = identity
        self.parts = parts
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


class TokenLedger:
    """Token counters on a `limits` storage, every call bounded by `call`.

    With `memory` (limits' synchronous memory storage) the counters live in this process and are
    updated without awaiting anything.
    """

    __slots__ = ("_call", "_memory", "key_prefix", "storage")

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

    def key(self, parts: tuple[str, ...], window: Window) -> str:
        return "/".join((self.key_prefix, "tokens", *parts, str(window.seconds)))

    async def _incr(self, key: str, window: Window, amount: int) -> int:
        if self._memory is not None:
            return self._memory.incr(key, window.seconds, amount=amount)
        value: int = await self._call(self.storage.incr(key, window.seconds, amount=amount))
        return value

    async def _expiry(self, key: str) -> float:
        if self._memory is not None:
            return self._memory.get_expiry(key)
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
        for window, key in zip(reservation.windows, reservation.keys, strict=True):
            used = await self._incr(key, window, estimate)
            charged.append((key, window))
            reset = await self._expiry(key)
            if reset - now < 1.0:
                # limits creates a Redis counter and sets its expiry in two commands: a request that
                # lands between them finds no TTL yet (read as "ends now"; TTLs are whole seconds).
                # The window has just begun; without this its settlement would take the window for
                # over and keep the whole estimate.
                reset = now + window.seconds
            retry = seconds_until(reset, now)
            if used > window.amount:
                # Put back what this request set aside everywhere: it is not admitted.
                for undo_key, undo_window in charged:
                    await self._incr(undo_key, undo_window, -estimate)
                return self._refused(reservation, window, estimate, used, retry, now, states)
            reservation.resets.append(reset)
            states.append((window, window.amount - used, retry))
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
            used, reset = memory.count(keys[index], window.seconds, estimate, now)
            if reset - now < 1.0:
                reset = now + window.seconds  # as reserve() does
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
            if delta < 0 and now >= reset:
                continue  # the window the reservation was made in is over; it left with it
            await self._incr(key, window, delta)

    @staticmethod
    def settle_in_memory(memory: SweptMemoryStorage, reservation: Reservation, charge: int) -> None:
        """settle() without a single await: counting in memory never suspends."""
        delta = charge - reservation.estimate
        if delta == 0:
            return
        now = time.time()
        for window, key, reset in zip(
            reservation.windows, reservation.keys, reservation.resets, strict=True
        ):
            if delta < 0 and now >= reset:
                continue  # the window the reservation was made in is over; it left with it
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
        return used, reset


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
