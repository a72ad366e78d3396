"""The Redis server the tests marked `redis` run against.

`ASGI_IDENTITY_TEST_REDIS_URL` names it (`redis://127.0.0.1:6379` when unset); `.ci/run` starts
one there.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

REDIS_URL = os.environ.get("ASGI_IDENTITY_TEST_REDIS_URL") or "redis://127.0.0.1:6379"
REDIS_HOST = urlsplit(REDIS_URL).hostname or "127.0.0.1"
REDIS_PORT = urlsplit(REDIS_URL).port or 6379

START_REDIS = 'redis-server --port 6379 --save "" --appendonly no --daemonize yes'


def redis_answers(timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at REDIS_URL."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def missing_redis_message(count: int) -> str:
    return (
        f"{count} collected test(s) marked `redis` need a Redis server, and nothing answered "
        f"PING at {REDIS_URL}. Start one with `{START_REDIS}`, run `.ci/run` (it starts Redis "
        "and runs `make test`), or point ASGI_IDENTITY_TEST_REDIS_URL at yours."
    )
