"""Counting in this process: what the in-memory adapter keeps, and for how long."""

from __future__ import annotations

import asyncio

from _asgi import request
from _ratelimit_support import llm_app
from asgi_identity.identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.quotas._memory import MemoryQuotas
from asgi_identity.types import Message, Scope

BODY: list[Message] = [{"type": "http.request", "body": b""}]


async def test_moving_window_memory_is_freed_for_identities_gone_quiet() -> None:
    """20,000 people call once: after their window, the sweep keeps nothing of any of them."""
    limiter = UserRateLimit(llm_app(), limits="5/second", strategy="moving-window")
    quotas = limiter._quotas  # what is kept in memory is only visible on the storage itself
    assert isinstance(quotas, MemoryQuotas)
    memory = quotas.memory
    assert memory is not None

    def scope(user: str) -> Scope:
        identity = Identity(source="jwt", user_id=user, issuer="https://issuer.test")
        return {"type": "http", "method": "GET", "path": "/", "headers": [], "identity": identity}

    for number in range(20_000):
        await request(limiter, scope=scope(f"user-{number}"), messages=BODY, deadline=None)
    assert len(memory.events) == 20_000
    await asyncio.sleep(1.1)  # every window is over
    memory._next_sweep = memory._next_sweep_at = 0  # sweep now, not in up to 5 s
    await request(limiter, scope=scope("someone-new"), messages=BODY, deadline=None)
    assert len(memory.events) == 1  # the newcomer's own
    assert len(memory.locks) <= 1
