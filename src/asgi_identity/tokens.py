"""Kept so the 0.1 import path works: the code lives in `asgi_identity.credentials.tokens`."""

from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier, looks_like_jwt

__all__ = [
    "JWTIssuer",
    "TokenVerifier",
    "looks_like_jwt",
]
