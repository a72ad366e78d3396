"""UserRateLimit on Redis: shared between processes, and what happens when Redis goes away."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest

from _asgi import lifespan
from _ratelimit_support import (
    REDIS_URI,
    blackhole,
    client,
    delete_redis_keys,
    free_port,
    identify,
    llm_app,
    own_redis_server,
    redis_client,
    unique_prefix,
    until,
    wait_for_port,
)
from asgi_identity.middleware.ratelimit import UserRateLimit

pytestmark = pytest.mark.redis

_made: list[UserRateLimit] = []


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = unique_prefix()
    yield prefix
    while _made:
        await _made.pop().aclose()
    await delete_redis_keys(prefix)


def limiter(prefix: str, storage: str, **options: Any) -> UserRateLimit:
    made = UserRateLimit(llm_app(), storage=storage, key_prefix=prefix, **options)
    _made.append(made)
    return made


SHARED_APP = """
import os

from asgi_identity.identity import Identity, set_identity
from asgi_identity.middleware.ratelimit import UserRateLimit


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": os.environ["WORKER"].encode()})


limited = UserRateLimit(
    hello,
    limits="10/minute",
    storage=os.environ["REDIS_URI"],
    key_prefix=os.environ["KEY_PREFIX"],
)


async def app(scope, receive, send):
    set_identity(scope, Identity(source="jwt", user_id="alice", issuer="https://issuer.test"))
    await limited(scope, receive, send)
"""


@pytest.fixture
def two_workers(tmp_path: Path, prefix: str) -> Iterator[list[int]]:
    """Two uvicorn processes on loopback ports, the same app, the same Redis."""
    (tmp_path / "shared_app.py").write_text(textwrap.dedent(SHARED_APP))
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(tmp_path),
                "--port",
                str(port),
                "--lifespan",
                "off",
                "--log-level",
                "warning",
                "shared_app:app",
            ],
            env={
                "KEY_PREFIX": prefix,
                "WORKER": str(n),
                "REDIS_URI": REDIS_URI,
                "PATH": "/usr/bin:/bin",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n, port in enumerate(ports)
    ]
    try:
        for port in ports:
            wait_for_port(port, deadline=30)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()


async def test_two_uvicorn_processes_sharing_redis_enforce_one_limit(
    two_workers: list[int],
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        responses = [await http.get(f"http://127.0.0.1:{two_workers[n % 2]}/") for n in range(30)]
    admitted = [r for r in responses if r.status_code == 200]
    assert len(admitted) == 10
    assert {r.text for r in admitted} == {"0", "1"}  # both workers admitted some
    assert all(r.status_code == 429 for r in responses if r.status_code != 200)
    assert responses[-1].json()["error"]["code"] == "rate_limited"


# -- Redis unreachable ---------------------------------------------------------------------

CLOSED_PORT_URI = f"async+redis://127.0.0.1:{free_port()}"


async def test_unreachable_redis_fails_open_without_headers(prefix: str) -> None:
    limited = limiter(prefix, CLOSED_PORT_URI, limits="1/minute", on_storage_error="open")
    async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
        responses = [await http.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "ratelimit" not in responses[0].headers
    assert limited.storage_errors >= 3


async def test_unreachable_redis_fails_closed_with_503(prefix: str) -> None:
    limited = limiter(prefix, CLOSED_PORT_URI, limits="1/minute", on_storage_error="closed")
    async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
        responses = [await http.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert responses[0].json()["error"] == {
        "message": "Rate limiting is temporarily unavailable; try again shortly.",
        "type": "service_unavailable_error",
        "code": "rate_limit_unavailable",
    }
    assert int(responses[0].headers["retry-after"]) >= 1


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
async def test_a_redis_that_never_answers_is_given_up_on_after_the_timeout(
    prefix: str, policy: str, status: int
) -> None:
    async with blackhole() as port:
        limited = limiter(
            prefix,
            f"async+redis://127.0.0.1:{port}",
            limits="1/minute",
            tokens="1000/day",
            on_storage_error=policy,
            storage_timeout=0.2,
        )
        async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
            responses = await asyncio.wait_for(
                asyncio.gather(*(http.get("/") for _ in range(5))), 10
            )
            completion = await asyncio.wait_for(
                http.post("/v1/chat/completions", json={"max_tokens": 5}), 10
            )
        await asyncio.wait_for(limited.aclose(), 10)
    assert [r.status_code for r in responses] == [status] * 5
    assert completion.status_code == status


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
async def test_redis_killed_mid_run_follows_the_policy_and_never_500s(
    prefix: str, policy: str, status: int
) -> None:
    with own_redis_server() as redis:
        uri = f"async+redis://127.0.0.1:{redis.port}"  # type: ignore[attr-defined]
        limited = limiter(
            prefix,
            uri,
            limits="2/minute",
            tokens="1000/day",
            on_storage_error=policy,
            storage_timeout=0.5,
            storage_cooldown=0,
        )
        async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
            before = [(await http.get("/")).status_code for _ in range(3)]
            redis.kill()
            redis.wait(timeout=10)
            after = [(await http.get("/")).status_code for _ in range(3)]
            completion = await http.post(
                "/v1/chat/completions", json={"max_tokens": 5, "x_completion": 1}
            )
    assert before == [200, 200, 429]
    assert after == [status] * 3
    assert completion.status_code == status
    assert limited.storage_errors >= 3


async def test_redis_lost_between_reservation_and_settlement_is_logged_not_raised(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with own_redis_server() as redis:
        uri = f"async+redis://127.0.0.1:{redis.port}"  # type: ignore[attr-defined]
        app = llm_app()
        app.state.gate = gate = asyncio.Event()
        app.state.arrived = 0
        limited = UserRateLimit(
            app, limits=None, tokens="1000/day", storage=uri, key_prefix=prefix, storage_cooldown=0
        )
        _made.append(limited)
        async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
            pending = asyncio.ensure_future(
                http.post("/v1/chat/completions", json={"max_tokens": 5, "x_completion": 1})
            )
            await until(lambda: app.state.arrived == 1)
            redis.kill()
            redis.wait(timeout=10)
            gate.set()
            response = await asyncio.wait_for(pending, 10)
    assert response.status_code == 200
    assert "could not settle" in caplog.text


async def test_shared_redis_counts_are_visible_to_a_second_limiter(prefix: str) -> None:
    first = limiter(prefix, REDIS_URI, limits="5/minute")
    second = limiter(prefix, REDIS_URI, limits="5/minute")
    async with client(identify(first), headers={"x-test-user": "alice"}) as http:
        for _ in range(3):
            await http.get("/")
    async with client(identify(second), headers={"x-test-user": "alice"}) as http:
        response = await http.get("/")
    assert response.headers["ratelimit"].startswith('"requests-minute";r=1;')


async def test_lifespan_shutdown_closes_the_redis_connections(prefix: str) -> None:
    # Not in `_made`: if shutdown left a socket open, the strict warning filter would fail the test.
    limited = UserRateLimit(llm_app(), limits="5/minute", storage=REDIS_URI, key_prefix=prefix)
    async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
        assert (await http.get("/")).status_code == 200
    sent = await lifespan(limited, scope={"type": "lifespan", "state": {}})
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_failing_open_while_reserving_tokens_still_hands_the_app_its_body(
    prefix: str,
) -> None:
    """The body is read to estimate the tokens before Redis is asked; when Redis is down and
    the request goes on, the app must still get that body (it would wait for it for good)."""
    limited = limiter(
        prefix, CLOSED_PORT_URI, limits=None, tokens="100000/day", on_storage_error="open"
    )
    async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
        response = await asyncio.wait_for(
            http.post("/v1/chat/completions", json={"max_tokens": 5, "x_completion": 7}), 10
        )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 7  # the app read the body
    assert "ratelimit" not in response.headers
    assert limited.storage_errors >= 1


async def test_a_timeout_between_incrby_and_expire_does_not_limit_the_user_for_good(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """limits counts on Redis with INCRBY, then EXPIRE for a new key. A storage timeout that
    falls between the two must not cancel the EXPIRE: a counter without one never resets."""
    # The one fake here: Redis made slow for the EXPIRE only, which no real setup can aim at.
    expire = coredis.Redis.expire
    finished = asyncio.Event()

    async def slow_expire(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(0.3)
            return await expire(self, *args, **kwargs)
        finally:
            finished.set()

    limited = limiter(prefix, REDIS_URI, limits="5/second", storage_timeout=0.1, storage_cooldown=0)
    async with client(identify(limited), headers={"x-test-user": "alice"}) as http:
        monkeypatch.setattr(coredis.Redis, "expire", slow_expire)
        assert (await http.get("/")).status_code == 200  # timed out: failed open
        assert limited.storage_errors == 1
        await asyncio.wait_for(finished.wait(), 10)
        monkeypatch.setattr(coredis.Redis, "expire", expire)
        async with redis_client() as redis:
            keys = [key async for key in redis.scan_iter(match=f"*{prefix}*")]
            assert keys
            assert all([await redis.ttl(key) > 0 for key in keys])
        assert [(await http.get("/")).status_code for _ in range(5)][-1] == 429
        await asyncio.sleep(1.1)  # the second is over
        assert (await http.get("/")).status_code == 200
