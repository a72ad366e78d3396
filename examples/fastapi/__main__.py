"""`make demo`: the FastAPI gateway with a local issuer, API keys and in-memory limits.

Environment: HOST (127.0.0.1; 0.0.0.0 or :: listen on every interface), PORT (8000), OTEL_EXPORTER_OTLP_ENDPOINT (telemetry goes to the
console when unset), UPSTREAM_BASE_URL and UPSTREAM_API_KEY (forward to a real model).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from ..gateway.demo import build_demo
from ..gateway.observability import setup_telemetry
from .app import create_app


def _stop(signum: int, frame: object) -> None:
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; ending with
    # SystemExit instead of the default handler lets the telemetry below be flushed.
    raise SystemExit(0)


def reachable_host(host: str) -> str | None:
    """The loopback address the printed requests (and the gateway's own key fetch) use when the
    server listens on `host`; None when no loopback address reaches it."""
    if host == "0.0.0.0":
        return "127.0.0.1"
    if host == "::":
        return "::1"
    if host == "localhost":
        return host
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def main(create: Callable[..., Any] = create_app) -> int:
    host = os.environ.get("HOST") or "127.0.0.1"
    try:
        port = int(os.environ.get("PORT", "8000"))
    except ValueError:
        print(f"PORT must be a number, not {os.environ['PORT']!r}", file=sys.stderr)
        return 2
    public_host = reachable_host(host)
    if public_host is None:
        # The demo is its own identity provider: it fetches its key set from itself, and plain
        # http is trusted only on loopback. A wildcard address listens on loopback too.
        print(
            f"HOST={host} is not a loopback address, and the demo fetches its own key set over "
            "plain http, which is trusted on loopback only. Use HOST=0.0.0.0 to listen on every "
            "interface (the printed requests then use 127.0.0.1), or HOST=127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    demo = build_demo(public_host, port, listen=None if public_host == host else host)
    settings = demo.settings
    if os.environ.get("UPSTREAM_BASE_URL"):
        settings = dataclasses.replace(
            settings,
            upstream_base_url=os.environ["UPSTREAM_BASE_URL"],
            upstream_api_key=os.environ.get("UPSTREAM_API_KEY") or None,
        )
    shutdown_telemetry = setup_telemetry("asgi-identity-demo")
    app = create(settings)
    print(demo.banner(), flush=True)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        # lifespan="off": the gateway publishes its own key set, and uvicorn only listens once
        # start-up is over, so warming the keys at start-up could only fail. The first request
        # fetches them instead, from the running server. A gateway whose identity provider is
        # elsewhere keeps the default and warms its keys at start-up.
        uvicorn.run(app, host=host, port=port, lifespan="off", log_level="info")
    finally:
        shutdown_telemetry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
