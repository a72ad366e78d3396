"""Identity.is_person and EnforceIdentity(require_person=True) (issue 13, item 11): a token that
names only a client (client credentials) is no person."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from asgi_identity import APIKey, Identity, get_identity, hash_api_key, identity_stack
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.testing import LocalIssuer

KEY = "sk-ai-person-test"

CLIENT_TOKENS = {
    # Okta, Cognito and most providers: the client is the subject.
    "sub-is-client": {"sub": "svc-1", "client_id": "svc-1"},
    "sub-is-azp": {"sub": "svc-1", "azp": "svc-1"},
    # Auth0: `<client>@clients`, and the grant type says so.
    "auth0": {"sub": "abc@clients", "azp": "abc", "gty": "client-credentials"},
    # Entra ID with the `idtyp` optional claim.
    "entra-app": {"sub": "sp-oid", "oid": "sp-oid", "azp": "app-id", "idtyp": "app"},
    "no-subject": {"sub": None, "azp": "svc-1"},
}
PERSON_TOKENS = {
    "user": {"sub": "alice", "azp": "web", "email": "alice@acme.com"},
    "user-no-email": {"sub": "alice", "azp": "web"},
    "sub-equals-client-but-email": {"sub": "web", "azp": "web", "email": "alice@acme.com"},
}


async def _whoami(scope: Any, receive: Any, send: Any) -> None:
    identity = get_identity(scope)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(identity.is_person).encode()})


async def _status(issuer: LocalIssuer, claims: dict[str, Any], **stack: Any) -> tuple[int, str]:
    with_key = stack.pop("with_key", False)
    keys = [APIKey(id="backend", sha256=hash_api_key(KEY), enforce_identity=False)]
    app = identity_stack(
        _whoami,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            "api_keys": keys,
        },
        **stack,
    )
    headers = {"authorization": f"Bearer {issuer.mint(**claims)}"}
    if with_key:
        headers["x-api-key"] = KEY
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/", headers=headers)
    code = response.json()["error"]["code"] if response.status_code != 200 else response.text
    return response.status_code, code


@pytest.mark.parametrize("claims", CLIENT_TOKENS.values(), ids=CLIENT_TOKENS.keys())
async def test_a_client_credentials_token_is_no_person_by_default(
    issuer: LocalIssuer, claims: dict[str, Any]
) -> None:
    assert await _status(issuer, claims) == (403, "identity_required")
    assert await _status(issuer, claims, enforce={"require_person": False}) == (200, "False")
    assert await _status(issuer, claims, enforce=None) == (200, "False")
    # A key whose own policy is enforce_identity=False vouches for the client.
    assert await _status(issuer, claims, with_key=True) == (200, "False")


@pytest.mark.parametrize("claims", PERSON_TOKENS.values(), ids=PERSON_TOKENS.keys())
async def test_a_persons_token_passes(issuer: LocalIssuer, claims: dict[str, Any]) -> None:
    assert await _status(issuer, claims) == (200, "True")


async def test_the_refusal_says_a_person_is_needed(issuer: LocalIssuer) -> None:
    app = identity_stack(
        _whoami,
        identity={
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)]
        },
    )
    token = issuer.mint(sub="svc-1", client_id="svc-1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert "person" in response.json()["error"]["message"]


def test_is_person_by_source() -> None:
    assert Identity(source="jwt", user_id="alice").is_person
    assert Identity(source="header", email="a@acme.com").is_person
    assert not Identity(source="jwt", user_id="svc", client_only=True).is_person
    assert not Identity(source="api_key", client_id="k").is_person
    assert not Identity(source="anonymous").is_person


def test_require_person_must_be_a_bool() -> None:
    from asgi_identity.middleware import EnforceIdentity

    with pytest.raises(TypeError, match="require_person"):
        EnforceIdentity(_whoami, require_person="yes")  # type: ignore[arg-type]
