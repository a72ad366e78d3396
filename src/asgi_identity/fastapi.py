"""Kept so the 0.1 import path works: the code lives in `asgi_identity.integrations.fastapi`."""

from asgi_identity.integrations.fastapi import (
    CurrentIdentity,
    IdentityHTTPException,
    current_identity,
    identity_error_handler,
    install_error_handler,
    require_roles,
    require_scopes,
)

__all__ = [
    "CurrentIdentity",
    "IdentityHTTPException",
    "current_identity",
    "identity_error_handler",
    "install_error_handler",
    "require_roles",
    "require_scopes",
]
