"""IdentityMiddleware in FastAPI, Starlette and Litestar apps, served by real uvicorn on loopback.

Each framework gets its own server, its own identity provider serving a JWKS over HTTP, and the
same tests over HTTP (httpx) and WebSocket (websockets).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fastapi
import httpx
import litestar
import pytest
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from _servers import serve
from asgi_identity import APIKey, get_identity, hash_api_key
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.testing import JWKSServer, LocalIssuer

KEY = "sk-ai-frameworks-backend-key"
HEADER_KEY = "sk-ai-frameworks-trusted-backend"


def middleware_options(jwks_url: str) -> dict[str, Any]:
    return {
        "issuers": [JWTIssuer(issuer="https://issuer.test", audience="gateway", jwks_url=jwks_url)],
        "api_keys": [
            APIKey(id="backend", sha256=hash_api_key(KEY), tenant="acme"),
            APIKey(id="trusted", sha256=hash_api_key(HEADER_KEY), header_identity=True),
        ],
        "sanitize": True,
    }


def describe(connection: Any) -> dict[str, Any]:
    """What the handler sees, in any of the three frameworks."""
    identity = get_identity(connection)
    return {
        "source": identity.source,
        "user_id": identity.user_id,
        "email": identity.email,
        "client_id": identity.client_id,
        "tenant": identity.tenant,
        "state_identity": connection.state.identity is identity,
        "display_name": connection.user.display_name,
        "is_authenticated": connection.user.is_authenticated,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in connection.scope["headers"]
        ],
    }


def starlette_app(options: dict[str, Any]) -> Any:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(describe(request))

    @requires("chat:write")
    async def scoped(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(describe(websocket))
        await websocket.close()

    return Starlette(
        routes=[Route("/whoami", whoami), Route("/scoped", scoped), WebSocketRoute("/ws", ws)],
        middleware=[Middleware(IdentityMiddleware, **options)],
    )


def fastapi_app(options: dict[str, Any]) -> Any:
    # FastAPI resolves the handlers' annotations from this module's globals.
    app = fastapi.FastAPI()
    app.add_middleware(IdentityMiddleware, **options)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return describe(request)

    @app.get("/scoped")
    @requires("chat:write")
    async def scoped(request: Request) -> dict[str, Any]:
        return {"ok": True}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(describe(websocket))
        await websocket.close()

    return app


def litestar_app(options: dict[str, Any]) -> Any:
    @litestar.get("/whoami", sync_to_thread=False)
    def whoami(request: litestar.Request[Any, Any, Any]) -> dict[str, Any]:
        return describe(request)

    @litestar.get("/scoped", sync_to_thread=False)
    def scoped(request: litestar.Request[Any, Any, Any]) -> dict[str, Any]:
        if "chat:write" not in request.auth.scopes:
            raise PermissionDeniedException()
        return {"ok": True}

    @litestar.websocket("/ws")
    async def ws(socket: litestar.WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        await socket.send_json(describe(socket))
        await socket.close()

    return litestar.Litestar(
        route_handlers=[whoami, scoped, ws],
        middleware=[DefineMiddleware(IdentityMiddleware, **options)],
    )


FRAMEWORKS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
}


@dataclass
class Served:
    framework: str
    url: str
    issuer: LocalIssuer
    jwks: JWKSServer
    fetches_after_startup: int

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    issuer = LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")
    with issuer.serve() as jwks:
        app = FRAMEWORKS[request.param](middleware_options(jwks.jwks_url))
        with serve(app, ws="websockets-sansio") as url:
            yield Served(request.param, url, issuer, jwks, jwks.fetches)


async def get(served: Served, path: str, headers: list[tuple[str, str]]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        return await client.get(path, headers=headers)


def forwarded(body: dict[str, Any]) -> dict[str, str]:
    return {
        name: value
        for name, value in body["headers"]
        if name.lower().replace("_", "-").startswith("x-user-")
    }


def names(body: dict[str, Any]) -> set[str]:
    return {name.lower() for name, _ in body["headers"]}


# -- HTTP -----------------------------------------------------------------------------------------


async def test_valid_token_reaches_the_handler_as_identity(served: Served) -> None:
    token = served.issuer.mint(sub="alice", email="alice@acme.com", name="Alice")
    response = await get(served, "/whoami", [("Authorization", f"Bearer {token}")])
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["user_id"], body["email"]) == ("jwt", "alice", "alice@acme.com")
    assert body["state_identity"] is True
    assert (body["display_name"], body["is_authenticated"]) == ("Alice", True)
    assert forwarded(body) == {
        "x-user-source": "jwt",
        "x-user-id": "alice",
        "x-user-email": "alice@acme.com",
    }
    # One JWKS fetch in all: at lifespan start-up where the framework runs lifespan through its
    # middleware (Starlette, FastAPI), else at the first token.
    assert served.jwks.fetches == 1
    if served.framework != "litestar":
        assert served.fetches_after_startup == 1


async def test_missing_credentials_is_the_json_error(served: Served) -> None:
    response = await get(served, "/whoami", [])
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "authentication_error",
            "code": "missing_credentials",
        }
    }
    assert response.headers["www-authenticate"] == "Bearer"


async def test_invalid_token_is_401_even_with_a_valid_api_key(served: Served) -> None:
    forger = LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")
    response = await get(
        served,
        "/whoami",
        [("Authorization", f"Bearer {forger.mint(sub='mallory')}"), ("X-API-Key", KEY)],
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


async def test_api_key_as_bearer_is_sanitized_away(served: Served) -> None:
    response = await get(served, "/whoami", [("Authorization", f"Bearer {KEY}")])
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["client_id"], body["tenant"]) == ("api_key", "backend", "acme")
    assert "authorization" not in names(body)
    assert KEY not in json.dumps(body)


async def test_trusted_backend_names_the_user_by_email(served: Served) -> None:
    response = await get(
        served, "/whoami", [("X-API-Key", HEADER_KEY), ("X-User-Email", "Bob@Acme.com")]
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["user_id"], body["client_id"]) == (
        "header",
        "bob@acme.com",
        "trusted",
    )
    assert "x-api-key" not in names(body)


async def test_email_header_from_an_untrusted_key_is_ignored(served: Served) -> None:
    response = await get(served, "/whoami", [("X-API-Key", KEY), ("X-User-Email", "ceo@acme.com")])
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["email"]) == ("api_key", None)


async def test_two_email_headers_from_a_trusted_backend_are_ambiguous(served: Served) -> None:
    response = await get(
        served,
        "/whoami",
        [
            ("X-API-Key", HEADER_KEY),
            ("X-User-Email", "bob@acme.com"),
            ("X-User-Email", "eve@acme.com"),
        ],
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ambiguous_credentials"


SPOOFS = [
    ("X-User-Id", "admin"),
    ("x-user-roles", "admin"),
    ("X_User_Tenant", "other-tenant"),
    ("x_user_source", "jwt"),
    ("X-USER-GROUP", "enterprise"),
    ("x-user-client-id", "root"),
    ("x-user-anything", "x"),
]


async def test_spoofed_identity_headers_never_reach_the_app(served: Served) -> None:
    response = await get(served, "/whoami", [("X-API-Key", KEY), *SPOOFS])
    assert response.status_code == 200
    assert forwarded(response.json()) == {
        "x-user-source": "api_key",
        "x-user-tenant": "acme",
        "x-user-client-id": "backend",
    }


async def test_token_scopes_drive_the_frameworks_own_permission_checks(served: Served) -> None:
    allowed = served.issuer.mint(sub="alice", scope="chat:write")
    response = await get(served, "/scoped", [("Authorization", f"Bearer {allowed}")])
    assert (response.status_code, response.json()) == (200, {"ok": True})
    denied = served.issuer.mint(sub="bob", scope="chat:read")
    response = await get(served, "/scoped", [("Authorization", f"Bearer {denied}")])
    assert response.status_code == 403


# -- WebSocket ------------------------------------------------------------------------------------


async def test_websocket_with_token_sees_the_identity(served: Served) -> None:
    token = served.issuer.mint(sub="alice")
    async with connect(
        served.ws_url, additional_headers=[("Authorization", f"Bearer {token}"), *SPOOFS]
    ) as websocket:
        body = json.loads(await websocket.recv())
    assert (body["source"], body["user_id"]) == ("jwt", "alice")
    assert forwarded(body) == {"x-user-source": "jwt", "x-user-id": "alice"}


async def test_websocket_with_api_key_is_accepted(served: Served) -> None:
    async with connect(served.ws_url, additional_headers=[("X-API-Key", KEY)]) as websocket:
        body = json.loads(await websocket.recv())
    assert (body["source"], body["client_id"]) == ("api_key", "backend")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([], 401, "missing_credentials"),
        ([("X-API-Key", "sk-ai-wrong")], 401, "invalid_api_key"),
        ([("X-API-Key", KEY), ("X-API-Key", KEY)], 400, "ambiguous_credentials"),
    ],
)
async def test_websocket_refusal_is_the_http_error_response(
    served: Served, headers: list[tuple[str, str]], status: int, code: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(served.ws_url, additional_headers=headers):
            pass
    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body)["error"]["code"] == code
