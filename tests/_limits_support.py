"""Shared by the issue-13 limit tests: the whole stack with a local issuer, and a raw ASGI call."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asgi_identity import APIKey, hash_api_key
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.stack import identity_stack
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp, Message

BACKEND_KEY = "sk-ai-limits-backend"


def full_stack(
    app: Any, issuer: LocalIssuer, *, policy: dict[str, Any] | None = None, **rate_limit: Any
) -> ASGIApp:
    """`app` behind identity_stack: JWTs from `issuer`, a backend key that may assert
    `X-User-Email`, RoutePolicy with `policy` if given, and UserRateLimit with `rate_limit`."""
    return identity_stack(
        app,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            "api_keys": [
                APIKey(id="backend", sha256=hash_api_key(BACKEND_KEY), header_identity=True)
            ],
        },
        policy=policy,
        rate_limit=rate_limit,
    )


def limiter_in(app: Any) -> UserRateLimit:
    """The UserRateLimit inside a stack."""
    while not isinstance(app, UserRateLimit):
        app = app.app
    return app


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through ASGI, headers exactly as given (httpx would fix
    Content-Length): (status, response headers, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": client,
        "server": ("testserver", 80),
    }
    sent: list[Message] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", ())}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, content
