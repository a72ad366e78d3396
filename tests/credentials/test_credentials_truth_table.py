"""Every combination of credentials, and what IdentityMiddleware makes of it.

{no / valid / invalid JWT} x {no / valid / invalid API key} x {no / one / two X-User-Email}
x {header identity off / on}. "On" means both ways header identity can be granted: the API key has
`header_identity=True`, and the peer is in `trusted_header_networks` (which covers the no-key rows).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from jwt.algorithms import get_default_algorithms

from _asgi import Recorder, make_scope, request
from asgi_identity import APIKey, Identity, hash_api_key
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import IdentityMiddleware
from asgi_identity.testing import LocalIssuer

KEY = "sk-ai-backend-key-0123456789"
PEER = ("10.1.2.3", 50000)


@dataclass
class Outcome:
    status: int
    code: str | None
    identity: Identity | None


async def call(app: Any, recorder: Recorder, headers: list[tuple[str, str]]) -> Outcome:
    reply = await request(
        app,
        scope=make_scope(
            path="/v1/chat/completions",
            headers=[(name.lower(), value) for name, value in headers],
            client=PEER,
        ),
    )
    code = None
    if reply.status != 200:
        code = reply.code
    identity = recorder.scope["identity"] if recorder.scope is not None else None
    return Outcome(reply.status, code, identity)


def expected(
    jwt: str, api_key: str, emails: int, header_identity: bool
) -> tuple[int, str | None, dict[str, Any] | None]:
    """The rule, spelled out: key first, then ambiguity, then the token, then who is named."""
    if api_key == "invalid":
        return 401, "invalid_api_key", None
    if header_identity and emails == 2:
        return 400, "ambiguous_credentials", None
    if jwt == "invalid":
        return 401, "invalid_token", None
    client = "backend" if api_key == "valid" else None
    if jwt == "valid":
        # The token names the person (and wins over the header); the key names the client.
        return 200, None, {"source": "jwt", "user_id": "alice", "client_id": client or "web-app"}
    if header_identity and emails == 1:
        return 200, None, {"source": "header", "user_id": "carol@acme.com", "client_id": client}
    if api_key == "valid":
        return 200, None, {"source": "api_key", "user_id": None, "client_id": "backend"}
    return 401, "missing_credentials", None


@pytest.mark.parametrize("header_identity", [False, True], ids=["header-off", "header-on"])
@pytest.mark.parametrize("emails", [0, 1, 2], ids=["no-email", "one-email", "two-emails"])
@pytest.mark.parametrize("api_key", ["none", "valid", "invalid"], ids=lambda v: f"{v}-key")
@pytest.mark.parametrize("jwt", ["none", "valid", "invalid"], ids=lambda v: f"{v}-jwt")
async def test_credentials_truth_table(
    issuer: LocalIssuer, jwt: str, api_key: str, emails: int, header_identity: bool
) -> None:
    recorder = Recorder()
    app = IdentityMiddleware(
        recorder,
        issuers=[
            JWTIssuer(
                issuer=issuer.issuer,
                audience="gateway",
                public_key=issuer.signing_key.public_pem,
            )
        ],
        api_keys=[
            APIKey(
                id="backend",
                sha256=hash_api_key(KEY),
                tenant="acme",
                header_identity=header_identity,
            )
        ],
        trusted_header_networks=["10.0.0.0/8"] if header_identity else [],
    )
    headers: list[tuple[str, str]] = []
    if jwt == "valid":
        headers.append(("authorization", f"Bearer {issuer.mint(sub='alice', azp='web-app')}"))
    elif jwt == "invalid":
        forger = LocalIssuer(issuer=issuer.issuer, audience="gateway", algorithm="ES256")
        headers.append(("authorization", f"Bearer {forger.mint(sub='mallory')}"))
    if api_key == "valid":
        headers.append(("x-api-key", KEY))
    elif api_key == "invalid":
        headers.append(("x-api-key", "sk-ai-not-a-key-we-issued"))
    headers += [("x-user-email", "carol@acme.com"), ("x-user-email", "dave@acme.com")][:emails]

    outcome = await call(app, recorder, headers)

    status, code, fields = expected(jwt, api_key, emails, header_identity)
    assert (outcome.status, outcome.code) == (status, code)
    if fields is None:
        assert outcome.identity is None, "a refused request must never reach the app"
        return
    identity = outcome.identity
    assert identity is not None
    assert {name: getattr(identity, name) for name in fields} == fields
    if api_key == "valid":
        assert identity.api_key is not None
        assert identity.api_key.id == "backend"
        assert identity.tenant == "acme"
    else:
        assert identity.api_key is None
    if identity.source == "header":
        assert (identity.email, identity.domain) == ("carol@acme.com", "acme.com")


@pytest.mark.parametrize("claim", ["sub", "roles", "azp"])
async def test_a_token_whose_claims_are_not_text_is_401_not_500(
    issuer: LocalIssuer, claim: str
) -> None:
    # A lone surrogate (`"\\ud800"`) in a claim that becomes a forwarded header used to raise
    # UnicodeEncodeError inside the middleware: the client must get the usual 401 instead.
    recorder = Recorder()
    app = IdentityMiddleware(
        recorder,
        issuers=[JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
    )
    key = issuer.signing_key
    claims = {name: value for name, value in issuer.claims(sub="alice").items() if name != claim}
    value = '["\\ud800"]' if claim == "roles" else '"\\ud800"'
    payload = (json.dumps(claims)[:-1] + f', "{claim}": {value}}}').encode()
    segments = [
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (json.dumps({"alg": key.algorithm, "kid": key.kid}).encode(), payload)
    ]
    signing_input = ".".join(segments)
    algorithm = get_default_algorithms()[key.algorithm]
    signature = algorithm.sign(signing_input.encode(), key.private_key)
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    outcome = await call(app, recorder, [("authorization", f"Bearer {token}")])

    assert (outcome.status, outcome.code) == (401, "invalid_token")
    assert outcome.identity is None
