"""Token counts as the supported APIs spell them, read from one parsed `usage` object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

#: Counts above this are not believable token counts: a response's are ignored, a report's
#: refused, and no counter is ever asked to hold more (Redis counters stop at 2**63).
MAX_TOKENS = 2**40


class TokenUsage(NamedTuple):
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: Any) -> int | None:
    # bool is an int subclass; `true` is not a token count. Parsed JSON gives exact ints, so the
    # exact type check answers first.
    if (type(value) is int or (isinstance(value, int) and not isinstance(value, bool))) and (
        0 <= value <= MAX_TOKENS
    ):
        return value
    return None


_COUNT_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _absurd(value: Any) -> bool:
    # Present but not a count (out of range, a string, a float, a bool): the object is not one.
    return value is not None and _count(value) is None


def _counts(usage: Any) -> tuple[int | None, int | None]:
    """(input, output) from one `usage` object of any supported shape; None where absent.

    An object with any count that is not one (out of range, a string, a float, a bool) is
    ignored whole (the request keeps its reservation): taking its other counts alone would
    charge less than was used.
    """
    # Parsed JSON objects are dicts: the exact type check spares the ABC check.
    if type(usage) is not dict and not isinstance(usage, Mapping):
        return None, None
    if any(_absurd(usage.get(name)) for name in _COUNT_FIELDS):
        return None, None
    # OpenAI chat completions: prompt/completion; responses API and Anthropic: input/output.
    input_tokens = _count(usage.get("prompt_tokens"))
    if input_tokens is None:
        input_tokens = _count(usage.get("input_tokens"))
        if input_tokens is not None:
            # Anthropic counts prompt-cache reads and writes apart from input_tokens; they are
            # still tokens the provider processed and bills.
            for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
                input_tokens += _count(usage.get(extra)) or 0
            input_tokens = min(input_tokens, MAX_TOKENS)
    output_tokens = _count(usage.get("completion_tokens"))
    if output_tokens is None:
        output_tokens = _count(usage.get("output_tokens"))
    return input_tokens, output_tokens


def _usage_object(document: Any) -> Any:
    """The `usage` object of a response body or of one streamed event, wherever the shape puts it."""
    if not isinstance(document, Mapping):
        return None
    usage = document.get("usage")
    if isinstance(usage, Mapping):
        return usage
    # Responses API events (`response.completed`) and Anthropic `message_start` nest it.
    for container in ("response", "message"):
        inner = document.get(container)
        if isinstance(inner, Mapping) and isinstance(inner.get("usage"), Mapping):
            return inner["usage"]
    return None


def usage_from_json(document: Any) -> TokenUsage | None:
    """Token usage of a parsed response body (any supported shape), or None when it has none."""
    input_tokens, output_tokens = _counts(_usage_object(document))
    if input_tokens is None and output_tokens is None:
        return None
    return TokenUsage(input_tokens or 0, output_tokens or 0)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
