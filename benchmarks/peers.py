"""What a user would write instead of asgi-identity, written the way their docs show it.

Each peer loads its key once at start-up and leaves every limit unreachable, so the comparison
measures the work of a request that passes, as ours does. No `from __future__ import annotations`
here: FastAPI resolves the dependency annotations at runtime.
"""

from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._fixtures import AUDIENCE, PATH, RATE_LIMIT, RESPONSE, Keys, issuer_url, starlette_app


class _Verifier:
    """pyjwt with the key parsed once: the fair version of a hand-written check."""

    def __init__(self, keys: Keys, algorithm: str) -> None:
        self.key = load_pem_public_key(keys.public_pems[algorithm].encode())
        self.algorithm = algorithm
        self.issuer = issuer_url(algorithm)

    def verify(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self.key,  # type: ignore[arg-type]
            algorithms=[self.algorithm],
            audience=AUDIENCE,
            issuer=self.issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )


class PyJWTBackend(AuthenticationBackend):
    """A Starlette authentication backend as its docs suggest, verifying bearer tokens with pyjwt."""

    def __init__(self, verifier: _Verifier) -> None:
        self.verifier = verifier

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        authorization = conn.headers.get("authorization")
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            claims = self.verifier.verify(token)
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc
        return AuthCredentials(["authenticated"]), SimpleUser(claims["sub"])


@requires("authenticated")
async def _protected_chat(request: Request) -> Response:
    await request.body()
    return JSONResponse(RESPONSE)


def _authenticated_app(middleware: list[Middleware]) -> Starlette:
    app = Starlette(routes=[Route(PATH, _protected_chat, methods=["POST"])], middleware=middleware)
    return app


def starlette_authentication(keys: Keys, algorithm: str) -> Starlette:
    backend = PyJWTBackend(_Verifier(keys, algorithm))
    return _authenticated_app([Middleware(AuthenticationMiddleware, backend=backend)])


def _user_key(request: Request) -> str:
    user = request.scope.get("user")
    if user is not None and user.is_authenticated:
        return f"user:{user.display_name}"
    client = request.client
    return f"ip:{client.host if client else 'unknown'}"


def _limiter() -> Any:
    from slowapi import Limiter

    return Limiter(key_func=_user_key, default_limits=[RATE_LIMIT], storage_uri="memory://")


def slowapi_asgi(keys: Keys, algorithm: str) -> Starlette:
    from slowapi.middleware import SlowAPIASGIMiddleware

    app = starlette_app([Middleware(SlowAPIASGIMiddleware)])
    app.state.limiter = _limiter()
    return app


def slowapi_base_http(keys: Keys, algorithm: str) -> Starlette:
    """slowapi's documented SlowAPIMiddleware, which is a BaseHTTPMiddleware."""
    from slowapi.middleware import SlowAPIMiddleware

    app = starlette_app([Middleware(SlowAPIMiddleware)])
    app.state.limiter = _limiter()
    return app


def correlation_id(keys: Keys, algorithm: str) -> Starlette:
    from asgi_correlation_id import CorrelationIdMiddleware

    return starlette_app([Middleware(CorrelationIdMiddleware)])


def hand_written_stack(keys: Keys, algorithm: str) -> Starlette:
    """The usual stack: request ids, pyjwt authentication, slowapi per-user limits."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from slowapi.middleware import SlowAPIASGIMiddleware

    backend = PyJWTBackend(_Verifier(keys, algorithm))
    app = _authenticated_app(
        [
            Middleware(CorrelationIdMiddleware),
            Middleware(AuthenticationMiddleware, backend=backend),
            Middleware(SlowAPIASGIMiddleware),
        ]
    )
    app.state.limiter = _limiter()
    return app


def bare_fastapi(keys: Keys, algorithm: str) -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.post(PATH)
    async def chat(request: Request) -> Response:
        await request.body()
        return JSONResponse(RESPONSE)

    return app


def fastapi_depends(keys: Keys, algorithm: str) -> FastAPI:
    """A FastAPI dependency verifying the bearer token with pyjwt, as the FastAPI tutorial does."""
    verifier = _Verifier(keys, algorithm)
    bearer = HTTPBearer()

    async def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    ) -> dict[str, Any]:
        try:
            return verifier.verify(credentials.credentials)
        except jwt.InvalidTokenError as exc:
            raise HTTPException(status_code=401, detail="invalid token") from exc

    app = FastAPI(openapi_url=None)

    @app.post(PATH)
    async def chat(
        request: Request, user: Annotated[dict[str, Any], Depends(current_user)]
    ) -> Response:
        await request.body()
        return JSONResponse(RESPONSE)

    return app
