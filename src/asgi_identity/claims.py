"""Kept so the 0.1 import path works: the code lives in `asgi_identity.credentials.claims`."""

from asgi_identity.credentials.claims import PRESETS, ClaimMap

__all__ = [
    "PRESETS",
    "ClaimMap",
]
