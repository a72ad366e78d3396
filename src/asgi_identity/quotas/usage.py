"""LLM token usage read from a response: OpenAI chat completions, OpenAI responses, Anthropic messages.

Pure functions and two incremental readers (a JSON body and a server-sent-event stream). The readers
are fed every chunk as it passes and keep only a bounded amount of it, so they never delay or
hold back a stream; whatever a response contains, they return a usage or None and never raise.
"""

from __future__ import annotations

from functools import lru_cache

from asgi_identity.quotas._usage_counts import MAX_TOKENS, TokenUsage, usage_from_json
from asgi_identity.quotas._usage_json import DEFAULT_JSON_TAIL, JSONUsageReader
from asgi_identity.quotas._usage_sse import DEFAULT_MAX_EVENT, SSEUsageReader

__all__ = [
    "DEFAULT_JSON_TAIL",
    "DEFAULT_MAX_EVENT",
    "MAX_TOKENS",
    "JSONUsageReader",
    "SSEUsageReader",
    "TokenUsage",
    "UsageReader",
    "reader_for",
    "usage_from_json",
    "usage_from_sse",
]

UsageReader = JSONUsageReader | SSEUsageReader


def reader_for(content_type: bytes | str | None) -> UsageReader | None:
    """The reader for a response of `content_type`, or None when it cannot carry usage."""
    if content_type is None:
        return None
    if isinstance(content_type, str):
        content_type = content_type.encode("latin-1", "replace")
    kind = (_known_kind if len(content_type) <= 128 else _reader_kind)(content_type)
    return None if kind is None else kind()


def _reader_kind(content_type: bytes) -> type[UsageReader] | None:
    media = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSEUsageReader
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return JSONUsageReader
    return None


# Responses repeat a handful of content types: each short one is parsed once.
_known_kind = lru_cache(maxsize=256)(_reader_kind)


def usage_from_sse(stream: bytes) -> TokenUsage | None:
    """Token usage of a whole server-sent-event stream (see SSEUsageReader)."""
    reader = SSEUsageReader()
    reader.feed(stream)
    return reader.result()
