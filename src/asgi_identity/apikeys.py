"""Kept so the 0.1 import path works: the code lives in `asgi_identity.credentials.apikeys`."""

from asgi_identity.credentials.apikeys import (
    APIKey,
    APIKeyStore,
    StaticAPIKeyStore,
    generate_api_key,
    hash_api_key,
)

__all__ = [
    "APIKey",
    "APIKeyStore",
    "StaticAPIKeyStore",
    "generate_api_key",
    "hash_api_key",
]
