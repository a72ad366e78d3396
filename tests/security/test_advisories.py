"""One regression test per public advisory whose class applies to asgi-identity.

Each test is named `test_<project>_<advisory>_...`, cites the advisory and its mechanism in its
docstring, replays the attack against this package's equivalent feature and asserts it fails. A
failing test here means the package IS vulnerable to that class: it is kept failing on purpose.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _asgi import Reply, make_scope
from _asgi import request as deliver
from asgi_identity import DomainAllowlist, IdentityMiddleware, JWTIssuer, Rule
from asgi_identity.testing import LocalIssuer

from ._attack import forge, split
from ._wire import KEY, PARSERS, Recorder, asgi, exchange, gateway, request, served

TRUSTED = ("10.1.2.3", 40000)


@pytest.fixture(scope="module")
def idp() -> LocalIssuer:
    return LocalIssuer(issuer="https://idp.test", audience="gateway", algorithm="ES256")


def _issuer(idp: LocalIssuer) -> JWTIssuer:
    return JWTIssuer(issuer=idp.issuer, audience="gateway", jwks=idp.jwks)


# -- oauth2-proxy ------------------------------------------------------------------------------


@pytest.mark.parametrize("http", PARSERS)
def test_oauth2_proxy_underscore_header_smuggling_GHSA_vjrc_mh2v_45x6(http: str) -> None:
    """oauth2-proxy GHSA-vjrc-mh2v-45x6 (CVE-2025-64484), request header smuggling: the proxy
    stripped `X-Forwarded-Email` but not `X_Forwarded_Email`, which WSGI/PHP upstreams read as
    the same header, so an authenticated user could assert another identity upstream.
    Here: every `_`/case twin of the `x-user-*` prefix and of the email/group headers is
    removed before the app, which sees only the headers the middleware wrote."""
    recorder = Recorder()
    stack = gateway(recorder, trusted_header_networks=["10.0.0.0/8"])
    smuggled = [
        ("X_User_Email", "ceo@acme.com"),
        ("X_USER_ID", "ceo"),
        ("x_user_roles", "admin"),
        ("X-User_Group", "enterprise"),
        ("X_User-Source", "jwt"),
        ("x-user-email ", "ceo@acme.com"),
    ]
    with served(stack, http) as base:
        for name, value in smuggled:
            reply = exchange(base, request("GET", "/v1/models", [(name, value)]))
            assert reply.status in (200, 400), reply.raw[:300]
            if reply.status == 200:
                seen = recorder.seen[-1]
                wsgi_names = {n.decode().upper().replace("-", "_") for n, _ in seen.headers}
                for forged in ("X_USER_EMAIL", "X_USER_ID", "X_USER_ROLES", "X_USER_GROUP"):
                    assert forged not in wsgi_names, (name, seen.headers)
                assert seen.header(b"x-user-source") == [b"api_key"]
                assert seen.identity is not None
                assert seen.identity.email is None


async def test_oauth2_proxy_underscore_header_smuggling_GHSA_vjrc_mh2v_45x6_trusted_peer() -> None:
    """Same advisory, from a trusted backend: the real `X-User-Email` is read, its `_` twin
    (which a WSGI app would merge or let win) is stripped and never read as the identity."""
    recorder = Recorder()
    stack = gateway(recorder, trusted_header_networks=["10.0.0.0/8"], api_keys=[])
    scope_headers = [(b"x-user-email", b"alice@acme.com"), (b"x_user_email", b"ceo@acme.com")]
    for headers in (scope_headers, scope_headers[::-1]):
        reply = await _from(stack, TRUSTED, headers)
        assert reply.status == 200, reply.body
        seen = recorder.seen[-1]
        assert seen.identity is not None
        assert seen.identity.email == "alice@acme.com"
        assert [v for n, v in seen.headers if n.replace(b"_", b"-") == b"x-user-email"] == [
            b"alice@acme.com"
        ]


async def _from(
    app: Any, client: tuple[str, int], headers: list[tuple[bytes, bytes]], path: str = "/v1/models"
) -> Reply:
    scope = make_scope(
        path=path, headers=[(b"host", b"gateway"), *headers], client=client, server=("gateway", 80)
    )
    return await deliver(app, scope=scope)


SKIP_HEADERS = [
    "X-Forwarded-Uri",
    "X-Original-Uri",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Forwarded-Path",
    "X-Forwarded-Prefix",
    "X-Envoy-Original-Path",
]


@pytest.mark.parametrize("http", PARSERS)
def test_oauth2_proxy_x_forwarded_uri_skip_auth_bypass_GHSA_7x63_xv5r_3p2x(http: str) -> None:
    """oauth2-proxy GHSA-7x63-xv5r-3p2x (CVE-2026-40575, and its incomplete fix, issue #3506):
    with --reverse-proxy, skip-auth rules were matched against the client-supplied
    `X-Forwarded-Uri` while the real path went upstream, so `/admin` + `X-Forwarded-Uri:
    /health` skipped authentication. Here exclusions and rules read only scope["path"]."""
    recorder = Recorder()
    with served(gateway(recorder), http, forwarded_allow_ips="*") as base:
        for header in SKIP_HEADERS:
            reply = exchange(
                base, request("GET", "/admin", [(header, "/health")], authenticated=False)
            )
            assert (reply.status, reply.code) == (401, "missing_credentials"), (header, reply.raw)
            reply = exchange(base, request("GET", "/admin", [(header, "/health")]))
            assert (reply.status, reply.code) == (403, "policy_denied"), (header, reply.raw)
        assert not recorder.seen
        # An excluded path stays excluded whatever the headers claim: nothing widens either way.
        reply = exchange(
            base, request("GET", "/health", [("X-Forwarded-Uri", "/admin")], authenticated=False)
        )
        assert reply.status == 200
        assert recorder.seen[-1].path == "/health"


@pytest.mark.parametrize(
    "target",
    ["/admin?/health", "/admin?x=/health", "/admin?redirect=/public/x", "/admin?%2Fhealth",
     "/admin/?/public/", "/health%3F/../admin", "/public%2F..%2Fadmin", "/admin%3F/public/"],
)  # fmt: skip
@pytest.mark.parametrize("http", PARSERS)
def test_oauth2_proxy_skip_auth_regex_query_string_GHSA_7rh7_c77v_6434(
    http: str, target: str
) -> None:
    """oauth2-proxy GHSA-7rh7-c77v-6434: skip_auth_routes regexes were matched against the path
    *and query*, so `/admin?/health` satisfied a `/health` skip rule. Here `exclude_paths` are
    exact paths or `/`-prefixes matched against the canonical path alone."""
    recorder = Recorder()
    with served(gateway(recorder), http) as base:
        reply = exchange(base, request("GET", target, authenticated=False))
    assert reply.status in (400, 401, 404), reply.raw[:300]
    if reply.status == 401:
        assert reply.code == "missing_credentials"
    assert not recorder.seen


def _proxy(upstream: str) -> Starlette:
    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient() as client:
            answer = await client.get(upstream + request.scope["raw_path"].decode("latin-1"))
        return Response(answer.content, answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward)])


@pytest.mark.parametrize("http", PARSERS)
def test_oauth2_proxy_fragment_evaluation_bypass_GHSA_pxq7_h93f_9jrg(http: str) -> None:
    """oauth2-proxy GHSA-pxq7-h93f-9jrg (CVE-2026-41059): a skip-auth pattern with a wildcard
    in the middle (`^/foo/.*/bar$`) was widened by a `#` in the target (`/foo/secret#/bar`),
    which the upstream reads as a fragment and routes to `/foo/secret`. Here: a RoutePolicy
    allow rule with a one-segment wildcard, a default deny, and a gateway that relays the target
    to its upstream with httpx (which drops the fragment)."""

    async def upstream_route(request: Request) -> JSONResponse:
        return JSONResponse({"routed": request.scope["path"]})

    upstream_app = Starlette(routes=[Route("/{path:path}", upstream_route)])
    rules = [Rule(id="job-output", paths=["/v1/files/*/content"])]
    with served(upstream_app, "h11") as upstream:
        stack = gateway(_proxy(upstream), rules=rules, default="deny")
        with served(stack, http) as base:
            reply = exchange(base, request("GET", "/v1/files/secret#/content"))
            allowed = exchange(base, request("GET", "/v1/files/f-1/content"))
    assert allowed.status == 200
    assert json.loads(allowed.body)["routed"] == "/v1/files/f-1/content"
    if reply.status == 200:
        assert json.loads(reply.body)["routed"] != "/v1/files/secret", "fragment widened the rule"
    assert reply.status in (400, 403), reply.raw[:400]


@pytest.mark.parametrize(
    "email",
    ["attacker@evil.com@acme.com", "attacker@evil.com@@acme.com", '"a@evil.com"@acme.com',
     "a@evil.com\x00@acme.com", "a@evil.com,b@acme.com", "a@evil.com;@acme.com"],
)  # fmt: skip
async def test_oauth2_proxy_multiple_at_email_domain_GHSA_c5c4_8r6x_56w3(
    idp: LocalIssuer, email: str
) -> None:
    """oauth2-proxy GHSA-c5c4-8r6x-56w3 (CVE-2026-40574): `attacker@evil.com@company.com`
    passed the `email_domain` check for company.com because only the text after the last `@`
    was compared. Here the same claim from a verified token, and the same value in a trusted
    backend's `X-User-Email`, must never satisfy DomainAllowlist(domains=["acme.com"])."""
    recorder = Recorder()
    app = DomainAllowlist(recorder, domains=["acme.com"])
    stack = IdentityMiddleware(app, issuers=[_issuer(idp)], trusted_header_networks=["10.0.0.0/8"])
    token = idp.mint(sub="mallory", email=email, email_verified=True)
    reply = await asgi(stack, method="GET", path="/v1/models", authenticated=False,
                       headers=[(b"authorization", b"Bearer " + token.encode())])  # fmt: skip
    assert reply.status in (401, 403), reply.body
    assert reply.code in ("invalid_token", "domain_not_allowed", "email_unverified")
    header = await _from(stack, TRUSTED, [(b"x-user-email", email.encode())])
    assert header.status in (400, 403), header.body
    assert not recorder.seen


@pytest.mark.parametrize(
    "agent",
    ["kube-probe/1.29", "GoogleHC/1.0", "ELB-HealthChecker/2.0", "", "Go-http-client/1.1",
     "Mozilla/5.0 (compatible; GoogleHC/1.0)"],
)  # fmt: skip
@pytest.mark.parametrize("http", PARSERS)
def test_oauth2_proxy_health_check_user_agent_bypass_GHSA_5hvv_m4w4_gf6v(
    http: str, agent: str
) -> None:
    """oauth2-proxy GHSA-5hvv-m4w4-gf6v (CVE-2026-34457): with --ping-user-agent or
    --gcp-healthchecks, a request carrying the health-check User-Agent was answered as a
    successful health check whatever its path, so an auth_request integration let it through.
    Here nothing about the User-Agent (or its absence) exempts a request: only exclude_paths."""
    recorder = Recorder()
    with served(gateway(recorder), http) as base:
        data = request("GET", "/admin", [("User-Agent", agent)], authenticated=False)
        reply = exchange(base, data)
        assert (reply.status, reply.code) == (401, "missing_credentials"), reply.raw[:300]
        reply = exchange(
            base, request("GET", "/v1/models", [("User-Agent", agent)], authenticated=False)
        )
        assert (reply.status, reply.code) == (401, "missing_credentials")
        no_agent = request("GET", "/admin", authenticated=False)
        assert exchange(base, no_agent).status == 401
    assert not recorder.seen


# -- LiteLLM -----------------------------------------------------------------------------------

HOSTS = [
    "localhost:4000/#@attacker.example",
    "localhost/health?x=",
    "localhost/public/x?",
    "localhost/health#",
    "gateway/../health",
    "gateway\\health",
    "health",
]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("http", PARSERS)
def test_litellm_host_header_route_confusion_CVE_2026_49468(http: str, host: str) -> None:
    """LiteLLM CVE-2026-49468 (Host header route confusion, chained with Starlette's
    GHSA-86qp-5c8j-p5mr / CVE-2026-48710): a Host such as `localhost:4000/#@attacker.example`
    or `localhost/openapi.json?x=` made `request.url.path` differ from the routed path, and the
    auth gate that read the URL skipped a protected route (`/key/generate`). Here every layer
    judges scope["path"]; the Host header never names a path."""
    recorder = Recorder()

    async def key_generate(request: Request) -> JSONResponse:
        return JSONResponse({"key": "sk-new"})

    app = Starlette(routes=[Route("/admin/key/generate", key_generate, methods=["POST"])])
    with served(gateway(app), http) as base:
        data = request("POST", "/admin/key/generate", [("Host", host)], b"{}", authenticated=False)
        data = data.replace(b"Host: gateway\r\n", b"", 1)
        reply = exchange(base, data)
        assert reply.status in (400, 401), reply.raw[:300]
        assert b"sk-new" not in reply.raw
        data = request("POST", "/admin/key/generate", [("Host", host)], b"{}")
        reply = exchange(base, data.replace(b"Host: gateway\r\n", b"", 1))
        assert reply.status in (400, 403), reply.raw[:300]
        assert b"sk-new" not in reply.raw
    assert not recorder.seen


async def test_litellm_oidc_userinfo_cache_key_collision_GHSA_jjhc_v7c2_5hh6(
    idp: LocalIssuer,
) -> None:
    """LiteLLM GHSA-jjhc-v7c2-5hh6 (CVE-2026-35030): the OIDC userinfo cache was keyed by
    `token[:20]`, which every JWT with the same header shares, so an unauthenticated token
    with the victim's prefix inherited the victim's cached identity. Here, once the victim's
    token is verified and cached, tokens sharing its header, its header and payload (another
    signature), or all but its last character must be refused and never become the victim."""
    recorder = Recorder()
    stack = IdentityMiddleware(recorder, issuers=[_issuer(idp)])
    victim = idp.mint(sub="victim", email="victim@acme.com")
    bearer = [(b"authorization", b"Bearer " + victim.encode())]
    reply = await asgi(stack, method="GET", path="/v1/models", headers=bearer, authenticated=False)
    assert reply.status == 200
    assert recorder.seen[-1].identity is not None
    assert recorder.seen[-1].identity.user_id == "victim"

    header, payload, _signature = split(victim)
    attacker = {**payload, "sub": "mallory"}
    forgeries = [
        victim[:20] + forge(header, attacker)[20:],  # same first 20 characters
        forge(header, payload, b"\x00" * 64),  # same header and payload, another signature
        victim[:-1] + ("A" if victim[-1] != "A" else "B"),  # all but the last character
        victim.rsplit(".", 1)[0] + ".",  # signature stripped
        victim + "=",  # padded
        victim.upper(),
    ]
    for token in forgeries:
        before = len(recorder.seen)
        headers = [(b"authorization", b"Bearer " + token.encode())]
        reply = await asgi(
            stack, method="GET", path="/v1/models", headers=headers, authenticated=False
        )
        assert (reply.status, reply.code) == (401, "invalid_token"), (token, reply.body)
        assert len(recorder.seen) == before
    # The API key cache (derived identities) is keyed by the whole key's digest, never a prefix.
    keyed = gateway(recorder)
    near_miss = KEY[:-1] + ("0" if KEY[-1] != "0" else "1")
    reply = await asgi(keyed, method="GET", path="/v1/models", authenticated=False,
                       headers=[(b"x-api-key", KEY.encode())])  # fmt: skip
    assert reply.status == 200
    reply = await asgi(keyed, method="GET", path="/v1/models", authenticated=False,
                       headers=[(b"x-api-key", near_miss.encode())])  # fmt: skip
    assert (reply.status, reply.code) == (401, "invalid_api_key")
