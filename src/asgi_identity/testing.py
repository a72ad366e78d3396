"""Real signed tokens for tests: a local issuer that makes keys, mints tokens and serves its JWKS."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from asgi_identity.identity import Identity, set_identity
from asgi_identity.types import AnyASGIApp, ASGIApp, Receive, Scope, Send

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_CURVES: Mapping[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}


def generate_private_key(algorithm: str) -> PrivateKey:
    """A fresh private key suitable for `algorithm` (RS*, PS*, ES*, EdDSA)."""
    if algorithm.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm in _CURVES:
        return ec.generate_private_key(_CURVES[algorithm])
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {algorithm!r}")


def public_jwk(key: PrivateKey, *, kid: str, algorithm: str) -> dict[str, Any]:
    """The public JWK (with `kid`, `alg` and `use`) of a private key."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


@dataclass
class SigningKey:
    algorithm: str
    kid: str
    private_key: PrivateKey = field(repr=False)

    @property
    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.private_key, kid=self.kid, algorithm=self.algorithm)


class LocalIssuer:
    """A development identity provider: `mint()` tokens, publish `jwks`, `serve()` it on loopback.

    ```python
    issuer = LocalIssuer(issuer="https://idp.test", audience="gateway")
    token = issuer.mint(sub="alice", email="alice@acme.com")
    ```
    """

    def __init__(
        self,
        *,
        issuer: str = "https://issuer.test",
        audience: str | list[str] = "gateway",
        algorithm: str = "RS256",
        lifetime: int = 300,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self.keys: list[SigningKey] = []
        self.add_key(algorithm)

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def add_key(self, algorithm: str | None = None, *, kid: str | None = None) -> SigningKey:
        """Add a key (it becomes the signing key); earlier keys stay in the JWKS until removed."""
        alg = algorithm or self.signing_key.algorithm
        key = SigningKey(alg, kid or uuid.uuid4().hex[:16], generate_private_key(alg))
        self.keys.append(key)
        return key

    def rotate(self, algorithm: str | None = None) -> SigningKey:
        """Replace every key with a new one, as an IdP does after a key compromise."""
        key = self.add_key(algorithm)
        self.keys = [key]
        return key

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self.keys]}

    def claims(self, **claims: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        base.update(claims)
        return {name: value for name, value in base.items() if value is not None}

    def mint(
        self,
        *,
        key: SigningKey | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed token with default `iss`, `aud`, `iat`, `nbf`, `exp`, `jti`; pass None to drop one."""
        signer = key or self.signing_key
        header = {"kid": signer.kid, **(headers or {})}
        return jwt.encode(
            self.claims(**claims), signer.private_key, algorithm=signer.algorithm, headers=header
        )

    @contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[JWKSServer]:
        """Serve `/.well-known/openid-configuration` and `/jwks.json` on a loopback port."""
        server = JWKSServer(self, host)
        try:
            yield server
        finally:
            server.close()


class JWKSServer:
    """A real HTTP server (in a thread) publishing a LocalIssuer's discovery document and JWKS.

    `fetches` counts JWKS requests; `delay`, `status` and `body` let a test make it slow, failing
    or hostile; `redirect_to` answers every request with a redirect there, and `discovery`
    replaces the discovery document.
    """

    def __init__(self, issuer: LocalIssuer, host: str = "127.0.0.1") -> None:
        self.issuer = issuer
        self.fetches = 0
        self.discovery_fetches = 0
        self.delay = 0.0
        self.status = 200
        self.body: bytes | None = None
        self.redirect_to: str | None = None
        self.discovery: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler())
        self._httpd.daemon_threads = True
        # A short poll keeps shutdown (once per test) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.redirect_to is not None:
                    self._reply(302, b"", location=server.redirect_to)
                    return
                path = self.path.split("?", 1)[0]
                if path == "/.well-known/openid-configuration":
                    with server._lock:
                        server.discovery_fetches += 1
                    document = server.discovery or {
                        "issuer": server.issuer.issuer,
                        "jwks_uri": server.jwks_url,
                    }
                    self._reply(200, json.dumps(document).encode())
                    return
                if path != "/jwks.json":
                    self._reply(404, b"{}")
                    return
                with server._lock:
                    server.fetches += 1
                if server.delay:
                    time.sleep(server.delay)
                body = (
                    server.body
                    if server.body is not None
                    else json.dumps(server.issuer.jwks).encode()
                )
                self._reply(server.status, body)

            def _reply(self, status: int, body: bytes, location: str | None = None) -> None:
                try:
                    self.send_response(status)
                    if location is not None:
                        self.send_header("Location", location)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (deadline or size cap): that is what tests provoke

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def with_identity(app: AnyASGIApp, identity: Identity | None) -> ASGIApp:
    """Stand in for IdentityMiddleware in tests: every HTTP and WebSocket request arrives as
    `identity` (None publishes nothing, to test what a layer does without IdentityMiddleware)."""

    async def publish(scope: Scope, receive: Receive, send: Send) -> None:
        if identity is not None and scope["type"] in ("http", "websocket"):
            set_identity(scope, identity)
        await app(scope, receive, send)

    return publish
