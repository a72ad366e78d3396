"""Reads `usage` from a JSON response body fed chunk by chunk (see asgi_identity.quotas.usage)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from asgi_identity.quotas._usage_counts import TokenUsage, _counts, _loads, usage_from_json

#: Bytes of a JSON body kept to find `usage` in (usage is at the end of every supported shape).
DEFAULT_JSON_TAIL = 64 * 1024


def _escaped(text: str | bytes, at: int) -> bool:
    """True when the character at `at` is escaped by an odd run of backslashes before it."""
    backslash = "\\" if isinstance(text, str) else 0x5C
    run = 0
    while at > run and text[at - run - 1] == backslash:
        run += 1
    return run % 2 == 1


def _usage_in_fragment(data: bytes) -> TokenUsage | None:
    """Find the last parseable `"usage": {...}` in a fragment of a JSON document."""
    decoder = json.JSONDecoder()
    text = data.decode("utf-8", "replace")
    end = len(text)
    for _ in range(8):  # a body can mention "usage" in its content; try the last few
        at = text.rfind('"usage"', 0, end)
        if at < 0:
            return None
        end = at
        if _escaped(text, at):
            continue  # `\"usage"` ends a string that mentions usage; it is not a key
        rest = text[at + len('"usage"') :].lstrip()
        if not rest.startswith(":"):
            continue
        try:
            value, _ = decoder.raw_decode(rest[1:].lstrip())
        except (ValueError, RecursionError):
            continue
        found = usage_from_json({"usage": value})
        if found is not None:
            return found
    return None


_BLANK_CHARS = " \t\n\r"  # JSON's whitespace
_BLANKS = frozenset(_BLANK_CHARS)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _blanks_end(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return pos if match is None else match.end()


_decoder = json.JSONDecoder()  # reading the default hooks once, not per call as json.loads does
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def _top_level_usage(data: bytes) -> TokenUsage | None:
    """The counts of a whole JSON body's top-level `usage`, reading only what follows it.

    None when unsure (the caller then parses the whole body). The last `"usage"` in the body is
    a key when an unescaped quote opens it and a colon follows: inside a string every quote is
    escaped. It is the top-level object's key (the one Python's parser keeps) when what follows
    its value is the rest of that object's members, its closing brace, and nothing else.
    """
    at = data.rfind(b'"usage"')
    if at < 0 or (at and data[at - 1] == 0x5C and _escaped(data, at)):
        return None
    try:
        text = data[at + 7 :].decode("utf-8")
        pos = 0 if text[:1] == ":" else _blanks_end(text, 0)
        if text[pos : pos + 1] != ":":
            return None
        pos += 1
        if text[pos : pos + 1] in _BLANKS:
            pos = _blanks_end(text, pos)
        # The C scanner behind raw_decode(), without its wrapper.
        value, pos = _scan(text, pos)
        if type(value) is not dict:
            return None
        rest = text[pos:].strip(_BLANK_CHARS)
        if rest != "}":
            # More members follow (OpenAI puts `system_fingerprint` after usage): with the comma
            # swapped for a brace they must parse as one non-empty object, nothing after it.
            if rest[:1] != ",":
                return None
            members = _decoder.decode("{" + rest[1:])
            # A later key spelled with escapes (`"\\u0075sage"`) would be the one kept.
            if not members or "usage" in members:
                return None
    except (StopIteration, ValueError, RecursionError):
        return None
    input_tokens, output_tokens = _counts(value)
    if input_tokens is None and output_tokens is None:
        return None
    return TokenUsage(input_tokens or 0, output_tokens or 0)


class JSONUsageReader:
    """Reads `usage` from a JSON response body fed chunk by chunk, keeping at most `tail` bytes."""

    __slots__ = ("_data", "_tail", "_truncated")

    #: A body's usage is its last word: found at all, it is final.
    final = True
    #: A JSON body counts nothing delivered on the way (see SSEUsageReader.delivered).
    delivered = 0

    def __init__(self, tail: int = DEFAULT_JSON_TAIL) -> None:
        self._tail = tail
        self._data = bytearray()
        self._truncated = False

    def feed(self, chunk: bytes) -> None:
        data = self._data
        data += chunk
        # Trimmed only once twice the tail has built up, so a long body of small chunks does not
        # copy the whole tail on every one of them.
        if len(data) > 2 * self._tail:
            del data[: -self._tail]
            self._truncated = True

    def result(self) -> TokenUsage | None:
        kept = self._data
        if len(kept) > self._tail:
            data = bytes(kept[-self._tail :])
            truncated = True
        else:
            data = bytes(kept)
            truncated = self._truncated
        if not truncated:
            # Most bodies end with their usage: read that much before parsing the whole body.
            found = _top_level_usage(data)
            if found is not None:
                return found
            document = _loads(data)
            if document is not None:
                # A whole JSON document says where its usage is: never a `usage` key nested in
                # what the client wrote (a tool's parameter schema the response echoes).
                return usage_from_json(document)
        return _usage_in_fragment(data)
