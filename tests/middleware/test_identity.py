"""IdentityMiddleware as a raw ASGI layer: credentials, forwarding, groups, WebSocket, lifespan."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _asgi import Recorder, Reply, lifespan, make_scope, request
from asgi_identity import APIKey, Identity, hash_api_key
from asgi_identity.credentials._forwarded import forwarded_headers
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.testing import JWKSServer, LocalIssuer
from asgi_identity.types import Message, Receive, Scope, Send

KEY = "sk-ai-backend-key-0123456789"
OTHER_KEY = "sk-ai-other-key-9876543210"
CLIENT = ("203.0.113.7", 40000)


def http_scope(
    headers: Sequence[tuple[str, str]],
    *,
    path: str = "/v1/chat/completions",
    method: str = "GET",
    client: tuple[str, int] | None = CLIENT,
) -> Scope:
    # Names kept as given: the middleware must cope with any case and `_` spellings.
    return make_scope(method=method, path=path, headers=headers, client=client)


async def call(app: Any, headers: Sequence[tuple[str, str]] = (), **options: Any) -> Reply:
    return await request(app, scope=http_scope(headers, **options))


def key_record(key: str = KEY, **policy: Any) -> APIKey:
    return APIKey(id=policy.pop("id", "backend"), sha256=hash_api_key(key), **policy)


def jwt_issuer(issuer: LocalIssuer, **options: Any) -> JWTIssuer:
    return JWTIssuer(
        issuer=issuer.issuer,
        audience="gateway",
        public_key=issuer.signing_key.public_pem,
        **options,
    )


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


# -- API keys -------------------------------------------------------------------------------------


async def test_api_key_in_x_api_key_names_the_client() -> None:
    app = Recorder()
    response = await call(
        IdentityMiddleware(app, api_keys=[key_record(tenant="acme", group="pro")]),
        [("X-API-Key", KEY)],
    )
    assert response.status == 200
    identity = app.identity
    assert (identity.source, identity.client_id, identity.tenant, identity.group) == (
        "api_key",
        "backend",
        "acme",
        "pro",
    )
    assert not identity.has_user


async def test_api_key_as_non_jwt_bearer_value_is_accepted() -> None:
    app = Recorder()
    response = await call(IdentityMiddleware(app, api_keys=[key_record()]), [bearer(KEY)])
    assert response.status == 200
    assert app.identity.client_id == "backend"


async def test_unknown_api_key_is_401_and_never_echoed() -> None:
    app = Recorder()
    response = await call(
        IdentityMiddleware(app, api_keys=[key_record()]), [bearer("sk-ai-guessed-secret")]
    )
    assert (response.status, response.code) == (401, "invalid_api_key")
    assert b"guessed" not in response.body
    assert response.header("www-authenticate") == 'Bearer error="invalid_token"'
    assert app.scope is None


async def test_api_key_in_bearer_and_x_api_key_is_ambiguous() -> None:
    app = Recorder()
    response = await call(
        IdentityMiddleware(app, api_keys=[key_record(), key_record(OTHER_KEY, id="other")]),
        [bearer(KEY), ("x-api-key", OTHER_KEY)],
    )
    assert (response.status, response.code) == (400, "ambiguous_credentials")


async def test_two_api_key_headers_in_any_case_are_ambiguous() -> None:
    response = await call(
        IdentityMiddleware(Recorder(), api_keys=[key_record()]),
        [("x-api-key", KEY), ("X-API-KEY", KEY)],
    )
    assert (response.status, response.code) == (400, "ambiguous_credentials")


async def test_an_underscore_twin_of_the_api_key_header_is_never_read_and_never_forwarded() -> None:
    # Some proxies merge `X_API_KEY` into `X-API-Key`, others keep both: only the exact name is
    # a credential, and its twin is stripped so nothing behind can read it either.
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()])
    response = await call(middleware, [("X_API_KEY", KEY)])
    assert (response.status, response.code) == (401, "missing_credentials")
    assert (
        await call(middleware, [("x-api-key", KEY), ("X_API_KEY", "sk-ai-other")])
    ).status == 200
    assert app.scope is not None
    names = [name.lower() for name, _ in app.scope["headers"]]
    assert b"x_api_key" not in names
    assert app.identity.source == "api_key"


async def test_custom_api_key_store_backs_the_lookup() -> None:
    record = key_record(tenant="db-tenant")
    looked_up: list[bytes] = []

    class DatabaseStore:
        async def lookup(self, sha256_digest: bytes) -> APIKey | None:
            looked_up.append(sha256_digest)
            return record if sha256_digest.hex() == record.sha256 else None

    app = Recorder()
    middleware = IdentityMiddleware(app, api_key_store=DatabaseStore())
    assert (await call(middleware, [("x-api-key", KEY)])).status == 200
    assert app.identity.tenant == "db-tenant"
    assert looked_up == [bytes.fromhex(hash_api_key(KEY))]


async def test_x_api_key_is_not_read_when_no_keys_are_configured(issuer: LocalIssuer) -> None:
    # The app may use that header for something of its own.
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)])
    response = await call(middleware, [bearer(issuer.mint(sub="alice")), ("x-api-key", "mine")])
    assert response.status == 200
    assert app.header("x-api-key") == ["mine"]


async def test_sanitize_strips_keys_before_the_app_sees_them(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, api_keys=[key_record()], issuers=[jwt_issuer(issuer)], sanitize=True
    )
    assert (await call(middleware, [bearer(KEY)])).status == 200
    assert "authorization" not in app.header_names()

    token = issuer.mint(sub="alice")
    assert (await call(middleware, [bearer(token), ("X-Api-Key", KEY)])).status == 200
    assert "x-api-key" not in app.header_names()
    # The user's token is not a key: it stays for the app or an upstream that wants it.
    assert app.header("authorization") == [f"Bearer {token}"]


async def test_without_sanitize_the_key_header_reaches_the_app() -> None:
    app = Recorder()
    assert (
        await call(IdentityMiddleware(app, api_keys=[key_record()]), [("x-api-key", KEY)])
    ).status == 200
    assert app.header("x-api-key") == [KEY]


# -- tokens ---------------------------------------------------------------------------------------


async def test_jwt_identifies_the_person(issuer: LocalIssuer) -> None:
    app = Recorder()
    token = issuer.mint(sub="alice", email="Alice@Acme.com", roles=["admin"], scope="chat read")
    assert (
        await call(IdentityMiddleware(app, issuers=[jwt_issuer(issuer)]), [bearer(token)])
    ).status == 200
    identity = app.identity
    assert (identity.source, identity.user_id, identity.email, identity.domain) == (
        "jwt",
        "alice",
        "alice@acme.com",
        "acme.com",
    )
    assert identity.scopes == {"chat", "read"}
    assert identity.has_user


async def test_jwt_with_key_takes_client_and_tenant_from_the_key(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, issuers=[jwt_issuer(issuer)], api_keys=[key_record(tenant="acme", group="pro")]
    )
    token = issuer.mint(sub="alice", azp="web-app")
    assert (await call(middleware, [bearer(token), ("x-api-key", KEY)])).status == 200
    identity = app.identity
    assert (identity.source, identity.user_id, identity.client_id, identity.tenant) == (
        "jwt",
        "alice",
        "backend",
        "acme",
    )
    assert identity.group == "pro"
    assert identity.api_key is not None


async def test_two_authorization_headers_are_ambiguous(issuer: LocalIssuer) -> None:
    token = issuer.mint(sub="alice")
    response = await call(
        IdentityMiddleware(Recorder(), issuers=[jwt_issuer(issuer)]),
        [bearer(token), ("Authorization", f"Bearer {token}")],
    )
    assert (response.status, response.code) == (400, "ambiguous_credentials")


@pytest.mark.parametrize(
    "value",
    ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Bearer a b", "Token abc.def.ghi"],
)
async def test_malformed_authorization_is_401(issuer: LocalIssuer, value: str) -> None:
    response = await call(
        IdentityMiddleware(Recorder(), issuers=[jwt_issuer(issuer)]), [("authorization", value)]
    )
    assert (response.status, response.code) == (401, "invalid_token")
    assert "secret" not in response.message


async def test_bearer_scheme_is_case_insensitive(issuer: LocalIssuer) -> None:
    app = Recorder()
    response = await call(
        IdentityMiddleware(app, issuers=[jwt_issuer(issuer)]),
        [("Authorization", f"bEaReR {issuer.mint(sub='alice')}")],
    )
    assert response.status == 200


async def test_non_jwt_bearer_without_keys_configured_is_invalid_token(
    issuer: LocalIssuer,
) -> None:
    response = await call(
        IdentityMiddleware(Recorder(), issuers=[jwt_issuer(issuer)]), [bearer("opaque-value")]
    )
    assert (response.status, response.code) == (401, "invalid_token")


async def test_jwt_without_issuers_configured_is_invalid_token(issuer: LocalIssuer) -> None:
    response = await call(
        IdentityMiddleware(Recorder(), api_keys=[key_record()]), [bearer(issuer.mint(sub="a"))]
    )
    assert (response.status, response.code) == (401, "invalid_token")


async def test_custom_token_header_accepts_a_bare_token(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)], token_header="X-Id-Token")
    assert (await call(middleware, [("x-id-token", issuer.mint(sub="alice"))])).status == 200
    assert app.identity.user_id == "alice"


async def test_token_cookie_is_read_and_header_wins(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)], token_cookie="session")
    from_cookie = issuer.mint(sub="cookie-user")
    cookie = ("cookie", f"theme=dark; session={from_cookie}")
    assert (await call(middleware, [cookie])).status == 200
    assert app.identity.user_id == "cookie-user"

    assert (await call(middleware, [cookie, bearer(issuer.mint(sub="header-user"))])).status == 200
    assert app.identity.user_id == "header-user"

    twice = ("cookie", f"session={from_cookie}; session={from_cookie}")
    response = await call(middleware, [twice])
    assert (response.status, response.code) == (400, "ambiguous_credentials")


async def test_unreachable_identity_provider_is_503_while_keys_keep_working(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.status = 500
    app = Recorder()
    middleware = IdentityMiddleware(
        app,
        issuers=[
            JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks_url=jwks_server.jwks_url)
        ],
        api_keys=[key_record()],
    )
    response = await call(middleware, [bearer(issuer.mint(sub="alice")), ("x-api-key", KEY)])
    assert (response.status, response.code) == (503, "identity_provider_unavailable")
    assert int(response.header("retry-after") or 0) >= 1
    assert (await call(middleware, [("x-api-key", KEY)])).status == 200
    assert app.identity.client_id == "backend"


# -- X-User-Email ---------------------------------------------------------------------------------


async def test_email_header_from_header_identity_key() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record(header_identity=True, tenant="acme")])
    response = await call(middleware, [("x-api-key", KEY), ("X-User-Email", "Bob@Exämple.com")])
    assert response.status == 200
    identity = app.identity
    assert (identity.source, identity.user_id, identity.email, identity.domain) == (
        "header",
        "bob@xn--exmple-cua.com",
        "bob@xn--exmple-cua.com",
        "xn--exmple-cua.com",
    )
    assert (identity.client_id, identity.tenant) == ("backend", "acme")
    # The header as sent never reaches the app; the verified identity is forwarded instead.
    assert app.header("x-user-email") == ["bob@xn--exmple-cua.com"]


async def test_email_header_is_ignored_for_a_key_without_header_identity() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()])
    response = await call(
        middleware,
        [("x-api-key", KEY), ("x-user-email", "not an email"), ("x-user-email", "x@y.com")],
    )
    assert response.status == 200
    assert (app.identity.source, app.identity.email) == ("api_key", None)
    assert app.header("x-user-email") == []


@pytest.mark.parametrize(
    "value",
    ["Bob <bob@acme.com>", "bob@acme.com, eve@evil.com", "bob@@acme.com", "bob", "bob @acme.com"],
)
async def test_malformed_trusted_email_is_400_and_not_echoed(value: str) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record(header_identity=True)])
    response = await call(middleware, [("x-api-key", KEY), ("x-user-email", value)])
    assert (response.status, response.code) == (400, "invalid_request")
    assert "X-User-Email" in response.message or "x-user-email" in response.message
    assert value not in response.message
    assert app.scope is None


async def test_trusted_network_peer_may_assert_email_without_a_key() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, trusted_header_networks=["10.0.0.0/8", "fd00::/8"])
    for client in [("10.9.8.7", 1), ("::ffff:10.9.8.7", 1), ("fd00::1", 1)]:
        response = await call(middleware, [("x-user-email", "bob@acme.com")], client=client)
        assert response.status == 200, client
        assert (app.identity.source, app.identity.client_id) == ("header", None)


@pytest.mark.parametrize(
    "client", [("203.0.113.7", 1), ("11.0.0.1", 1), None, ("not-an-ip", 1)], ids=str
)
async def test_untrusted_peer_email_is_ignored(client: tuple[str, int] | None) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, trusted_header_networks=["10.0.0.0/8"])
    response = await call(middleware, [("x-user-email", "bob@acme.com")], client=client)
    assert (response.status, response.code) == (401, "missing_credentials")


async def test_jwt_wins_over_a_trusted_email_header(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, issuers=[jwt_issuer(issuer)], api_keys=[key_record(header_identity=True)]
    )
    token = issuer.mint(sub="alice", email="alice@acme.com")
    headers = [bearer(token), ("x-api-key", KEY), ("x-user-email", "mallory@acme.com")]
    assert (await call(middleware, headers)).status == 200
    assert (app.identity.source, app.identity.email) == ("jwt", "alice@acme.com")


# -- groups ---------------------------------------------------------------------------------------


async def test_group_from_claim_then_header_then_key_then_default(issuer: LocalIssuer) -> None:
    from asgi_identity.credentials.claims import ClaimMap

    app = Recorder()
    middleware = IdentityMiddleware(
        app,
        issuers=[jwt_issuer(issuer, claims=ClaimMap(group="tier"))],
        api_keys=[key_record(header_identity=True, group="team")],
        trusted_header_networks=["10.0.0.0/8"],
        groups=["free", "pro", "team", "enterprise"],
        default_group="free",
    )
    inside = ("10.0.0.1", 1)
    token = issuer.mint(sub="alice", tier="enterprise")
    await call(middleware, [bearer(token), ("x-user-group", "pro")], client=inside)
    assert app.identity.group == "enterprise"
    await call(middleware, [bearer(issuer.mint(sub="a")), ("x-user-group", "pro")], client=inside)
    assert app.identity.group == "pro"
    await call(middleware, [("x-api-key", KEY)])
    assert app.identity.group == "team"
    await call(middleware, [("x-user-email", "bob@acme.com")], client=inside)
    assert app.identity.group == "free"
    assert app.header("x-user-group") == ["free"]


async def test_unknown_group_is_400_invalid_group(issuer: LocalIssuer) -> None:
    from asgi_identity.credentials.claims import ClaimMap

    middleware = IdentityMiddleware(
        Recorder(),
        issuers=[jwt_issuer(issuer, claims=ClaimMap(group="tier"))],
        trusted_header_networks=["10.0.0.0/8"],
        groups=["free", "pro"],
    )
    response = await call(middleware, [bearer(issuer.mint(sub="a", tier="platinum"))])
    assert (response.status, response.code) == (400, "invalid_group")
    assert "platinum" not in response.message
    response = await call(
        middleware,
        [("x-user-email", "bob@acme.com"), ("x-user-group", "gold")],
        client=("10.0.0.1", 1),
    )
    assert (response.status, response.code) == (400, "invalid_group")


async def test_group_header_from_an_untrusted_peer_is_ignored() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()], groups=["free", "pro"])
    response = await call(middleware, [("x-api-key", KEY), ("x-user-group", "enterprise")])
    assert response.status == 200
    assert app.identity.group is None


# -- what reaches the app -------------------------------------------------------------------------

SPOOFED = [
    "X-User-Id",
    "x-user-id",
    "x_user_id",
    "X_USER_EMAIL",
    "x-User-Roles",
    "x-user-tenant",
    "X-User-Group",
    "x-user-client-id",
    "x_user_source",
    "x-user-",
    "x-user-anything-else",
]


@pytest.mark.parametrize("forward_headers", [True, False], ids=["forwarding", "not-forwarding"])
async def test_spoofed_identity_headers_never_reach_the_app(forward_headers: bool) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, api_keys=[key_record(tenant="acme")], forward_headers=forward_headers
    )
    headers = [("x-api-key", KEY), *[(name, "admin") for name in SPOOFED]]
    assert (await call(middleware, headers)).status == 200
    assert app.scope is not None
    forwarded = [
        (k.decode(), v.decode())
        for k, v in app.scope["headers"]
        if k.lower().replace(b"_", b"-").startswith(b"x-user-")
    ]
    if forward_headers:
        assert sorted(forwarded) == [
            ("x-user-client-id", "backend"),
            ("x-user-source", "api_key"),
            ("x-user-tenant", "acme"),
        ]
    else:
        assert forwarded == []


async def test_spoofed_headers_are_removed_even_on_a_refused_path_in_observe_mode() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()], mode="observe")
    response = await call(middleware, [("x-user-id", "admin"), ("X_User_Roles", "admin")])
    assert response.status == 200
    assert app.identity.source == "anonymous"
    assert app.header("x-user-id") == []
    assert app.header("x_user_roles") == []
    assert app.header("x-user-source") == ["anonymous"]


async def test_forwarded_headers_carry_the_identity(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer, claims="auth0")])
    token = issuer.mint(
        sub="auth0|alice",
        email="alice@acme.com",
        org_id="org_1",
        roles=["writer", "admin", "a,b", "ünï", "100%"],
        azp="web-app",
    )
    assert (await call(middleware, [bearer(token)])).status == 200
    forwarded = app.forwarded()
    assert forwarded == {
        "x-user-source": "jwt",
        "x-user-id": "auth0|alice",
        "x-user-email": "alice@acme.com",
        "x-user-tenant": "org_1",
        "x-user-client-id": "web-app",
        "x-user-roles": "100%25,a%2Cb,admin,writer,%C3%BCn%C3%AF",
    }
    # Splitting on commas and percent-decoding gives the roles back exactly.
    roles = {unquote(role) for role in forwarded["x-user-roles"].split(",")}
    assert roles == {"writer", "admin", "a,b", "ünï", "100%"}


async def test_forwarded_values_cannot_smuggle_headers(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)])
    token = issuer.mint(sub="alice\r\nx-admin: yes")
    assert (await call(middleware, [bearer(token)])).status == 200
    assert app.header("x-user-id") == ["alice%0D%0Ax-admin:%20yes"]
    assert app.identity.user_id == "alice\r\nx-admin: yes"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        # A present but unusable credential is a 401, like any invalid one.
        ("authorization", 401, "invalid_token"),
        ("x-api-key", 401, "invalid_api_key"),
        # A broken trusted backend, not a caller's credential.
        ("x-user-email", 400, "invalid_request"),
        ("x-user-group", 400, "invalid_group"),
    ],
)
async def test_over_long_credential_header_is_refused_never_truncated(
    name: str, status: int, code: str
) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, api_keys=[key_record(header_identity=True)], max_header_bytes=1024
    )
    long_value = (name, "a" * 2000)
    headers = [long_value] if name == "x-api-key" else [("x-api-key", KEY), long_value]
    response = await call(middleware, headers)
    assert (response.status, response.code) == (status, code)
    assert "a" * 100 not in response.message
    assert app.scope is None


async def test_over_long_email_from_an_untrusted_sender_is_ignored() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()], max_header_bytes=1024)
    response = await call(middleware, [("x-api-key", KEY), ("x-user-email", "a" * 2000)])
    assert response.status == 200
    assert app.header("x-user-email") == []


# -- anonymous, excluded paths, observe mode -------------------------------------------------------


async def test_no_credentials_is_401_missing_credentials() -> None:
    response = await call(IdentityMiddleware(Recorder(), api_keys=[key_record()]))
    assert (response.status, response.code) == (401, "missing_credentials")
    assert response.header("www-authenticate") == "Bearer"
    assert response.header("content-type") == "application/json"
    assert json.loads(response.body)["error"]["type"] == "authentication_error"


async def test_allow_anonymous_gives_an_anonymous_identity() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app, api_keys=[key_record()], allow_anonymous=True, default_group="free"
    )
    assert (await call(middleware)).status == 200
    assert (app.identity.source, app.identity.group) == ("anonymous", "free")
    # Anonymous access is no fall-back for a bad credential.
    response = await call(middleware, [("x-api-key", "sk-ai-wrong")])
    assert (response.status, response.code) == (401, "invalid_api_key")


async def test_excluded_path_passes_without_credentials_as_anonymous() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()], exclude_paths=["/health"])
    response = await call(middleware, [("x-user-id", "admin")], path="/health")
    assert response.status == 200
    assert app.identity.source == "anonymous"
    assert app.header("x-user-id") == []


async def test_cors_preflight_passes() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()])
    response = await call(middleware, [("access-control-request-method", "POST")], method="OPTIONS")
    assert response.status == 200


# Identity assertions under renamed headers, a spoofed forwarded header, and a header the app owns.
ASSERTIONS = [
    ("x-forwarded-email", "ceo@acme.com"),
    ("X-Tier", "admin"),
    ("x_user_id", "admin"),
    ("x-request-id", "r-1"),
]


@pytest.mark.parametrize(
    ("credentials", "options"),
    [
        ([("x-api-key", KEY)], {"path": "/health"}),
        ([("authorization", f"Bearer {KEY}")], {"path": "/health"}),
        (
            [("x-api-key", KEY), ("access-control-request-method", "POST")],
            {"method": "OPTIONS"},
        ),
        ([("x-api-key", "sk-ai-unknown")], {"mode": "observe"}),
        ([("x-api-key", KEY), ("x-api-key", OTHER_KEY)], {"mode": "observe"}),
        ([("x-api-key", "k" * 9000)], {"mode": "observe"}),
        ([("authorization", f"Bearer {KEY}x")], {"mode": "observe"}),
    ],
    ids=[
        "excluded-path",
        "excluded-path-bearer",
        "cors-preflight",
        "observe-unknown-key",
        "observe-two-keys",
        "observe-oversized-key",
        "observe-unknown-bearer-key",
    ],
)
async def test_requests_that_are_not_identified_lose_the_same_headers_as_any_other(
    credentials: list[tuple[str, str]], options: dict[str, Any]
) -> None:
    app = Recorder()
    mode = options.pop("mode", "enforce")
    middleware = IdentityMiddleware(
        app,
        api_keys=[key_record()],
        sanitize=True,
        email_header="x-forwarded-email",
        group_header="x-tier",
        exclude_paths=["/health"],
        mode=mode,
    )
    response = await call(middleware, [*credentials, *ASSERTIONS], **options)
    assert response.status == 200
    assert app.identity.source == "anonymous"
    seen = app.header_names()
    for dropped in ("x-forwarded-email", "x-tier", "x_user_id", "x-user-id", "x-api-key"):
        assert dropped not in seen
    assert app.header("x-request-id") == ["r-1"]
    assert app.header("x-user-source") == ["anonymous"]
    if options.get("path") == "/health" and credentials[0][0] == "authorization":
        # Nothing is read on an excluded path, so nothing says this bearer value is a key.
        assert app.header("authorization") == [f"Bearer {KEY}"]
    else:
        assert "authorization" not in seen


# -- Starlette compatibility ----------------------------------------------------------------------


async def test_scope_user_and_auth_are_set_for_starlette_style_apps(issuer: LocalIssuer) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)])
    token = issuer.mint(sub="alice", name="Alice", scope="chat:write")
    await call(middleware, [bearer(token)])
    assert app.scope is not None
    user, auth = app.scope["user"], app.scope["auth"]
    assert (user.is_authenticated, user.display_name, user.identity.user_id) == (
        True,
        "Alice",
        "alice",
    )
    assert auth.scopes == ["authenticated", "chat:write"]
    assert app.scope["state"]["identity"] is app.identity


async def test_an_apps_own_user_and_auth_are_not_overridden() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()])
    scope = http_scope([("x-api-key", KEY)])
    scope["user"], scope["auth"] = "their user", "their auth"
    await request(middleware, scope=scope, messages=[{"type": "http.request", "body": b""}])
    assert app.scope is not None
    assert (app.scope["user"], app.scope["auth"]) == ("their user", "their auth")
    assert app.identity.client_id == "backend"


# -- WebSocket ------------------------------------------------------------------------------------


def websocket_scope(headers: Sequence[tuple[str, str]], *, denial: bool) -> Scope:
    extensions: dict[str, Any] = {"websocket.http.response": {}} if denial else {}
    return make_scope(
        "websocket",
        path="/ws",
        headers=headers,
        client=CLIENT,
        extensions=extensions,
        subprotocols=[],
    )


async def websocket_call(
    app: Any, headers: Sequence[tuple[str, str]], *, denial: bool
) -> list[Message]:
    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    reply = await request(app, scope=websocket_scope(headers, denial=denial), messages=incoming)
    return reply.messages


async def test_websocket_with_valid_key_is_accepted_with_identity() -> None:
    app = Recorder()
    sent = await websocket_call(
        IdentityMiddleware(app, api_keys=[key_record()]), [("x-api-key", KEY)], denial=True
    )
    assert sent[0]["type"] == "websocket.accept"
    assert app.identity.client_id == "backend"


async def test_websocket_refusal_uses_the_denial_response_when_offered() -> None:
    sent = await websocket_call(
        IdentityMiddleware(Recorder(), api_keys=[key_record()]),
        [("x-api-key", "sk-ai-wrong")],
        denial=True,
    )
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"


async def test_websocket_refusal_closes_1008_without_the_extension() -> None:
    sent = await websocket_call(
        IdentityMiddleware(Recorder(), api_keys=[key_record()]), [], denial=False
    )
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_credentials"}]


# -- lifespan -------------------------------------------------------------------------------------


async def test_lifespan_startup_warms_the_key_set(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    app = Recorder()
    middleware = IdentityMiddleware(
        app,
        issuers=[
            JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks_url=jwks_server.jwks_url)
        ],
    )
    assert await lifespan(middleware) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert jwks_server.fetches == 1


async def test_lifespan_startup_completes_when_the_identity_provider_is_down(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.status = 500
    middleware = IdentityMiddleware(
        Recorder(),
        issuers=[
            JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks_url=jwks_server.jwks_url)
        ],
    )
    assert await lifespan(middleware) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_lifespan_passes_through_without_issuers() -> None:
    assert await lifespan(IdentityMiddleware(Recorder(), api_keys=[key_record()])) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


# -- configuration --------------------------------------------------------------------------------


def _app(scope: Scope, receive: Receive, send: Send) -> Any:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({}, ValueError, "no way to identify a caller"),
        ({"api_keys": key_record()}, TypeError, "list of APIKey"),
        ({"api_keys": [{"id": "x"}]}, TypeError, "APIKey records"),
        ({"api_keys": [key_record()], "api_key_store": object()}, ValueError, "not both"),
        ({"api_key_store": object()}, TypeError, "async lookup"),
        ({"issuers": ["https://idp"]}, TypeError, "JWTIssuer"),
        ({"trusted_header_networks": "10.0.0.0/8"}, TypeError, "list of networks"),
        ({"trusted_header_networks": ["*"]}, ValueError, "'*' is not accepted"),
        ({"trusted_header_networks": ["10.0.0.300/8"]}, ValueError, "not an IP address"),
        ({"allow_anonymous": True, "groups": "pro"}, TypeError, "list of group names"),
        (
            {"allow_anonymous": True, "groups": ["pro"], "default_group": "free"},
            ValueError,
            "default_group",
        ),
        ({"api_keys": [key_record(group="gold")], "groups": ["pro"]}, ValueError, "'gold'"),
        ({"allow_anonymous": True, "api_key_header": "x user"}, ValueError, "not a valid header"),
        (
            {"allow_anonymous": True, "email_header": "authorization"},
            ValueError,
            "different headers",
        ),
        (
            {"allow_anonymous": True, "api_key_header": "x-user-key"},
            ValueError,
            "forwarding prefix",
        ),
        ({"allow_anonymous": True, "token_cookie": "a b"}, ValueError, "cookie name"),
        ({"allow_anonymous": True, "mode": "audit"}, ValueError, "mode"),
        ({"allow_anonymous": True, "max_header_bytes": 10}, ValueError, "max_header_bytes"),
    ],
)
def test_bad_configuration_is_refused_at_construction(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        IdentityMiddleware(_app, **options)


# -- forwarding encoding, for any value ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    roles=st.frozensets(st.text(min_size=1, max_size=20), max_size=6), user_id=st.text(max_size=40)
)
def test_forwarded_values_round_trip_and_stay_single_line(
    roles: frozenset[str], user_id: str
) -> None:
    identity = Identity(source="jwt", user_id=user_id or None, roles=roles)
    headers = dict(forwarded_headers(identity, b"x-user-"))
    for value in headers.values():
        assert all(0x21 <= byte < 0x7F for byte in value), value
    if user_id:
        assert unquote(headers[b"x-user-id"].decode()) == user_id
    if roles:
        items = headers[b"x-user-roles"].decode().split(",")
        assert {unquote(item) for item in items} == roles


# -- what is remembered between requests ----------------------------------------------------------


async def test_a_flood_of_made_up_header_names_neither_grows_memory_nor_lets_spoofs_through() -> (
    None
):
    # Header names are remembered with what they are, up to a bound; past it, each name is worked
    # out again, and a forwarding-prefix header in any spelling is still removed.
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()])
    for batch in range(4):
        junk = [(f"x-junk-{batch}-{n}", "1") for n in range(200)]
        assert (await call(middleware, [("x-api-key", KEY), *junk])).status == 200
    spoofed = [(f"X_User_Id_{n}", "admin") for n in range(50)] + [("X_USER_ID", "admin")]
    assert (await call(middleware, [("x-api-key", KEY), ("x-junk-9", "1"), *spoofed])).status == 200
    assert app.header("x-junk-9") == ["1"]
    assert app.forwarded() == {"x-user-source": "api_key", "x-user-client-id": "backend"}
    assert len(middleware._reader._names) <= 512


async def test_headers_reach_the_app_unchanged_when_nothing_is_removed_or_added() -> None:
    app = Recorder()
    middleware = IdentityMiddleware(app, api_keys=[key_record()], forward_headers=False)
    scope = http_scope([("x-api-key", KEY), ("Accept", "application/json"), ("x-trace", "1")])
    sent_headers = list(scope["headers"])
    await request(middleware, scope=scope)
    assert app.scope is not None
    assert app.scope["headers"] == sent_headers


async def test_each_new_token_forwards_its_own_identity(issuer: LocalIssuer) -> None:
    # Forwarded headers are reused for a person's next token only when every forwarded value
    # is the same: a changed role or email shows at once.
    app = Recorder()
    middleware = IdentityMiddleware(app, issuers=[jwt_issuer(issuer)])
    seen = []
    people: list[dict[str, Any]] = [
        {"sub": "alice", "roles": ["writer"]},
        {"sub": "alice", "roles": ["writer"]},
        {"sub": "alice", "roles": ["writer", "admin"]},
        {"sub": "alice", "roles": ["writer"], "email": "alice@acme.com"},
        {"sub": "bob", "roles": ["writer"]},
    ]
    for claims in people:
        assert (await call(middleware, [bearer(issuer.mint(**claims))])).status == 200
        seen.append(app.forwarded())
    assert (
        seen[0]
        == seen[1]
        == {"x-user-source": "jwt", "x-user-id": "alice", "x-user-roles": "writer"}
    )
    assert seen[2]["x-user-roles"] == "admin,writer"
    assert seen[3]["x-user-email"] == "alice@acme.com"
    assert seen[4]["x-user-id"] == "bob"
