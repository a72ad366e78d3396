"""The storage adapter: one `storage` option becomes the counters UserRateLimit asks for decisions.

As limits' `storage_from_string`: the option is parsed once, its errors said at start-up, and the
adapter picked once: `_memory.py` for limits' own memory storage (counted in this process, never a
suspension), `_aio.py` for everything else, behind its failure policy (`_guard.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.storage import storage_from_string

from asgi_identity.quotas._aio import AsyncQuotas
from asgi_identity.quotas._guard import StorageGuard
from asgi_identity.quotas._memory import MemoryQuotas
from asgi_identity.quotas._storage_errors import storage_error

#: The two mirrored adapters: the same methods, the same typed answers.
Quotas = MemoryQuotas | AsyncQuotas

# Typed as factories: the mapping's value type is the abstract base class.
_STRATEGIES: Mapping[str, Callable[[Storage], RateLimiter]] = STRATEGIES


def _open_storage(storage: str | Storage, strategy: str) -> tuple[Storage, RateLimiter]:
    """The storage an option names (limits' `storage_from_string`) and `strategy` on it."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"UserRateLimit: strategy must be one of {sorted(STRATEGIES)}, not {strategy!r}"
        )
    built: object = storage
    if isinstance(storage, str):
        try:
            built = storage_from_string(storage)
        except Exception as exc:
            raise ValueError(storage_error(storage, exc)) from None
    if not isinstance(built, Storage):
        if isinstance(storage, str):
            raise TypeError(storage_error(storage, None))
        raise TypeError(
            "UserRateLimit: storage must be an async storage URI ('async+memory://', "
            "'async+redis://host:6379') or a limits.aio.storage.Storage"
        )
    try:
        limiter = _STRATEGIES[strategy](built)
    except NotImplementedError:
        raise ValueError(
            f"UserRateLimit: the {strategy!r} strategy is not supported by {type(storage).__name__}"
        ) from None
    return built, limiter


def open_quotas(
    option: str | Storage,
    *,
    strategy: str,
    headers: bool,
    on_storage_error: str,
    storage_timeout: float,
    storage_cooldown: float,
) -> Quotas:
    """The adapter for a `storage` option; the failure policy's options are checked either way."""
    storage, limiter = _open_storage(option, strategy)
    guard = StorageGuard(
        storage, on_error=on_storage_error, timeout=storage_timeout, cooldown=storage_cooldown
    )
    # Only limits' own memory class is counted in-process: a subclass may count differently.
    if type(storage) is MemoryStorage:
        return MemoryQuotas(storage, strategy, track_states=headers)
    return AsyncQuotas(storage, limiter, guard, strategy=strategy, track_states=headers)


# The adapters shared by the limiters of one app that were built with one configuration: Litestar
# (and Starlette's per-route middleware) builds a limiter per route, and they must count as one.
# Kept with the app object (the scope's `app`): weakly keyed by it, or, for an app that cannot be
# weakly referred to (Litestar has slots), in its `state`. So two apps in one process (a test suite
# building an app per test) never share counters, and an app's adapters go with it.
_SHARED: WeakKeyDictionary[Any, dict[tuple[object, ...], Quotas]] = WeakKeyDictionary()
_STATE_ATTRIBUTE = "asgi_identity_shared_quotas"


def shared_quotas(app: object, configuration: tuple[object, ...], quotas: Quotas) -> Quotas:
    """The adapter the limiters of `app` built with `configuration` share (`quotas`, the first
    time); `quotas` itself when `app` has nowhere to keep it."""
    by_configuration: dict[tuple[object, ...], Quotas]
    try:
        by_configuration = _SHARED.setdefault(app, {})
    except TypeError:  # not hashable, or not weakly referable: its state, if it has one
        state = getattr(app, "state", None)
        kept = getattr(state, _STATE_ATTRIBUTE, None)
        if isinstance(kept, dict):
            by_configuration = kept
        else:
            by_configuration = {}
            try:
                setattr(state, _STATE_ATTRIBUTE, by_configuration)
            except (AttributeError, TypeError):
                return quotas
    return by_configuration.setdefault(configuration, quotas)
