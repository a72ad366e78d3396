"""Memory a client can make the package hold is bounded: anonymous IPv6 clients count by their
network, and every cache keyed by what a client sends is bounded in bytes (issue 13, item 4)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from _limits_support import limiter_in
from _ratelimit_support import llm_app
from asgi_identity import APIKey, Identity, Rule, hash_api_key
from asgi_identity._privacy import _hasher
from asgi_identity.middleware.conversation import ConversationTags
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.quotas.usage import reader_for
from asgi_identity.stack import identity_stack
from asgi_identity.types import ASGIApp

MiB = 1 << 20
KEY = "sk-ai-memory-bounds-key"


@contextmanager
def held() -> Iterator[list[int]]:
    """The bytes still allocated (by anything) when the block ends, measured by tracemalloc."""
    result: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        yield result
        gc.collect()
        after = tracemalloc.take_snapshot()
        result.append(sum(stat.size_diff for stat in after.compare_to(before, "filename")))
    finally:
        tracemalloc.stop()


def _anonymous_stack(**rate_limit: Any) -> ASGIApp:
    return identity_stack(
        llm_app(),
        identity={"api_keys": [APIKey(id="ci", sha256=hash_api_key(KEY))], "allow_anonymous": True},
        enforce=None,
        conversation=None,
        rate_limit={"limits": "2/minute", **rate_limit},
    )


async def _get(app: ASGIApp, address: str) -> int:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return (await http.get("/")).status_code


async def test_anonymous_ipv6_clients_share_the_bucket_of_their_64() -> None:
    app = _anonymous_stack()
    statuses = [await _get(app, f"2001:db8:1:2::{n:x}") for n in range(1, 4)]
    assert statuses == [200, 200, 429]
    # Another /64, and IPv4 clients, count apart.
    assert await _get(app, "2001:db8:1:3::1") == 200
    assert await _get(app, "192.0.2.7") == 200
    assert await _get(app, "::ffff:192.0.2.8") == 200
    limiter = limiter_in(app)
    anonymous = Identity(source="anonymous")
    [window] = await limiter.usage(anonymous, address="2001:db8:1:2:ffff::9")
    assert window.used == 2


async def test_one_64_cannot_grow_the_counters_in_memory() -> None:
    app = _anonymous_stack()
    for n in range(500):
        await _get(app, f"2001:db8:1:2:{n:x}::{n:x}")
    assert len(limiter_in(app)._quotas.memory.storage) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("prefix", "buckets"), [(128, 4), (56, 1), (0, 1)])
async def test_ipv6_prefix_sets_how_much_of_the_address_names_the_bucket(
    prefix: int, buckets: int
) -> None:
    app = _anonymous_stack(ipv6_prefix=prefix)
    for address in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1", "2001:db8:1:4::1"):
        await _get(app, address)
    assert len(limiter_in(app)._quotas.memory.storage) == buckets  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "error"), [(129, ValueError), (-1, ValueError), (True, TypeError)]
)
def test_ipv6_prefix_is_checked_at_start_up(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="ipv6_prefix"):
        UserRateLimit(llm_app(), ipv6_prefix=value)


def test_the_route_policy_path_memo_holds_little_after_1500_long_paths() -> None:
    policy = RoutePolicy(
        llm_app(),
        rules=[Rule(id="admin", effect="deny", paths=["/admin/*"]), Rule(id="files")],
        default="deny",
    )
    alice = Identity(source="jwt", issuer="https://issuer.test", user_id="alice")
    with held() as memory:
        for n in range(1500):
            decision = policy.decide(alice, "GET", f"/v1/files/{n}/" + "x" * 100_000)
            assert decision.rule_id == "files"
    # 0.2.0 before this change: 143 MiB.
    assert memory[0] < 2 * MiB
    assert policy.decide(alice, "GET", "/admin/users").rule_id == "admin"


def _bounded(build: Callable[[int], object], count: int) -> int:
    kept = []
    with held() as memory:
        for n in range(count):
            kept.append(build(n))
        kept.clear()
    return memory[0]


def test_the_plan_cache_holds_little_for_identities_with_long_names() -> None:
    limiter = UserRateLimit(llm_app(), limits="10/minute;100/day", tokens="1000/day")
    scope: Any = {"type": "http", "headers": [], "client": ("127.0.0.1", 1)}

    def plan(n: int) -> object:
        who = Identity(source="jwt", issuer="https://issuer.test", user_id=f"{n}-" + "u" * 10_000)
        return limiter._planner.plan(who, scope)

    # Remembered, 2,000 plans of 10 kB names held 117 MiB (each name escaped into four keys).
    assert _bounded(plan, 2000) < 6 * MiB
    assert len(limiter._planner._plans) == 0
    short = Identity(source="jwt", issuer="https://issuer.test", user_id="alice")
    assert limiter._planner.plan(short, scope) is limiter._planner.plan(short, scope)


def test_conversation_tags_hold_at_most_their_budget() -> None:
    tags = ConversationTags()
    alice = Identity(source="jwt", issuer="https://issuer.test", user_id="alice")

    def tag(n: int) -> object:
        return tags.tag(alice, (f"{n:08d}".encode() + b"c" * 1000,))

    # Below the 4096 entries it was bounded by before: about 9 MiB of 1 kB ids then.
    assert _bounded(tag, 4000) < 2 * MiB


def test_pseudonyms_of_long_user_ids_are_not_remembered() -> None:
    hash_user = _hasher(b"k" * 32)
    assert _bounded(lambda n: hash_user(f"{n}-" + "u" * 10_000), 2000) < MiB
    assert hash_user("alice") == hash_user("alice")


def test_long_content_types_are_not_remembered() -> None:
    def read(n: int) -> object:
        return reader_for(b"application/json; x=" + str(n).encode() + b"y" * 10_000)

    assert _bounded(read, 2000) < MiB
