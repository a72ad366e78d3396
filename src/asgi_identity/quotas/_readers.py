"""The app's view of its quotas: where an identity stands in each of its windows, and the usage
it reports itself."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Literal, NamedTuple

from asgi_identity.identity import Identity, require_identity
from asgi_identity.quotas._ledger import Reservation
from asgi_identity.quotas._plan import Planner
from asgi_identity.quotas._storage import Quotas
from asgi_identity.quotas.usage import MAX_TOKENS, TokenUsage
from asgi_identity.telemetry import events
from asgi_identity.types import Scope


class WindowUsage(NamedTuple):
    """Where one identity stands in one window (`await limiter.usage(identity)`)."""

    kind: Literal["requests", "tokens"]
    name: str
    limit: int
    used: int
    remaining: int
    reset: float  # Unix time at which the window frees up
    window: int  # its length in seconds


async def read_usage(
    quotas: Quotas,
    planner: Planner,
    identity: Identity,
    address: str | None,
) -> list[WindowUsage]:
    """Requests first, then tokens; RateLimitUnavailable when the storage does not answer."""
    requests, tokens = planner.limits_for(identity)
    parts = planner.parts(identity, None, address)
    ids = planner.request_ids(parts)
    result: list[WindowUsage] = []
    for window in requests or ():
        reset, remaining = await quotas.request_stats(window, ids)
        remaining = max(0, min(window.amount, remaining))
        result.append(
            WindowUsage(
                "requests",
                window.name,
                window.amount,
                window.amount - remaining,
                remaining,
                reset,
                window.seconds,
            )
        )
    for window in tokens or ():
        used, reset = await quotas.tokens_used(planner.token_key(parts, window), window)
        result.append(
            WindowUsage(
                "tokens",
                window.name,
                window.amount,
                used,
                max(0, window.amount - used),
                reset,
                window.seconds,
            )
        )
    return result


async def report_usage(
    quotas: Quotas, planner: Planner, who: Any, input_tokens: int, output_tokens: int
) -> None:
    """`UserRateLimit.report_usage()`: settle a request's reservation from tokens the app
    counted (`who` a request or scope inside the layer), or charge an Identity directly."""
    used = TokenUsage(int(input_tokens), int(output_tokens))
    if not (0 <= used.input_tokens <= MAX_TOKENS and 0 <= used.output_tokens <= MAX_TOKENS):
        raise ValueError(f"report_usage: token counts must be >= 0 and <= {MAX_TOKENS}")
    scope: Scope | None = None
    if isinstance(who, Identity):
        identity = who
    else:
        scope = who if isinstance(who, MutableMapping) else getattr(who, "scope", None)
        if scope is None:
            raise TypeError("report_usage() takes a request, an ASGI scope or an Identity")
        reservation = Reservation.pending(scope)
        if reservation is not None:
            reservation.report(used)  # settled from it instead of the response's usage
            return
        identity = require_identity(scope, "report_usage()")
    _, windows = planner.limits_for(identity)
    events.llm_tokens(identity, used.input_tokens, used.output_tokens, scope=scope)
    if windows is None or used.total_tokens == 0:
        return
    parts = planner.parts(identity, scope)
    keys = tuple(planner.token_key(parts, window) for window in windows)
    await quotas.charge_tokens(keys, windows, used.total_tokens)
