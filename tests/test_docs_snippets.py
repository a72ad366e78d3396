"""The code in the docs, run as written: docs/testing.md as a user's test suite, the bare ASGI app
of docs/getting-started.md through its lifespan, and the error body docs/index.md shows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

import asgi_identity
from _asgi import http_client, lifespan
from _snippets import code_blocks
from asgi_identity import DomainAllowlist, Identity
from asgi_identity.testing import LocalIssuer, with_identity

TESTING = "docs/testing.md"

# The app the page's tests import as `myapp`: identity first, a person required unless the key
# says otherwise, and the two routes the page calls.
MYAPP = """
from fastapi import FastAPI, Request

from asgi_identity import EnforceIdentity, IdentityMiddleware, get_identity


def create_app(*, issuers=(), api_keys=()):
    app = FastAPI()

    @app.get("/v1/me")
    async def me(request: Request):
        identity = get_identity(request)
        return {"user_id": identity.user_id, "email": identity.email, "group": identity.group}

    @app.get("/v1/usage")
    async def usage(request: Request):
        return {"client": get_identity(request).client_id}

    app.add_middleware(EnforceIdentity)
    app.add_middleware(IdentityMiddleware, issuers=list(issuers), api_keys=list(api_keys))
    return app
"""


def _section(section: str, lang: str = "python") -> list[str]:
    return code_blocks(TESTING, lang, section=section)


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """docs/testing.md's pytest snippets laid out as a user's project."""
    (tmp_path / "pyproject.toml").write_text(_section("Enable the fixtures", "toml")[0])
    (tmp_path / "myapp.py").write_text(MYAPP)
    (tmp_path / "conftest.py").write_text(_section("Enable the fixtures")[0])
    (tmp_path / "test_first.py").write_text(_section("A first test")[0])
    tokens, rotation = _section("Tokens of every kind")
    (tmp_path / "test_tokens.py").write_text(
        "def test_tokens_of_every_kind(mint_token):\n" + textwrap.indent(tokens, "    ")
    )
    (tmp_path / "test_rotation.py").write_text(rotation)
    (tmp_path / "test_api_keys.py").write_text(_section("API keys")[0])
    # The issuer override goes in a conftest of its own: its issuer is shared, not rotated.
    (tmp_path / "own_issuer").mkdir()
    (tmp_path / "own_issuer" / "conftest.py").write_text(_section("Choosing the issuer")[0])
    (tmp_path / "own_issuer" / "test_own_issuer.py").write_text(
        "def test_every_fixture_follows(local_issuer, jwks_server, mint_token):\n"
        "    assert local_issuer.issuer == 'https://login.acme.test/'\n"
        "    assert jwks_server.issuer is local_issuer\n"
        "    assert mint_token() .count('.') == 2\n"
    )
    return tmp_path


def test_testing_page_runs_as_a_users_test_suite(user_project: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error"],
        cwd=user_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout


def test_testing_page_with_identity_snippet_publishes_the_identity() -> None:
    (snippet,) = _section("A layer or handler without tokens")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        identity = asgi_identity.get_identity(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(identity.email).encode()})

    namespace: dict[str, Any] = {"app": app}
    exec(compile(snippet, TESTING, "exec"), namespace)  # noqa: S102 - the page's own code

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=namespace["transport"], base_url="http://t") as c:
            return await c.get("/")

    assert asyncio.run(call()).text == "alice@acme.com"


def test_testing_page_without_pytest_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (snippet,) = _section("Without pytest")
    exec(compile(snippet, TESTING, "exec"), {})  # noqa: S102 - the page's own code
    assert capsys.readouterr().out.startswith("http://127.0.0.1:")


def test_every_python_snippet_of_the_testing_page_is_run_above() -> None:
    run = [
        *_section("Enable the fixtures"),
        *_section("A first test"),
        *_section("Tokens of every kind"),
        *_section("Choosing the issuer"),
        *_section("API keys"),
        *_section("A layer or handler without tokens"),
        *_section("Without pytest"),
    ]
    assert sorted(run) == sorted(code_blocks(TESTING))


# -- getting-started.md: a bare ASGI app -----------------------------------------------------------


@pytest.fixture
def offline_issuers(monkeypatch: pytest.MonkeyPatch) -> LocalIssuer:
    """JWTIssuer as the docs write it (discovery=True), with its key set inline instead."""
    idp = LocalIssuer(issuer="https://login.acme.com/", audience="gateway", algorithm="ES256")
    real_issuer = asgi_identity.JWTIssuer

    def offline_issuer(**options: Any) -> asgi_identity.JWTIssuer:
        assert options.pop("discovery") is True
        return real_issuer(**options, jwks=idp.jwks)

    monkeypatch.setattr(asgi_identity, "JWTIssuer", offline_issuer)
    return idp


async def test_bare_asgi_app_of_getting_started_runs_its_lifespan_and_its_requests(
    offline_issuers: LocalIssuer,
) -> None:
    snippet = next(
        block
        for block in code_blocks("docs/getting-started.md", section="The smallest useful gateway")
        if "async def app(scope, receive, send)" in block
    )
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "getting-started.md", "exec"), namespace)  # noqa: S102
    app = namespace["app"]

    # The lifespan a server runs: start-up, then shutdown, each answered.
    assert await lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    token = offline_issuers.mint(sub="alice", email="alice@acme.com")
    async with http_client(app, base_url="http://gateway.test") as client:
        hello = await client.get("/", headers={"Authorization": f"Bearer {token}"})
        refused = await client.get("/")
    assert hello.status_code == 200
    assert "alice" in hello.text
    assert refused.status_code == 401


# -- index.md: the error body ------------------------------------------------------------------------


async def test_index_page_error_body_is_the_one_the_package_sends() -> None:
    (shown,) = code_blocks("docs/index.md", "json")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("refused before the app")

    mallory = Identity(
        source="jwt", user_id="mallory", email="mallory@evil.test", domain="evil.test"
    )
    layer = DomainAllowlist(app, domains=["acme.com"])
    async with http_client(with_identity(layer, mallory), base_url="http://gateway.test") as client:
        response = await client.get("/v1/models")
    assert response.status_code == 403
    assert response.json() == json.loads(shown)
