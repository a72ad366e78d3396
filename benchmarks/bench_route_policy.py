"""What RoutePolicy adds to a request with 1,000 rules: `python benchmarks/bench_route_policy.py`.

Each case calls the ASGI stack in-process (no server) and prints the median microseconds per
request over several rounds, with the bare app's cost subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its http.py would shadow the stdlib's.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from asgi_identity import Actor, Identity, RoutePolicy, Rule  # noqa: E402
from asgi_identity.identity import set_identity  # noqa: E402
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello." * 20}]}
).encode()

USER = Identity(
    source="jwt",
    user_id="user-42",
    roles=frozenset({"user"}),
    scopes=frozenset({"chat", "ai:delegate"}),
    group="pro",
    tenant="tenant-42",
    actor=Actor("agent-1"),
)


def indexed_rules(count: int) -> list[Rule]:
    """A large gateway policy: per-tenant routes, per-model tiers, a few global rules."""
    rules = [
        Rule(
            id="agents-need-delegation", effect="deny", agent=True, without_scopes=["ai:delegate"]
        ),
        Rule(id="admin-only", effect="deny", paths=["/admin/*"], without_roles=["admin"]),
    ]
    for i in range((count - 4) // 2):
        rules.append(Rule(id=f"tenant-{i}", paths=[f"/tenants/{i}/*"], tenants=[f"tenant-{i}"]))
        rules.append(
            Rule(
                id=f"model-{i}",
                methods=["POST"],
                paths=["/v1/chat/completions"],
                models=[f"custom-model-{i}-*"],
                groups=["enterprise"],
            )
        )
    rules.append(
        Rule(
            id="premium-pro",
            methods=["POST"],
            paths=["/v1/chat/completions"],
            models=["gpt-4o*"],
            groups=["pro"],
        )
    )
    rules.append(Rule(id="chat", methods=["POST"], paths=["/v1/chat/*"], scopes=["chat"]))
    return rules


def unindexed_rules(count: int) -> list[Rule]:
    """The worst case: rules with no path, so every one is a candidate for every request."""
    rules = [Rule(id=f"user-{i}", effect="deny", users=[f"blocked-{i}"]) for i in range(count - 1)]
    rules.append(Rule(id="chat", scopes=["chat"]))
    return rules


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        while (await receive()).get("more_body", False):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def with_identity(app: ASGIApp) -> ASGIApp:
    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        set_identity(scope, USER)
        await app(scope, receive, send)

    return wrapper


@dataclass
class Case:
    name: str
    method: str
    path: Callable[[int], str]
    rules: list[Rule] | None


async def run(app: ASGIApp, case: Case, count: int) -> float:
    message: Message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> Message:
        return message

    async def send(message: Message) -> None:
        return None

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    start = time.perf_counter()
    for i in range(count):
        scope: Scope = {
            "type": "http",
            "method": case.method,
            "path": case.path(i),
            "headers": headers,
            "query_string": b"",
        }
        await app(scope, receive, send)
    return (time.perf_counter() - start) / count * 1e6


async def main(count: int, rounds: int, rule_count: int) -> None:
    indexed = indexed_rules(rule_count)
    unindexed = unindexed_rules(rule_count)
    cases = [
        Case("bare app (the baseline, not subtracted)", "POST", lambda i: "/v1/chat/completions", None),
        Case("chat request, model read from the body", "POST", lambda i: "/v1/chat/completions", indexed),
        Case("route without model rules (body not read)", "GET", lambda i: "/tenants/42/files", indexed),
        Case("distinct paths every request (memo misses)", "GET", lambda i: f"/tenants/42/f/{i}", indexed),
        Case("refused by the default (403 rendered)", "GET", lambda i: "/tenants/7/files", indexed),
        Case("1,000 rules with no path (all candidates)", "POST", lambda i: "/v1/embeddings", unindexed),
    ]  # fmt: skip
    print(f"RoutePolicy with {len(indexed)} rules; {count} requests x {rounds} rounds, median")
    baseline = 0.0
    for case in cases:
        inner = with_identity(bare_app)
        app = (
            inner
            if case.rules is None
            else with_identity(RoutePolicy(bare_app, rules=case.rules, default="deny"))
        )
        await run(app, case, count // 10)  # warm up
        median = statistics.median([await run(app, case, count) for _ in range(rounds)])
        if case.rules is None:
            baseline = median
            print(f"  {case.name:<48} {median:7.2f} us/request")
        else:
            print(f"  {case.name:<48} {median - baseline:+7.2f} us/request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rules", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.rules))
