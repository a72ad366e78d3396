from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from _asgi import http_client
from asgi_identity import Actor, Identity, MiddlewareOrderError
from asgi_identity.integrations.fastapi import (
    CurrentIdentity,
    install_error_handler,
    require_roles,
    require_scopes,
)
from asgi_identity.testing import with_identity
from asgi_identity.types import ASGIApp

ALICE = Identity(
    source="jwt",
    user_id="alice",
    roles=frozenset({"admin", "billing"}),
    scopes=frozenset({"chat", "models:read"}),
    group="pro",
    actor=Actor("agent-1"),
)
BOB = Identity(source="jwt", user_id="bob", roles=frozenset({"user"}), scopes=frozenset({"chat"}))
KEY_ONLY = Identity(source="api_key", client_id="batch-app")
ANONYMOUS = Identity(source="anonymous")


def make_api(*, contract: bool = True) -> FastAPI:
    api = FastAPI()
    if contract:
        install_error_handler(api)

    @api.get("/me")
    async def me(identity: CurrentIdentity) -> dict[str, Any]:
        return {"user": identity.user_id, "agent": identity.actor and identity.actor.subject}

    @api.get("/admin")
    async def admin(
        identity: Annotated[Identity, Depends(require_roles("admin"))],
    ) -> dict[str, Any]:
        return {"user": identity.user_id}

    @api.get("/finance", dependencies=[Depends(require_roles("admin", "billing"))])
    async def finance() -> dict[str, str]:
        return {"ok": "finance"}

    @api.get("/support", dependencies=[Depends(require_roles("support", "admin", match="any"))])
    async def support() -> dict[str, str]:
        return {"ok": "support"}

    @api.post("/v1/chat/completions", dependencies=[Depends(require_scopes("chat"))])
    async def chat() -> dict[str, str]:
        return {"ok": "chat"}

    @api.get("/v1/models", dependencies=[Depends(require_scopes("models:read", "chat"))])
    async def models() -> dict[str, str]:
        return {"ok": "models"}

    return api


async def call(app: ASGIApp, method: str, path: str) -> httpx.Response:
    async with http_client(app, base_url="http://api") as client:
        return await client.request(method, path)


ROUTES = [
    ("GET", "/admin"),
    ("GET", "/finance"),
    ("GET", "/support"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
]

# who, then the status for each route above
TABLE = [
    ("alice", ALICE, [200, 200, 200, 200, 200]),
    ("bob", BOB, [403, 403, 403, 200, 403]),
    ("key_only", KEY_ONLY, [403, 403, 403, 403, 403]),
    ("anonymous", ANONYMOUS, [401, 401, 401, 401, 401]),
]


@pytest.mark.parametrize(("who", "identity", "statuses"), TABLE, ids=[row[0] for row in TABLE])
async def test_requirements_table(who: str, identity: Identity, statuses: list[int]) -> None:
    app = with_identity(make_api(), identity)
    for (method, path), status in zip(ROUTES, statuses, strict=True):
        response = await call(app, method, path)
        assert response.status_code == status, (method, path)
        if status == 403:
            assert response.json()["error"]["code"] == "policy_denied"
        if status == 401:
            assert response.json()["error"]["code"] == "missing_credentials"
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/admin", "This route requires the role 'admin'."),
        ("/finance", "This route requires the roles 'admin' and 'billing'."),
        ("/support", "This route requires one of the roles 'support', 'admin'."),
        ("/v1/models", "This route requires the scopes 'models:read' and 'chat'."),
    ],
)
async def test_refusal_names_what_the_route_requires(path: str, message: str) -> None:
    response = await call(with_identity(make_api(), BOB), "GET", path)
    assert response.status_code == 403
    assert response.json() == {
        "error": {"message": message, "type": "permission_error", "code": "policy_denied"}
    }
    assert response.headers["cache-control"] == "no-store"


async def test_dependency_returns_the_identity_the_middleware_set() -> None:
    app = with_identity(make_api(), ALICE)
    assert (await call(app, "GET", "/admin")).json() == {"user": "alice"}
    assert (await call(app, "GET", "/me")).json() == {"user": "alice", "agent": "agent-1"}


async def test_without_the_handler_fastapi_still_answers_403() -> None:
    response = await call(with_identity(make_api(contract=False), BOB), "GET", "/admin")
    assert response.status_code == 403
    assert response.json() == {"detail": "This route requires the role 'admin'."}


async def test_without_the_handler_refusals_still_carry_the_contract_headers() -> None:
    api = make_api(contract=False)
    anonymous = await call(with_identity(api, ANONYMOUS), "GET", "/admin")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.headers["cache-control"] == "no-store"
    denied = await call(with_identity(api, BOB), "GET", "/admin")
    assert denied.status_code == 403
    assert denied.headers["cache-control"] == "no-store"
    assert "www-authenticate" not in denied.headers


async def test_custom_renderer_replaces_the_body() -> None:
    api = FastAPI()
    install_error_handler(api, renderer=lambda error: (error.code.encode(), "text/plain"))

    @api.get("/admin", dependencies=[Depends(require_roles("admin"))])
    async def admin() -> None:
        return None

    response = await call(with_identity(api, BOB), "GET", "/admin")
    assert (response.status_code, response.text) == (403, "policy_denied")


async def test_missing_identity_middleware_is_a_loud_configuration_error() -> None:
    with pytest.raises(MiddlewareOrderError, match="current_identity"):
        await call(with_identity(make_api(), None), "GET", "/me")


@pytest.mark.parametrize(
    ("factory", "args", "kwargs", "message"),
    [
        (require_roles, (), {}, "at least one role"),
        (require_scopes, ("",), {}, "non-empty string"),
        (require_roles, ("admin",), {"match": "some"}, "match must be"),
    ],
)
def test_bad_requirements_fail_at_import_time(
    factory: Any, args: tuple[str, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        factory(*args, **kwargs)
