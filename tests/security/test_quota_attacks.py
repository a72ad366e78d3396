"""Red team, round 2: overspending token quotas (UserRateLimit, memory and Redis).

Concurrency against the reservation, streams cut by the client at every point, usage forged in
the response, `ensure_stream_usage` rewrites, RateLimit header values, `bucket_by="email"`, IPv6
rotation, storage outages mid-request, and the official `openai` client through the stack.
A passing test is a defence that holds; an xfail(strict) test is a FINDING.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from _asgi import request
from _limits_support import full_stack
from _ratelimit_support import (
    ISSUER,
    REDIS_URI,
    delete_redis_keys,
    free_port,
    identify,
    redis_client,
    unique_prefix,
    until,
    wait_for_port,
)
from _servers import serve
from asgi_identity.identity import Identity, set_identity
from asgi_identity.middleware.ratelimit import UserRateLimit, get_rate_limiter
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/v1/chat/completions"
SSE = b"text/event-stream"
JSON = b"application/json"


class ClientGone(OSError):
    """What a server's `send` raises once the client has hung up."""


def who(user: str = "mallory") -> Identity:
    return Identity(source="jwt", user_id=user, issuer=ISSUER)


def upstream(
    chunks: Sequence[bytes],
    content_type: bytes = SSE,
    *,
    status: int = 200,
    headers: Sequence[tuple[bytes, bytes]] = (),
    gate: asyncio.Event | None = None,
    arrived: list[int] | None = None,
) -> ASGIApp:
    """A fake LLM upstream: reads the request, then sends `chunks` one body message each."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        if arrived is not None:
            arrived.append(1)
        if gate is not None:
            await gate.wait()
        start_headers = [(b"content-type", content_type), *headers]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def limited(inner: ASGIApp, **options: Any) -> tuple[ASGIApp, UserRateLimit]:
    options.setdefault("limits", None)
    options.setdefault("tokens", "100000/day")
    options.setdefault("key_prefix", unique_prefix())
    limiter = UserRateLimit(inner, **options)
    return identify(limiter), limiter


def body_of(**fields: Any) -> bytes:
    document = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(document).encode()


async def post(
    app: ASGIApp,
    body: bytes,
    *,
    user: str = "mallory",
    cut_at: int | None = None,
    headers: Sequence[tuple[str, str]] = (),
    client: tuple[str, int] = ("127.0.0.1", 5000),
) -> Any:
    """POST `body` as `user`; with `cut_at`, the client hangs up while the body message of that
    index is being sent (what the upstream sends from then on never arrives)."""
    sent = 0

    async def on_send(message: Message) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            if cut_at is not None and sent >= cut_at:
                raise ClientGone("client went away")
            sent += 1

    all_headers = [
        ("x-test-user", user),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *headers,
    ]
    return await request(
        app,
        method="POST",
        path=PATH,
        headers=all_headers,
        body=body,
        on_send=on_send,
        client=client,
    )


async def used(limiter: UserRateLimit, user: str = "mallory") -> int:
    windows = await limiter.usage(who(user))
    return sum(w.used for w in windows if w.kind == "tokens")


def sse(*documents: Any) -> list[bytes]:
    return [f"data: {json.dumps(d)}\n\n".encode() for d in documents]


def openai_stream(prompt: int, words: int, *, usage: bool = True) -> list[bytes]:
    events: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"content": " tok"}}]} for _ in range(words)
    ]
    if usage:
        events.append(
            {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": words}}
        )
    return [*sse(*events), b"data: [DONE]\n\n"]


def anthropic_stream(prompt: int, words: int) -> list[bytes]:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    return [
        event(
            "message_start", {"message": {"usage": {"input_tokens": prompt, "output_tokens": 1}}}
        ),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *[
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "w"}})
            for _ in range(words)
        ],
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": words}},
        ),
        event("message_stop", {}),
    ]


def halves(chunks: Sequence[bytes]) -> list[bytes]:
    """Every event split in two body messages, so a cut can fall inside an event."""
    out: list[bytes] = []
    for chunk in chunks:
        out += [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
    return out


# -- 1. concurrency against the reservation ----------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_100_concurrent_large_requests_never_overspend_the_quota(storage: str) -> None:
    prefix = unique_prefix()
    gate, arrived = asyncio.Event(), list[int]()
    quota, cap = 10_000, 4_000
    body = body_of(max_tokens=cap)
    usage = json.dumps({"usage": {"prompt_tokens": len(body) // 4, "completion_tokens": cap}})
    app, limiter = limited(
        upstream([usage.encode()], JSON, gate=gate, arrived=arrived),
        tokens=f"{quota}/day",
        key_prefix=prefix,
        storage=REDIS_URI if storage == "redis" else "async+memory://",
    )
    try:
        tasks = [asyncio.ensure_future(post(app, body)) for _ in range(100)]
        await until(lambda: sum(t.done() for t in tasks) + len(arrived) == 100)
        assert len(arrived) <= quota // (cap + len(body) // 4)
        gate.set()
        replies = await asyncio.gather(*tasks)
        statuses = sorted({r.status for r in replies})
        assert statuses in ([200, 429], [200])
        admitted = sum(r.status == 200 for r in replies)
        assert admitted * (cap + len(body) // 4) <= quota
        await until(lambda: limiter.storage_errors == 0)
        for _ in range(50):
            if await used(limiter) == admitted * (cap + len(body) // 4):
                break
            await asyncio.sleep(0.05)
        assert await used(limiter) <= quota
    finally:
        await limiter.aclose()
        if storage == "redis":
            await delete_redis_keys(prefix)


# -- 2. streams cut by the client at every point -----------------------------------------------


SHAPES = {"openai": openai_stream(40, 6), "anthropic": anthropic_stream(40, 6)}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_stream_cut_at_every_point_is_charged_the_reservation_or_its_final_usage(
    shape: str,
) -> None:
    chunks = halves(SHAPES[shape])
    body = body_of(max_tokens=300, stream=True)
    reservation = 300 + len(body) // 4
    whole = SHAPES[shape]
    final = next(c for c in whole if b"message_delta" in c or b'"choices": []' in c)
    # The body message that completes the final usage event (the meter sees a message before
    # it is sent: the one whose sending fails was seen).
    done = next(i for i in range(len(chunks)) if final in b"".join(chunks[: i + 1]))
    for cut in range(len(chunks) + 2):
        app, limiter = limited(upstream(chunks))
        try:
            reply = await post(app, body, cut_at=cut)
        except ClientGone:
            reply = None
        charged = await used(limiter)
        if cut >= done:  # the whole final usage event went past the meter
            assert charged == 46, (shape, cut, charged)
        else:
            assert charged >= reservation, (shape, cut, charged)
        if reply is not None:
            assert reply.status == 200


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_stream_cut_before_its_usage_is_charged_at_least_what_it_delivered(
    shape: str,
) -> None:
    words = 400
    chunks = openai_stream(5, words) if shape == "openai" else anthropic_stream(5, words)
    body = body_of(stream=True, stream_options={"include_usage": True})  # no max_tokens
    app, limiter = limited(upstream(chunks), default_max_tokens=16)
    usage_at = next(
        i for i, c in enumerate(chunks) if b'"choices": []' in c or b"message_delta" in c
    )
    with pytest.raises(ClientGone):
        # Hangs up on the last content chunk: the upstream stops, its usage chunk never comes.
        await post(app, body, cut_at=usage_at - 1)
    assert await used(limiter) >= words  # 400 content events were delivered


# -- 3. usage forged by the upstream ------------------------------------------------------------


FORGED_JSON = {
    "negative": {"usage": {"prompt_tokens": -100000, "completion_tokens": 1}},
    "huge": {"usage": {"prompt_tokens": 2**50, "completion_tokens": 1}},
    "strings": {"usage": {"prompt_tokens": "900", "completion_tokens": "900"}},
    "in-content": {
        "choices": [
            {"message": {"content": '"usage": {"prompt_tokens": 0, "completion_tokens": 0}'}}
        ]
    },
    "usage-null": {"choices": [], "usage": None},
    "usage-list": {"usage": [1, 2]},
}


@pytest.mark.parametrize("case", list(FORGED_JSON))
async def test_forged_json_usage_keeps_the_reservation(case: str) -> None:
    body = body_of(max_tokens=500)
    app, limiter = limited(upstream([json.dumps(FORGED_JSON[case]).encode()], JSON))
    assert (await post(app, body)).status == 200
    assert await used(limiter) >= 500 + len(body) // 4
    # Nothing the response said turned limiting off: the next request is counted too.
    assert (await post(app, body)).status == 200
    assert await used(limiter) >= 2 * (500 + len(body) // 4)
    assert limiter.storage_errors == 0


@pytest.mark.parametrize("wrong", ["900", 900.0, True], ids=["string", "float", "bool"])
async def test_a_usage_object_with_a_count_of_the_wrong_type_is_ignored_whole(wrong: Any) -> None:
    body = body_of(max_tokens=500)
    forged = {"usage": {"prompt_tokens": wrong, "completion_tokens": 1}}
    app, limiter = limited(upstream([json.dumps(forged).encode()], JSON))
    assert (await post(app, body)).status == 200
    assert await used(limiter) >= 500 + len(body) // 4


@pytest.mark.parametrize("top", ["absent", "null"])
async def test_a_nested_usage_object_is_not_the_responses_usage(top: str) -> None:
    body = body_of(max_tokens=500)
    forged: dict[str, Any] = {
        "object": "response",
        "tools": [
            {"type": "function", "parameters": {"usage": {"input_tokens": 0, "output_tokens": 1}}}
        ],
        "output": [],
    }
    if top == "null":
        forged["usage"] = None
    app, limiter = limited(upstream([json.dumps(forged).encode()], JSON))
    assert (await post(app, body)).status == 200
    assert await used(limiter) >= 500 + len(body) // 4


async def test_duplicated_usage_keys_charge_what_every_json_parser_reads() -> None:
    body = body_of(max_tokens=5000)
    raw = b'{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":700,"completion_tokens":300}}'
    app, limiter = limited(upstream([raw], JSON))
    assert (await post(app, body)).status == 200
    assert await used(limiter) == 1000  # the last one, as json.loads and the openai client read it


def _sse_raw(*lines: str, crlf: bool = False) -> bytes:
    end = "\r\n" if crlf else "\n"
    return end.join(lines).encode()


FINAL = json.dumps({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 70}})
SSE_CASES: dict[str, tuple[list[bytes], int | None]] = {
    # (chunks, expected charge; None: at least the reservation)
    "crlf": ([_sse_raw(f"data: {FINAL}", "", "data: [DONE]", "", crlf=True)], 100),
    "split-data": ([f"data: {FINAL[:20]}".encode(), f"{FINAL[20:]}\n\n".encode()], 100),
    "comments-and-event": (
        [_sse_raw(': usage {"prompt_tokens": 0}', "event: usage", f"data: {FINAL}", "", "")],
        100,
    ),
    "forged-comment-only": (
        [
            _sse_raw(
                ': {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}}', "", ""
            )
        ],
        None,
    ),
    "usage-in-content": (
        sse(
            {
                "choices": [
                    {
                        "delta": {
                            "content": '\n\ndata: {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}}\n\n'
                        }
                    }
                ]
            }
        ),
        None,
    ),
    "negative": (
        sse({"choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": -5}}),
        None,
    ),
    "running-count-only": (
        sse(
            {
                "choices": [{"delta": {"content": "x"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        ),
        None,
    ),
    "event-split-at-every-byte": ([bytes([b]) for b in f"data: {FINAL}\n\n".encode()], 100),
}


@pytest.mark.parametrize("case", list(SSE_CASES))
async def test_sse_usage_is_read_exactly_or_the_reservation_kept(case: str) -> None:
    chunks, expected = SSE_CASES[case]
    body = body_of(max_tokens=500, stream=True)
    app, limiter = limited(upstream(chunks))
    assert (await post(app, body)).status == 200
    if expected is None:
        assert await used(limiter) >= 500 + len(body) // 4
    else:
        assert await used(limiter) == expected


async def test_a_gzip_response_whose_usage_cannot_be_read_keeps_the_reservation() -> None:
    body = body_of(max_tokens=500)
    packed = gzip.compress(
        json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    )
    app, limiter = limited(upstream([packed], JSON, headers=[(b"content-encoding", b"gzip")]))
    assert (await post(app, body)).status == 200
    assert await used(limiter) >= 500 + len(body) // 4


# -- 4. ensure_stream_usage and odd bodies -------------------------------------------------------


class Echo:
    """Records the body and content-length the app got; answers an OpenAI stream without usage
    unless the body asked for it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lengths: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = b""
        while True:
            message = await receive()
            data += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(data)
        length = dict(scope["headers"]).get(b"content-length")
        self.lengths.append(None if length is None else length.decode())
        try:
            asked = json.loads(data)["stream_options"]["include_usage"] is True
        except (ValueError, KeyError, TypeError):
            asked = False
        await upstream(openai_stream(10, 3, usage=asked))(scope, receive, send)


@pytest.mark.parametrize(
    ("options", "rewritten"),
    [(None, True), ("yes", False), ({"include_usage": False}, False), ({}, True)],
    ids=["null", "string", "false", "empty"],
)
async def test_ensure_stream_usage_with_stream_options_already_there(
    options: Any, rewritten: bool
) -> None:
    echo = Echo()
    app, limiter = limited(echo, ensure_stream_usage=True)
    body = body_of(max_tokens=500, stream=True, stream_options=options)
    reply = await post(app, body)
    assert reply.status == 200
    forwarded = echo.bodies[0]
    assert echo.lengths[0] == str(len(forwarded))
    if rewritten:
        assert json.loads(forwarded)["stream_options"]["include_usage"] is True
        assert await used(limiter) == 13
    else:
        assert forwarded == body
        assert await used(limiter) >= 500 + len(body) // 4


@pytest.mark.parametrize(
    "raw",
    [b'[{"model":"m","stream":true,"max_tokens":100000}]', b'{"model":"m","stream":"true"}'],
    ids=["array", "stream-string"],
)
async def test_odd_bodies_are_forwarded_unchanged_and_never_free_when_metered(raw: bytes) -> None:
    echo = Echo()
    app, limiter = limited(echo, ensure_stream_usage=True)
    reply = await post(app, raw)
    assert reply.status in (200, 400)
    if reply.status == 200:
        assert echo.bodies == [raw]
        charged = await used(limiter)
        # An array is "not an LLM call" (documented); a string `stream` keeps the reservation.
        assert charged == 0 if raw.startswith(b"[") else charged >= 4096


@pytest.mark.parametrize("declared", ["10", "100000000"], ids=["short", "long"])
async def test_content_length_lies_never_500_nor_under_reserve(declared: str) -> None:
    body = body_of(max_tokens=100, padding="x" * 4000)
    app, limiter = limited(upstream([b"{}"], JSON))
    reply = await request(
        app,
        method="POST",
        path=PATH,
        headers=[("x-test-user", "mallory"), ("content-length", declared)],
        body=body,
    )
    assert reply.status in (200, 400, 413, 429)
    if reply.status == 200:
        assert await used(limiter) >= 100 + len(body) // 4


async def test_a_body_over_max_body_on_a_metered_path_is_still_reserved_and_refused() -> None:
    body = body_of(max_tokens=1, stream=True, padding="x" * 20_000)
    echo = Echo()
    app, _ = limited(echo, tokens="5000/day", max_body=1024, ensure_stream_usage=True)
    first = await post(app, body)  # 4096 + 5000: does not fit
    assert first.status == 429
    assert echo.bodies == []
    small, _ = limited(echo, tokens="100000/day", max_body=1024, ensure_stream_usage=True)
    assert (await post(small, body)).status == 200
    assert echo.bodies == [body]  # too large to read: never rewritten


# -- 5. RateLimit header values -----------------------------------------------------------------


def remaining(reply: Any, name: str) -> int:
    header = reply.header("ratelimit") or ""
    match = re.search(rf'"{name}";r=(-?\d+);t=(-?\d+)', header)
    assert match is not None, header
    assert int(match.group(2)) >= 0
    return int(match.group(1))


async def test_ratelimit_headers_never_negative_never_leak_and_skip_only_the_own_reservation() -> (
    None
):
    gate, arrived = asyncio.Event(), list[int]()
    over = json.dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 5000}}).encode()
    app, limiter = limited(upstream([over], JSON, gate=gate, arrived=arrived), tokens="3000/day")
    body = body_of(max_tokens=100)
    reservation = 100 + len(body) // 4
    first = asyncio.ensure_future(post(app, body))
    await until(lambda: len(arrived) == 1)
    second = asyncio.ensure_future(post(app, body))
    await until(lambda: len(arrived) == 2)
    gate.set()
    one, two = await first, await second
    # Each sees the other's open reservation (if it was open), never its own.
    assert remaining(one, "tokens-day") == 3000
    assert remaining(two, "tokens-day") == 3000 - reservation
    # Both overspent (usage above the reservation): the budget is now past its limit.
    assert await used(limiter) == 2 * 5010
    refused = await post(app, body)
    assert refused.status == 429
    assert refused.code == "token_quota_exceeded"
    if refused.header("ratelimit") is not None:
        assert remaining(refused, "tokens-day") == 0
    other = await post(app, body, user="bob")
    assert other.status == 200
    assert remaining(other, "tokens-day") == 3000  # mallory's spending is not bob's


# -- 6. bucket_by="email" -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"email_verified": False}, id="unverified"),
        pytest.param({}, id="no-claim"),
    ],
)
async def test_an_unverified_email_never_spends_its_owners_budget(
    issuer: LocalIssuer, claims: dict[str, Any]
) -> None:
    inner = upstream(
        [json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()], JSON
    )
    app = full_stack(
        inner, issuer, limits="3/minute", bucket_by="email", key_prefix=unique_prefix()
    )
    owner = issuer.mint(sub="owner", email="victim@acme.com", email_verified=True)
    attacker = issuer.mint(sub="attacker", email="Victim@ACME.com", **claims)

    async def call(token: str) -> int:
        reply = await request(app, path="/", headers=[("authorization", f"Bearer {token}")])
        return reply.status

    assert [await call(attacker) for _ in range(5)][:3] == [200, 200, 200]
    assert await call(owner) == 200


# -- 7. IPv6 anonymous rotation -----------------------------------------------------------------


def anonymous(app: ASGIApp) -> ASGIApp:
    async def with_anonymous(scope: Scope, receive: Receive, send: Send) -> None:
        set_identity(scope, Identity(source="anonymous"))
        await app(scope, receive, send)

    return with_anonymous


async def test_ipv6_clients_rotating_inside_a_64_share_one_bucket() -> None:
    limiter = UserRateLimit(
        upstream([b"ok"], b"text/plain"), limits="3/minute", key_prefix=unique_prefix()
    )
    app = anonymous(limiter)
    addresses = [
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:DB8:1:2:0:0:0:abcd",
        "2001:0db8:0001:0002::9",
        "2001:db8:1:2::77",
    ]
    statuses = [(await request(app, path="/", client=(a, 1))).status for a in addresses]
    assert statuses == [200, 200, 200, 429, 429]
    # A neighbouring /64 is a new subscriber (documented: set ipv6_prefix=56/48 for larger blocks).
    assert (await request(app, path="/", client=("2001:db8:1:3::1", 1))).status == 200
    # IPv4 and its IPv4-mapped form are one client.
    for _ in range(3):
        assert (await request(app, path="/", client=("198.51.100.7", 1))).status == 200
    assert (await request(app, path="/", client=("::ffff:198.51.100.7", 1))).status == 429


async def test_ipv6_prefix_48_folds_rotation_across_64s() -> None:
    limiter = UserRateLimit(
        upstream([b"ok"], b"text/plain"),
        limits="2/minute",
        ipv6_prefix=48,
        key_prefix=unique_prefix(),
    )
    app = anonymous(limiter)
    statuses = [
        (await request(app, path="/", client=(f"2001:db8:7:{n:x}::1", 1))).status for n in range(6)
    ]
    assert statuses == [200, 200, 429, 429, 429, 429]


# -- 8. storage outages mid-request, and one poisoned counter ----------------------------------


def start_daemon_redis() -> tuple[int, int]:
    """A private redis-server (never the shared 6379) on a free port: (port, pid)."""
    port = free_port()
    pidfile = Path(f"/tmp/rt2-redis-{port}.pid")
    subprocess.run(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", str(pidfile)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port)
    deadline = time.monotonic() + 10
    while not pidfile.exists():
        assert time.monotonic() < deadline, "redis-server wrote no pid file"
        time.sleep(0.01)
    pid = int(pidfile.read_text().strip())
    pidfile.unlink()
    return port, pid


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_redis_killed_mid_request_never_500s_and_follows_the_policy(policy: str) -> None:
    port, pid = start_daemon_redis()
    gate, arrived = asyncio.Event(), list[int]()
    usage = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    app, limiter = limited(
        upstream([usage], JSON, gate=gate, arrived=arrived),
        limits="100/minute",
        storage=f"async+redis://127.0.0.1:{port}",
        on_storage_error=policy,
        storage_timeout=0.5,
        storage_cooldown=0.2,
    )
    try:
        body = body_of(max_tokens=50)
        gate.set()
        assert (await post(app, body)).status == 200
        gate.clear()
        inflight = asyncio.ensure_future(post(app, body))
        await until(lambda: len(arrived) == 2)
        os.kill(pid, signal.SIGKILL)
        gate.set()
        assert (await inflight).status == 200  # admitted before the outage: served, not a 500
        after = [(await post(app, body)).status for _ in range(3)]
        assert after == ([200] * 3 if policy == "open" else [503] * 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await limiter.aclose()


@pytest.mark.redis
async def test_a_poisoned_counter_refuses_one_user_and_switches_nobody_else_off() -> None:
    prefix = unique_prefix()
    usage = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    app, limiter = limited(
        upstream([usage], JSON), storage=REDIS_URI, key_prefix=prefix, tokens="100000/day"
    )
    try:
        body = body_of(max_tokens=50)
        assert (await post(app, body, user="mallory")).status == 200
        async with redis_client() as redis:
            keys = [k async for k in redis.scan_iter(match=f"*{prefix}/tokens/*mallory*")]
            assert keys
            for key in keys:
                await redis.delete([key])
                await redis.hset(key, {"x": "1"})
        assert (await post(app, body, user="mallory")).status == 503
        for _ in range(3):
            assert (await post(app, body, user="bob")).status == 200
        await until(lambda: True)
        for _ in range(50):
            if await used(limiter, "bob") == 3 * 2:
                break
            await asyncio.sleep(0.05)
        assert await used(limiter, "bob") == 6
    finally:
        await limiter.aclose()
        await delete_redis_keys(prefix)


# -- 9. the official openai client, streaming, under uvicorn -------------------------------------


async def test_the_openai_client_streams_through_the_stack_and_is_charged_its_usage(
    issuer: LocalIssuer,
) -> None:
    import openai  # the official client, a dev dependency: never skipped
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    seen: list[dict[str, Any]] = []

    async def completions(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        asked = (body.get("stream_options") or {}).get("include_usage") is True

        async def stream() -> Any:
            for chunk in openai_stream(12, 30, usage=asked):
                yield chunk
                await asyncio.sleep(0.02)  # a model generating: the client can hang up mid-way

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def usage(request: Request) -> Response:
        windows = await get_rate_limiter(request).usage(request.state.identity)
        return JSONResponse([w._asdict() for w in windows])

    inner = Starlette(routes=[Route(PATH, completions, methods=["POST"]), Route("/usage", usage)])
    app = full_stack(inner, issuer, limits=None, tokens="100000/day", ensure_stream_usage=True)
    token = issuer.mint(sub="streamer")
    with serve(app) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=200
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == " tok" * 30
        # Cut mid-stream by the client: charged the reservation, never less.
        cut = await client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=200
        )
        async for _ in cut:
            break
        await cut.close()
        await client.close()
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(100):
                windows = (
                    await http.get("/usage", headers={"authorization": f"Bearer {token}"})
                ).json()
                charged = sum(w["used"] for w in windows if w["kind"] == "tokens")
                if charged >= 42 + 200:
                    break
                await asyncio.sleep(0.05)
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert charged >= 42 + 200  # the first stream's usage + at least the cut one's cap
