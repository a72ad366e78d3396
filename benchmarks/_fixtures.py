"""What every benchmark shares: the keys, the tokens, the request and the app behind the layers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_identity.credentials.apikeys import hash_api_key

ALGORITHMS = ("RS256", "ES256", "EdDSA")
AUDIENCE = "gateway"
PATH = "/v1/chat/completions"
#: The client app's key for the API-key variants; only its digest is configured.
API_KEY = "sk-ai-benchmark-0123456789abcdef"
API_KEY_SHA256 = hash_api_key(API_KEY)
CONVERSATION_ID = "conv-4f1c2a9e"
#: Never reached: the benchmarks measure the cost of counting, not of refusing.
RATE_LIMIT = "1000000/minute"
TOKEN_LIMIT = "1000000000/day"

REQUEST_MODEL = "gpt-bench"
REQUEST_BODY = json.dumps(
    {"model": REQUEST_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
).encode()
RESPONSE: Mapping[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": REQUEST_MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
USER_CLAIMS: Mapping[str, Any] = {
    "sub": "user-42",
    "email": "alice@acme.com",
    "email_verified": True,
    "name": "Alice",
    "groups": ["pro"],
    "scope": "chat:write models:read",
}
ALLOWED_DOMAINS = ("acme.com",)


def issuer_url(algorithm: str) -> str:
    """One issuer per algorithm, so an app trusts exactly the key of the variant it measures."""
    return f"https://issuer.bench/{algorithm.lower()}"


@dataclass(frozen=True)
class Keys:
    """The public keys the apps trust (algorithm -> PEM), passed as JSON to a uvicorn subprocess."""

    public_pems: Mapping[str, str]

    def to_json(self) -> str:
        return json.dumps(dict(self.public_pems))

    @classmethod
    def from_json(cls, text: str) -> Keys:
        return cls(json.loads(text))


class Signer:
    """The identity provider of the run: one LocalIssuer per algorithm (parent process only)."""

    def __init__(self, algorithms: Sequence[str] = ALGORITHMS) -> None:
        from asgi_identity.testing import LocalIssuer

        self.issuers = {
            alg: LocalIssuer(
                issuer=issuer_url(alg), audience=AUDIENCE, algorithm=alg, lifetime=3600
            )
            for alg in algorithms
        }
        self.keys = Keys({alg: i.signing_key.public_pem for alg, i in self.issuers.items()})
        self._repeated = {alg: i.mint(**USER_CLAIMS) for alg, i in self.issuers.items()}

    def token(self, algorithm: str) -> str:
        """The same token every time: what a client sends until its token expires."""
        return self._repeated[algorithm]

    def new_tokens(self, algorithm: str, count: int) -> list[str]:
        """`count` distinct tokens for the same user (each has its own `jti`): all cache misses."""
        issuer = self.issuers[algorithm]
        return [issuer.mint(**USER_CLAIMS) for _ in range(count)]


def request_headers(token: str | None, *, api_key: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers of a typical OpenAI-compatible client call."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"user-agent", b"OpenAI/Python 1.40.0"),
        (b"accept", b"application/json"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REQUEST_BODY)).encode()),
        (b"x-conversation-id", CONVERSATION_ID.encode()),
    ]
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    if api_key:
        headers.append((b"x-api-key", API_KEY.encode()))
    return headers


async def chat(request: Request) -> Response:
    await request.body()
    return JSONResponse(RESPONSE)


def starlette_app(middleware: Sequence[Middleware] = ()) -> Starlette:
    """The app every Starlette variant wraps: one chat-completions route that reads its body."""
    return Starlette(routes=[Route(PATH, chat, methods=["POST"])], middleware=list(middleware))
