"""LLM token usage read from a response: OpenAI chat completions, OpenAI responses, Anthropic messages.

Pure functions and two incremental readers (a JSON body and a server-sent-event stream). The readers
are fed every chunk as it passes and keep only a bounded amount of it, so they never delay or
hold back a stream; whatever a response contains, they return a usage or None and never raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

#: Counts above this are not believable token counts: a response's are ignored, a report's
#: refused, and no counter is ever asked to hold more (Redis counters stop at 2**63).
MAX_TOKENS = 2**40

#: Bytes of a JSON body kept to find `usage` in (usage is at the end of every supported shape).
DEFAULT_JSON_TAIL = 64 * 1024

#: Longest server-sent event kept; longer events are skipped (a usage event is a few hundred bytes).
DEFAULT_MAX_EVENT = 64 * 1024


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
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (0 <= value <= MAX_TOKENS)
    )


def _counts(usage: Any) -> tuple[int | None, int | None]:
    """(input, output) from one `usage` object of any supported shape; None where absent.

    An object with any count out of range is ignored whole (the request keeps its reservation):
    taking its other counts alone would charge less than was used.
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
            found = usage_from_json(_loads(data))
            if found is not None:
                return found
        return _usage_in_fragment(data)


class SSEUsageReader:
    """Reads `usage` from a server-sent-event stream fed chunk by chunk.

    Only the unfinished line and the current event's data are kept (each bounded by `max_event`).
    Counts seen in several events are merged, latest first: Anthropic sends input tokens in
    `message_start` and the output count in `message_delta`; OpenAI sends usage in the last chunk
    (chat, with `stream_options.include_usage`) or in `response.completed`. `final` says whether
    the latest usage seen is the stream's last word, not a count announced on the way (Anthropic's
    `message_start`, a chunk still carrying choices).
    """

    __slots__ = ("_data", "_input", "_line", "_max", "_output", "_skipping", "final")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._line = bytearray()
        self._data = bytearray()
        self._skipping = False  # inside an over-long line or event, dropped until it ends
        self._input: int | None = None
        self._output: int | None = None
        self.final = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._append(chunk[start:])
                return
            self._append(chunk[start:newline])
            self._end_line()
            start = newline + 1

    def _append(self, part: bytes) -> None:
        if self._skipping or not part:
            return
        if len(self._line) + len(part) > self._max:
            self._line.clear()
            self._skipping = True
            return
        self._line += part

    def _end_line(self) -> None:
        if self._skipping:
            # The over-long line ends here; its event's data is lost, which is only a problem for
            # a usage event, and those are small.
            self._skipping = False
            self._data.clear()
            self._line.clear()
            return
        line = bytes(self._line).rstrip(b"\r")
        self._line.clear()
        if not line:
            self._dispatch()
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            if len(self._data) + len(value) + 1 > self._max:
                self._data.clear()
                return
            if self._data:
                self._data += b"\n"
            self._data += value

    def _dispatch(self) -> None:
        data = bytes(self._data)
        self._data.clear()
        if b'"usage"' not in data:
            return
        document = _loads(data)
        input_tokens, output_tokens = _counts(_usage_object(document))
        if input_tokens is None and output_tokens is None:
            return
        if input_tokens is not None:
            self._input = input_tokens
        if output_tokens is not None:
            self._output = output_tokens
        # Anthropic's `message_start` announces the input and a placeholder output; an OpenAI
        # chunk that still carries choices reports a running count (continuous usage stats).
        self.final = document.get("type") != "message_start" and not document.get("choices")

    def result(self) -> TokenUsage | None:
        """Usage seen so far, including an event the stream ended without a blank line after."""
        if self._line and not self._skipping:
            self._end_line()
        if self._data:
            self._dispatch()
        if self._input is None and self._output is None:
            return None
        return TokenUsage(self._input or 0, self._output or 0)


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
