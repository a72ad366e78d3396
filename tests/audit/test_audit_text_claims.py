"""Claims that cannot become valid text are a 401, and every decision about them, or about odd
but valid text, is in the audit file: no record is ever silently dropped (issue 13, item 8)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import get_default_algorithms

from _asgi import http_client
from asgi_identity import Identity, identity_stack, telemetry
from asgi_identity.audit import configure_audit, shutdown_audit, verify_audit
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import DomainAllowlist
from asgi_identity.testing import LocalIssuer, with_identity

AUDIT_KEY = Ed25519PrivateKey.generate()


@pytest.fixture(autouse=True)
def _reset_audit() -> Iterator[None]:
    yield
    shutdown_audit()
    telemetry.configure_telemetry()


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _records(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["kind"] == "record"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(issuer: LocalIssuer, payload_json: bytes) -> str:
    # The payload bytes exactly as given: pyjwt would not encode a lone surrogate.
    key = issuer.signing_key
    header = _b64(json.dumps({"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(payload_json)}".encode()
    signature = get_default_algorithms()[key.algorithm].sign(signing_input, key.private_key)
    return f"{signing_input.decode()}.{_b64(signature)}"


def _payload(issuer: LocalIssuer, extra: str) -> bytes:
    base = json.dumps(issuer.claims(sub="alice"))[:-1]
    return (base + ", " + extra + "}").encode()


CASES = {
    "lone-surrogate-sub": ('"name": "a\\ud800b"', 401, "deny", "invalid_token"),
    "lone-surrogate-email": ('"email": "\\udfffa@acme.com"', 401, "deny", "invalid_token"),
    "nul-in-roles": ('"roles": ["a\\u0000b"]', 401, "deny", "invalid_token"),
    "emoji-name": (
        '"name": "Al \\ud83d\\ude00 ice", "email": "alice@acme.com"',
        200,
        "allow",
        None,
    ),
    "internationalized-email": ('"email": "j\\u00f6s\\u00e9@acme.com"', 200, "allow", None),
    "look-alike-domain": ('"email": "alice@\\u0430cme.com"', 403, "deny", "domain_not_allowed"),
    "bidi-name": ('"name": "\\u202eecila", "email": "alice@acme.com"', 200, "allow", None),
}


@pytest.mark.parametrize(("extra", "status", "outcome", "reason"), CASES.values(), ids=CASES.keys())
async def test_every_decision_on_odd_claims_is_recorded(
    issuer: LocalIssuer,
    tmp_path: Path,
    extra: str,
    status: int,
    outcome: str,
    reason: str | None,
) -> None:
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY, emit="none")
    assert file is not None
    app = identity_stack(
        _ok,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)]
        },
        domains={"domains": ["acme.com"]},
    )
    token = _raw_token(issuer, _payload(issuer, extra))
    async with http_client(app) as http:
        response = await http.get("/v1/models", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == status
    assert file.flush()
    written = _records(path)
    assert written, "the decision was not recorded"
    assert written[-1]["outcome"] == outcome
    assert written[-1].get("reason") == reason
    shutdown_audit()
    report = verify_audit(path, AUDIT_KEY.public_key())
    assert report.ok, report.problems


async def test_an_identity_the_app_built_with_a_lone_surrogate_is_still_recorded(
    tmp_path: Path,
) -> None:
    # Not from a token (those are refused first): an identity built by the app itself.
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY, emit="none")
    assert file is not None
    identity = Identity(source="jwt", user_id="a\ud800b", email="x\udfff@evil.com")
    app = with_identity(DomainAllowlist(_ok, domains=["acme.com"]), identity)
    async with http_client(app) as http:
        response = await http.get("/v1/models")
    assert response.status_code == 403
    assert file.flush()
    (record,) = _records(path)
    assert record["reason"] == "domain_not_allowed"
    assert record["user_id"] == "a\ud800b"
    shutdown_audit()
    assert verify_audit(path, AUDIT_KEY.public_key()).ok
