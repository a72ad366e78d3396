"""The example gateways, run under real uvicorn and called over loopback HTTP.

The demo test starts `python -m examples.fastapi` as `make demo` does and runs each printed curl
command, checking it answers what the demo says it will.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.fastapi.app import create_app as create_fastapi_app
from examples.gateway.settings import Settings
from examples.litestar.app import create_app as create_litestar_app
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import asgi_identity
from _asgi import http_client
from _servers import serve
from _snippets import code_blocks
from asgi_identity import APIKey, generate_api_key
from asgi_identity.testing import JWKSServer, LocalIssuer
from otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parents[1]
FACTORIES: dict[str, Callable[[Settings], Any]] = {
    "fastapi": create_fastapi_app,
    "litestar": create_litestar_app,
}


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "echo-1", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


class Gateway:
    def __init__(self, base_url: str, issuer: LocalIssuer, keys: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10)
        self.issuer = issuer
        self.keys = keys

    def bearer(self, **claims: Any) -> dict[str, str]:
        claims.setdefault("email_verified", True)
        return {"Authorization": f"Bearer {self.issuer.mint(**claims)}"}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """One gateway per framework for the whole module: each test calls it as users of its own,
    so the rate-limit buckets of one test never meet another's."""
    issuer = LocalIssuer(issuer="https://issuer.test", audience="gateway", algorithm="ES256")
    web_key, web_digest = generate_api_key()
    with issuer.serve() as jwks_server:
        settings = Settings(
            issuer=issuer.issuer,
            jwks_url=jwks_server.jwks_url,
            allowed_domains=("acme.com",),
            api_keys=(APIKey(id="web-app", sha256=web_digest, tenant="acme"),),
            tier_limits={"free": "2/minute", "pro": "100/minute", "trial": None},
            tier_tokens={"free": None, "pro": None, "trial": "60/day"},
        )
        with serve(FACTORIES[request.param](settings)) as base_url:
            gateway = Gateway(base_url, issuer, {"web-app": web_key})
            with gateway.client:
                yield gateway


def test_allowed_user_gets_a_json_completion(gateway: Gateway) -> None:
    response = gateway.client.post(
        "/v1/chat/completions",
        json=chat("hello from acme"),
        headers=gateway.bearer(sub="alice", email="alice@acme.com", tier="pro"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "acme from hello"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert '"requests-minute";q=100;w=60' in response.headers["ratelimit-policy"]


def test_allowed_user_gets_a_streamed_completion_ending_with_usage(gateway: Gateway) -> None:
    with gateway.client.stream(
        "POST",
        "/v1/chat/completions",
        json=chat("one two three four", stream=True),
        headers=gateway.bearer(sub="alice", email="alice@acme.com", tier="pro"),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == 8
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"])
    assert text == "four three two one"


def test_handler_sees_the_verified_identity_and_its_usage(gateway: Gateway) -> None:
    headers = gateway.bearer(
        sub="dana", email="Dana@ACME.com", name="Dana", tier="pro", org="acme", roles=["dev"]
    )
    gateway.client.post("/v1/chat/completions", json=chat("count me"), headers=headers)
    response = gateway.client.get("/v1/me", headers={**headers, "X-Conversation-Id": "conv-7"})
    assert response.status_code == 200
    me = response.json()
    assert me["source"] == "jwt"
    assert me["user_id"] == "dana"
    assert me["email"] == "dana@acme.com"
    assert me["domain"] == "acme.com"
    assert me["group"] == "pro"
    assert me["tenant"] == "acme"
    assert me["roles"] == ["dev"]
    assert me["conversation_id"] == "conv-7"
    requests_window = next(w for w in me["usage"] if w["kind"] == "requests")
    assert requests_window["limit"] == 100
    assert requests_window["used"] == 2


def test_premium_model_is_refused_to_the_free_tier_and_costs_it_no_quota(
    gateway: Gateway,
) -> None:
    free = gateway.bearer(sub="frank", email="frank@acme.com", tier="free")
    refused = gateway.client.post(
        "/v1/chat/completions", json=chat("let me try", model="echo-4o"), headers=free
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "This model is available on the pro tier only. (rule 'premium-model')",
        "type": "permission_error",
        "code": "policy_denied",
    }
    # RoutePolicy runs before UserRateLimit: the free tier's 2 requests a minute are untouched.
    for _ in range(2):
        basic = gateway.client.post("/v1/chat/completions", json=chat("fine"), headers=free)
        assert basic.status_code == 200, basic.text
    # Streaming asks for the same model in the same body, and is refused the same way.
    streamed = gateway.client.post(
        "/v1/chat/completions", json=chat("hi", model="echo-4o", stream=True), headers=free
    )
    assert streamed.json()["error"]["code"] == "policy_denied"


def test_pro_tier_gets_the_premium_model(gateway: Gateway) -> None:
    pro = gateway.bearer(sub="paula", email="paula@acme.com", tier="pro")
    response = gateway.client.post(
        "/v1/chat/completions", json=chat("premium words", model="echo-4o"), headers=pro
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "echo-4o"
    assert response.json()["choices"][0]["message"]["content"] == "words premium"


def test_user_of_a_refused_domain_is_403(gateway: Gateway) -> None:
    response = gateway.client.post(
        "/v1/chat/completions",
        json=chat("let me in"),
        headers=gateway.bearer(sub="mallory", email="mallory@evil.test", tier="pro"),
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "domain_not_allowed"


def test_exhausted_request_quota_is_429_with_retry_after(gateway: Gateway) -> None:
    headers = gateway.bearer(sub="bob", email="bob@acme.com", tier="free")
    statuses = [
        gateway.client.post("/v1/chat/completions", json=chat("again"), headers=headers)
        for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    # Another user of the same tier has a bucket of their own.
    other = gateway.bearer(sub="carol", email="carol@acme.com", tier="free")
    assert gateway.client.post("/v1/chat/completions", json=chat("hi"), headers=other).is_success


def test_exhausted_token_quota_is_429(gateway: Gateway) -> None:
    headers = gateway.bearer(sub="tina", email="tina@acme.com", tier="trial")
    words = " ".join(["word"] * 10)
    codes = []
    for _ in range(6):
        response = gateway.client.post(
            "/v1/chat/completions", json=chat(words, max_tokens=5), headers=headers
        )
        codes.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "token_quota_exceeded"
            break
    assert codes[0] == 200
    assert codes[-1] == 429


def test_api_key_without_a_person_is_403_and_with_a_token_is_200(gateway: Gateway) -> None:
    key = {"X-API-Key": gateway.keys["web-app"]}
    alone = gateway.client.post("/v1/chat/completions", json=chat("hi"), headers=key)
    assert alone.status_code == 403
    assert alone.json()["error"] == {
        "message": "This API key requires identity context.",
        "type": "permission_error",
        "code": "identity_required",
    }
    person = gateway.bearer(sub="alice", email="alice@acme.com", tier="pro")
    both = gateway.client.get("/v1/me", headers={**key, **person})
    assert both.status_code == 200
    assert both.json()["api_key"] == "web-app"
    assert both.json()["user_id"] == "alice"


def test_no_credential_is_401_and_public_paths_stay_open(gateway: Gateway) -> None:
    response = gateway.client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_credentials"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert gateway.client.get("/healthz").json() == {"status": "ok"}


def test_models_and_bad_requests_answer_in_the_openai_shape(gateway: Gateway) -> None:
    headers = gateway.bearer(sub="alice", email="alice@acme.com", tier="pro")
    models = gateway.client.get("/v1/models", headers=headers).json()
    assert [m["id"] for m in models["data"]] == ["echo-1", "echo-4o"]
    bad = gateway.client.post("/v1/chat/completions", json={"messages": "hello"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "messages must be a non-empty list"
    not_json = gateway.client.post(
        "/v1/chat/completions",
        content=b"{",
        headers={**headers, "content-type": "application/json"},
    )
    assert not_json.status_code == 400
    unknown = gateway.client.post(
        "/v1/chat/completions", json=chat("hi", model="gpt-9"), headers=headers
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


# -- forwarding to an upstream -------------------------------------------------------------------


class FakeUpstream:
    """An OpenAI-compatible upstream on loopback that records what the gateway sent it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []

        async def completions(request: Request) -> Any:
            body = await request.json()
            self.requests.append((dict(request.headers), body))
            usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
            if body.get("stream"):

                async def events() -> Any:
                    yield b'data: {"choices":[{"index":0,"delta":{"content":"up"}}]}\n\n'
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
                    yield b"data: [DONE]\n\n"

                return StreamingResponse(events(), media_type="text/event-stream")
            message = {"role": "assistant", "content": "from upstream"}
            return JSONResponse(
                {
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )

        async def models(request: Request) -> Any:
            return JSONResponse({"object": "list", "data": [{"id": "real-model"}]})

        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", completions, methods=["POST"]),
                Route("/v1/models", models),
            ]
        )


@pytest.mark.parametrize("framework", sorted(FACTORIES))
def test_gateway_forwards_to_the_upstream_with_identity_but_never_the_users_token(
    framework: str, issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    upstream = FakeUpstream()
    with serve(upstream.app) as upstream_url:
        settings = Settings(
            issuer=issuer.issuer,
            jwks_url=jwks_server.jwks_url,
            upstream_base_url=upstream_url + "/v1",
            upstream_api_key="sk-upstream-secret",
            premium_model="real-premium",
        )
        with (
            serve(FACTORIES[framework](settings)) as base_url,
            httpx.Client(base_url=base_url, timeout=10) as client,
        ):
            token = issuer.mint(sub="alice", email="alice@acme.com", tier="pro", org="acme")
            headers = {"Authorization": f"Bearer {token}", "X-Conversation-Id": "c-1"}
            reply = client.post("/v1/chat/completions", json=chat("hi"), headers=headers)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "from upstream"
            streamed = client.post(
                "/v1/chat/completions", json=chat("hi", stream=True), headers=headers
            )
            assert sse_events(streamed.text)[-1] == "[DONE]"
            models = client.get("/v1/models", headers=headers).json()
            assert models["data"] == [{"id": "real-model"}]
            # The route policy names the upstream's premium model: refused at the gateway.
            free = issuer.mint(sub="bob", email="bob@acme.com", tier="free", org="acme")
            refused = client.post(
                "/v1/chat/completions",
                json=chat("hi", model="real-premium"),
                headers={"Authorization": f"Bearer {free}"},
            )
            assert refused.json()["error"]["code"] == "policy_denied"

    # Two requests reached the upstream: the completion and the stream, not the refused one.
    (sent_headers, sent_body), (_, streamed_body) = upstream.requests
    assert sent_headers["authorization"] == "Bearer sk-upstream-secret"
    assert token not in json.dumps(sent_headers)
    assert sent_headers["x-user-id"] == "alice"
    assert sent_headers["x-user-email"] == "alice@acme.com"
    assert sent_headers["x-user-group"] == "pro"
    assert sent_headers["x-user-tenant"] == "acme"
    assert sent_headers["x-conversation-id"] == "c-1"
    assert sent_body["user"] == "alice"
    assert streamed_body["stream_options"] == {"include_usage": True}


def test_settings_come_from_the_environment_and_bad_values_are_named() -> None:
    _, digest = generate_api_key()
    settings = Settings.from_env(
        {
            "GATEWAY_ISSUER": "https://login.acme.com/",
            "GATEWAY_ALLOWED_DOMAINS": "acme.com, .acme.org",
            "ASGI_IDENTITY_API_KEYS": json.dumps([{"id": "web", "sha256": digest}]),
            "GATEWAY_TIER_LIMITS": '{"free": "5/minute", "pro": null}',
            "GATEWAY_PREMIUM_MODEL": "gpt-4o*",
            "GATEWAY_PREMIUM_TIERS": "pro, enterprise",
            "UPSTREAM_BASE_URL": "https://api.example.com/v1",
        }
    )
    assert settings.premium_model == "gpt-4o*"
    assert settings.premium_tiers == ("pro", "enterprise")
    assert Settings.from_env({"GATEWAY_ISSUER": "https://x.test"}).premium_model == "echo-4o"
    unrestricted = Settings.from_env(
        {"GATEWAY_ISSUER": "https://x.test", "GATEWAY_PREMIUM_MODEL": ""}
    )
    assert unrestricted.premium_model is None
    assert unrestricted.builtin_models == ("echo-1",)
    with pytest.raises(ValueError, match="premium_tiers is empty"):
        Settings.from_env({"GATEWAY_ISSUER": "https://x.test", "GATEWAY_PREMIUM_TIERS": ""})
    assert settings.allowed_domains == ("acme.com", ".acme.org")
    assert [key.id for key in settings.api_keys] == ["web"]
    assert settings.tier_limits == {"free": "5/minute", "pro": None}
    assert settings.upstream_base_url == "https://api.example.com/v1"
    with pytest.raises(ValueError, match="GATEWAY_ISSUER is not set"):
        Settings.from_env({})
    with pytest.raises(ValueError, match="GATEWAY_TIER_LIMITS must be a JSON object"):
        Settings.from_env({"GATEWAY_ISSUER": "https://x.test", "GATEWAY_TIER_LIMITS": "[1]"})


# -- make demo ---------------------------------------------------------------------------------

_EXPECT = re.compile(r"#    expect: HTTP (\d{3})(?:, error code (\w+))?")


def _printed_commands(banner: str) -> list[tuple[str, int, str | None, list[str]]]:
    commands = []
    for block in re.split(r"\n# \d+\. ", banner)[1:]:
        lines = block.splitlines()
        match = _EXPECT.match(lines[1])
        assert match, lines[1]
        command: list[str] = []
        for line in lines[2:]:
            command.append(line.removesuffix("\\"))
            if not line.endswith("\\"):
                break
        code = match.group(2)
        commands.append((lines[0], int(match.group(1)), code, shlex.split(" ".join(command))))
    return commands


def _curl(argv: list[str]) -> tuple[int, str]:
    result = subprocess.run(
        [*argv, "-i", "--max-time", "20"], capture_output=True, timeout=30, check=True
    )
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


@contextmanager
def run_demo(module: str, **environ: str) -> Iterator[str]:
    """`python -m <module>` as `make demo` runs it; yields what it printed once it serves."""
    with _bound_socket() as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1", **environ}
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "UPSTREAM_BASE_URL"):
        if name not in environ:
            env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl+C to stop."):
                break
        text = "".join(banner)
        assert text.startswith(f"asgi-identity demo gateway on http://127.0.0.1:{port}"), text
        for _ in range(500):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        yield text
    finally:
        # SIGTERM: uvicorn shuts down gracefully and the demo flushes its telemetry.
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="the demo prints curl")


@needs_curl
@pytest.mark.parametrize("module", ["examples.fastapi", "examples.litestar"])
def test_demo_starts_and_each_printed_command_does_what_it_says(module: str) -> None:
    with run_demo(module) as banner:
        commands = _printed_commands(banner)
        assert len(commands) >= 6
        for title, status, code, argv in commands:
            got_status, body = _curl(argv)
            assert got_status == status, f"{title}: {body}"
            if code is not None:
                assert json.loads(body)["error"]["code"] == code, title
            if "free tier" in title:
                # The demo says the 4th call within a minute answers 429 rate_limited.
                statuses = [_curl(argv) for _ in range(3)]
                assert [s for s, _ in statuses] == [200, 200, 429], title
                assert json.loads(statuses[-1][1])["error"]["code"] == "rate_limited"
            if "route policy" in title:
                # The same request with alice's (pro tier) token gets a completion.
                alice_argv = next(a for t, _, _, a in commands if "(tier pro)" in t)
                alice_auth = next(h for h in alice_argv if h.startswith("Authorization:"))
                as_alice = [alice_auth if h.startswith("Authorization:") else h for h in argv]
                alice_status, alice_body = _curl(as_alice)
                assert alice_status == 200, alice_body
                assert json.loads(alice_body)["model"] == "echo-4o"
            if "streamed" in title:
                events = sse_events(body)
                assert events[-1] == "[DONE]"
                assert "usage" in events[-2]


@needs_curl
def test_demo_sends_spans_keyed_by_user_to_the_otlp_endpoint() -> None:
    with OTLPReceiver() as receiver:
        with run_demo("examples.fastapi", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint) as banner:
            commands = {title: argv for title, _, _, argv in _printed_commands(banner)}
            allowed = next(argv for title, argv in commands.items() if "(tier pro)" in title)
            refused = next(argv for title, argv in commands.items() if "evil.test" in title)
            assert _curl(allowed)[0] == 200
            assert _curl(refused)[0] == 403
        server_spans = [s for s in receiver.spans() if s.name.startswith("POST /v1/chat")]
    by_user = {span.attributes.get("user.id"): span for span in server_spans}
    assert by_user["alice"].attributes["asgi_identity.group"] == "pro"
    assert by_user["alice"].attributes["asgi_identity.decision"] == "allow"
    assert "asgi_identity.rejected" in [name for name, _ in by_user["mallory"].events]


@needs_curl
def test_demo_listening_on_every_interface_prints_requests_to_loopback() -> None:
    with run_demo("examples.fastapi", HOST="0.0.0.0") as banner:
        assert "listening on 0.0.0.0 (every interface)" in banner
        commands = _printed_commands(banner)
        assert all("127.0.0.1" in argv[2] for _, _, _, argv in commands), banner
        for title, status, _, argv in commands:
            if "(tier pro)" in title or "no credential" in title:
                got_status, body = _curl(argv)
                assert got_status == status, f"{title}: {body}"


def test_demo_on_an_address_it_cannot_reach_itself_says_what_to_do_instead() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.fastapi"],
        cwd=ROOT,
        env={**os.environ, "HOST": "192.0.2.10", "PORT": "8000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Use HOST=0.0.0.0 to listen on every interface" in result.stderr
    assert result.stdout == ""


# -- the README ----------------------------------------------------------------------------------


def run_readme_section(
    section: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalIssuer, dict[str, Any]]:
    """Run the README's code block under `section` as written, its issuer's key set given inline
    instead of discovered; (the stand-in identity provider, the names the block defined)."""
    (snippet,) = code_blocks("README.md", section=section)
    idp = LocalIssuer(issuer="https://login.acme.com/", audience="gateway", algorithm="ES256")
    real_issuer = asgi_identity.JWTIssuer

    def offline_issuer(**options: Any) -> asgi_identity.JWTIssuer:
        assert options.pop("discovery") is True
        return real_issuer(**options, jwks=idp.jwks)

    monkeypatch.setattr(asgi_identity, "JWTIssuer", offline_issuer)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return idp, namespace


async def test_readme_stack_gives_the_pro_tier_its_model_and_refuses_it_to_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idp, namespace = run_readme_section("In your app, layer by layer", monkeypatch)
    app: FastAPI = namespace["app"]

    @app.post("/v1/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        identity = asgi_identity.get_identity(request)
        return {"user": identity.user_id, "tier": identity.group}

    def bearer(user: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {idp.mint(sub=user, email=f'{user}@acme.com', **claims)}"}

    async with http_client(app, base_url="http://gateway.test") as client:

        async def ask(model: str, headers: dict[str, str]) -> httpx.Response:
            return await client.post("/v1/whoami", json={"model": model}, headers=headers)

        alice = await ask("gpt-4o", bearer("alice", tier="pro"))
        assert alice.status_code == 200, alice.text
        assert alice.json() == {"user": "alice", "tier": "pro"}
        assert '"requests-minute";q=600' in alice.headers["ratelimit-policy"]

        bob = await ask("gpt-4o", bearer("bob", tier="free"))
        assert bob.status_code == 403
        assert bob.json()["error"]["code"] == "policy_denied"

        # No tier in the token: the default group, with its limit.
        carol = await ask("o3-mini", bearer("carol"))
        assert carol.status_code == 200, carol.text
        assert carol.json() == {"user": "carol", "tier": "free"}
        assert '"requests-minute";q=10' in carol.headers["ratelimit-policy"]


async def test_readme_quick_start_serves_allowed_users_and_refuses_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idp, namespace = run_readme_section("Quick start", monkeypatch)

    def bearer(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {idp.mint(sub=email.split('@')[0], email=email)}"}

    async with http_client(namespace["app"], base_url="http://gateway.test") as client:
        alice = await client.get("/v1/me", headers=bearer("alice@acme.com"))
        assert alice.status_code == 200, alice.text
        assert alice.json() == {"user": "alice", "email": "alice@acme.com"}
        assert (await client.get("/v1/me")).status_code == 401
        mallory = await client.get("/v1/me", headers=bearer("mallory@evil.test"))
        assert mallory.status_code == 403
