"""Pure-ASGI middlewares that make any ASGI app its own identity-aware AI gateway."""

from .apikeys import APIKey, APIKeyStore, StaticAPIKeyStore, generate_api_key, hash_api_key
from .errors import ErrorRenderer, IdentityError, MiddlewareOrderError
from .identity import Actor, Identity, IdentitySource, get_identity

__all__ = [
    "APIKey",
    "APIKeyStore",
    "Actor",
    "ErrorRenderer",
    "Identity",
    "IdentityError",
    "IdentitySource",
    "MiddlewareOrderError",
    "StaticAPIKeyStore",
    "generate_api_key",
    "get_identity",
    "hash_api_key",
]
__version__ = "0.1.0"
