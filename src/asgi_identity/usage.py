"""Kept so the 0.1 import path works: the code lives in `asgi_identity.quotas.usage`."""

from asgi_identity.quotas.usage import (
    JSONUsageReader,
    SSEUsageReader,
    TokenUsage,
    usage_from_json,
    usage_from_sse,
)

__all__ = [
    "JSONUsageReader",
    "SSEUsageReader",
    "TokenUsage",
    "usage_from_json",
    "usage_from_sse",
]
