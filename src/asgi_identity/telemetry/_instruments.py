"""The metric instruments of a meter provider, made once, and the totals the SDK collects."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from asgi_identity import __version__
from asgi_identity.telemetry.names import (
    INSTRUMENTATION_SCOPE,
    METRIC_AUTH_DURATION,
    METRIC_JWKS_FETCHES,
    METRIC_RATE_LIMIT_HITS,
    METRIC_REJECTIONS,
    METRIC_REQUESTS,
    METRIC_TOKENS,
)

# Authentication runs from about a microsecond (cache hit) to seconds (a JWKS fetch).
_DURATION_BUCKETS: Final = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

try:  # the API's placeholder until an SDK provider is set; private, so guarded
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _NOT_RECORDING_PROVIDERS: tuple[type, ...] = (_ProxyMeterProvider, metrics.NoOpMeterProvider)
except ImportError:  # pragma: no cover - a future API without it: always record
    _metrics_internal = None  # type: ignore[assignment]
    _NOT_RECORDING_PROVIDERS = ()


class _NoGlobals:
    # A future API without the private global: never "no SDK yet", so Counters.on() decides.
    _METER_PROVIDER = object()


#: Where the API keeps the global meter provider (None until an SDK provider is set).
metrics_globals: Any = (
    _metrics_internal if hasattr(_metrics_internal, "_METER_PROVIDER") else _NoGlobals
)


def global_meter_provider_set() -> bool:
    # get_meter_provider() reads the environment on every call until a provider is set (about
    # a microsecond); the API's own global says the same for the cost of an attribute read.
    if _metrics_internal is not None and getattr(_metrics_internal, "_METER_PROVIDER", 0) is None:
        return False
    return not isinstance(metrics.get_meter_provider(), _NOT_RECORDING_PROVIDERS)


class Cell:
    """The running total of one attribute set of one counter."""

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.value = 0


class Tally:
    """A counter summed here and handed to the SDK when it collects (an observable counter).

    A synchronous `Counter.add` makes the SDK clean, validate and hash the attributes on every
    call, tens of microseconds per request under load; adding to a total we keep costs a lock
    and an integer add. The SDK reads the totals through the callback at each collection, so
    exporters see the same monotonic sums.
    """

    __slots__ = ("_cells", "_lock")

    def __init__(self) -> None:
        self._cells: dict[tuple[tuple[str, str], ...], Cell] = {}
        self._lock = threading.Lock()

    def cell(self, attributes: dict[str, str]) -> Cell:
        key = tuple(sorted(attributes.items()))
        found = self._cells.get(key)
        if found is None:
            with self._lock:
                found = self._cells.setdefault(key, Cell(attributes))
        return found

    def add(self, cell: Cell, amount: int) -> None:
        with self._lock:
            cell.value += amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = [(cell.value, cell.attributes) for cell in self._cells.values()]
        return [Observation(value, attributes) for value, attributes in totals if value]


class Instruments:
    """The instruments of one meter provider, made once: re-registering an observable counter
    keeps its first callbacks, so the totals live as long as the provider, like the SDK's own
    series do (reconfiguring restarts only the per-user bounds)."""

    __slots__ = (
        "auth_duration",
        "jwks_fetches",
        "rate_limit_hits",
        "rejections",
        "requests",
        "tokens",
    )

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = (
            provider.get_meter(INSTRUMENTATION_SCOPE, __version__)
            if provider is not None
            # A proxy when no SDK is set yet: it follows a provider installed later.
            else metrics.get_meter(INSTRUMENTATION_SCOPE, __version__)
        )
        self.requests = Tally()
        self.rejections = Tally()
        self.rate_limit_hits = Tally()
        self.tokens = Tally()
        for name, tally, unit, description in (
            (
                METRIC_REQUESTS,
                self.requests,
                "{request}",
                "Requests seen by IdentityMiddleware, by authentication outcome",
            ),
            (
                METRIC_REJECTIONS,
                self.rejections,
                "{request}",
                "Requests refused (or, in observe mode, that would have been) by layer and code",
            ),
            (
                METRIC_RATE_LIMIT_HITS,
                self.rate_limit_hits,
                "{request}",
                "Requests over a rate limit or token quota",
            ),
            (METRIC_TOKENS, self.tokens, "{token}", "LLM tokens used, by user and tier"),
        ):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        # Recorded only on the cold path (a new token, a key set fetch): plain instruments.
        self.auth_duration = meter.create_histogram(
            METRIC_AUTH_DURATION,
            unit="s",
            description="Time spent authenticating a request",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.jwks_fetches = meter.create_counter(
            METRIC_JWKS_FETCHES, unit="{fetch}", description="Key set fetches by outcome"
        )


_global_instruments: Instruments | None = None
_provider_instruments: weakref.WeakKeyDictionary[Any, Instruments] = weakref.WeakKeyDictionary()
_held_instruments: dict[int, tuple[MeterProvider, Instruments]] = {}
_instruments_lock = threading.Lock()


def instruments_for(provider: MeterProvider | None) -> Instruments:
    global _global_instruments
    with _instruments_lock:
        if provider is None:
            if _global_instruments is None:
                _global_instruments = Instruments(None)
            return _global_instruments
        try:
            found = _provider_instruments.get(provider)
            if found is None:
                found = _provider_instruments[provider] = Instruments(provider)
        except TypeError:  # a provider that cannot be weakly referenced: kept for good
            held = _held_instruments.get(id(provider))
            if held is None or held[0] is not provider:
                held = _held_instruments[id(provider)] = (provider, Instruments(provider))
            found = held[1]
        return found
