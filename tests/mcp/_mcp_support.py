"""The example MCP server (official SDK) behind mcp_stack, under real uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import uvicorn
from examples.mcp.server import build_app
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from asgi_identity import JWTIssuer
from asgi_identity.testing import LocalIssuer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_on(app: Any, port: int) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


class MCPServerUnderTest:
    def __init__(self, base: str, resource: str, issuer: LocalIssuer) -> None:
        self.base = base
        self.resource = resource
        self.issuer = issuer

    def token(self, sub: str, **claims: Any) -> str:
        return self.issuer.mint(sub=sub, **claims)

    @asynccontextmanager
    async def client(self, token: str | None, **options: Any) -> AsyncIterator[Client]:
        """The official client with the token in every request (the SDK leaves a client it was
        given open, so it is closed here)."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(self.resource, http_client=http), **options) as client,
        ):
            yield client


@contextmanager
def running_example(**options: Any) -> Iterator[MCPServerUnderTest]:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    local = LocalIssuer(issuer="https://issuer.test", audience=resource, algorithm="ES256")
    issuer = JWTIssuer(local.issuer, audience=resource, public_key=local.signing_key.public_pem)
    app = build_app(resource=resource, issuer=issuer, **options)
    with serve_on(app, port) as base:
        yield MCPServerUnderTest(base, resource, local)
