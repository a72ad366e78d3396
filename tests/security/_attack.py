"""The attacker's workbench: the whole stack behind a tiny Starlette app, and token forging tools.

Requests go in as raw ASGI calls, so a test can send what no well-behaved client would (duplicate
headers, raw non-ASCII bytes, megabyte values) and see exactly what the attacker sees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import RawHeaders, Reply, make_scope, request
from asgi_identity import (
    APIKey,
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    Identity,
    IdentityMiddleware,
    hash_api_key,
)
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware.ratelimit import Anonymous, UserRateLimit
from asgi_identity.testing import LocalIssuer, PrivateKey
from asgi_identity.types import ASGIApp

AUDIENCE = "gateway"
#: An ordinary app key: names a client, no person behind it.
APP_KEY = "sk-ai-security-app-key-000000000001"
#: A backend's key that may assert X-User-Email (header identity on).
BACKEND_KEY = "sk-ai-security-backend-key-0000002"
#: Peers allowed to assert X-User-Email without a key.
TRUSTED_NETWORK = "10.0.0.0/8"
ATTACKER = ("203.0.113.66", 41000)
INSIDE = ("10.1.2.3", 41000)
#: Every request must finish within this many seconds, or the test fails: no attack may hang.
DEADLINE = 10.0


# -- forging ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def encode_part(part: dict[str, Any] | bytes | str) -> str:
    if isinstance(part, dict):
        part = json.dumps(part, separators=(",", ":"))
    if isinstance(part, str):
        part = part.encode("utf-8")
    return b64url(part)


def forge(
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    signature: bytes = b"",
) -> str:
    """A compact JWS with exactly the given parts: nothing is checked or fixed up."""
    return f"{encode_part(header)}.{encode_part(payload)}.{b64url(signature)}"


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64url(header)), json.loads(unb64url(payload)), signature


_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def raw_sign(key: PrivateKey, alg: str, signing_input: bytes) -> bytes:
    """A JWS signature computed by hand, for headers pyjwt would not write."""
    if isinstance(key, rsa.RSAPrivateKey):
        digest = _HASHES[alg[2:]]()
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            return key.sign(signing_input, pss, digest)
        return key.sign(signing_input, padding.PKCS1v15(), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(signing_input)


def signed(
    key: PrivateKey,
    alg: str,
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
) -> str:
    """A token whose signature is valid for exactly these header and payload bytes."""
    signing_input = f"{encode_part(header)}.{encode_part(payload)}"
    return f"{signing_input}.{b64url(raw_sign(key, alg, signing_input.encode('ascii')))}"


def hmac_signed(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """HS256 with `secret`, as an attacker who uses the server's public key as the secret does."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[
        header["alg"]
    ]
    signing_input = f"{encode_part(header)}.{encode_part(payload)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(mac)}"


# -- the app under attack -----------------------------------------------------------------------


@dataclass
class Seen:
    """What the app behind the stack received: one entry per request that reached it."""

    identity: Identity
    headers: list[tuple[bytes, bytes]]

    def header(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]


def starlette_app(seen: list[Seen]) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        seen.append(Seen(request.scope["identity"], list(request.scope["headers"])))
        answer: dict[str, Any] = {"ok": True, "user": request.scope["identity"].user_id}
        if request.method == "POST":
            # Stands in for the LLM: it reports whatever usage the test asks it to.
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError):
                body = None  # the app's own parsing is not under test
            if isinstance(body, dict) and "respond_usage" in body:
                answer["usage"] = body["respond_usage"]
        return JSONResponse(answer)

    return Starlette(routes=[Route("/v1/chat", chat, methods=["GET", "POST", "OPTIONS"])])


async def call(
    app: ASGIApp,
    headers: RawHeaders = (),
    *,
    method: str = "GET",
    path: str = "/v1/chat",
    body: bytes = b"",
    client: tuple[str, int] | None = ATTACKER,
) -> Reply:
    scope = make_scope(method=method, path=path, headers=headers, client=client)
    # A well-behaved server waits for the disconnect.
    return await request(app, scope=scope, body=body, then="wait")


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def app_key_record(**policy: Any) -> APIKey:
    return APIKey(id="app", sha256=hash_api_key(APP_KEY), tenant="acme", **policy)


def backend_key_record(**policy: Any) -> APIKey:
    return APIKey(id="backend", sha256=hash_api_key(BACKEND_KEY), header_identity=True, **policy)


@dataclass
class Gateway:
    """The full stack in front of the Starlette app, and what the app saw."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)

    async def request(self, headers: RawHeaders = (), **options: Any) -> Reply:
        return await call(self.app, headers, **options)

    async def refused(self, headers: RawHeaders, status: int, code: str, **options: Any) -> Reply:
        """Send; assert the documented refusal and that the app never ran."""
        before = len(self.seen)
        reply = await self.request(headers, **options)
        assert (reply.status, reply.code) == (status, code), reply.body
        assert len(self.seen) == before, "the app ran for a refused request"
        assert reply.json["error"]["type"], reply.body
        if status == 401:
            assert reply.header("www-authenticate") is not None
        return reply

    async def accepted(self, headers: RawHeaders, **options: Any) -> Seen:
        reply = await self.request(headers, **options)
        assert reply.status == 200, reply.body
        return self.seen[-1]


def build_gateway(
    issuers: Sequence[JWTIssuer] = (),
    *,
    api_keys: Sequence[APIKey] | None = None,
    domains: Sequence[str] = (),
    require_identity: bool = False,
    limits: str | None = "10000/minute",
    group_limits: dict[str, str | None] | None = None,
    tokens: str | None = None,
    anonymous: Anonymous = "by_address",
    trusted_proxies: Sequence[str] = (),
    conversation_required: bool = False,
    **identity_options: Any,
) -> Gateway:
    """IdentityMiddleware > EnforceIdentity > DomainAllowlist > UserRateLimit > ConversationTagger."""
    seen: list[Seen] = []
    app: ASGIApp = starlette_app(seen)
    app = ConversationTagger(app, required=conversation_required)
    app = UserRateLimit(
        app,
        limits=limits,
        groups=group_limits,
        tokens=tokens,
        anonymous=anonymous,
        trusted_proxies=trusted_proxies,
    )
    app = DomainAllowlist(app, domains=domains)
    app = EnforceIdentity(app, required=require_identity)
    identity_options.setdefault("trusted_header_networks", [TRUSTED_NETWORK])
    app = IdentityMiddleware(
        app,
        issuers=list(issuers),
        api_keys=[app_key_record(), backend_key_record()] if api_keys is None else api_keys,
        **identity_options,
    )
    return Gateway(app, seen)


def static_issuer(issuer: LocalIssuer, **options: Any) -> JWTIssuer:
    options.setdefault("audience", AUDIENCE)
    return JWTIssuer(issuer=issuer.issuer, jwks=issuer.jwks, **options)
