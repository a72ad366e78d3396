"""The seed's three per-key controls composed, through the real IdentityMiddleware.

Header identity (does X-User-Email count at all), enforced identity (must a person be named) and
allowed domains (which people count) are independent; each row below is one configuration and the
outcome for every kind of caller.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from litestar import Litestar, get
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import http_client
from asgi_identity import APIKey, MiddlewareOrderError, get_identity, hash_api_key
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
)
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp

KEY = "sk-ai-composition-test-key"
OUTCOMES = {
    "ok": (200, None, None),
    "401": (
        401,
        "missing_credentials",
        "No credentials: send a bearer token in the Authorization header or an API key.",
    ),
    "idreq": (403, "identity_required", "This API key requires identity context."),
    "domain": (403, "domain_not_allowed", "This email domain is not allowed."),
    "noemail": (403, "domain_not_allowed", "An email address in an allowed domain is required."),
}

# Every caller but the anonymous one sends the app's API key (X-API-Key).
#   jwt+    a token for alice@acme.com        hdr+   X-User-Email: bob@acme.com
#   jwt-    a token for mallory@gmail.com     hdr-   X-User-Email: eve@gmail.com
#   jwt0    a token with no email claim       key    the API key alone
#   anon    nothing at all (anonymous access is allowed, so the later layers decide)
CALLERS = ("jwt+", "jwt-", "jwt0", "hdr+", "hdr-", "key", "anon")

# enforce: off | global (EnforceIdentity(required=True)) | key (global off, key says True)
#          | key-off (global on, key says False)
# domains: empty | global (DomainAllowlist(domains=["acme.com"])) | key (the key lists acme.com)
TABLE = [
    # header off: X-User-Email is ignored even if sent, so hdr+/hdr- are key-only requests
    ("off", "off", "empty", "ok ok ok ok ok ok ok"),
    ("off", "off", "global", "ok domain noemail ok ok ok ok"),
    ("off", "off", "key", "ok domain noemail ok ok ok ok"),
    ("off", "global", "empty", "ok ok ok idreq idreq idreq 401"),
    ("off", "global", "global", "ok domain noemail idreq idreq idreq 401"),
    ("off", "global", "key", "ok domain noemail idreq idreq idreq 401"),
    ("off", "key", "empty", "ok ok ok idreq idreq idreq ok"),
    ("off", "key", "global", "ok domain noemail idreq idreq idreq ok"),
    ("off", "key", "key", "ok domain noemail idreq idreq idreq ok"),
    ("off", "key-off", "empty", "ok ok ok ok ok ok 401"),
    ("off", "key-off", "global", "ok domain noemail ok ok ok 401"),
    ("off", "key-off", "key", "ok domain noemail ok ok ok 401"),
    # header on: the header names a person, checked against the domains like a token's email
    ("on", "off", "empty", "ok ok ok ok ok ok ok"),
    ("on", "off", "global", "ok domain noemail ok domain ok ok"),
    ("on", "off", "key", "ok domain noemail ok domain ok ok"),
    ("on", "global", "empty", "ok ok ok ok ok idreq 401"),
    ("on", "global", "global", "ok domain noemail ok domain idreq 401"),
    ("on", "global", "key", "ok domain noemail ok domain idreq 401"),
    ("on", "key", "empty", "ok ok ok ok ok idreq ok"),
    ("on", "key", "global", "ok domain noemail ok domain idreq ok"),
    ("on", "key", "key", "ok domain noemail ok domain idreq ok"),
    ("on", "key-off", "empty", "ok ok ok ok ok ok 401"),
    ("on", "key-off", "global", "ok domain noemail ok domain ok 401"),
    ("on", "key-off", "key", "ok domain noemail ok domain ok 401"),
]

CASES = [
    pytest.param(
        header, enforce, domains, caller, outcome, id=f"{header}-{enforce}-{domains}-{caller}"
    )
    for header, enforce, domains, outcomes in TABLE
    for caller, outcome in zip(CALLERS, outcomes.split(), strict=True)
]


@pytest.fixture(scope="module")
def idp() -> LocalIssuer:
    return LocalIssuer(issuer="https://idp.test", audience="gateway", algorithm="ES256")


async def whoami(request: StarletteRequest) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse(
        {
            "source": identity.source,
            "email": identity.email,
            "conversation": identity.conversation_id,
        }
    )


APP = Starlette(routes=[Route("/v1/chat/completions", whoami, methods=["POST"])])


def issuers(idp: LocalIssuer) -> list[JWTIssuer]:
    return [JWTIssuer(issuer=idp.issuer, audience="gateway", jwks=idp.jwks)]


def stack(idp: LocalIssuer, header: str, enforce: str, domains: str) -> ASGIApp:
    record = APIKey(
        id="backend",
        sha256=hash_api_key(KEY),
        header_identity=header == "on",
        enforce_identity={"key": True, "key-off": False}.get(enforce),
        allowed_domains=["acme.com"] if domains == "key" else None,
    )
    app: ASGIApp = DomainAllowlist(APP, domains=["acme.com"] if domains == "global" else [])
    app = EnforceIdentity(app, required=enforce in ("global", "key-off"))
    return IdentityMiddleware(app, issuers=issuers(idp), api_keys=[record], allow_anonymous=True)


def headers_of(idp: LocalIssuer, caller: str) -> dict[str, str]:
    if caller == "anon":
        return {}
    headers = {"x-api-key": KEY}
    if caller == "jwt+":
        headers["authorization"] = "Bearer " + idp.mint(sub="alice", email="alice@acme.com")
    elif caller == "jwt-":
        headers["authorization"] = "Bearer " + idp.mint(sub="mallory", email="mallory@gmail.com")
    elif caller == "jwt0":
        headers["authorization"] = "Bearer " + idp.mint(sub="svc-7")
    elif caller == "hdr+":
        headers["x-user-email"] = "bob@acme.com"
    elif caller == "hdr-":
        headers["x-user-email"] = "eve@gmail.com"
    return headers


async def post(app: ASGIApp, headers: dict[str, str]) -> httpx.Response:
    async with http_client(app, peer=("203.0.113.7", 40000)) as http:
        return await http.post("/v1/chat/completions", headers=headers, json={"model": "m"})


@pytest.mark.parametrize(("header", "enforce", "domains", "caller", "outcome"), CASES)
async def test_the_three_controls_compose(
    idp: LocalIssuer, header: str, enforce: str, domains: str, caller: str, outcome: str
) -> None:
    response = await post(stack(idp, header, enforce, domains), headers_of(idp, caller))
    status, code, message = OUTCOMES[outcome]
    assert response.status_code == status, response.text
    if code is None:
        source = {"jwt": "jwt", "hdr": "header" if header == "on" else "api_key"}.get(
            caller[:3], "api_key" if caller == "key" else "anonymous"
        )
        assert response.json()["source"] == source
    else:
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("peer", "status", "source"),
    [("10.1.2.3", 200, "header"), ("203.0.113.7", 401, None)],
)
async def test_header_identity_from_a_trusted_network_satisfies_enforcement_without_a_key(
    idp: LocalIssuer, peer: str, status: int, source: str | None
) -> None:
    app = IdentityMiddleware(
        EnforceIdentity(DomainAllowlist(APP, domains=["acme.com"])),
        issuers=issuers(idp),
        trusted_header_networks=["10.0.0.0/8"],
        allow_anonymous=True,
    )
    async with http_client(app, peer=(peer, 40000)) as http:
        response = await http.post(
            "/v1/chat/completions", headers={"x-user-email": "Bob@ACME.com"}, json={}
        )
    assert response.status_code == status
    if source is not None:
        assert response.json()["source"] == source
        assert response.json()["email"] == "bob@acme.com"


async def test_the_whole_chain_in_fastapi(idp: LocalIssuer) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        identity = get_identity(request)
        return {"user": identity.user_id, "conversation": identity.conversation_id}

    # add_middleware: the last added runs first, so add them from the innermost out.
    app.add_middleware(ConversationTagger)
    app.add_middleware(DomainAllowlist, domains=["acme.com"])
    app.add_middleware(EnforceIdentity)
    app.add_middleware(IdentityMiddleware, issuers=issuers(idp))

    token = idp.mint(sub="alice", email="alice@acme.com")
    headers = {"authorization": f"Bearer {token}", "x-conversation-id": "c-1"}
    response = await post(app, headers)
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "conversation": "c-1"}
    assert response.headers["x-conversation-id"] == "c-1"

    other = idp.mint(sub="mallory", email="mallory@gmail.com")
    response = await post(app, {"authorization": f"Bearer {other}"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "domain_not_allowed"


def define(layer: Any, **options: Any) -> DefineMiddleware:
    # Litestar types its middleware with its own TypedDict scopes; ours take a plain mapping.
    return DefineMiddleware(layer, **options)


async def test_the_whole_chain_in_litestar(idp: LocalIssuer) -> None:
    @get("/v1/chat/completions")
    async def chat(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        identity = get_identity(request)
        return {"user": identity.user_id, "conversation": identity.conversation_id}

    # Litestar runs the first listed middleware first.
    app: Any = Litestar(
        route_handlers=[chat],
        middleware=[
            define(IdentityMiddleware, issuers=issuers(idp)),
            define(EnforceIdentity),
            define(DomainAllowlist, domains=["acme.com"]),
            define(ConversationTagger),
        ],
    )
    token = idp.mint(sub="alice", email="alice@acme.com")
    async with http_client(app) as http:
        headers = {"authorization": f"Bearer {token}", "x-conversation-id": "c-2"}
        response = await http.get("/v1/chat/completions", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"user": "alice", "conversation": "c-2"}
        assert response.headers["x-conversation-id"] == "c-2"

        response = await http.get(
            "/v1/chat/completions", headers={"x-conversation-id": "not valid!"}
        )
        # No credentials at all: IdentityMiddleware answers first.
        assert response.status_code == 401
        response = await http.get(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {token}", "x-conversation-id": "not valid!"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_conversation_id"


async def test_a_layer_added_in_the_wrong_order_says_how_to_fix_it(idp: LocalIssuer) -> None:
    # Added after IdentityMiddleware, EnforceIdentity runs first and finds no identity.
    app = FastAPI()
    app.add_middleware(IdentityMiddleware, issuers=issuers(idp))
    app.add_middleware(EnforceIdentity)
    token = idp.mint(sub="alice")
    with pytest.raises(MiddlewareOrderError, match="add EnforceIdentity before IdentityMiddleware"):
        await post(app, {"authorization": f"Bearer {token}"})
