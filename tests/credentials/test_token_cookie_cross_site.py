"""A token in the cookie is refused on unsafe cross-site requests (issue 13, item 9): through the
whole stack, and under real uvicorn with the bytes a browser sends for a cross-site form POST."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from _gateway_support import raw_request, request_bytes, serving
from asgi_identity import get_identity, identity_stack
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.testing import LocalIssuer

OWN = "http://gateway.test"


async def _whoami(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = (get_identity(scope).user_id or "-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _app(issuer: LocalIssuer, **identity: Any) -> Any:
    return identity_stack(
        _whoami,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            "token_cookie": "session",
            **identity,
        },
    )


# (method, headers besides the cookie, expected status)
TRUTH = {
    "cross-site-form-post": (
        "POST",
        {"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        403,
    ),
    "cross-site-no-origin": ("POST", {"sec-fetch-site": "cross-site"}, 403),
    "foreign-origin": ("POST", {"origin": "https://evil.example"}, 403),
    "null-origin": ("POST", {"origin": "null"}, 403),
    "sibling-subdomain": (
        "POST",
        {"origin": "http://evil.gateway.test", "sec-fetch-site": "same-site"},
        403,
    ),
    "other-port": ("PUT", {"origin": "http://gateway.test:8080"}, 403),
    "other-scheme": ("DELETE", {"origin": "https://gateway.test"}, 403),
    "cross-site-patch": ("PATCH", {"sec-fetch-site": "cross-site"}, 403),
    "same-origin": ("POST", {"origin": OWN, "sec-fetch-site": "same-origin"}, 200),
    "same-origin-default-port": ("POST", {"origin": "http://gateway.test:80"}, 200),
    "fetch-metadata-same-origin": (
        "POST",
        {"origin": "https://gateway.test", "sec-fetch-site": "same-origin"},
        200,
    ),
    "no-browser-signal": ("POST", {}, 200),
    "cross-site-get": (
        "GET",
        {"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        200,
    ),
    "cross-site-head": ("HEAD", {"sec-fetch-site": "cross-site"}, 200),
}


@pytest.mark.parametrize(("method", "headers", "status"), TRUTH.values(), ids=TRUTH.keys())
async def test_cookie_token_on_unsafe_cross_site_requests(
    issuer: LocalIssuer, method: str, headers: dict[str, str], status: int
) -> None:
    token = issuer.mint(sub="alice")
    transport = httpx.ASGITransport(app=_app(issuer))
    async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
        response = await client.request(
            method, "/v1/chat", headers={**headers, "cookie": f"session={token}"}
        )
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["code"] == "cross_site_request"
        assert token not in response.text
    # The same request with the token in Authorization is never refused for where it comes from.
    async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
        response = await client.request(
            method, "/v1/chat", headers={**headers, "authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200


async def test_allowed_origins_admit_a_configured_cross_site_caller(issuer: LocalIssuer) -> None:
    token = issuer.mint(sub="alice")
    app = _app(issuer, allowed_origins=["https://chat.acme.com/"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
        cookie = {"cookie": f"session={token}", "sec-fetch-site": "cross-site"}
        ok = await client.post("/", headers={**cookie, "origin": "https://CHAT.acme.com:443"})
        assert ok.status_code == 200
        refused = await client.post("/", headers={**cookie, "origin": "https://evil.example"})
        assert refused.status_code == 403
        two = await client.post(
            "/", headers=[*cookie.items(), ("origin", "https://chat.acme.com"), ("origin", OWN)]
        )
        assert two.status_code == 403


@pytest.mark.parametrize(
    "origins",
    [
        ["https://a.test/path"],
        ["ftp://a.test"],
        ["https://user@a.test"],
        ["a.test"],
        "https://a.test",
    ],
)
def test_allowed_origins_are_checked_at_start_up(issuer: LocalIssuer, origins: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="allowed_origins"):
        _app(issuer, allowed_origins=origins)


def test_allowed_origins_without_a_token_cookie_is_a_configuration_error(
    issuer: LocalIssuer,
) -> None:
    with pytest.raises(ValueError, match="token_cookie"):
        IdentityMiddleware(
            _whoami,
            issuers=[JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            allowed_origins=["https://a.test"],
        )


async def test_a_cross_site_websocket_handshake_with_the_cookie_is_refused(
    issuer: LocalIssuer,
) -> None:
    # Cross-site WebSocket hijacking: the handshake is a GET, but the socket is not "safe".
    token = issuer.mint(sub="alice")
    app = _app(issuer)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway.test"),
            (b"origin", b"https://evil.example"),
            (b"cookie", f"session={token}".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "state": {},
    }
    await app(scope, receive, send)
    assert sent
    assert sent[0]["type"] in ("websocket.close", "websocket.http.response.start")
    assert not any(m.get("type") == "websocket.accept" for m in sent)


def test_a_browsers_cross_site_text_plain_form_post_under_uvicorn(issuer: LocalIssuer) -> None:
    # The bytes a browser sends when a page on evil.example submits
    # <form method=post enctype=text/plain action=http://gateway.test/v1/chat/completions>:
    # no preflight, the cookie attached by the browser, a body that parses as JSON.
    token = issuer.mint(sub="alice")
    body = b'{"model":"gpt-4o","messages":[],"x":"=1"}'
    browser = [
        (b"Content-Type", b"text/plain"),
        (b"Origin", b"https://evil.example"),
        (b"Referer", b"https://evil.example/"),
        (b"Sec-Fetch-Site", b"cross-site"),
        (b"Sec-Fetch-Mode", b"navigate"),
        (b"Sec-Fetch-Dest", b"document"),
        (b"Cookie", b"theme=dark; session=" + token.encode()),
    ]
    with serving(_app(issuer)) as port:
        forged = raw_request(port, request_bytes(b"POST", b"/v1/chat/completions", browser, body))
        assert forged.status == 403
        assert forged.error_code == "cross_site_request"
        # An old browser that sends only Origin is refused too.
        only_origin = [h for h in browser if h[0] not in (b"Sec-Fetch-Site",)]
        forged = raw_request(port, request_bytes(b"POST", b"/", only_origin, body))
        assert forged.status == 403
        # The app's own page, same request: accepted.
        own = [
            (b"Content-Type", b"application/json"),
            (b"Origin", OWN.encode()),
            (b"Sec-Fetch-Site", b"same-origin"),
            (b"Cookie", b"session=" + token.encode()),
        ]
        accepted = raw_request(port, request_bytes(b"POST", b"/v1/chat/completions", own, body))
        assert accepted.status == 200
        assert accepted.body == b"alice"
