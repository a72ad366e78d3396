"""Counting in this process: limits' synchronous memory storage, never a suspension.

Mirrors `_aio.py` method for method. The methods are coroutines only so that the layer can await
either adapter alike: none of them awaits anything, so a request counted here never suspends (and
nothing can cancel a settlement half-way).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from weakref import WeakKeyDictionary

from limits.aio.storage import MemoryStorage
from limits.storage import MemoryStorage as InProcessStorage
from limits.strategies import STRATEGIES
from limits.strategies import RateLimiter as InProcessRateLimiter

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

_STRATEGIES: Mapping[str, Callable[[InProcessStorage], InProcessRateLimiter]] = STRATEGIES

# How often, at most, expired counters are swept out of memory (a counter read after its window is
# dropped on the spot; the sweep only frees the ones nobody asks about again).
_SWEEP_EVERY = 5.0


class SweptMemoryStorage(InProcessStorage):
    """limits' memory storage, with expired entries swept inline every few seconds.

    limits schedules the sweep on a 10 ms `threading.Timer`, which starts a new thread every
    10 ms under load and makes the request that starts it wait for the thread: here that cost
    more than the counting itself. The event loop is the only writer, so the sweep runs on it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one limits starts on construction; sweeps happen inline
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        self._next_sweep_at = time.time() + _SWEEP_EVERY  # the same moment, on count()'s clock

    # Overrides limits' private hook, so the name is the mangled one; if limits renames it, its
    # own timer comes back: slower, never wrong.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            self._next_sweep_at = time.time() + _SWEEP_EVERY
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
            # limits' sweep empties the moving window's event lists but keeps them: one per
            # identity ever seen would stay in memory for good.
            events = self.events
            for key in [key for key, entries in events.items() if not entries]:
                del events[key]

    def count(self, key: str, expiry: int, amount: int, now: float) -> tuple[int, float]:
        """`incr(key, expiry, amount)` and then `get_expiry(key)`, in one step at time `now`.

        The same counter, expiry and sweep as limits' own methods (which read the clock three
        times and look the key up again for its expiry).
        """
        expirations = self.expirations
        expires: float = expirations.get(key, 0)
        storage = self.storage
        if expires <= now:
            storage.pop(key, None)
            expirations.pop(key, None)
            self.locks.pop(key, None)
        if now >= self._next_sweep_at:  # the sweep's own check, on the clock already read
            self._MemoryStorage__schedule_expiry()
        with self.locks[key]:
            value: int = storage[key] + amount
            storage[key] = value
            if value == amount:
                expires = expirations[key] = now + expiry
        return value, expires


# limits wraps these methods of every Storage subclass (again for this one) to turn backend errors
# into StorageError when wrap_exceptions is set; it is not set here and memory has no backend,
# so the calls go straight to limits' own code.
for _name in ("incr", "get", "get_expiry", "check", "reset", "clear"):
    _method = getattr(InProcessStorage, _name)
    setattr(SweptMemoryStorage, _name, getattr(_method, "__wrapped__", _method))


# One twin per async memory storage object: limiters given the same object (Litestar's per-route
# copies) keep sharing their counters.
_TWINS: WeakKeyDictionary[MemoryStorage, SweptMemoryStorage] = WeakKeyDictionary()


def _twin(storage: MemoryStorage) -> SweptMemoryStorage:
    twin = _TWINS.get(storage)
    if twin is None:
        twin = _TWINS[storage] = SweptMemoryStorage()
    return twin


class MemoryQuotas:
    """Request windows and token counters of one limits `MemoryStorage`, counted synchronously.

    limits' async memory storage takes a lock, runs an expiry task and awaits on every call;
    counting in this process needs none of that, so its synchronous twin does the counting.
    """

    __slots__ = ("__weakref__", "_fixed", "_limiter", "_track", "memory", "storage")

    #: Memory does not fail: nothing is ever decided without it.
    storage_errors = 0

    def __init__(self, storage: MemoryStorage, strategy: str, *, track_states: bool) -> None:
        self.storage = storage
        self.memory = _twin(storage)
        self._limiter = _STRATEGIES[strategy](self.memory)
        self._fixed = strategy == "fixed-window"
        # Without rate-limit headers, only a refusing window's state is needed.
        self._track = track_states

    async def count_requests(self, plan: Plan) -> Decision:
        """One hit in every request window, shortest first, up to the first that refuses."""
        windows = plan.requests
        if windows is None:
            return NOTHING_COUNTED
        # Shortest window first: a burst refused by the per-second window does not eat into the
        # daily budget; a request refused by the daily window was counted by the short ones only.
        track = self._track
        states: tuple[WindowState, ...] = ()
        now = time.time()
        for index, window in enumerate(windows):
            if self._fixed:
                # The counter's new value says everything the headers need: one call, not two.
                count, reset = self.memory.count(plan.request_keys[index], window.seconds, 1, now)
                admitted = count <= window.amount
                if track or not admitted:
                    states += ((window, window.amount - count, seconds_until(reset, now)),)
            else:
                admitted = self._limiter.hit(window.item, plan.request_ids)
                if track or not admitted:
                    reset, remaining = self._limiter.get_window_stats(window.item, plan.request_ids)
                    states += ((window, remaining, seconds_until(reset, time.time())),)
            if not admitted:
                return decided(states, states[-1])
        return decided(states)

    async def reserve_tokens(
        self, reservation: Reservation, estimate: int, before: tuple[WindowState, ...]
    ) -> Decision:
        """Set `estimate` aside in every token window, or in none; `before` are the request
        windows' states, which the answer's states start with."""
        memory = self.memory
        now = time.time()
        resets = reservation.resets
        windows, keys = reservation.windows, reservation.keys
        states = before
        for index, window in enumerate(windows):
            # The exact moment the counter ends: a refund is sent to this window only before it.
            used, reset = memory.count(keys[index], window.seconds, estimate, now)
            retry = seconds_until(reset, now)
            if used > window.amount:
                for undo in range(index + 1):
                    memory.count(keys[undo], windows[undo].seconds, -estimate, now)
                refused = (window, max(0, window.amount - (used - estimate)), retry)
                # Nothing stays set aside; in observe mode the request still goes on and is
                # charged what it really uses.
                reservation.resets = [now] * len(windows)
                return decided((*states, refused), refused)
            resets.append(reset)
            # Its own reservation is not shown as spent: it is settled to what it uses.
            states += ((window, window.amount - used + estimate, retry),)
        reservation.estimate = estimate
        return decided(states)

    async def settle(self, reservation: Reservation, charge: int) -> None:
        """Correct the counters from the reservation to `charge`, the tokens really used."""
        delta = charge - reservation.estimate
        if delta == 0:
            return
        now = time.time()
        memory = self.memory
        expirations = memory.expirations
        for window, key, reset in zip(
            reservation.windows, reservation.keys, reservation.resets, strict=True
        ):
            # A refund after the reservation's window is over left with it; sent on, it would
            # start the next window in debt.
            if delta < 0 and (now >= reset or expirations.get(key, 0) <= now):
                continue
            memory.count(key, window.seconds, delta, now)

    async def charge_tokens(
        self, keys: tuple[str, ...], windows: tuple[Window, ...], amount: int
    ) -> None:
        for key, window in zip(keys, windows, strict=True):
            self.memory.incr(key, window.seconds, amount=amount)

    async def request_stats(self, window: Window, ids: str) -> tuple[float, int]:
        """(when the window frees up, requests remaining) for `ids` in `window`."""
        reset, remaining = self._limiter.get_window_stats(window.item, ids)
        return reset, remaining

    async def tokens_used(self, key: str, window: Window) -> tuple[int, float]:
        """(tokens used, when the window ends) for one token counter."""
        used = max(0, self.memory.get(key))
        reset = self.memory.get_expiry(key) if used else time.time()
        return used, reset

    async def aclose(self) -> None:
        """Nothing to close: the counters stay with the storage object, shared by its limiters."""
