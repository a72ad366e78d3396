"""The app's view of its quotas: where an identity stands in each of its windows."""

from __future__ import annotations

from typing import Literal, NamedTuple

from asgi_identity.identity import Identity
from asgi_identity.quotas._plan import Planner
from asgi_identity.quotas._storage import Quotas


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
