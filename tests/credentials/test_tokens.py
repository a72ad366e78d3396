from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from asgi_identity.credentials import _jws
from asgi_identity.credentials import tokens as tokens_module
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier, looks_like_jwt
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Actor
from asgi_identity.testing import LocalIssuer


def verifier(local: LocalIssuer, **options: Any) -> TokenVerifier:
    options.setdefault("audience", local.audience)
    options.setdefault("jwks", local.jwks)
    cache_size = options.pop("cache_size", 10_000)
    return TokenVerifier([JWTIssuer(issuer=local.issuer, **options)], cache_size=cache_size)


async def refused(v: TokenVerifier, token: str) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        await v.verify(token)
    error = caught.value
    assert error.code == "invalid_token"
    assert error.status == 401
    assert token not in error.message
    return error


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


# --- round trips with every asymmetric family ---------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
async def test_round_trip_with_every_algorithm_family(algorithm: str) -> None:
    local = LocalIssuer(algorithm=algorithm)
    v = verifier(local)
    identity = await v.verify(local.mint(sub="alice", email="Alice@Acme.com"))
    assert identity.source == "jwt"
    assert identity.user_id == "alice"
    assert identity.email == "alice@acme.com"
    assert identity.domain == "acme.com"
    assert identity.issuer == local.issuer
    assert identity.claims["sub"] == "alice"


async def test_static_pem_key_verifies(rsa_issuer: LocalIssuer) -> None:
    v = verifier(rsa_issuer, jwks=None, public_key=rsa_issuer.signing_key.public_pem)
    identity = await v.verify(rsa_issuer.mint(sub="bob"))
    assert identity.user_id == "bob"


async def test_pem_key_type_decides_the_algorithms(issuer: LocalIssuer) -> None:
    # An ES256 PEM key: an RS256 token (signed by someone else's key) names a foreign algorithm.
    v = verifier(issuer, jwks=None, public_key=issuer.signing_key.public_pem)
    other = LocalIssuer(issuer=issuer.issuer, algorithm="PS256")
    error = await refused(v, other.mint(sub="eve"))
    assert error.message == "The access token's signing algorithm does not match its key."


async def test_several_issuers_each_with_their_own_keys_and_claims(issuer: LocalIssuer) -> None:
    other = LocalIssuer(issuer="https://other.test", audience="api", algorithm="EdDSA")
    v = TokenVerifier(
        [
            JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks),
            JWTIssuer(
                issuer=other.issuer,
                audience="api",
                public_key=other.signing_key.public_pem,
                claims="keycloak",
            ),
        ]
    )
    first = await v.verify(issuer.mint(sub="alice", roles=["admin"]))
    second = await v.verify(other.mint(sub="bob", realm_access={"roles": ["viewer"]}))
    assert (first.issuer, first.roles) == (issuer.issuer, frozenset({"admin"}))
    assert (second.issuer, second.roles) == (other.issuer, frozenset({"viewer"}))
    # A token of one issuer signed with the other issuer's key fails its signature.
    forged = other.mint(iss=issuer.issuer, aud="gateway", sub="mallory")
    await refused(v, forged)
    unknown = await refused(v, issuer.mint(iss="https://stranger.test"))
    assert unknown.message == "The access token's issuer is not accepted."


# --- claim rules -----------------------------------------------------------------------------


async def test_expired_token_is_refused(issuer: LocalIssuer) -> None:
    now = int(time.time())
    error = await refused(verifier(issuer, leeway=0), issuer.mint(iat=now - 100, exp=now - 10))
    assert error.message == "The access token has expired."


async def test_leeway_accepts_a_token_that_just_expired(issuer: LocalIssuer) -> None:
    now = int(time.time())
    identity = await verifier(issuer, leeway=60).verify(issuer.mint(iat=now - 100, exp=now - 10))
    assert identity.user_id is None


async def test_exp_is_required(issuer: LocalIssuer) -> None:
    error = await refused(verifier(issuer), issuer.mint(exp=None))
    assert error.message == "The access token lacks a required claim."
    assert error.detail == "missing exp"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_from_the_future_is_refused(issuer: LocalIssuer, claim: str) -> None:
    claims: dict[str, Any] = {claim: int(time.time()) + 120}
    error = await refused(verifier(issuer, leeway=5), issuer.mint(**claims))
    assert error.message == "The access token is not valid yet."


async def test_nbf_within_leeway_is_accepted(issuer: LocalIssuer) -> None:
    await verifier(issuer, leeway=60).verify(issuer.mint(nbf=int(time.time()) + 30))


@pytest.mark.parametrize(
    ("configured", "token_aud", "accepted"),
    [
        ("gateway", "gateway", True),
        ("gateway", ["other", "gateway"], True),
        ("gateway", "other", False),
        (["a", "b"], "b", True),
        (["a", "b"], ["c"], False),
        ("gateway", None, False),
    ],
)
async def test_audience_is_pinned(
    issuer: LocalIssuer, configured: Any, token_aud: Any, accepted: bool
) -> None:
    v = verifier(issuer, audience=configured)
    token = issuer.mint(aud=token_aud)
    if accepted:
        await v.verify(token)
    else:
        error = await refused(v, token)
        assert error.message in (
            "The access token is not meant for this service.",
            "The access token lacks a required claim.",
        )


async def test_issuer_must_match_exactly(issuer: LocalIssuer) -> None:
    error = await refused(verifier(issuer), issuer.mint(iss=issuer.issuer + "/"))
    assert error.message == "The access token's issuer is not accepted."


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"azp": "web-app"}, True),
        ({"client_id": "web-app"}, True),
        ({"azp": "other-app"}, False),
        ({}, False),
    ],
)
async def test_authorized_parties_allowlist(
    issuer: LocalIssuer, claims: dict[str, Any], accepted: bool
) -> None:
    v = verifier(issuer, authorized_parties=["web-app", "cli"])
    token = issuer.mint(**claims)
    if accepted:
        assert (await v.verify(token)).client_id == "web-app"
    else:
        error = await refused(v, token)
        assert error.message == "The access token was issued to a client that is not allowed."


async def test_audience_none_binds_tokens_by_client_id_as_cognito_does(issuer: LocalIssuer) -> None:
    v = verifier(issuer, audience=None, authorized_parties=["app-client"], claims="cognito")
    identity = await v.verify(issuer.mint(aud=None, client_id="app-client", scope="read write"))
    assert identity.scopes == {"read", "write"}
    await refused(v, issuer.mint(aud=None, client_id="stranger"))


@pytest.mark.parametrize(
    ("typ", "accepted"),
    [("at+jwt", True), ("application/at+JWT", True), ("JWT", False), (None, False)],
)
async def test_required_typ(issuer: LocalIssuer, typ: str | None, accepted: bool) -> None:
    v = verifier(issuer, required_typ="at+jwt")
    token = issuer.mint(headers={"typ": typ})
    if accepted:
        await v.verify(token)
    else:
        assert (await refused(v, token)).message == "The access token has the wrong type."


async def test_max_lifetime(issuer: LocalIssuer) -> None:
    v = verifier(issuer, max_lifetime=600)
    now = int(time.time())
    await v.verify(issuer.mint(iat=now, exp=now + 600))
    error = await refused(v, issuer.mint(iat=now, exp=now + 86_400))
    assert error.message == "The access token's lifetime is too long."
    # Without iat the lifetime cannot be known, so the token is refused.
    assert (await refused(v, issuer.mint(iat=None))).detail == "missing iat"


async def test_oversized_token_is_refused_before_decoding(issuer: LocalIssuer) -> None:
    v = TokenVerifier(
        [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
        max_token_bytes=1024,
    )
    error = await refused(v, "e" * 5000)
    assert error.message == "The access token is too large."
    await refused(v, issuer.mint(padding="x" * 2000))


# --- algorithm and header attacks -------------------------------------------------------------


async def test_alg_none_never_passes(issuer: LocalIssuer) -> None:
    token = jwt.encode(issuer.claims(sub="eve"), "", algorithm="none")
    error = await refused(verifier(issuer), token)
    assert error.message == "The access token's signing algorithm is not accepted."


async def test_hs256_signed_with_the_public_key_never_passes(rsa_issuer: LocalIssuer) -> None:
    # The classic key confusion: the attacker signs with HMAC using the published public key.
    pem = rsa_issuer.signing_key.public_pem.encode()
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_issuer.signing_key.kid}
    unsigned = forge(header, rsa_issuer.claims(sub="eve"))
    signing_input = unsigned.rsplit(".", 1)[0]
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    for v in (
        verifier(rsa_issuer),
        verifier(rsa_issuer, jwks=None, public_key=pem.decode()),
    ):
        error = await refused(v, token)
        assert error.message == "The access token's signing algorithm is not accepted."


async def test_algorithm_is_pinned_by_the_jwk_alg(rsa_issuer: LocalIssuer) -> None:
    # The JWK says RS256: a PS256 token signed by the same private key is refused.
    key = rsa_issuer.signing_key
    token = jwt.encode(
        rsa_issuer.claims(), key.private_key, algorithm="PS256", headers={"kid": key.kid}
    )
    error = await refused(verifier(rsa_issuer), token)
    assert error.message == "The access token's signing algorithm does not match its key."


async def test_issuer_algorithms_option_narrows_what_is_accepted(issuer: LocalIssuer) -> None:
    with pytest.raises(ValueError, match="none of the issuer's allowed algorithms"):
        verifier(issuer, algorithms=["RS256"])


async def test_tampered_signature_is_refused(issuer: LocalIssuer) -> None:
    token = issuer.mint(sub="alice")
    head, body, _ = token.split(".")
    other = issuer.mint(sub="mallory").split(".")[2]
    error = await refused(verifier(issuer), f"{head}.{body}.{other}")
    assert error.message == "The access token's signature is not valid."


async def test_swapped_payload_is_refused(issuer: LocalIssuer) -> None:
    head, _, signature = issuer.mint(sub="alice").split(".")
    body = b64(json.dumps(issuer.claims(sub="admin")).encode())
    await refused(verifier(issuer), f"{head}.{body}.{signature}")


@pytest.mark.parametrize("extension", [["exp"], ["b64"], ["urn:example:unknown"]])
async def test_critical_extensions_are_refused(issuer: LocalIssuer, extension: list[str]) -> None:
    token = issuer.mint(headers={"crit": extension, "exp": 1})
    await refused(verifier(issuer), token)


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_headers_are_never_followed(issuer: LocalIssuer, header: str) -> None:
    attacker = LocalIssuer(issuer=issuer.issuer, algorithm="ES256")
    with attacker.serve() as server:
        token = attacker.mint(headers={header: server.jwks_url, "kid": attacker.signing_key.kid})
        error = await refused(verifier(issuer), token)
        assert server.fetches == 0
    assert error.message == "The access token's signing key is not known."


async def test_embedded_jwk_header_is_never_trusted(issuer: LocalIssuer) -> None:
    attacker = LocalIssuer(issuer=issuer.issuer, algorithm="ES256")
    token = attacker.mint(headers={"jwk": attacker.signing_key.jwk, "kid": issuer.signing_key.kid})
    error = await refused(verifier(issuer), token)
    assert error.message == "The access token's signature is not valid."


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-token", "The access token is malformed."),
        ("a.b", "The access token is malformed."),
        ("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "Encrypted tokens (JWE) are not accepted."),
        ('{"payload":"e30","signatures":[]}', "The access token is malformed."),
        ("eyJ!.eyJ.sig", "The access token is malformed."),
        ("ä.b.c", "The access token is malformed."),
        (b64(b"[1]") + ".e30.c2ln", "The access token is malformed."),
    ],
)
async def test_malformed_tokens_are_refused_without_echo(
    issuer: LocalIssuer, token: str, message: str
) -> None:
    assert (await refused(verifier(issuer), token)).message == message


async def test_wrong_typed_claims_are_refused_not_crashed_on(issuer: LocalIssuer) -> None:
    v = verifier(issuer)
    for claims in ({"email": {"x": 1}}, {"roles": {"admin": True}}, {"sub": 42}, {"exp": "soon"}):
        await refused(v, issuer.mint(**claims))


# --- the verified-token cache --------------------------------------------------------------


async def test_repeated_token_is_served_from_the_cache(issuer: LocalIssuer) -> None:
    v = verifier(issuer)
    token = issuer.mint(sub="alice")
    assert v.cached(token) is None
    first = await v.verify(token)
    assert await v.verify(token) is first
    assert v.cached(token) is first


async def test_cached_token_is_refused_once_expired(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = verifier(issuer, leeway=0)
    now = time.time()
    token = issuer.mint(iat=int(now), exp=int(now) + 60)
    await v.verify(token)
    assert token in v._cache
    # Move both clocks (the cache's and pyjwt's) two minutes ahead instead of sleeping.
    later = now + 120

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    monkeypatch.setattr(
        tokens_module, "time", SimpleNamespace(time=lambda: later, perf_counter=time.perf_counter)
    )
    error = await refused(v, token)
    assert error.message == "The access token has expired."
    assert token not in v._cache


async def test_cache_is_bounded_lru(issuer: LocalIssuer) -> None:
    v = verifier(issuer, cache_size=2)
    tokens = [issuer.mint(sub=str(n)) for n in range(3)]
    for token in tokens:
        await v.verify(token)
    assert list(v._cache) == tokens[1:]
    await v.verify(tokens[1])
    assert list(v._cache) == [tokens[2], tokens[1]]


async def test_cache_size_zero_turns_the_cache_off(issuer: LocalIssuer) -> None:
    v = verifier(issuer, cache_size=0)
    token = issuer.mint()
    assert await v.verify(token) == await v.verify(token)
    assert not v._cache


async def test_identity_claims_are_read_only(issuer: LocalIssuer) -> None:
    v = verifier(issuer)
    token = issuer.mint(realm_access={"roles": ["a"]})
    identity = await v.verify(token)
    with pytest.raises(TypeError):
        identity.claims["sub"] = "root"  # type: ignore[index]
    with pytest.raises(TypeError):
        identity.claims["realm_access"]["roles"] = ["admin"]
    assert identity.claims["realm_access"]["roles"] == ("a",)


async def test_actor_chain_from_the_act_claim(issuer: LocalIssuer) -> None:
    act = {"sub": "agent-1", "client_id": "copilot", "act": {"sub": "orchestrator"}}
    identity = await verifier(issuer).verify(issuer.mint(sub="alice", act=act))
    assert identity.actor == Actor(
        subject="agent-1", client_id="copilot", actor=Actor(subject="orchestrator")
    )


# --- configuration errors at construction ---------------------------------------------------


def _pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one key source"),
        ({"jwks_url": "https://a/j", "discovery": True}, "exactly one key source"),
        ({"jwks_url": "http://idp.example.com/jwks"}, "https://"),
        ({"jwks_url": "ftp://127.0.0.1/jwks"}, "https://"),
        ({"discovery": True, "issuer": "http://idp.example.com"}, "https://"),
        ({"public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}, "PEM"),
        ({"jwks": {"keys": []}}, "no usable signing key"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "unsupported kty"),
        ({"jwks_url": "https://a/j", "algorithms": ["HS256"]}, "only asymmetric"),
        ({"jwks_url": "https://a/j", "algorithms": ["none"]}, "only asymmetric"),
        ({"jwks_url": "https://a/j", "audience": ""}, "audience"),
        ({"jwks_url": "https://a/j", "audience": None}, "authorized_parties"),
        ({"jwks_url": "https://a/j", "claims": "nonesuch"}, "auth0"),
        ({"jwks_url": "https://a/j", "leeway": -1}, "leeway"),
        ({"jwks_url": "https://a/j", "max_lifetime": 0}, "max_lifetime"),
        ({"jwks_url": "https://a/j", "authorized_parties": "web"}, "list of strings"),
        ({"jwks_url": "https://a/j", "jwks_fetch_timeout": 0}, "jwks_fetch_timeout"),
    ],
)
def test_bad_configuration_is_an_error_at_construction(
    options: dict[str, Any], message: str
) -> None:
    options = {"issuer": "https://idp.example.com", "audience": "api", **options}
    with pytest.raises(ValueError, match=message):
        TokenVerifier([JWTIssuer(**options)])


def test_weak_rsa_keys_are_refused_at_load() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    with pytest.raises(ValueError, match="too weak"):
        JWTIssuer_verifier(public_key=_pem(weak))


def test_private_key_pem_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError, match="not a private key"):
        JWTIssuer_verifier(public_key=pem)


def test_duplicate_issuers_are_refused(issuer: LocalIssuer) -> None:
    config = JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)
    with pytest.raises(ValueError, match="configured twice"):
        TokenVerifier([config, config])
    with pytest.raises(ValueError, match="non-empty list"):
        TokenVerifier([])


def JWTIssuer_verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier([JWTIssuer(issuer="https://idp.test", audience="api", **options)])


# --- telling a JWT from an API key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", True),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", True),
        ("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", True),
        ("sk-live-abc.def.ghi", False),
        ("aid_0123456789abcdef", False),
        ("eyJ.eyJ", False),
        ("eyJ a.b.c", False),
        ("", False),
    ],
)
def test_looks_like_jwt(value: str, expected: bool) -> None:
    assert looks_like_jwt(value) is expected


async def test_looks_like_jwt_accepts_every_minted_token(issuer: LocalIssuer) -> None:
    assert looks_like_jwt(issuer.mint(sub="alice"))


# --- the verifier decides exactly as pyjwt's decode would -------------------------------------
# TokenVerifier takes the compact form apart itself (one strict decode per segment) and checks
# the claims itself; these compare its verdict with `jwt.decode` on the same token and key.


def _pyjwt_accepts(local: LocalIssuer, token: str, leeway: float = 60) -> bool:
    key = serialization.load_pem_public_key(local.signing_key.public_pem.encode())
    try:
        jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=[local.signing_key.algorithm],
            audience=local.audience,
            issuer=local.issuer,
            leeway=leeway,
            options={"require": ["exp", "iss"]},
        )
    except jwt.PyJWTError:
        return False
    return True


async def _we_accept(v: TokenVerifier, token: str) -> bool:
    try:
        await v.verify(token)
    except IdentityError as error:
        refusal = (error.code, error.status)
    else:
        return True
    assert refusal == ("invalid_token", 401)
    return False


def _numeric_dates(claims: dict[str, Any]) -> bool:
    # Where the verifier is stricter than pyjwt on purpose: RFC 7519 NumericDates are numbers.
    return all(
        isinstance(claims[name], (int, float)) and not isinstance(claims[name], bool)
        for name in ("exp", "nbf", "iat")
        if name in claims
    )


_NOW = int(time.time())
CLAIM_CASES: list[dict[str, Any]] = [
    {},
    {"exp": None},
    {"exp": _NOW - 3600},
    {"exp": _NOW - 30},  # within the leeway
    {"exp": _NOW + 0.5},
    {"exp": "soon"},
    {"exp": str(_NOW + 300)},
    {"exp": True},
    {"exp": float("nan")},
    {"nbf": _NOW + 3600},
    {"nbf": _NOW + 30},
    {"nbf": "0"},
    {"iat": _NOW + 3600},
    {"iat": _NOW + 30},
    {"iat": _NOW + 59.9},
    {"iat": "later"},
    {"iss": None},
    {"iss": "https://issuer.test/"},
    {"aud": None},
    {"aud": ""},
    {"aud": []},
    {"aud": 0},
    {"aud": "other"},
    {"aud": ["other", "gateway"]},
    {"aud": ["other"]},
    {"aud": ["gateway", 1]},
    {"aud": {"gateway": True}},
    {"aud": [["gateway"]]},
    {"sub": 42},
    {"sub": ""},
    {"jti": 7},
    {"jti": None},
]


@pytest.mark.parametrize("claims", CLAIM_CASES, ids=repr)
async def test_claim_verdicts_match_pyjwt(issuer: LocalIssuer, claims: dict[str, Any]) -> None:
    token = issuer.mint(**claims)
    expected = _pyjwt_accepts(issuer, token) and _numeric_dates(issuer.claims(**claims))
    assert await _we_accept(verifier(issuer, leeway=60, cache_size=0), token) is expected


def _respell(token: str, part: int, change: Any) -> str:
    parts = token.split(".")
    parts[part] = change(parts[part])
    return ".".join(parts)


_URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _other_spelling(segment: str) -> str:
    # The last character of a segment whose length is not a multiple of 4 has unused low bits.
    return segment[:-1] + _URL_ALPHABET[_URL_ALPHABET.index(segment[-1]) ^ 1]


SPELLINGS: list[tuple[str, Any]] = [
    ("padded", lambda s: s + "=" * (-len(s) % 4)),
    ("over-padded", lambda s: s + "=" * (-len(s) % 4 + 4)),
    ("padding-only", lambda s: s + "="),
    ("three-pad", lambda s: s + "==="),
    ("other-spelling", _other_spelling),
    ("standard-alphabet", lambda s: s.replace("-", "+").replace("_", "/") + "+/"),
    ("one-char-extra", lambda s: s + "A" * (1 if len(s) % 4 == 0 else 5 - len(s) % 4)),
    ("junk", lambda s: s[:4] + "!" + s[5:]),
    ("space", lambda s: s[:4] + " " + s[4:]),
    ("empty", lambda s: ""),
]


@pytest.mark.parametrize("part", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize(("name", "change"), SPELLINGS, ids=[name for name, _ in SPELLINGS])
async def test_segment_spellings_match_pyjwt(
    issuer: LocalIssuer, part: int, name: str, change: Any
) -> None:
    # A segment whose length is a multiple of 4 has no unused bits and needs no padding.
    for extra in range(4):
        token = issuer.mint(sub="alice", pad="x" * extra)
        if len(token.split(".")[part]) % 4:
            break
    spelled = _respell(token, part, change)
    if spelled == token:
        pytest.skip("this change leaves the segment as it was")
    expected = _pyjwt_accepts(issuer, spelled)
    assert await _we_accept(verifier(issuer, cache_size=0), spelled) is expected
    if name == "other-spelling":
        assert expected is False  # one token, one spelling: the cache can't be fed variants


def _sign_raw(local: LocalIssuer, header: bytes, payload: bytes, *, pad: bool = False) -> str:
    signer = local.signing_key
    segments = [base64.urlsafe_b64encode(part).decode() for part in (header, payload)]
    signing_input = ".".join(segments if pad else [s.rstrip("=") for s in segments])
    algorithm = jwt.algorithms.get_default_algorithms()[signer.algorithm]
    signature = algorithm.sign(signing_input.encode(), signer.private_key)
    return f"{signing_input}.{b64(signature)}"


async def test_padded_segments_are_accepted_as_pyjwt_accepts_them(issuer: LocalIssuer) -> None:
    # Some issuers (AWS ALB) pad their segments; the padding is then part of the signed input.
    for extra in range(4):
        claims = json.dumps(issuer.claims(sub="alice", pad="x" * extra)).encode()
        token = _sign_raw(issuer, _header_json(issuer), claims, pad=True)
        if "=" in token:
            break
    assert _pyjwt_accepts(issuer, token) is True
    assert (await verifier(issuer).verify(token)).user_id == "alice"


@pytest.mark.parametrize("iss", [5, ["https://issuer.test"], {"x": 1}, True])
async def test_an_issuer_that_is_not_a_string_is_refused(issuer: LocalIssuer, iss: Any) -> None:
    claims = json.dumps(issuer.claims(sub="alice", iss=iss)).encode()
    token = _sign_raw(issuer, _header_json(issuer), claims)
    assert _pyjwt_accepts(issuer, token) is False
    error = await refused(verifier(issuer), token)
    assert error.message == "The access token's issuer is not accepted."


def _header_json(local: LocalIssuer, **extra: Any) -> bytes:
    header = {"alg": local.signing_key.algorithm, "kid": local.signing_key.kid, **extra}
    return json.dumps(header).encode()


async def test_validly_signed_payload_that_is_not_utf8_json_is_malformed(
    issuer: LocalIssuer,
) -> None:
    claims = json.dumps(issuer.claims(sub="alice"))
    for payload in (claims.encode("utf-16"), b"\xef\xbb\xbf" + claims.encode(), b"[1, 2]"):
        token = _sign_raw(issuer, _header_json(issuer), payload)
        error = await refused(verifier(issuer), token)
        assert error.message == "The access token is malformed."


# Claims as JSON text: a lone surrogate escape decodes to a str no encoder can write back.
LONE_SURROGATES = {
    "sub": '"\\ud800"',
    "name": '"al\\udfffice"',
    "roles": '["admin", "\\ud83d"]',
    "azp": '"web\\ud800"',
    "act": '{"sub": "\\udc00"}',
    "x-custom": '{"deep": ["\\ud800"]}',
}


@pytest.mark.parametrize("claim", sorted(LONE_SURROGATES))
async def test_a_claim_with_a_lone_surrogate_is_malformed_not_a_crash(
    issuer: LocalIssuer, claim: str
) -> None:
    # DESIGN: claims that cannot become valid text are a 401, never a 500. Before the check a
    # surrogate in `sub`, `roles` or `azp` broke the forwarded headers (UnicodeEncodeError).
    claims = {name: value for name, value in issuer.claims(sub="alice").items() if name != claim}
    payload = json.dumps(claims)[:-1] + f', "{claim}": {LONE_SURROGATES[claim]}}}'
    token = _sign_raw(issuer, _header_json(issuer), payload.encode())
    error = await refused(verifier(issuer), token)
    assert error.message == "The access token is malformed."
    assert error.detail == "payload holds a lone surrogate, which is not text"


async def test_an_escaped_surrogate_pair_is_text_and_accepted(issuer: LocalIssuer) -> None:
    # An emoji escaped as a UTF-16 pair, as `json.dumps` writes it: valid text.
    claims = {**issuer.claims(sub="alice"), "name": "Alice \U0001f600"}
    token = _sign_raw(issuer, _header_json(issuer), json.dumps(claims).encode())
    assert b"\\ud83d\\ude00" in base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert (await verifier(issuer).verify(token)).name == "Alice \U0001f600"


async def test_unencoded_payload_option_is_refused_even_when_signed(issuer: LocalIssuer) -> None:
    claims = json.dumps(issuer.claims(sub="alice")).encode()
    token = _sign_raw(issuer, _header_json(issuer, b64=False), claims)
    assert _pyjwt_accepts(issuer, token) is False
    await refused(verifier(issuer), token)


async def test_string_dates_are_refused_though_pyjwt_reads_them(issuer: LocalIssuer) -> None:
    token = issuer.mint(nbf="0", iat=str(_NOW))
    assert _pyjwt_accepts(issuer, token) is True
    error = await refused(verifier(issuer), token)
    assert error.message == "The access token is malformed."
    assert error.detail == "nbf='0' is not a number"


@pytest.mark.parametrize("body", ["", "QUJD", "QUJDRA"], ids=["empty", "one-quantum", "longer"])
def test_every_final_character_is_judged_as_a_re_encoding_would(body: str) -> None:
    # The verifier tells a canonical segment by its unused bits; a decode and re-encode (what
    # pyjwt does) must reach the same verdict for every length and final character.
    for tail in ("", "A", "AA", "AAA"):
        for last in _URL_ALPHABET:
            segment = body + tail + last
            try:
                decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            except ValueError:
                canonical = False
            else:
                canonical = len(segment) % 4 != 1 and b64(decoded) == segment
            try:
                got = _jws.segment_bytes(segment.encode(), "segment")
            except IdentityError:
                assert not canonical, segment
            else:
                assert canonical, segment
                assert got == decoded


async def test_a_refused_header_is_refused_again_and_memory_stays_bounded(
    issuer: LocalIssuer,
) -> None:
    # Checked headers are remembered by their segment (an issuer's tokens share one); a refused
    # one never is, and many distinct headers only ever fill a bounded memo.
    v = verifier(issuer)
    numeric_kid = _sign_raw(issuer, _header_json(issuer, kid=7), b'{"sub": "alice"}')
    for _ in range(2):
        await refused(v, issuer.mint(headers={"crit": ["exp"], "exp": 1}))
        assert (await refused(v, numeric_kid)).detail == "kid=7 is not a string"
    for n in range(300):
        identity = await v.verify(issuer.mint(sub="alice", headers={"x-n": n}))
        assert identity.user_id == "alice"
    assert len(_jws.HEADERS) <= 256
    await refused(v, issuer.mint(headers={"crit": ["exp"], "exp": 1}))


async def test_the_verified_token_cache_is_bounded_in_bytes_as_well_as_entries(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large tokens (big claims) must not let 10,000 entries hold tens of megabytes.
    monkeypatch.setattr(tokens_module, "CACHE_BUDGET", 64 * 1024)
    verifier = TokenVerifier([JWTIssuer(issuer.issuer, audience=issuer.audience, jwks=issuer.jwks)])
    padding = "x" * 3000
    minted = [issuer.mint(sub=f"user-{n}", note=padding) for n in range(40)]
    for token in minted:
        assert (await verifier.verify(token)).user_id is not None
    held = sum(2 * len(token) for token in verifier._cache)
    assert held <= 64 * 1024
    assert 0 < len(verifier._cache) < 40
    # The newest stay; the oldest were let go, and are verified again (not refused) when they come.
    assert verifier.cached(minted[-1]) is not None
    assert verifier.cached(minted[0]) is None
    assert (await verifier.verify(minted[0])).user_id == "user-0"
