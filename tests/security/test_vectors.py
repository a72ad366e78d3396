"""Public RFC 7520 vectors and generated edge-case vectors (see vectors/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from asgi_identity.credentials.jwks import key_from_jwk
from asgi_identity.credentials.tokens import JWTIssuer

from ._attack import bearer, build_gateway

VECTORS = Path(__file__).with_name("vectors")
RFC7520: dict[str, Any] = json.loads((VECTORS / "rfc7520.json").read_text())
EDGE: dict[str, Any] = json.loads((VECTORS / "jws_edge_cases.json").read_text())

RSA_KEY = RFC7520["keys"]["3.3 RSA public key"]
EC_KEY = RFC7520["keys"]["3.1 EC P-521 public key"]
SIGNED = [("4.1 RS256", RSA_KEY), ("4.2 PS384", RSA_KEY), ("4.3 ES512", EC_KEY)]


@pytest.mark.parametrize(("section", "jwk"), SIGNED, ids=[s for s, _ in SIGNED])
def test_rfc7520_signatures_verify_with_keys_loaded_here(section: str, jwk: Any) -> None:
    # The key loader turns the RFC's JWKs into keys that verify the RFC's signatures, with the
    # algorithm the key type allows; one flipped byte breaks it.
    key = key_from_jwk(jwk)
    alg = section.split()[1]
    assert alg in key.algorithms
    token = RFC7520["jws_compact"][section]
    payload = jwt.PyJWS().decode_complete(token, key.key, algorithms=[alg])["payload"]
    assert payload.startswith("It\u2019s a dangerous business, Frodo".encode())
    header, body, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.PyJWS().decode_complete(f"{header}.{body}.{flipped}", key.key, algorithms=[alg])


def test_rfc7520_hmac_key_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="not an asymmetric algorithm"):
        key_from_jwk(RFC7520["keys"]["3.5 symmetric key (MAC)"])


def _rfc_gateway() -> Any:
    issuer = JWTIssuer(
        issuer="https://hobbiton.example",
        audience="gateway",
        jwks={"keys": [RSA_KEY, {**EC_KEY, "kid": "bilbo-ec"}]},
    )
    return build_gateway([issuer], api_keys=[])


@pytest.mark.parametrize(
    "token",
    [
        *RFC7520["jws_compact"].values(),
        *(json.dumps(form, separators=(",", ":")) for form in RFC7520["jws_json"].values()),
        *RFC7520["jwe_compact"].values(),
    ],
    ids=[*RFC7520["jws_compact"], *RFC7520["jws_json"], *RFC7520["jwe_compact"]],
)
async def test_rfc7520_tokens_are_refused_by_the_gateway(token: str) -> None:
    # Validly signed but no claim set (4.1-4.3), HMAC (4.4), JSON forms, JWE: all 401.
    await _rfc_gateway().refused([bearer(token)], 401, "invalid_token")


CASES = EDGE["cases"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
async def test_generated_edge_case_vectors(case: dict[str, Any]) -> None:
    gateway = build_gateway(
        [JWTIssuer(issuer=EDGE["issuer"], audience=EDGE["audience"], jwks=EDGE["jwks"])]
    )
    if case["status"] == 200:
        seen = await gateway.accepted([bearer(case["token"])])
        assert seen.identity.user_id == "vector-user"
    else:
        await gateway.refused([bearer(case["token"])], case["status"], case["code"])
