"""Without a Redis server, a run that collects tests marked `redis` stops at once and says why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _ratelimit_support import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ASGI_IDENTITY_TEST_REDIS_URL": redis_url}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_redis_tests_without_a_redis_fail_the_session_before_any_test_runs() -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_pytest("-m", "redis", "tests", redis_url=closed)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"nothing answered PING at {closed}" in output
    assert 'redis-server --port 6379 --save "" --appendonly no --daemonize yes' in output
    assert ".ci/run" in output
    # Stopped before the first test: nothing passed, failed or was skipped.
    assert " passed" not in output
    assert " failed" not in output
    assert " skipped" not in output
    assert time.monotonic() - started < 60


def test_a_run_without_redis_tests_needs_no_redis() -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    result = run_pytest("tests/credentials/test_email.py", redis_url=closed)
    assert result.returncode == 0, result.stdout + result.stderr
