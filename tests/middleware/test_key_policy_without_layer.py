"""An API key's allowed_domains and enforce_identity are honoured even when the layer that reads
them is not in the stack (issue 13, item 12): IdentityMiddleware applies them itself."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_identity import APIKey, get_identity, hash_api_key, identity_stack
from asgi_identity.credentials.apikeys import StaticAPIKeyStore
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import DomainAllowlist, EnforceIdentity, IdentityMiddleware
from asgi_identity.testing import LocalIssuer

BACKEND = "sk-ai-backend"
STRICT = "sk-ai-strict"


def _keys() -> list[APIKey]:
    return [
        APIKey(
            id="backend",
            sha256=hash_api_key(BACKEND),
            header_identity=True,
            allowed_domains=["acme.com"],
        ),
        APIKey(id="strict", sha256=hash_api_key(STRICT), enforce_identity=True),
    ]


async def _whoami(scope: Any, receive: Any, send: Any) -> None:
    identity = get_identity(scope)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": (identity.user_id or "-").encode()})


async def _call(app: Any, headers: dict[str, str]) -> tuple[int, str]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/", headers=headers)
    if response.status_code == 200:
        return 200, response.text
    return response.status_code, response.json()["error"]["code"]


CASES = {
    "listed-domain": (
        {"x-api-key": BACKEND, "x-user-email": "alice@acme.com"},
        (200, "alice@acme.com"),
    ),
    "unlisted-domain": (
        {"x-api-key": BACKEND, "x-user-email": "mallory@evil.com"},
        (403, "domain_not_allowed"),
    ),
    # From a trusted header a look-alike is no address: 400, whatever the layers.
    "look-alike": (
        {"x-api-key": BACKEND, "x-user-email": "alice@xn--cme-8cd.com"},
        (400, "invalid_request"),
    ),
    "bare-strict-key": ({"x-api-key": STRICT}, (403, "identity_required")),
}


def _hand_built() -> Any:
    return IdentityMiddleware(_whoami, api_keys=_keys())


def _stack_without_layers() -> Any:
    return identity_stack(_whoami, identity={"api_keys": _keys()}, enforce=None, domains=None)


def _stack_with_a_store() -> Any:
    return IdentityMiddleware(_whoami, api_key_store=StaticAPIKeyStore(_keys()))


def _starlette_add_middleware() -> Any:
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse(_user(request)))])
    app.add_middleware(IdentityMiddleware, api_keys=_keys())
    return app


def _user(request: Request) -> str:
    return get_identity(request).user_id or "-"


BUILDS = {
    "hand-built": _hand_built,
    "identity_stack-without-layers": _stack_without_layers,
    "key-store": _stack_with_a_store,
    "starlette-add_middleware": _starlette_add_middleware,
}


@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
@pytest.mark.parametrize(("headers", "expected"), CASES.values(), ids=CASES.keys())
async def test_a_keys_policy_holds_without_its_layer(
    build: Any, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    assert await _call(build(), headers) == expected


async def test_a_keys_domains_hold_for_a_token_too(issuer: LocalIssuer) -> None:
    app = identity_stack(
        _whoami,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            "api_keys": _keys(),
        },
        domains=None,
    )
    token = issuer.mint(sub="mallory", email="mallory@evil.com", email_verified=True)
    headers = {"authorization": f"Bearer {token}", "x-api-key": BACKEND}
    assert await _call(app, headers) == (403, "domain_not_allowed")


async def test_the_layer_in_the_stack_keeps_its_own_say() -> None:
    # DomainAllowlist is there (observing): IdentityMiddleware leaves the decision to it.
    app = IdentityMiddleware(
        EnforceIdentity(DomainAllowlist(_whoami, mode="observe"), mode="observe"),
        api_keys=_keys(),
    )
    headers = {"x-api-key": BACKEND, "x-user-email": "mallory@evil.com"}
    assert await _call(app, headers) == (200, "mallory@evil.com")
    assert await _call(app, {"x-api-key": STRICT}) == (200, "-")


def test_what_is_applied_is_said_once_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_identity")
    _hand_built()
    (record,) = [r for r in caplog.records if "applies" in r.getMessage()]
    message = record.getMessage()
    assert "allowed_domains" in message
    assert "'backend'" in message
    assert "enforce_identity" in message
    assert "'strict'" in message
    caplog.clear()
    IdentityMiddleware(EnforceIdentity(DomainAllowlist(_whoami)), api_keys=_keys())
    assert not [r for r in caplog.records if "applies" in r.getMessage()]
