"""The pytest plugin, used the way a user would: enabled in a conftest.py of a separate project."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = """
pytest_plugins = ["asgi_identity.pytest_plugin"]
"""

USER_TESTS = """
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
import httpx

from asgi_identity import get_identity
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.credentials.tokens import JWTIssuer


def client_for(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test")


def build_app(issuer, api_keys=()):
    async def me(request: Request) -> JSONResponse:
        identity = get_identity(request)
        return JSONResponse({"user": identity.user_id, "client": identity.client_id})

    app = Starlette(routes=[Route("/me", me)])
    return IdentityMiddleware(app, issuers=[issuer], api_keys=api_keys)


async def test_a_minted_token_passes_through_the_served_key_set(local_issuer, jwks_server, bearer_headers):
    issuer = JWTIssuer(issuer=local_issuer.issuer, audience="gateway", jwks_url=jwks_server.jwks_url)
    async with client_for(build_app(issuer)) as client:
        response = await client.get("/me", headers=bearer_headers(sub="alice"))
    assert response.json() == {"user": "alice", "client": None}
    assert jwks_server.fetches == 1


async def test_mint_token_defaults_the_subject(local_issuer, mint_token):
    issuer = JWTIssuer(issuer=local_issuer.issuer, audience="gateway", jwks=local_issuer.jwks)
    async with client_for(build_app(issuer)) as client:
        response = await client.get("/me", headers={"Authorization": "Bearer " + mint_token()})
    assert response.json()["user"] == "user-1"


async def test_an_expired_token_is_refused(local_issuer, mint_token):
    issuer = JWTIssuer(issuer=local_issuer.issuer, audience="gateway", jwks=local_issuer.jwks)
    async with client_for(build_app(issuer)) as client:
        token = mint_token(exp=1)
        response = await client.get("/me", headers={"Authorization": "Bearer " + token})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


async def test_make_api_key_gives_a_working_key(local_issuer, make_api_key):
    key, record = make_api_key("billing", tenant="acme")
    issuer = JWTIssuer(issuer=local_issuer.issuer, audience="gateway", jwks=local_issuer.jwks)
    async with client_for(build_app(issuer, api_keys=[record])) as client:
        response = await client.get("/me", headers={"X-API-Key": key})
    assert response.json() == {"user": None, "client": "billing"}


@pytest.fixture
def local_issuer():
    # Users override the issuer the way pytest overrides any fixture.
    from asgi_identity.testing import LocalIssuer

    return LocalIssuer(issuer="https://login.acme.test", audience="gateway", algorithm="EdDSA")


def test_an_overridden_issuer_is_used_by_every_fixture(local_issuer, mint_token):
    import jwt

    header = jwt.get_unverified_header(mint_token())
    assert header["alg"] == "EdDSA"
    assert jwt.decode(mint_token(), options={"verify_signature": False})["iss"] == (
        "https://login.acme.test"
    )
"""


def test_users_enable_the_fixtures_from_their_conftest(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_user_app.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
