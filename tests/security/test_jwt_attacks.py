"""Forged, confused and malformed JWTs against the whole stack.

Every case says what the attacker sees (status and code), that the app never ran, and why the
token must be refused. References: RFC 8725 (JWT Best Current Practices), RFC 7515/7519, the OWASP
JSON Web Token cheat sheet, and CVEs in JWT libraries.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from asgi_identity import IdentityMiddleware
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import JWKSServer, LocalIssuer, public_jwk

from ._attack import (
    AUDIENCE,
    Gateway,
    b64url,
    bearer,
    build_gateway,
    encode_part,
    forge,
    hmac_signed,
    signed,
    split,
    static_issuer,
)

# The order of the P-256 group: r = s = n is the "psychic signature" of CVE-2022-21449.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def now() -> int:
    return int(time.time())


def claims(issuer: LocalIssuer, **extra: Any) -> dict[str, Any]:
    return issuer.claims(**{"sub": "mallory", "email": "mallory@acme.com", **extra})


def legit_header(issuer: LocalIssuer, **extra: Any) -> dict[str, Any]:
    return {"alg": issuer.signing_key.algorithm, "kid": issuer.signing_key.kid, **extra}


def by_issuer(issuer: LocalIssuer, header: dict[str, Any], payload: dict[str, Any] | str) -> str:
    """Signed for real by the trusted issuer's key: only the claims (or header) are odd."""
    key = issuer.signing_key
    return signed(key.private_key, key.algorithm, header, payload)


async def test_control_a_token_of_the_trusted_issuer_is_accepted(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # Without this, every refusal below could be a broken fixture.
    seen = await gateway.accepted([bearer(rsa_issuer.mint(sub="alice"))])
    assert seen.identity.user_id == "alice"
    assert seen.identity.source == "jwt"


# -- alg "none" and missing signatures ----------------------------------------------------------

NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", "none ", " none", "none\u0000", ""]


@pytest.mark.parametrize("alg", NONE_SPELLINGS, ids=repr)
@pytest.mark.parametrize("signature", ["empty", "real"])
async def test_alg_none_in_any_spelling_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, alg: str, signature: str
) -> None:
    # RFC 8725 3.1 and CVE-2015-9235 (node-jsonwebtoken): "none" must never be accepted, in any
    # case or padding, with or without a signature copied from a real token.
    real = rsa_issuer.mint(sub="alice").rsplit(".", 1)[1]
    token = forge({"alg": alg, "typ": "JWT"}, claims(rsa_issuer, sub="admin"))
    if signature == "real":
        token += real
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_stripped_signature_is_401(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    # OWASP JWT cheat sheet, "None hashing algorithm": a signature cut off must not be skipped.
    header, payload, _ = rsa_issuer.mint(sub="alice").split(".")
    await gateway.refused([bearer(f"{header}.{payload}.")], 401, "invalid_token")


async def test_two_segment_token_is_not_read_as_a_jwt(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # Without its third segment it is not JWT-shaped: it is looked up as an API key, and no key
    # hashes to it. Either way the answer is 401, never the claims.
    header, payload, _ = rsa_issuer.mint(sub="alice").split(".")
    await gateway.refused([bearer(f"{header}.{payload}")], 401, "invalid_api_key")


@pytest.mark.parametrize(
    "signature",
    [b"\x00" * 256, b"\x00", b"\xff" * 256, b"\x00" * 512],
    ids=["zeros-256", "one-zero-byte", "ones-256", "zeros-512"],
)
async def test_null_and_constant_signatures_are_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, signature: bytes
) -> None:
    # RFC 7515 5.2: the signature is verified over the exact bytes; constants never verify.
    token = forge(legit_header(rsa_issuer), claims(rsa_issuer), signature)
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_signature_spliced_from_another_token_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # A valid signature belongs to one header and payload; moving it to a forged payload fails.
    victim = rsa_issuer.mint(sub="alice")
    forged_payload = encode_part(claims(rsa_issuer, sub="admin", roles=["admin"]))
    header, _, signature = victim.split(".")
    await gateway.refused([bearer(f"{header}.{forged_payload}.{signature}")], 401, "invalid_token")


# -- algorithm confusion: HMAC keyed with the public key ----------------------------------------


def _public_forms(issuer: LocalIssuer) -> dict[str, bytes]:
    public = issuer.signing_key.private_key.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    jwk = public_jwk(issuer.signing_key.private_key, kid=issuer.signing_key.kid, algorithm="RS256")
    pem = issuer.signing_key.public_pem.encode()
    return {
        "spki-pem": pem,
        "spki-pem-no-newline": pem.rstrip(b"\n"),
        "pkcs1-pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwk-n": base64.urlsafe_b64decode(jwk["n"] + "=="),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize(
    "form",
    [
        "spki-pem",
        "spki-pem-no-newline",
        "pkcs1-pem",
        "der",
        "ssh",
        "jwk-json",
        "jwk-json-compact",
        "jwk-n",
    ],
)
async def test_hmac_signed_with_the_public_key_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, alg: str, form: str
) -> None:
    # CVE-2022-29217 (PyJWT), CVE-2016-10555 (jwt-simple), CVE-2024-33663 (python-jose): a
    # verifier that lets the token pick HS* would use the public key as the HMAC secret.
    secret = _public_forms(rsa_issuer)[form]
    token = hmac_signed(secret, legit_header(rsa_issuer, alg=alg), claims(rsa_issuer))
    reply = await gateway.refused([bearer(token)], 401, "invalid_token")
    assert "algorithm" in reply.json["error"]["message"]


# -- keys named by the token itself ------------------------------------------------------------


def _attacker_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _self_signed_cert(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    start = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("kid", ["attacker", "real"])
async def test_embedded_jwk_is_never_trusted(
    gateway: Gateway, rsa_issuer: LocalIssuer, kid: str
) -> None:
    # CVE-2018-0114 (node-jose): a key carried in the token proves only that its sender has it.
    key = _attacker_key()
    header = {
        "alg": "ES256",
        "kid": rsa_issuer.signing_key.kid if kid == "real" else "attacker",
        "jwk": public_jwk(key, kid="attacker", algorithm="ES256"),
    }
    token = signed(key, "ES256", header, claims(rsa_issuer, sub="admin"))
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_embedded_x5c_certificate_is_never_trusted(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # RFC 8725 3.10 and OWASP: an x5c chain in the token is attacker data unless validated
    # against a configured trust anchor; this package takes keys only from configuration.
    key = _attacker_key()
    header = {"alg": "ES256", "x5c": [base64.b64encode(_self_signed_cert(key)).decode()]}
    token = signed(key, "ES256", header, claims(rsa_issuer, sub="admin"))
    await gateway.refused([bearer(token)], 401, "invalid_token")


@pytest.mark.parametrize("field", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", "real", "absent"])
async def test_jku_and_x5u_pointing_elsewhere_make_no_request(
    issuer: LocalIssuer,
    jwks_server: JWKSServer,
    attacker_server: JWKSServer,
    field: str,
    kid: str,
) -> None:
    # RFC 8725 3.10 / OWASP: a token naming its own key URL is an SSRF and a key substitution.
    # Nothing may be fetched from the attacker's server, whatever the token says.
    gateway = build_gateway(
        [JWTIssuer(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=jwks_server.jwks_url)]
    )
    assert (await gateway.request([bearer(issuer.mint(sub="alice"))])).status == 200
    attacker = attacker_server.issuer
    url = attacker_server.jwks_url if field == "jku" else f"{attacker_server.url}/cert.pem"
    header: dict[str, Any] = {"alg": "ES256", field: url}
    if kid == "attacker":
        header["kid"] = attacker.signing_key.kid
    elif kid == "real":
        header["kid"] = issuer.signing_key.kid
    token = signed(attacker.signing_key.private_key, "ES256", header, claims(issuer, sub="admin"))
    await gateway.refused([bearer(token)], 401, "invalid_token")
    assert attacker_server.fetches == 0
    assert attacker_server.discovery_fetches == 0
    # At most one refresh of the real key set for an unknown kid (then the cool-down holds).
    assert jwks_server.fetches <= 2


# -- ECDSA: psychic signatures -----------------------------------------------------------------


def _n(value: int) -> bytes:
    return value.to_bytes(32, "big")


@pytest.mark.parametrize(
    "signature",
    [
        b"\x00" * 64,
        _n(P256_ORDER) * 2,
        _n(P256_ORDER) + _n(0),
        _n(0) + _n(P256_ORDER),
        _n(1) + _n(1),
        b"\x30\x06\x02\x01\x00\x02\x01\x00",  # DER (r=0, s=0) where JWS wants raw r||s
        b"",
        b"\x00" * 65,
    ],
    ids=["zeros", "r=s=n", "r=n,s=0", "r=0,s=n", "r=s=1", "der-zero", "empty", "zeros-65"],
)
async def test_ecdsa_psychic_signatures_are_401(
    es_gateway: Gateway, issuer: LocalIssuer, signature: bytes
) -> None:
    # CVE-2022-21449 (Java 15-18): r = s = 0 verified every message. r and s must be in [1, n-1].
    token = forge(legit_header(issuer), claims(issuer, sub="admin"), signature)
    await es_gateway.refused([bearer(token)], 401, "invalid_token")


# -- the algorithm must fit the key -------------------------------------------------------------


async def test_ps256_signed_with_an_rs256_pinned_key_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # RFC 8725 3.1: the key's `alg` decides. The same RSA key under PS256 is another algorithm.
    token = by_issuer(rsa_issuer, legit_header(rsa_issuer, alg="PS256"), claims(rsa_issuer))
    reply = await gateway.refused([bearer(token)], 401, "invalid_token")
    assert "does not match its key" in reply.json["error"]["message"]


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS384"])
async def test_algorithm_other_than_the_keys_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, alg: str
) -> None:
    # RFC 8725 2.1: an algorithm named by the token must never choose how the key is used.
    signer: Any = ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else _attacker_key()
    if alg in ("ES384",):
        signer = ec.generate_private_key(ec.SECP384R1())
    if alg == "RS384":
        token = by_issuer(rsa_issuer, legit_header(rsa_issuer, alg="RS384"), claims(rsa_issuer))
    else:
        token = signed(signer, alg, legit_header(rsa_issuer, alg=alg), claims(rsa_issuer))
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_es384_header_on_an_es256_key_is_401(
    es_gateway: Gateway, issuer: LocalIssuer
) -> None:
    # A P-256 key verifies ES256 only (RFC 7518 3.4): a curve-hash mismatch is refused.
    token = signed(
        ec.generate_private_key(ec.SECP384R1()),
        "ES384",
        legit_header(issuer, alg="ES384"),
        claims(issuer),
    )
    await es_gateway.refused([bearer(token)], 401, "invalid_token")


async def test_algorithm_outside_the_issuers_list_is_401(rsa_issuer: LocalIssuer) -> None:
    # An issuer pinned to PS256 refuses RS256, even signed by its own key.
    issuer = JWTIssuer(
        issuer=rsa_issuer.issuer,
        audience=AUDIENCE,
        public_key=rsa_issuer.signing_key.public_pem,
        algorithms=["PS256"],
    )
    gateway = build_gateway([issuer])
    await gateway.refused([bearer(rsa_issuer.mint(sub="alice"))], 401, "invalid_token")


@pytest.mark.parametrize(
    "alg",
    [["RS256"], {"RS256": True}, None, 256, True],
    ids=["list", "object", "null", "int", "bool"],
)
async def test_alg_of_the_wrong_json_type_is_401_not_500(
    gateway: Gateway, rsa_issuer: LocalIssuer, alg: Any
) -> None:
    # Found by this suite: a list or object `alg` was unhashable and crashed the set lookup (500).
    token = by_issuer(
        rsa_issuer, {"alg": alg, "kid": rsa_issuer.signing_key.kid}, claims(rsa_issuer)
    )
    await gateway.refused([bearer(token)], 401, "invalid_token")


# -- encodings ----------------------------------------------------------------------------------


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_padding_bits(segment: str) -> str:
    # The last character of a segment whose length is not a multiple of 4 carries unused bits;
    # flipping them gives a different string that a lenient decoder reads as the same bytes.
    return segment[:-1] + ALPHABET[ALPHABET.index(segment[-1]) ^ 1]


@pytest.mark.parametrize("part", [0, 1, 2], ids=["header", "payload", "signature"])
async def test_non_canonical_base64url_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, part: int
) -> None:
    # RFC 7515 2 and 3.1: base64url without padding, canonical; a second spelling of the same
    # token would slip past anything keyed on the token string (replay lists, caches).
    token = rsa_issuer.mint(sub="alice", pad="x")
    parts = token.split(".")
    while len(parts[part]) % 4 == 0:  # make sure the segment has unused bits to flip
        token = rsa_issuer.mint(sub="alice", pad="x" * (len(token) % 7 + 2))
        parts = token.split(".")
    parts[part] = _flip_padding_bits(parts[part])
    await gateway.refused([bearer(".".join(parts))], 401, "invalid_token")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", "=.", 1),  # padding
        lambda t: t + "==",
        lambda t: t.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet
    ],
    ids=["padding-inside", "padding-end", "standard-alphabet"],
)
async def test_padded_or_standard_base64_is_not_a_jwt(
    gateway: Gateway, rsa_issuer: LocalIssuer, mangle: Callable[[str], str]
) -> None:
    # Outside the base64url alphabet the value is not JWT-shaped, so it is an (unknown) API key.
    token = mangle(rsa_issuer.mint(sub="alice"))
    await gateway.refused([bearer(token)], 401, "invalid_api_key")


@pytest.mark.parametrize("junk", [" ", "\t", "\n", "\r\n"], ids=repr)
async def test_whitespace_inside_a_token_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, junk: str
) -> None:
    # RFC 6750 2.1: b64token has no whitespace; a parser that trims inside would change the token.
    header, payload, signature = rsa_issuer.mint(sub="alice").split(".")
    token = f"{header}.{payload[:10]}{junk}{payload[10:]}.{signature}"
    await gateway.refused([bearer(token)], 401, "invalid_token")


# -- tampering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"sub": "admin"},
        {"roles": ["admin"]},
        {"email": "ceo@acme.com"},
        {"exp": 4102444800},
        {"aud": "another-service"},
    ],
    ids=lambda change: next(iter(change)),
)
async def test_tampered_claims_are_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, change: dict[str, Any]
) -> None:
    # RFC 7515 5.2: any change to the signed bytes breaks the signature.
    header, payload, signature = split(rsa_issuer.mint(sub="alice", email="alice@acme.com"))
    token = f"{encode_part(header)}.{encode_part({**payload, **change})}.{signature}"
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_tampered_header_is_401(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    header, payload, signature = split(rsa_issuer.mint(sub="alice"))
    token = f"{encode_part({**header, 'typ': 'at+jwt'})}.{encode_part(payload)}.{signature}"
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_duplicate_header_members_are_read_the_same_way_everywhere(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # RFC 7515 4: with duplicate names the lexically last is used; both the router and pyjwt do
    # so, so a header cannot say RS256 to one parser and "none" to the other.
    kid = rsa_issuer.signing_key.kid
    raw = f'{{"alg":"RS256","kid":"{kid}","alg":"none"}}'
    token = signed(rsa_issuer.signing_key.private_key, "RS256", raw, claims(rsa_issuer))
    await gateway.refused([bearer(token)], 401, "invalid_token")


# -- extensions and serialisations ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["x-unknown"], "x-unknown": 1},
        {"crit": ["exp"]},
        {"crit": ["b64"], "b64": False},
        {"crit": []},
        {"crit": "x-unknown"},
    ],
    ids=["unknown", "registered-name", "b64-false", "empty", "not-a-list"],
)
async def test_unknown_crit_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, extra: dict[str, Any]
) -> None:
    # RFC 7515 4.1.11: a recipient that does not understand a critical extension must reject.
    token = by_issuer(rsa_issuer, legit_header(rsa_issuer, **extra), claims(rsa_issuer))
    await gateway.refused([bearer(token)], 401, "invalid_token")


@pytest.mark.parametrize("alg", ["RSA-OAEP-256", "dir", "ECDH-ES"])
async def test_jwe_is_401(gateway: Gateway, alg: str) -> None:
    # RFC 7516: an encrypted token cannot be verified with a signing key; it is refused as such.
    token = ".".join(
        [
            encode_part({"alg": alg, "enc": "A256GCM"}),
            b64url(b"k" * 32),
            b64url(b"i" * 12),
            b64url(b"ciphertext"),
            b64url(b"t" * 16),
        ]
    )
    reply = await gateway.refused([bearer(token)], 401, "invalid_token")
    assert "Encrypted" in reply.json["error"]["message"]


def _json_serialisations(issuer: LocalIssuer) -> dict[str, str]:
    header, payload, signature = issuer.mint(sub="alice").split(".")
    flattened = {"protected": header, "payload": payload, "signature": signature}
    general = {"payload": payload, "signatures": [{"protected": header, "signature": signature}]}
    return {
        "flattened": json.dumps(flattened, separators=(",", ":")),
        "general": json.dumps(general, separators=(",", ":")),
    }


@pytest.mark.parametrize("form", ["flattened", "general"])
@pytest.mark.parametrize("keys", [True, False], ids=["with-api-keys", "jwt-only"])
async def test_jws_json_serialisation_is_401(
    rsa_issuer: LocalIssuer, form: str, keys: bool
) -> None:
    # RFC 7515 7.2: bearer tokens are compact; the JSON forms (even of a valid token) are refused,
    # so that no second parser with its own rules ever sees a credential.
    gateway = build_gateway([static_issuer(rsa_issuer)], api_keys=None if keys else [])
    token = _json_serialisations(rsa_issuer)[form]
    await gateway.refused([bearer(token)], 401, "invalid_api_key" if keys else "invalid_token")


# -- weak or wrong keys are refused at start-up ---------------------------------------------------


def _middleware(issuer: JWTIssuer) -> IdentityMiddleware:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    return IdentityMiddleware(app, issuers=[issuer])


def _weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the attack


def _weak_rsa_pem() -> str:
    key = _weak_rsa_key()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _jwk(key: Any, **extra: Any) -> dict[str, Any]:
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if isinstance(key, rsa.RSAPublicKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": "k1", **extra}


def test_rsa_key_under_2048_bits_is_refused_at_start_up() -> None:
    # RFC 7518 3.3 / NIST SP 800-131A: RSA keys under 2048 bits are too weak to trust.
    with pytest.raises(ValueError, match="too weak"):
        _middleware(
            JWTIssuer(issuer="https://i.test", audience=AUDIENCE, public_key=_weak_rsa_pem())
        )
    weak = _weak_rsa_key().public_key()
    with pytest.raises(ValueError, match="too weak"):
        _middleware(
            JWTIssuer(issuer="https://i.test", audience=AUDIENCE, jwks={"keys": [_jwk(weak)]})
        )


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}, "unsupported kty"),
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "k1", "alg": "HS256"}, "not an asymmetric"),
        ("rsa-with-d", "private key material"),
        ("rsa-hs256", "not an asymmetric"),
        ("rsa-none", "not an asymmetric"),
        ("rsa-e-1", "cannot be loaded"),
        ("secp256k1", "not supported"),
        ("rsa-enc", "not a signing key"),
    ],
)
def test_unsafe_jwks_keys_are_refused_at_start_up(jwk: Any, reason: str) -> None:
    # RFC 8725 3.5 and OWASP: symmetric keys, private keys, keys declared for other algorithms
    # or uses, degenerate exponents and unsupported curves are configuration errors, found early.
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    if jwk == "rsa-with-d":
        jwk = {**_jwk(rsa_public), "d": "AQAB"}
    elif jwk == "rsa-hs256":
        jwk = _jwk(rsa_public, alg="HS256")
    elif jwk == "rsa-none":
        jwk = _jwk(rsa_public, alg="none")
    elif jwk == "rsa-e-1":
        jwk = _jwk(rsa_public, e="AQ")
    elif jwk == "secp256k1":
        jwk = _jwk(ec.generate_private_key(ec.SECP256K1()).public_key())
    elif jwk == "rsa-enc":
        jwk = _jwk(rsa_public, use="enc")
    with pytest.raises(ValueError, match=reason):
        _middleware(JWTIssuer(issuer="https://i.test", audience=AUDIENCE, jwks={"keys": [jwk]}))


def test_private_key_pem_and_symmetric_algorithms_are_refused_at_start_up() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError, match="not a private key"):
        _middleware(JWTIssuer(issuer="https://i.test", audience=AUDIENCE, public_key=pem))
    for algorithms in (["HS256"], ["none"], ["RS256", "HS512"]):
        with pytest.raises(ValueError, match="not allowed"):
            JWTIssuer(
                issuer="https://i.test",
                audience=AUDIENCE,
                public_key=pem,
                algorithms=algorithms,
            )


async def test_weak_key_served_by_the_provider_is_skipped(issuer: LocalIssuer) -> None:
    # A remote key set is read leniently (one odd key must not take the others down), but the
    # weak key is never used: its tokens are refused, the good key's still pass.
    weak_private = _weak_rsa_key()
    weak_jwk = {**_jwk(weak_private.public_key()), "kid": "weak", "alg": "RS256"}
    with issuer.serve() as server:
        server.body = json.dumps({"keys": [weak_jwk, issuer.signing_key.jwk]}).encode()
        gateway = build_gateway(
            [JWTIssuer(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=server.jwks_url)]
        )
        forged = signed(weak_private, "RS256", {"alg": "RS256", "kid": "weak"}, claims(issuer))
        await gateway.refused([bearer(forged)], 401, "invalid_token")
        assert (await gateway.request([bearer(issuer.mint(sub="alice"))])).status == 200


async def test_provider_serving_only_weak_keys_is_503_not_accepted(issuer: LocalIssuer) -> None:
    weak_private = _weak_rsa_key()
    weak_jwk = {**_jwk(weak_private.public_key()), "kid": "weak", "alg": "RS256"}
    with issuer.serve() as server:
        server.body = json.dumps({"keys": [weak_jwk]}).encode()
        gateway = build_gateway(
            [JWTIssuer(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=server.jwks_url)]
        )
        forged = signed(weak_private, "RS256", {"alg": "RS256", "kid": "weak"}, claims(issuer))
        reply = await gateway.refused([bearer(forged)], 503, "identity_provider_unavailable")
        assert reply.header("retry-after") is not None


# -- claims -------------------------------------------------------------------------------------


def _raw_claims(issuer: LocalIssuer, **members: str) -> str:
    """A payload written as JSON text, for values json.dumps cannot write (Infinity, 400 digits)."""
    base = {
        "iss": json.dumps(issuer.issuer),
        "aud": json.dumps(AUDIENCE),
        "sub": '"mallory"',
        "exp": str(now() + 300),
    }
    base.update(members)
    return "{" + ",".join(f'"{name}":{value}' for name, value in base.items()) + "}"


CLAIM_CASES: list[tuple[str, dict[str, Any], str]] = [
    # (case, claims to change (None drops one), reason)
    ("exp-missing", {"exp": None}, "RFC 8725 3.8 / DESIGN: exp is required"),
    ("exp-past", {"exp": -120}, "RFC 7519 4.1.4, beyond the 60 s leeway"),
    ("exp-string", {"exp": "9999999999"}, "RFC 7519 2: NumericDate is a JSON number"),
    ("exp-bool", {"exp": True}, "true is not a NumericDate (and would mean 1970)"),
    ("exp-list", {"exp": [9999999999]}, "RFC 7519 2: NumericDate is a JSON number"),
    ("nbf-future", {"nbf": 600}, "RFC 7519 4.1.5"),
    ("nbf-string", {"nbf": "0"}, "RFC 7519 2; found by this suite: pyjwt's int() took it"),
    ("iat-future", {"iat": 600}, "a token from the future was not issued by a sane clock"),
    ("iat-string", {"iat": "0"}, "RFC 7519 2; found by this suite: pyjwt's int() took it"),
    ("iss-trailing-slash", {"iss": "https://issuer.test/"}, "RFC 8725 3.8: exact match"),
    ("iss-upper-case", {"iss": "HTTPS://ISSUER.TEST"}, "OIDC Core 3.1.3.7: exact match"),
    ("iss-suffix", {"iss": "https://issuer.test.evil.com"}, "look-alike host"),
    ("iss-userinfo", {"iss": "https://issuer.test@evil.com"}, "look-alike URL"),
    ("iss-nul", {"iss": "https://issuer.test\u0000"}, "a C string would stop at NUL"),
    ("iss-list", {"iss": ["https://issuer.test"]}, "RFC 7519 4.1.1: a StringOrURI"),
    ("iss-missing", {"iss": None}, "RFC 8725 3.8: iss is required"),
    ("aud-missing", {"aud": None}, "RFC 8725 3.9: audience pinned"),
    ("aud-other", {"aud": "another-service"}, "RFC 8725 3.9: cross-service substitution"),
    ("aud-case", {"aud": "Gateway"}, "RFC 7519 4.1.3: case-sensitive"),
    ("aud-space", {"aud": "gateway "}, "RFC 7519 4.1.3: exact"),
    ("aud-number", {"aud": 5}, "RFC 7519 4.1.3: string or array of strings"),
    ("aud-list-without-us", {"aud": ["a", "b"]}, "RFC 7519 4.1.3"),
    ("aud-nested", {"aud": [["gateway"]]}, "RFC 7519 4.1.3: array of strings"),
    ("aud-empty-list", {"aud": []}, "RFC 7519 4.1.3"),
    ("sub-number", {"sub": 5}, "RFC 7519 4.1.2: a StringOrURI"),
    ("sub-list", {"sub": ["alice", "admin"]}, "RFC 7519 4.1.2"),
    ("sub-object", {"sub": {"id": "admin"}}, "RFC 7519 4.1.2"),
    ("jti-number", {"jti": 5}, "RFC 7519 4.1.7: a string"),
    ("email-list", {"email": ["a@acme.com", "b@evil.com"]}, "one person, one address"),
    ("email-display-name", {"email": "Alice <alice@acme.com>"}, "a bare address only"),
    ("email-two-ats", {"email": "alice@acme.com@evil.com"}, "ambiguous domain"),
    ("roles-object", {"roles": {"admin": True}}, "roles are strings"),
    ("roles-numbers", {"roles": [1, 2]}, "roles are strings"),
    ("email-verified-string", {"email_verified": "yes"}, "a boolean claim"),
    ("act-not-object", {"act": "admin"}, "RFC 8693 4.1: act is an object"),
]


@pytest.mark.parametrize(
    ("case", "change", "reason"), CLAIM_CASES, ids=[case for case, _, _ in CLAIM_CASES]
)
async def test_claim_edges_signed_by_the_real_issuer_are_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, case: str, change: dict[str, Any], reason: str
) -> None:
    # Signed by the trusted key: only the claims are wrong, and each of them alone must refuse.
    payload = claims(rsa_issuer)
    for name, value in change.items():
        if value is None:
            payload.pop(name, None)
        elif (
            name in ("exp", "nbf", "iat") and isinstance(value, int) and not isinstance(value, bool)
        ):
            payload[name] = now() + value
        else:
            payload[name] = value
    token = by_issuer(rsa_issuer, legit_header(rsa_issuer), payload)
    await gateway.refused([bearer(token)], 401, "invalid_token")


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"exp": "Infinity"}, "Python's json reads Infinity; it is no time"),
        ({"exp": "-Infinity"}, "as above"),
        ({"exp": "NaN"}, "NaN compares false with everything"),
        ({"exp": "1e400"}, "overflows to infinity"),
        ({"exp": "1" + "0" * 400}, "found by this suite: an int beyond float crashed (500)"),
        ({"nbf": "Infinity"}, "as for exp"),
        ({"iat": "NaN"}, "as for exp"),
        ({"exp": "9" * 5000}, "over Python's 4300-digit int limit"),
    ],
    ids=[
        "exp-inf",
        "exp-neg-inf",
        "exp-nan",
        "exp-1e400",
        "exp-400-digits",
        "nbf-inf",
        "iat-nan",
        "exp-5000-digits",
    ],
)
async def test_numeric_dates_outside_json_numbers_are_401_not_500(
    rsa_issuer: LocalIssuer, members: dict[str, str], reason: str
) -> None:
    # max_header_bytes is raised so that the 5000-digit case reaches the verifier at all.
    from asgi_identity.credentials.tokens import TokenVerifier

    verifier = TokenVerifier([static_issuer(rsa_issuer)], max_token_bytes=16384)
    gateway = build_gateway(token_verifier=verifier, max_header_bytes=16384)
    token = by_issuer(rsa_issuer, legit_header(rsa_issuer), _raw_claims(rsa_issuer, **members))
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_audience_list_that_includes_us_is_accepted(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # RFC 7519 4.1.3: a token may serve several audiences; ours among them is enough.
    await gateway.accepted([bearer(rsa_issuer.mint(sub="alice", aud=["other", AUDIENCE]))])


@pytest.mark.parametrize(
    ("azp", "accepted"),
    [
        ("web-app", True),
        ("evil-app", False),
        (None, False),
        (["web-app"], False),
        ("web-app ", False),
        ("WEB-APP", False),
    ],
    ids=["listed", "other", "missing", "list", "trailing-space", "case"],
)
async def test_authorized_party_must_be_listed_exactly(
    rsa_issuer: LocalIssuer, azp: Any, accepted: bool
) -> None:
    # OIDC Core 2 (azp) and RFC 9068 2.2 (client_id): a token minted for another client is not ours.
    gateway = build_gateway([static_issuer(rsa_issuer, authorized_parties=["web-app"])])
    token = rsa_issuer.mint(sub="alice", azp=azp)
    if accepted:
        await gateway.accepted([bearer(token)])
    else:
        await gateway.refused([bearer(token)], 401, "invalid_token")


@pytest.mark.parametrize(
    ("typ", "accepted"),
    [
        ("at+jwt", True),
        ("application/at+jwt", True),
        ("AT+JWT", True),
        ("JWT", False),
        (None, False),
        (5, False),
        (["at+jwt"], False),
        ("at+jwt ", False),
    ],
    ids=["at+jwt", "media-type", "case", "JWT", "missing", "number", "list", "trailing-space"],
)
async def test_required_typ_is_checked(rsa_issuer: LocalIssuer, typ: Any, accepted: bool) -> None:
    # RFC 8725 3.11 / RFC 9068 2.1: explicit typing keeps ID tokens from being used as access
    # tokens. Media types ignore case and may drop "application/" (RFC 7515 4.1.9).
    gateway = build_gateway([static_issuer(rsa_issuer, required_typ="at+jwt")])
    header = legit_header(rsa_issuer)
    if typ is not None:
        header["typ"] = typ
    token = by_issuer(rsa_issuer, header, claims(rsa_issuer))
    if accepted:
        await gateway.accepted([bearer(token)])
    else:
        await gateway.refused([bearer(token)], 401, "invalid_token")


@pytest.mark.parametrize(
    "change", [{"iat": -10 * 86400, "exp": 86400}, {"iat": None}], ids=["ten-days", "no-iat"]
)
async def test_max_lifetime_refuses_long_lived_tokens(
    rsa_issuer: LocalIssuer, change: dict[str, Any]
) -> None:
    # RFC 8725 3.8 spirit: a stolen long-lived token is worth more; cap what an IdP may issue.
    gateway = build_gateway([static_issuer(rsa_issuer, max_lifetime=3600)])
    payload = claims(rsa_issuer)
    for name, value in change.items():
        if value is None:
            payload.pop(name)
        else:
            payload[name] = now() + value
    await gateway.refused(
        [bearer(by_issuer(rsa_issuer, legit_header(rsa_issuer), payload))], 401, "invalid_token"
    )


async def test_actor_chain_deeper_than_the_limit_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    # RFC 8693 4.1 allows nesting; nobody configures nine agents deep, and it costs to walk.
    act: dict[str, Any] = {"sub": "agent-0"}
    for depth in range(1, 10):
        act = {"sub": f"agent-{depth}", "act": act}
    token = rsa_issuer.mint(sub="alice", act=act)
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_deeply_nested_custom_claim_is_401(gateway: Gateway, rsa_issuer: LocalIssuer) -> None:
    nested: Any = "x"
    for _ in range(40):
        nested = {"n": nested}
    await gateway.refused([bearer(rsa_issuer.mint(sub="alice", deep=nested))], 401, "invalid_token")


# -- kid injection --------------------------------------------------------------------------------

KID_INJECTIONS = [
    "../../../../../../etc/passwd",
    "../../../../dev/null",
    "' OR '1'='1",
    "1; DROP TABLE keys; --",
    "| cat /etc/passwd",
    "$(id)",
    "http://169.254.169.254/latest/meta-data/",
    "x" * 4000,
    "\u0000",
    "kid\r\nX-Injected: 1",
    "\u202ekid",
    "",
]


@pytest.mark.parametrize("kid", KID_INJECTIONS, ids=lambda kid: repr(kid[:24]))
async def test_kid_injection_strings_only_miss_the_key_set(
    gateway: Gateway, rsa_issuer: LocalIssuer, kid: str
) -> None:
    # OWASP WSTG (testing JWTs, "kid" injection): the kid is a lookup key into the configured
    # set, never a path, a query or a URL. The real key's own signature is used, so
    # only the kid could make this pass.
    token = by_issuer(rsa_issuer, {"alg": "RS256", "kid": kid}, claims(rsa_issuer))
    reply = await gateway.refused([bearer(token)], 401, "invalid_token")
    if len(kid) > 3:
        assert kid[:20] not in reply.body.decode()  # messages never echo what the client sent


@pytest.mark.parametrize(
    "kid",
    [5, ["a"], {"path": "/etc/passwd"}, True, None],
    ids=["int", "list", "object", "bool", "null"],
)
async def test_kid_of_the_wrong_json_type_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer, kid: Any
) -> None:
    # A null kid is the same as none: with one key of the algorithm it is found, so only the
    # attacker's own key is tried here, to make a pass impossible.
    token = signed(_attacker_key(), "ES256", {"alg": "ES256", "kid": kid}, claims(rsa_issuer))
    await gateway.refused([bearer(token)], 401, "invalid_token")


async def test_real_kid_with_the_attackers_signature_is_401(
    gateway: Gateway, rsa_issuer: LocalIssuer
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = signed(attacker, "RS256", legit_header(rsa_issuer), claims(rsa_issuer, sub="admin"))
    await gateway.refused([bearer(token)], 401, "invalid_token")
