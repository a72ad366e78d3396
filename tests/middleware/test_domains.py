from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import http_client
from asgi_identity import APIKey, Identity, MiddlewareOrderError, get_identity, hash_api_key
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.telemetry import ATTR_ERROR_TYPE, ATTR_LAYER
from asgi_identity.testing import with_identity
from asgi_identity.types import ASGIApp, Receive, Scope, Send

NOT_ALLOWED = "This email domain is not allowed."
NO_EMAIL = "An email address in an allowed domain is required."
UNVERIFIED = "This email address has not been verified."


async def whoami(request: Request) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse({"source": identity.source, "email": identity.email})


APP = Starlette(routes=[Route("/v1/chat", whoami, methods=["POST"])])


async def call(layer: ASGIApp, identity: Identity) -> httpx.Response:
    async with http_client(with_identity(layer, identity)) as http:
        return await http.post("/v1/chat", json={"model": "gpt"})


def jwt(email: Any, **extra: Any) -> Identity:
    """A verified token's identity whose email claim is exactly what the token said."""
    return Identity(source="jwt", user_id="u-1", email=email, issuer="https://idp.test", **extra)


# The email as the token carried it -> does it count for an allowlist of `acme.com`?
DOMAIN_TABLE = [
    ("alice@acme.com", True),
    ("ALICE@ACME.COM", True),
    ("alice@Acme.Com", True),
    ("alice@acme.com.", True),
    ("alice@evil.acme.com", False),
    ("alice@acme.com.evil.com", False),
    ("alice@evilacme.com", False),
    ("alice@evil.com@acme.com", False),
    ("alice@acme.com@evil.com", False),
    ('"alice"@acme.com', False),
    ('"alice@evil.com"@acme.com', False),
    ("Alice <alice@acme.com>", False),
    ("Alice Smith <alice@acme.com>", False),
    ("alice(comment)@acme.com", False),
    ("alice@acme.com(comment)", False),
    ("alice@(comment)acme.com", False),
    ("alice@\u0430cme.com", False),
    ("alice@\u0430\u0441m\u0435.com", False),
    ("alice@xn--cme-5cd.com", False),
    ("alice@\uff41cme.com", False),
    ("alice@acme\uff0ecom", False),
    ("alice@acme\u3002com", False),
    ("alice\uff20acme.com", False),
    ("alice@ac\u200bme.com", False),
    ("alice@acme.com\u200b", False),
    ("ali\u200dce@acme.com", False),
    ("alice@acme\ufe0f.com", False),
    (" alice@acme.com", False),
    ("alice@acme.com ", False),
    ("alice@acme.com\n", False),
    ("alice @acme.com", False),
    ("@acme.com", False),
    ("acme.com", False),
    ("", False),
    (42, False),
    (["alice@acme.com"], False),
]


@pytest.mark.parametrize(("email", "accepted"), DOMAIN_TABLE)
async def test_only_plain_addresses_in_a_listed_domain_count(email: Any, accepted: bool) -> None:
    response = await call(DomainAllowlist(APP, domains=["acme.com"]), jwt(email))
    if accepted:
        assert response.status_code == 200
        assert response.json()["email"] == email
    else:
        assert response.status_code == 403
        assert response.json()["error"] == {
            "message": NOT_ALLOWED,
            "type": "permission_error",
            "code": "domain_not_allowed",
        }


@pytest.mark.parametrize(
    ("email", "accepted"),
    [
        ("alice@acme.com", False),
        ("alice@eu.acme.com", True),
        ("alice@a.b.acme.com", True),
        ("alice@EU.ACME.COM.", True),
        ("alice@evilacme.com", False),
        ("alice@acme.com.evil.com", False),
        ("alice@eu.acme.com.evil.com", False),
    ],
)
@pytest.mark.parametrize("pattern", [".acme.com", "*.acme.com", "*.ACME.com."])
async def test_subdomains_count_only_when_listed_as_such(
    pattern: str, email: str, accepted: bool
) -> None:
    response = await call(DomainAllowlist(APP, domains=[pattern]), jwt(email))
    assert response.status_code == (200 if accepted else 403)


async def test_an_empty_list_accepts_any_well_formed_or_malformed_domain() -> None:
    layer = DomainAllowlist(APP)
    for email in ("alice@gmail.com", "alice@evil.com", "Alice <alice@acme.com>"):
        assert (await call(layer, jwt(email))).status_code == 200


async def test_an_internationalized_domain_can_be_listed_in_either_form() -> None:
    for listed in ("bücher.de", "xn--bcher-kva.de"):
        layer = DomainAllowlist(APP, domains=[listed])
        for email in ("kim@bücher.de", "kim@xn--bcher-kva.de", "kim@BÜCHER.de"):
            assert (await call(layer, jwt(email))).status_code == 200
        assert (await call(layer, jwt("kim@bucher.de"))).status_code == 403


async def test_header_identity_is_checked_like_a_token_email() -> None:
    layer = DomainAllowlist(APP, domains=["acme.com"])
    ok = Identity(source="header", user_id="bob@acme.com", email="bob@acme.com")
    other = Identity(source="header", user_id="bob@gmail.com", email="bob@gmail.com")
    assert (await call(layer, ok)).status_code == 200
    assert (await call(layer, other)).status_code == 403


async def test_a_person_without_an_email_is_refused_when_a_list_applies() -> None:
    response = await call(DomainAllowlist(APP, domains=["acme.com"]), jwt(None))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "domain_not_allowed"
    assert response.json()["error"]["message"] == NO_EMAIL
    assert (await call(DomainAllowlist(APP), jwt(None))).status_code == 200


@pytest.mark.parametrize(
    "identity",
    [
        Identity(source="api_key", client_id="backend"),
        Identity(source="anonymous"),
    ],
    ids=["key only", "anonymous"],
)
async def test_requests_without_a_person_are_left_to_enforce_identity(identity: Identity) -> None:
    assert (await call(DomainAllowlist(APP, domains=["acme.com"]), identity)).status_code == 200


def backend_key(allowed_domains: list[str] | None) -> APIKey:
    return APIKey(id="backend", sha256=hash_api_key("sk-test"), allowed_domains=allowed_domains)


# (the key's allowed_domains, email) -> accepted, with `acme.com` as the global list
PER_KEY = [
    (None, "alice@acme.com", True),
    (None, "bob@partner.org", False),
    (["partner.org"], "bob@partner.org", True),
    (["partner.org"], "alice@acme.com", False),
    (["partner.org", "acme.com"], "alice@acme.com", True),
    (["*.partner.org"], "bob@eu.partner.org", True),
    ([], "anyone@gmail.com", True),
]


@pytest.mark.parametrize(("allowed", "email", "accepted"), PER_KEY)
@pytest.mark.parametrize("source", ["jwt", "header"])
async def test_a_key_with_its_own_list_replaces_the_global_list(
    allowed: list[str] | None, email: str, accepted: bool, source: str
) -> None:
    record = backend_key(allowed)
    identity = Identity(
        source="jwt" if source == "jwt" else "header",
        user_id=email,
        email=email,
        api_key=record,
        client_id=record.id,
    )
    response = await call(DomainAllowlist(APP, domains=["acme.com"]), identity)
    assert response.status_code == (200 if accepted else 403)


async def test_an_unverified_email_is_refused_even_without_a_list() -> None:
    for layer in (DomainAllowlist(APP), DomainAllowlist(APP, domains=["acme.com"])):
        response = await call(layer, jwt("alice@acme.com", email_verified=False))
        assert response.status_code == 403
        assert response.json()["error"] == {
            "message": UNVERIFIED,
            "type": "permission_error",
            "code": "email_unverified",
        }


@pytest.mark.parametrize(
    ("require", "issuer", "accepted"),
    [
        (False, "https://idp.test", True),
        (True, "https://idp.test", False),
        (["https://idp.test"], "https://idp.test", False),
        (["https://other.test"], "https://idp.test", True),
    ],
)
async def test_a_missing_email_verified_claim_is_accepted_unless_required(
    require: bool | list[str], issuer: str, accepted: bool
) -> None:
    layer = DomainAllowlist(APP, domains=["acme.com"], require_verified_email=require)
    identity = jwt("alice@acme.com").replace(issuer=issuer)
    response = await call(layer, identity)
    assert response.status_code == (200 if accepted else 403)
    if not accepted:
        assert response.json()["error"]["code"] == "email_unverified"
    verified = identity.replace(email_verified=True)
    assert (await call(layer, verified)).status_code == 200


async def test_require_verified_email_leaves_header_identity_alone() -> None:
    # A trusted backend vouches for X-User-Email; there is no claim to check.
    layer = DomainAllowlist(APP, domains=["acme.com"], require_verified_email=True)
    identity = Identity(source="header", user_id="bob@acme.com", email="bob@acme.com")
    assert (await call(layer, identity)).status_code == 200


@pytest.fixture
def tracer() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


REFUSED_CASES = [
    (email, jwt(email))
    for email, accepted in DOMAIN_TABLE
    if not accepted and isinstance(email, str)
] + [
    ("unverified", jwt("alice@acme.com", email_verified=False)),
    ("no email", jwt(None)),
]


@pytest.mark.parametrize(("case", "identity"), REFUSED_CASES)
async def test_observe_mode_lets_every_refused_case_through_and_records_it(
    case: str,
    identity: Identity,
    tracer: tuple[Tracer, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans, exporter = tracer
    inner = DomainAllowlist(APP, domains=["acme.com"], mode="observe")

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        with spans.start_as_current_span("request"):
            await inner(scope, receive, send)

    with caplog.at_level(logging.INFO, logger="asgi_identity"):
        response = await call(traced, identity)
    assert response.status_code == 200
    assert response.json()["email"] == identity.email
    expected = "email_unverified" if case == "unverified" else "domain_not_allowed"
    [span] = exporter.get_finished_spans()
    events = [(e.name, e.attributes or {}) for e in span.events]
    assert [(name, a[ATTR_LAYER], a[ATTR_ERROR_TYPE]) for name, a in events] == [
        ("asgi_identity.would_reject", "DomainAllowlist", expected)
    ]
    assert f"DomainAllowlist would refuse POST /v1/chat: {expected}" in caplog.messages


async def test_a_refusal_never_echoes_the_email() -> None:
    response = await call(DomainAllowlist(APP, domains=["acme.com"]), jwt("mallory@evil.com"))
    assert response.status_code == 403
    assert "evil" not in response.text
    assert "mallory" not in response.text


async def test_without_identity_middleware_the_error_says_how_to_order_the_layers() -> None:
    async with http_client(DomainAllowlist(APP, domains=["acme.com"])) as http:
        with pytest.raises(MiddlewareOrderError, match="add DomainAllowlist before"):
            await http.post("/v1/chat")


async def test_excluded_paths_are_not_checked() -> None:
    layer = DomainAllowlist(APP, domains=["acme.com"], exclude_paths=["/v1/"])
    assert (await call(layer, jwt("mallory@evil.com"))).status_code == 200


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"domains": "acme.com"}, TypeError, "list of domains"),
        ({"domains": ["acme .com"]}, ValueError, "invalid domain 'acme .com'"),
        ({"domains": ["*.com"]}, ValueError, "invalid domain"),
        ({"domains": [42]}, TypeError, "must be a string"),
        ({"require_verified_email": "https://idp.test"}, TypeError, "list of issuers"),
        ({"mode": "log"}, ValueError, "mode must be"),
    ],
)
def test_bad_options_fail_at_start_up(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        DomainAllowlist(APP, **options)


def test_decisions_stay_right_for_repeat_callers_and_many_distinct_ones() -> None:
    layer = DomainAllowlist(APP, domains=["acme.com"])
    for _ in range(2):
        assert layer.check(jwt("alice@acme.com")) is None
        error = layer.check(jwt("Alice <alice@acme.com>"))
        assert error is not None
        assert error.code == "domain_not_allowed"
    # More distinct addresses than the parse cache holds: it is emptied, never wrong.
    for n in range(5000):
        allowed = n % 2 == 0
        email = f"user{n}@acme.com" if allowed else f"user{n}@evil.com"
        assert (layer.check(jwt(email)) is None) is allowed
