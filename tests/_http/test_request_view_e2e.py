"""One reading of the request, end to end (DESIGN.md): truth tables checked from outside.

A raw-socket client talks to the gateway (the whole `identity_stack` in front of an app that
forwards to an upstream over HTTP), under real uvicorn with both of its HTTP parsers. Each case
asserts what the client sees and what reached the upstream: a refused request never does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from _gateway_support import (
    Forwarder,
    Handled,
    RawResponse,
    Received,
    Upstream,
    asgi_get,
    chunked_request,
    raw_request,
    request_bytes,
    serving,
)
from _servers import serve
from asgi_identity import (
    APIKey,
    IdentityMiddleware,
    JWTIssuer,
    Rule,
    UserRateLimit,
    hash_api_key,
    identity_stack,
)
from asgi_identity.audit import configure_audit, shutdown_audit
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp, Receive, Scope, Send

API_KEY = "sk-e2e-backend-key-000000000001"
# Small, so the too-large case stays a few kilobytes: the server has read all of it when the
# refusal closes the connection, and the client cannot lose the response to a reset.
MAX_BODY = 4096
EXCLUDED = ["/health", "/static/"]
SERVERS = ["h11", "httptools"]

RULES = [
    Rule(id="no-admin-writes", effect="deny", methods=["POST"], paths=["/admin/*"]),
    Rule(
        id="premium-models",
        effect="deny",
        methods=["POST"],
        paths=["/v1/chat/completions", "/v1/responses"],
        models=["gpt-4*"],
        without_roles=["pro"],
    ),
]

ALICE = (b"Authorization", b"Bearer {alice}")  # role "user": no premium models
BOB = (b"Authorization", b"Bearer {bob}")  # role "pro"
KEY = (b"X-API-Key", b"{key}")
JSON = (b"Content-Type", b"application/json")
STANDARD_BODY = b'{"model":"gpt-3.5-turbo"}'


def _accepts(function: Any, option: str) -> bool:
    return option in inspect.signature(function).parameters


# ------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Idp:
    issuer: LocalIssuer
    jwks_url: str
    alice: str
    bob: str

    def fill(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`headers` with the placeholders {alice}, {bob} and {key} filled in."""
        values = {b"{alice}": self.alice, b"{bob}": self.bob, b"{key}": API_KEY}
        filled = []
        for name, value in headers:
            for placeholder, real in values.items():
                value = value.replace(placeholder, real.encode())
            filled.append((name, value))
        return filled


@dataclass
class Exchange:
    response: RawResponse
    received: list[Received]  # what reached the upstream
    handled: list[Handled]  # what the app inside the stack was given


@dataclass
class Gateway:
    server: str
    port: int
    idp: Idp
    forwarder: Forwarder
    upstream: Upstream
    unavailable: str | None = None

    def send(self, data: bytes | Sequence[bytes]) -> Exchange:
        if self.unavailable is not None:
            pytest.fail(self.unavailable)
        self.upstream.received.clear()
        self.forwarder.handled.clear()
        response = raw_request(self.port, data)
        return Exchange(response, list(self.upstream.received), list(self.forwarder.handled))

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
    ) -> Exchange:
        return self.send(request_bytes(method, target, self.idp.fill(headers), body))

    def chunked(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        chunks: Sequence[bytes],
    ) -> Exchange:
        return self.send(chunked_request(method, target, self.idp.fill(headers), chunks))


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    issuer = LocalIssuer(
        issuer="https://issuer.test", audience="gateway", algorithm="ES256", lifetime=3600
    )
    with issuer.serve() as server:
        yield Idp(
            issuer,
            server.jwks_url,
            alice=issuer.mint(sub="alice", email="alice@acme.com", roles=["user"]),
            bob=issuer.mint(sub="bob", email="bob@acme.com", roles=["pro"]),
        )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    # h11 reads any method token and any target, so the upstream records whatever it is sent.
    with serve(app, http="h11", log_level="error") as url:
        app.url = url
        yield app


def build_gateway(forwarder: Forwarder, idp: Idp, **extra: Any) -> ASGIApp:
    identity: dict[str, Any] = {
        "issuers": [JWTIssuer(issuer=idp.issuer.issuer, audience="gateway", jwks_url=idp.jwks_url)],
        "api_keys": [APIKey(id="backend", sha256=hash_api_key(API_KEY))],
        "trusted_header_networks": ["127.0.0.1/32"],
        "sanitize": True,
    }
    # The one body reader may take its bound from IdentityMiddleware or identity_stack; give it
    # wherever it is accepted, so the too-large case does not depend on which layer reads.
    if _accepts(IdentityMiddleware.__init__, "max_body"):
        identity["max_body"] = MAX_BODY
    elif _accepts(identity_stack, "max_body"):
        extra["max_body"] = MAX_BODY
    return identity_stack(
        forwarder,
        identity=identity,
        policy={"rules": RULES, "default": "allow", "max_body": MAX_BODY},
        rate_limit={
            "limits": "1000/minute",
            "tokens": "10000000/day",
            "default_max_tokens": 256,
            "max_body": MAX_BODY,
        },
        conversation=True,
        exclude_paths=EXCLUDED,
        **extra,
    )


def _gateway(server: str, idp: Idp, upstream: Upstream, **extra: Any) -> Iterator[Gateway]:
    forwarder = Forwarder(upstream.url)
    try:
        app = build_gateway(forwarder, idp, **extra)
    except TypeError as exc:
        # Reported by each test that needs this gateway, as a failure rather than a setup error.
        yield Gateway(server, 0, idp, forwarder, upstream, unavailable=f"{extra}: {exc}")
        return
    with serving(app, http=server, log_level="error") as port:
        yield Gateway(server, port, idp, forwarder, upstream)


@pytest.fixture(scope="module", params=SERVERS)
def gateway(request: pytest.FixtureRequest, idp: Idp, upstream: Upstream) -> Iterator[Gateway]:
    """The stack with the default path policy ("refuse")."""
    yield from _gateway(request.param, idp, upstream)


@pytest.fixture(scope="module", params=SERVERS)
def normalizing_gateway(
    request: pytest.FixtureRequest, idp: Idp, upstream: Upstream
) -> Iterator[Gateway]:
    yield from _gateway(request.param, idp, upstream, path_policy="normalize")


def assert_refused(exchange: Exchange, status: int, code: str) -> None:
    response = exchange.response
    assert (response.status, response.error_code) == (status, code), response.body
    assert exchange.received == [], "a refused request reached the upstream"
    assert exchange.handled == [], "a refused request reached the app"


def assert_passed(exchange: Exchange) -> Received:
    """The request reached the upstream once, and the client got the upstream's answer."""
    assert exchange.response.status == 200, exchange.response.body
    assert len(exchange.received) == 1
    return exchange.received[0]


def user_of(exchange: Exchange) -> tuple[str, str | None]:
    """(source, user_id) of the identity the app was given."""
    assert len(exchange.handled) == 1
    identity = exchange.handled[0].identity
    assert identity is not None
    return identity.source, identity.user_id


# ----------------------------------------------------------------------------------------- path

NOT_CANONICAL = [
    b"/v1/../admin/x",
    b"/v1/./chat",
    b"/v1//chat",
    b"//v1/chat",
    b"/%2e%2e/admin/x",
    b"/v1/%2E/chat",
    b"/static/..%2fadmin/x",
    b"/static/%2e%2e/admin/x",
    b"/v1%2fchat",
    b"/v1%5cchat",
    b"/v1\\chat",
    b"/health/../admin/x",  # an excluded path climbed out of
    b"/static/../admin/x",  # an excluded prefix climbed out of
]


@pytest.mark.parametrize("target", NOT_CANONICAL, ids=lambda t: t.decode())
def test_a_path_that_is_not_canonical_is_refused_before_any_layer(
    gateway: Gateway, target: bytes
) -> None:
    # A valid user, so the path is the only thing wrong with the request.
    assert_refused(gateway.request(b"GET", target, [ALICE]), 400, "invalid_request")


def test_a_dot_segment_cannot_step_around_a_deny_rule(gateway: Gateway) -> None:
    exchange = gateway.request(b"POST", b"/v1/../admin/x", [ALICE, JSON], b"{}")
    assert_refused(exchange, 400, "invalid_request")


def test_an_excluded_prefix_climbed_out_of_is_refused_without_credentials(
    gateway: Gateway,
) -> None:
    assert_refused(gateway.request(b"GET", b"/static/../admin/x"), 400, "invalid_request")


CANONICAL = [
    # (target, the path routing sees, the query string)
    (b"/v1/models", "/v1/models", b""),
    (b"/v1/%63hat/completions", "/v1/chat/completions", b""),  # encoded unreserved character
    (b"/.well-known/openid-configuration", "/.well-known/openid-configuration", b""),
    (b"/v1/chat/completions?x=/../", "/v1/chat/completions", b"x=/../"),  # a query, not a path
]


@pytest.mark.parametrize(
    ("target", "path", "query"), CANONICAL, ids=[c[0].decode() for c in CANONICAL]
)
def test_a_canonical_path_passes_unchanged(
    gateway: Gateway, target: bytes, path: str, query: bytes
) -> None:
    exchange = gateway.request(b"GET", target, [ALICE])
    received = assert_passed(exchange)
    assert (received.path, received.query_string) == (path, query)
    assert exchange.handled[0].path == path


def test_rules_judge_the_decoded_path(gateway: Gateway) -> None:
    exchange = gateway.request(
        b"POST", b"/v1/%63hat/completions", [ALICE, JSON], b'{"model":"gpt-4o"}'
    )
    assert_refused(exchange, 403, "policy_denied")


@pytest.mark.parametrize("target", [b"/health", b"/static/app.js"])
def test_excluded_paths_pass_without_credentials(gateway: Gateway, target: bytes) -> None:
    received = assert_passed(gateway.request(b"GET", target))
    assert received.raw_path == target


NORMALIZED = [
    # (method, target, the path the layers, the app and the upstream see)
    (b"GET", b"/static/../admin/x", "/admin/x"),
    (b"GET", b"/v1/../admin/x", "/admin/x"),
    (b"GET", b"/%2e%2e/admin/x", "/admin/x"),
    (b"GET", b"/v1//chat", "/v1/chat"),
    (b"GET", b"//v1/chat", "/v1/chat"),
    (b"GET", b"/v1/./chat", "/v1/chat"),
    (b"GET", b"/v1/%2E/chat", "/v1/chat"),
]


@pytest.mark.parametrize(
    ("method", "target", "path"), NORMALIZED, ids=[c[1].decode() for c in NORMALIZED]
)
def test_normalize_rewrites_the_path_for_the_layers_and_the_app_alike(
    normalizing_gateway: Gateway, method: bytes, target: bytes, path: str
) -> None:
    exchange = normalizing_gateway.request(method, target, [ALICE])
    received = assert_passed(exchange)
    assert (received.raw_path, received.path) == (path.encode(), path)
    assert exchange.handled[0].path == path


NORMALIZED_REFUSALS = [
    # (method, target, headers, status, code)
    (b"POST", b"/static/../admin/x", [ALICE, JSON], 403, "policy_denied"),  # judged as /admin/x
    (b"GET", b"/static/../admin/x", [], 401, "missing_credentials"),  # no longer excluded
    (b"GET", b"/health/../admin/x", [], 401, "missing_credentials"),
    (b"GET", b"/static/..%2fadmin/x", [ALICE], 400, "invalid_request"),  # encoded separators
    (b"GET", b"/v1%2fchat", [ALICE], 400, "invalid_request"),
    (b"GET", b"/v1%5cchat", [ALICE], 400, "invalid_request"),
    (b"GET", b"/v1%5Cchat", [ALICE], 400, "invalid_request"),
]


@pytest.mark.parametrize(
    ("method", "target", "headers", "status", "code"),
    NORMALIZED_REFUSALS,
    ids=[
        f"{c[0].decode()} {c[1].decode()}{'' if c[2] else ' anonymous'}"
        for c in NORMALIZED_REFUSALS
    ],
)
def test_normalize_judges_the_rewritten_path_and_refuses_encoded_separators(
    normalizing_gateway: Gateway,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    status: int,
    code: str,
) -> None:
    body = b"{}" if method == b"POST" else None
    assert_refused(normalizing_gateway.request(method, target, headers, body), status, code)


def test_normalize_leaves_query_strings_alone(normalizing_gateway: Gateway) -> None:
    exchange = normalizing_gateway.request(b"GET", b"/v1/chat/completions?x=/../", [ALICE])
    received = assert_passed(exchange)
    assert (received.raw_path, received.query_string) == (b"/v1/chat/completions", b"x=/../")


# --------------------------------------------------------------------------------------- method

PREMIUM_BODY = b'{"model":"gpt-4o"}'

CASE_VARIANTS = [
    # (method, target, body): standard methods in another case
    (b"post", b"/v1/chat/completions", PREMIUM_BODY),
    (b"Post", b"/v1/chat/completions", PREMIUM_BODY),
    (b"get", b"/v1/models", None),
    (b"gEt", b"/v1/models", None),
    (b"delete", b"/v1/files/file-1", None),
    (b"options", b"/v1/models", None),
]


@pytest.mark.parametrize(
    ("method", "target", "body"), CASE_VARIANTS, ids=[c[0].decode() for c in CASE_VARIANTS]
)
def test_a_standard_method_in_another_case_is_refused(
    gateway: Gateway, method: bytes, target: bytes, body: bytes | None
) -> None:
    exchange = gateway.request(method, target, [ALICE, JSON], body)
    response = exchange.response
    assert response.status == 400, response.body
    # httptools refuses these itself (its own 400 with a plain body); otherwise it is ours.
    assert response.error_code in ("invalid_request", None), response.body
    assert exchange.received == [], "the upstream saw a method the rules did not"
    assert exchange.handled == []


EXACT_METHODS = [
    (b"POST", b"/v1/chat/completions", STANDARD_BODY),
    (b"GET", b"/v1/models", None),
    (b"DELETE", b"/v1/files/file-1", None),
    (b"OPTIONS", b"/v1/models", None),
    (b"PURGE", b"/v1/cache", None),  # not a standard method: compared exactly, allowed here
]


@pytest.mark.parametrize(
    ("method", "target", "body"), EXACT_METHODS, ids=[c[0].decode() for c in EXACT_METHODS]
)
def test_exact_methods_pass_to_the_upstream_as_sent(
    gateway: Gateway, method: bytes, target: bytes, body: bytes | None
) -> None:
    exchange = gateway.request(method, target, [ALICE, JSON], body)
    received = assert_passed(exchange)
    assert received.method == method.decode()
    assert exchange.handled[0].method == method.decode()


# -------------------------------------------------------------------------------------- headers

EMAIL = b"alice@acme.com"

HEADER_CASES = [
    # (headers, status, code, (source, user_id) the app is given when it passes)
    ([KEY, (b"X-User-Email", EMAIL)], 200, None, ("header", "alice@acme.com")),
    ([KEY, (b"X-USER-EMAIL", EMAIL)], 200, None, ("header", "alice@acme.com")),
    ([(b"X-User-Email", EMAIL)], 200, None, ("header", "alice@acme.com")),
    # Not the identity header: the request is judged as if it were absent (a bare key).
    ([KEY, (b"X_User_Email", EMAIL)], 403, "identity_required", None),
    ([KEY, (b"x-user_email", EMAIL)], 403, "identity_required", None),
    ([KEY, (b"X-USER_EMAIL", EMAIL)], 403, "identity_required", None),
    ([(b"X_User_Email", EMAIL)], 401, "missing_credentials", None),
    ([(b"x-user_email", EMAIL)], 401, "missing_credentials", None),
    # Not the API key header: no credential at all.
    ([(b"X_API_Key", b"{key}")], 401, "missing_credentials", None),
    ([(b"x-api_key", b"{key}")], 401, "missing_credentials", None),
    # Two values for one credential.
    ([ALICE, (b"authorization", b"Bearer {bob}")], 400, "ambiguous_credentials", None),
]


def _header_ids(value: Any) -> str | None:
    if isinstance(value, list):
        return "+".join(name.decode() for name, _ in value)
    return None


def _prefix_family(name: bytes, prefix: bytes) -> bool:
    return name.lower().replace(b"_", b"-").startswith(prefix)


@pytest.mark.parametrize(("headers", "status", "code", "user"), HEADER_CASES, ids=_header_ids)
def test_identity_headers_are_read_only_in_their_exact_spelling(
    gateway: Gateway,
    headers: list[tuple[bytes, bytes]],
    status: int,
    code: str | None,
    user: tuple[str, str] | None,
) -> None:
    # Every request comes from 127.0.0.1, a trusted peer: X-User-Email is read when spelled so.
    exchange = gateway.request(b"GET", b"/v1/models", headers)
    if code is not None:
        assert_refused(exchange, status, code)
        return
    received = assert_passed(exchange)
    assert user_of(exchange) == user
    assert received.values(b"x-user-email") == [EMAIL]
    for name in received.header_names():
        assert b"_" not in name or not _prefix_family(name, b"x-user-"), name
        assert not _prefix_family(name, b"x-api-key"), "sanitize=True: the key reached upstream"


def test_forwarding_prefix_headers_from_the_client_never_reach_the_upstream(
    gateway: Gateway,
) -> None:
    spoofed = [
        (b"X-User-Id", b"mallory"),
        (b"x_user_id", b"mallory"),
        (b"X_USER_ROLES", b"admin"),
        (b"X-User-Tenant", b"evil-corp"),
        (b"x-user_client-id", b"evil-app"),
        (b"x-user-anything", b"evil"),
    ]
    exchange = gateway.request(b"GET", b"/v1/models", [ALICE, *spoofed])
    received = assert_passed(exchange)
    identity = exchange.handled[0].identity
    assert identity is not None
    assert (identity.user_id, identity.group, identity.tenant) == ("alice", None, None)
    forwarded = {
        (name, value) for name, value in received.headers if _prefix_family(name, b"x-user-")
    }
    # Only what IdentityMiddleware writes for alice's token (docs/identity.md).
    assert forwarded == {
        (b"x-user-source", b"jwt"),
        (b"x-user-id", b"alice"),
        (b"x-user-email", b"alice@acme.com"),
        (b"x-user-roles", b"user"),
    }


def test_an_underscore_twin_of_the_group_header_is_not_read_as_the_group(
    gateway: Gateway,
) -> None:
    # From a trusted peer, X-User-Group itself would be read; its twin never is.
    exchange = gateway.request(b"GET", b"/v1/models", [ALICE, (b"X_User_Group", b"enterprise")])
    received = assert_passed(exchange)
    identity = exchange.handled[0].identity
    assert identity is not None
    assert identity.group is None
    assert not any(_prefix_family(name, b"x-user-group") for name in received.header_names())


def test_an_api_key_in_an_underscore_header_is_neither_read_nor_forwarded(
    gateway: Gateway,
) -> None:
    exchange = gateway.request(b"GET", b"/v1/models", [ALICE, (b"X_API_Key", b"{key}")])
    received = assert_passed(exchange)
    identity = exchange.handled[0].identity
    assert identity is not None
    assert (identity.source, identity.api_key, identity.client_id) == ("jwt", None, None)
    assert not any(_prefix_family(name, b"x-api-key") for name in received.header_names())
    assert not any(API_KEY.encode() in value for _, value in received.headers)


# ----------------------------------------------------------------------------------------- body


def nested(levels: int) -> bytes:
    """A body `levels` deep: the object, then arrays inside it."""
    arrays = levels - 1
    return b'{"model":"gpt-3.5-turbo","x":' + b"[" * arrays + b"]" * arrays + b"}"


def standard(**fields: bytes) -> bytes:
    """A standard-model body with more fields, each given as its JSON text."""
    return (
        b'{"model":"gpt-3.5-turbo"'
        + b"".join(b',"' + name.encode() + b'":' + value for name, value in fields.items())
        + b"}"
    )


FORM = b"application/x-www-form-urlencoded"
TOO_LARGE = standard(pad=b'"' + b"a" * (2 * MAX_BODY) + b'"')

# (id, body, status, code); sent as JSON by alice, who has no role "pro". Most bodies name a
# standard model, so that only what is wrong with the body can refuse them.
BODY_REFUSALS = [
    ("premium-model", b'{"model":"gpt-4o"}', 403, "policy_denied"),
    ("duplicate-key", b'{"model":"gpt-3.5","model":"gpt-4o"}', 400, "invalid_request"),
    (
        "duplicate-key-nested",
        b'{"model":"gpt-3.5","messages":[{"role":"user","role":"system"}]}',
        400,
        "invalid_request",
    ),
    ("invalid-utf8", standard(user=b'"\xff\xfe"'), 400, "invalid_request"),
    ("utf8-bom", b"\xef\xbb\xbf" + STANDARD_BODY, 400, "invalid_request"),
    ("lone-surrogate", standard(user=b'"\\ud800"'), 400, "invalid_request"),
    ("nan", standard(temperature=b"NaN"), 400, "invalid_request"),
    ("infinity", standard(temperature=b"Infinity"), 400, "invalid_request"),
    ("minus-infinity", standard(temperature=b"-Infinity"), 400, "invalid_request"),
    # 66 levels: deeper than 64 whether or not the outer object is counted.
    ("nesting-66", nested(66), 400, "invalid_request"),
    ("integer-21-digits", standard(max_tokens=b"123456789012345678901"), 400, "invalid_request"),
    ("float-1e400", standard(max_tokens=b"1e400"), 400, "invalid_request"),
    ("not-json", b"model: gpt-4o", 400, "invalid_request"),
    ("model-not-a-string", b'{"model": 5}', 400, "invalid_request"),
    ("larger-than-max-body", TOO_LARGE, 413, "request_too_large"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in BODY_REFUSALS],
    ids=[case[0] for case in BODY_REFUSALS],
)
def test_a_body_the_layers_cannot_read_as_one_json_document_is_refused(
    gateway: Gateway, body: bytes, status: int, code: str
) -> None:
    exchange = gateway.request(b"POST", b"/v1/chat/completions", [ALICE, JSON], body)
    assert_refused(exchange, status, code)


def test_a_form_encoded_body_is_refused_never_read_as_no_model(gateway: Gateway) -> None:
    headers = [ALICE, (b"Content-Type", FORM)]
    exchange = gateway.request(b"POST", b"/v1/chat/completions", headers, b"model=gpt-4o")
    assert_refused(exchange, 400, "invalid_request")


def test_a_chunked_body_larger_than_max_body_is_refused(gateway: Gateway) -> None:
    third = b"a" * MAX_BODY
    chunks = [b'{"model":"gpt-3.5-turbo","pad":"' + third, third, third + b'"}']
    exchange = gateway.chunked(b"POST", b"/v1/chat/completions", [ALICE, JSON], chunks)
    assert_refused(exchange, 413, "request_too_large")


# Whitespace, key order, escapes and raw UTF-8 that any re-encoding would change.
ODD_BODY = (
    b'{ "max_tokens" : 16,\n  "model":"gpt-3.5-turbo",\t"messages": [{"role": "user", '
    b'"content": "caf\xc3\xa9 \\u00e9 \\"quoted\\" \\/"}],  "temperature": 0.50 }'
)

BODY_PASSES = [
    # (id, authorization, body)
    ("standard-model", ALICE, STANDARD_BODY),
    ("premium-model-for-pro", BOB, b'{"model":"gpt-4o"}'),
    ("odd-but-valid-json", ALICE, ODD_BODY),
    ("nesting-63", ALICE, nested(63)),
    (
        "integer-20-digits-elsewhere",
        ALICE,
        b'{"model":"gpt-3.5-turbo","seed":12345678901234567890}',
    ),
]


@pytest.mark.parametrize(
    ("authorization", "body"),
    [case[1:] for case in BODY_PASSES],
    ids=[case[0] for case in BODY_PASSES],
)
def test_a_valid_body_reaches_the_upstream_byte_for_byte(
    gateway: Gateway, authorization: tuple[bytes, bytes], body: bytes
) -> None:
    exchange = gateway.request(b"POST", b"/v1/chat/completions", [authorization, JSON], body)
    received = assert_passed(exchange)
    assert received.body == body


def test_a_chunked_body_reaches_the_upstream_byte_for_byte(gateway: Gateway) -> None:
    chunks = [ODD_BODY[:20], ODD_BODY[20:41], ODD_BODY[41:]]
    exchange = gateway.chunked(b"POST", b"/v1/chat/completions", [ALICE, JSON], chunks)
    received = assert_passed(exchange)
    assert received.body == ODD_BODY


def test_a_chunked_premium_request_is_judged_on_the_whole_body(gateway: Gateway) -> None:
    chunks = [b'{"mo', b'del":"gpt', b'-4o"}']
    exchange = gateway.chunked(b"POST", b"/v1/chat/completions", [ALICE, JSON], chunks)
    assert_refused(exchange, 403, "policy_denied")


# ------------------------------------------------------------------------------- token metering


def test_a_lower_case_post_cannot_escape_token_metering(gateway: Gateway) -> None:
    body = b'{"model":"gpt-3.5-turbo","max_tokens":10}'
    exchange = gateway.request(b"post", b"/v1/chat/completions", [ALICE, JSON], body)
    assert exchange.response.status == 400, exchange.response.body
    assert exchange.received == [], "an unmetered request reached the upstream"
    assert exchange.handled == []

    metered = gateway.request(b"POST", b"/v1/chat/completions", [ALICE, JSON], body)
    assert_passed(metered)
    assert '"tokens-' in (metered.response.header("ratelimit") or "")


# ---------------------------------------------------------------------------------------- peers

# Driven at the ASGI level with a made-up scope["client"]: over a real socket on the IPv4
# loopback the server always reports 127.0.0.1, never ::ffff:127.0.0.1, ::1 or no address.
PEERS = [
    # (scope["client"], trusted by ["127.0.0.1/32"])
    (("127.0.0.1", 50000), True),
    (("::ffff:127.0.0.1", 50000), True),
    (("::1", 50000), False),
    (("10.0.0.1", 50000), False),
    (("::ffff:10.0.0.1", 50000), False),
    (None, False),  # a Unix socket
    (("not-an-address", 50000), False),
]


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(("client", "trusted"), PEERS, ids=[str(c[0] and c[0][0]) for c in PEERS])
async def test_identity_headers_are_read_only_from_trusted_peers(
    client: tuple[str, int] | None, trusted: bool
) -> None:
    app = IdentityMiddleware(ok, trusted_header_networks=["127.0.0.1/32"])
    status = await asgi_get(app, client=client, headers=[(b"x-user-email", EMAIL)])
    assert status == (200 if trusted else 401)


@pytest.mark.parametrize(("client", "trusted"), PEERS, ids=[str(c[0] and c[0][0]) for c in PEERS])
async def test_forwarded_for_is_read_only_from_the_same_trusted_peers(
    client: tuple[str, int] | None, trusted: bool
) -> None:
    limited = UserRateLimit(ok, limits="1/minute", trusted_proxies=["127.0.0.1/32"])
    app = IdentityMiddleware(limited, allow_anonymous=True)
    forwarded = [(b"x-forwarded-for", b"203.0.113.7")]
    assert await asgi_get(app, client=client, headers=forwarded) == 200
    # From a peer trusted either way: counts against 203.0.113.7, which is now spent only if
    # the first request was counted there too, i.e. only if its peer was trusted.
    second = await asgi_get(app, client=("127.0.0.1", 50001), headers=forwarded)
    assert second == (429 if trusted else 200)


# ---------------------------------------------------------------------------------------- audit


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(dict(record.__dict__["audit"]))


@pytest.fixture
def audit_records() -> Iterator[list[dict[str, Any]]]:
    audit_logger = logging.getLogger("asgi_identity.audit")
    handler = _Collect()
    level = audit_logger.level
    audit_logger.setLevel(logging.INFO)
    audit_logger.addHandler(handler)
    configure_audit(emit="logging")
    try:
        yield handler.records
    finally:
        shutdown_audit()
        audit_logger.removeHandler(handler)
        audit_logger.setLevel(level)


CONVERSATION = (b"X-Conversation-Id", b"c-123")


def test_a_refusal_is_recorded_with_its_conversation(
    gateway: Gateway, audit_records: list[dict[str, Any]]
) -> None:
    audit_records.clear()
    exchange = gateway.request(b"POST", b"/admin/x", [ALICE, JSON, CONVERSATION], b"{}")
    assert_refused(exchange, 403, "policy_denied")
    denials = [r for r in audit_records if r["outcome"] == "deny"]
    assert [(r["layer"], r.get("conversation_id")) for r in denials] == [("RoutePolicy", "c-123")]
    assert {r.get("conversation_id") for r in audit_records} == {"c-123"}


def test_the_allow_records_of_a_request_carry_its_conversation(
    gateway: Gateway, audit_records: list[dict[str, Any]]
) -> None:
    audit_records.clear()
    exchange = gateway.request(b"GET", b"/v1/models", [ALICE, CONVERSATION])
    assert_passed(exchange)
    assert exchange.response.header("x-conversation-id") == "c-123"
    assert audit_records, "no audit record for an allowed request"
    assert {r["outcome"] for r in audit_records} == {"allow"}
    assert {r.get("conversation_id") for r in audit_records} == {"c-123"}


def test_a_refusal_before_any_identity_is_recorded_with_its_conversation(
    gateway: Gateway, audit_records: list[dict[str, Any]]
) -> None:
    # IdentityMiddleware refuses before there is an identity; the conversation is the request's.
    audit_records.clear()
    forged = (b"Authorization", b"Bearer sk-ai-not-a-key")
    exchange = gateway.request(b"GET", b"/v1/models", [forged, CONVERSATION])
    assert_refused(exchange, 401, "invalid_api_key")
    assert [(r["layer"], r["outcome"], r.get("conversation_id")) for r in audit_records] == [
        ("IdentityMiddleware", "deny", "c-123")
    ]
