"""Property-based attacks (hypothesis): no input makes a 500, a hang, or an accept it should refuse.

Examples are bounded (`max_examples`) so the suite stays fast; each run explores new inputs, and a
failure prints the smallest input that breaks the property.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_identity.credentials._forwarded import forward_value
from asgi_identity.credentials._header_values import bearer_value
from asgi_identity.credentials.email import domain_listed, normalize_domain_pattern, parse_email
from asgi_identity.credentials.tokens import TokenVerifier, looks_like_jwt
from asgi_identity.errors import STATUS_BY_CODE, IdentityError
from asgi_identity.quotas.usage import (
    MAX_TOKENS,
    JSONUsageReader,
    SSEUsageReader,
    usage_from_json,
    usage_from_sse,
)
from asgi_identity.testing import LocalIssuer

from ._attack import INSIDE, b64url, build_gateway, static_issuer

T = TypeVar("T")


def outcome(call: Callable[[], T]) -> T | IdentityError:
    """The value, or the IdentityError it was refused with; any other exception fails the test."""
    try:
        return call()
    except IdentityError as error:
        return error


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_VISIBLE = re.compile(r"[\x21-\x7e]+")
_HEADER_SAFE = re.compile(rb"[\x21-\x7e]*")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


# -- header parsing -----------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_bearer_value_returns_visible_ascii_or_refuses(raw: bytes) -> None:
    for required in (True, False):
        value = outcome(lambda: bearer_value(raw, scheme_required=required))  # noqa: B023
        if isinstance(value, IdentityError):
            assert value.code == "invalid_token"
        else:
            assert _VISIBLE.fullmatch(value)


@FAST
@given(st.text(max_size=60))
def test_forwarded_values_are_header_safe_and_reversible(value: str) -> None:
    from urllib.parse import unquote

    encoded = forward_value(value)
    assert _HEADER_SAFE.fullmatch(encoded)
    assert b"," not in encoded
    assert unquote(encoded.decode("ascii")) == value


interesting_names = st.sampled_from(
    [
        "authorization",
        "Authorization",
        "x-api-key",
        "X_API_KEY",
        "x-user-email",
        "X-User-Email",
        "x_user_email",
        "x-user-group",
        "x-user-id",
        "X-USER-ROLES",
        "x_user_tenant",
        "cookie",
        "x-conversation-id",
        "x-forwarded-for",
        "baggage",
    ]
)
header_values = st.binary(max_size=80) | st.sampled_from(
    [
        b"Bearer eyJhbGciOiJub25lIn0.e30.",
        b"Bearer sk-ai-security-app-key-000000000001",
        b"alice@acme.com",
        b"ALICE@acme.com.",
        b"Bearer ",
        b"\r\n",
    ]
)
header_lists = st.lists(
    st.tuples(
        interesting_names.map(str.encode) | st.binary(min_size=1, max_size=12), header_values
    ),
    max_size=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=header_lists, trusted=st.booleans())
def test_any_headers_get_a_documented_answer_and_no_spoofed_identity(
    rsa_issuer: LocalIssuer, headers: list[tuple[bytes, bytes]], trusted: bool
) -> None:
    gateway = build_gateway([static_issuer(rsa_issuer)], domains=["acme.com"])
    client = INSIDE if trusted else ("203.0.113.9", 1000)
    reply = asyncio.run(gateway.request(headers, client=client))
    if reply.status == 200:
        (seen,) = gateway.seen
        identity = seen.identity
        assert identity.source in ("api_key", "header")  # no forged token can be a JWT identity
        if identity.source == "header":
            assert trusted
            assert identity.email is not None
            assert identity.domain == "acme.com"
        for name, value in seen.headers:
            if name.lower().replace(b"_", b"-").startswith(b"x-user-"):
                assert name == name.lower()  # written by the middleware, not the client
                assert _HEADER_SAFE.fullmatch(value)
    else:
        assert not gateway.seen
        assert reply.code in STATUS_BY_CODE
        assert STATUS_BY_CODE[reply.code] == reply.status


# -- email normalisation ------------------------------------------------------------------------

email_like = st.text(max_size=40) | st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(max_size=12),
    st.sampled_from(
        [
            "acme.com",
            "ACME.com.",
            "acme.com.evil.com",
            "evilacme.com",
            "x.acme.com",
            "\u0430cme.com",
        ]
    )
    | st.text(max_size=20),
)


@FAST
@given(email_like)
def test_parse_email_is_strict_idempotent_and_never_over_matches(raw: str) -> None:
    try:
        parsed = parse_email(raw)
    except ValueError:
        return
    assert parsed.domain.isascii()
    assert parsed.address == parsed.address.lower()
    assert parse_email(parsed.address) == parsed
    assert parsed.address == f"{parsed.local}@{parsed.domain}"
    exact = {normalize_domain_pattern("acme.com")}
    assert domain_listed(parsed.domain, exact) == (parsed.domain == "acme.com")
    suffix = {normalize_domain_pattern("*.acme.com")}
    assert domain_listed(parsed.domain, suffix) == parsed.domain.endswith(".acme.com")


# -- token pre-checks and verification ----------------------------------------------------------

jwt_alphabet = st.text(
    alphabet='ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}"',
    max_size=120,
)


def _structured_token(header: Any, payload: Any, signature: bytes) -> str:
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        ]
    )


structured_tokens = st.builds(
    _structured_token,
    st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "none", "HS256", "ES256", "PS256"]) | json_values},
        optional={"kid": json_values, "crit": json_values, "typ": json_values, "jku": json_values},
    )
    | json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "iss": st.just("https://issuer.test") | json_values,
            "aud": st.just("gateway") | json_values,
            "exp": st.integers() | json_values,
            "sub": json_values,
        },
    )
    | json_values,
    st.binary(max_size=300),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=jwt_alphabet | structured_tokens)
def test_no_forged_token_is_accepted_or_crashes_the_verifier(
    rsa_issuer: LocalIssuer, token: str
) -> None:
    verifier = TokenVerifier([static_issuer(rsa_issuer)], max_token_bytes=4096)
    if looks_like_jwt(token):
        assert token.count(".") in (2, 4)
        assert token.startswith("e")
    result = outcome(lambda: asyncio.run(verifier.verify(token)))
    assert isinstance(result, IdentityError), f"a forged token was accepted: {token!r}"
    assert result.code == "invalid_token"


@FAST
@given(st.integers(min_value=1, max_value=20_000))
def test_size_check_refuses_before_decoding(rsa_issuer: LocalIssuer, extra: int) -> None:
    verifier = TokenVerifier([static_issuer(rsa_issuer)], max_token_bytes=256)
    token = "eyJ" + "A" * (256 + extra) + ".e30.sig"
    result = outcome(lambda: asyncio.run(verifier.verify(token)))
    assert isinstance(result, IdentityError), "an oversized token was accepted"
    assert result.message == "The access token is too large."


# -- usage parsing ------------------------------------------------------------------------------


def _sane(found: Any) -> None:
    if found is None:
        return
    assert 0 <= found.input_tokens <= 3 * MAX_TOKENS
    assert 0 <= found.output_tokens <= MAX_TOKENS


@FAST
@given(json_values)
def test_usage_from_any_json_is_none_or_sane_counts(document: Any) -> None:
    _sane(usage_from_json(document))
    _sane(usage_from_json({"usage": document}))


@FAST
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_usage_readers_never_raise_on_any_bytes(chunks: list[bytes]) -> None:
    for reader in (JSONUsageReader(tail=128), SSEUsageReader(max_event=128)):
        for chunk in chunks:
            reader.feed(chunk)
        _sane(reader.result())


usage_events = st.lists(
    st.builds(
        lambda usage, filler: f"data: {json.dumps({'usage': usage, 'x': filler})}\n\n".encode(),
        st.fixed_dictionaries(
            {},
            optional={
                "prompt_tokens": st.integers(-5, 10**6) | json_values,
                "completion_tokens": st.integers(-5, 10**6),
                "input_tokens": st.integers(0, 10**6),
            },
        ),
        st.text(max_size=20),
    )
    | st.sampled_from([b": comment\n", b"event: ping\n", b"\n", b"data: [DONE]\n\n"]),
    max_size=8,
)


@FAST
@given(events=usage_events, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
def test_sse_usage_does_not_depend_on_how_the_stream_is_chunked(
    events: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(events)
    whole = usage_from_sse(stream)
    _sane(whole)
    reader = SSEUsageReader()
    start = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        reader.feed(stream[start:cut])
        start = cut
    reader.feed(stream[start:])
    assert reader.result() == whole
