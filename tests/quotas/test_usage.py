"""Token usage read from response bodies and event streams, in every supported API shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_identity.quotas.usage import (
    JSONUsageReader,
    SSEUsageReader,
    TokenUsage,
    reader_for,
    usage_from_json,
    usage_from_sse,
)


def sse(*events: Any, event_names: bool = False) -> bytes:
    out = b""
    for event in events:
        if event_names and isinstance(event, dict) and "type" in event:
            out += f"event: {event['type']}\n".encode()
        out += b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode())
        out += b"\n\n"
    return out


OPENAI_CHAT = {
    "object": "chat.completion",
    "choices": [{"message": {"content": "the usage is fine"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
}
OPENAI_RESPONSES = {
    "object": "response",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
    "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
}
ANTHROPIC = {
    "type": "message",
    "content": [{"type": "text", "text": "hi"}],
    "usage": {
        "input_tokens": 3,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 50,
        "output_tokens": 9,
    },
}

OPENAI_CHAT_STREAM = sse(
    {"choices": [{"delta": {"content": "Hel"}}], "usage": None},
    {"choices": [{"delta": {"content": "lo"}}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}},
    b"[DONE]",
)
OPENAI_RESPONSES_STREAM = sse(
    {"type": "response.created", "response": {"id": "r", "usage": None}},
    {"type": "response.output_text.delta", "delta": "Hi"},
    {
        "type": "response.completed",
        "response": {"id": "r", "usage": {"input_tokens": 8, "output_tokens": 3}},
    },
    event_names=True,
)
ANTHROPIC_STREAM = sse(
    {
        "type": "message_start",
        "message": {"id": "m", "usage": {"input_tokens": 25, "output_tokens": 1}},
    },
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
    event_names=True,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (OPENAI_CHAT, TokenUsage(11, 22)),
        (OPENAI_RESPONSES, TokenUsage(5, 7)),
        (ANTHROPIC, TokenUsage(153, 9)),  # prompt-cache tokens count as input
        ({"usage": {"prompt_tokens": 4}}, TokenUsage(4, 0)),
        ({"usage": {"prompt_tokens": True, "completion_tokens": -3}}, None),
        ({"usage": {"prompt_tokens": "12"}}, None),
        ({"usage": None}, None),
        ({"choices": []}, None),
        ([1, 2], None),
        (None, None),
    ],
)
def test_usage_from_each_json_shape(body: Any, expected: TokenUsage | None) -> None:
    assert usage_from_json(body) == expected
    reader = JSONUsageReader()
    reader.feed(json.dumps(body).encode())
    assert reader.result() == expected


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (OPENAI_CHAT_STREAM, TokenUsage(4, 2)),
        (OPENAI_RESPONSES_STREAM, TokenUsage(8, 3)),
        (ANTHROPIC_STREAM, TokenUsage(25, 15)),
        (sse({"choices": [{"delta": {"content": "no usage asked for"}}]}, b"[DONE]"), None),
        (OPENAI_CHAT_STREAM.replace(b"\n", b"\r\n"), TokenUsage(4, 2)),
        # A stream cut off right after the usage event, with no blank line to end it.
        (b'data: {"usage": {"input_tokens": 1, "output_tokens": 2}}', TokenUsage(1, 2)),
        # A data field split over two lines is one event.
        (
            b'data: {"usage":\ndata: {"prompt_tokens": 1, "completion_tokens": 1}}\n\n',
            TokenUsage(1, 1),
        ),
        (b": keep-alive comment\n\n" + OPENAI_CHAT_STREAM, TokenUsage(4, 2)),
    ],
)
def test_usage_from_each_stream_shape(stream: bytes, expected: TokenUsage | None) -> None:
    assert usage_from_sse(stream) == expected


@given(st.data())
def test_stream_usage_does_not_depend_on_how_it_is_chunked(data: st.DataObject) -> None:
    stream = data.draw(
        st.sampled_from([OPENAI_CHAT_STREAM, OPENAI_RESPONSES_STREAM, ANTHROPIC_STREAM])
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = SSEUsageReader()
    start = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[start:cut])
        start = cut
    assert reader.result() == usage_from_sse(stream)


@given(st.data())
def test_json_usage_does_not_depend_on_how_it_is_chunked(data: st.DataObject) -> None:
    body = json.dumps(data.draw(st.sampled_from([OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC])))
    raw = body.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    reader = JSONUsageReader()
    start = 0
    for cut in [*cuts, len(raw)]:
        reader.feed(raw[start:cut])
        start = cut
    assert reader.result() == usage_from_json(json.loads(body))


def test_a_json_body_larger_than_the_tail_still_yields_its_usage() -> None:
    body = dict(OPENAI_CHAT, choices=[{"message": {"content": "x" * 500_000}}])
    raw = json.dumps(body).encode()
    reader = JSONUsageReader(tail=4096)
    for start in range(0, len(raw), 1000):
        reader.feed(raw[start : start + 1000])
    assert reader.result() == TokenUsage(11, 22)


@pytest.mark.parametrize("padding", [0, 1, 255, 256, 257, 511, 512, 513, 5000])
def test_a_body_fed_in_small_chunks_keeps_a_bounded_tail_and_its_usage(padding: int) -> None:
    body = dict(OPENAI_CHAT, choices=[{"message": {"content": "x" * padding}}])
    raw = json.dumps(body).encode()
    reader = JSONUsageReader(tail=256)
    for start in range(0, len(raw), 7):
        reader.feed(raw[start : start + 7])
        assert len(reader._data) <= 2 * 256 + 7
    assert reader.result() == TokenUsage(11, 22)


def test_a_usage_key_inside_the_content_does_not_fool_the_tail_search() -> None:
    body = {
        "choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 999}' + "y" * 10_000}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    reader = JSONUsageReader(tail=2048)
    reader.feed(json.dumps(body).encode())
    assert reader.result() == TokenUsage(1, 2)


def test_an_endless_line_is_dropped_and_memory_stays_bounded() -> None:
    reader = SSEUsageReader(max_event=1024)
    reader.feed(b"data: ")
    for _ in range(1000):
        reader.feed(b"z" * 1000)
        assert len(reader._line) <= 1024
        assert len(reader._data) <= 1024
    reader.feed(b"\n\n" + OPENAI_CHAT_STREAM)
    assert reader.result() == TokenUsage(4, 2)


@pytest.mark.parametrize(
    ("content_type", "reader"),
    [
        (b"application/json", JSONUsageReader),
        (b"application/json; charset=utf-8", JSONUsageReader),
        (b"application/problem+json", JSONUsageReader),
        ("text/event-stream", SSEUsageReader),
        (b"Text/Event-Stream; charset=utf-8", SSEUsageReader),
        (b"text/plain", type(None)),
        (None, type(None)),
    ],
)
def test_reader_is_chosen_by_content_type(content_type: bytes | str | None, reader: type) -> None:
    assert type(reader_for(content_type)) is reader


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_no_stream_crashes_the_sse_reader(chunks: list[bytes]) -> None:
    reader = SSEUsageReader(max_event=256)
    for chunk in chunks:
        reader.feed(chunk)
    result = reader.result()
    assert result is None or (result.input_tokens >= 0 and result.output_tokens >= 0)


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_no_body_crashes_the_json_reader(chunks: list[bytes]) -> None:
    reader = JSONUsageReader(tail=256)
    for chunk in chunks:
        reader.feed(chunk)
    result = reader.result()
    assert result is None or (result.input_tokens >= 0 and result.output_tokens >= 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "usage",
                    "response",
                    "message",
                    "prompt_tokens",
                    "completion_tokens",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(json_values)
def test_no_json_value_crashes_usage_parsing(value: Any) -> None:
    result = usage_from_json(value)
    assert result is None or (result.input_tokens >= 0 and result.output_tokens >= 0)
    text = json.dumps(value).encode()
    assert usage_from_sse(b"data: " + text + b"\n\n") == usage_from_sse(b"data: " + text)


def _read_json(raw: bytes) -> TokenUsage | None:
    reader = JSONUsageReader()
    reader.feed(raw)
    return reader.result()


REAL_USAGE = {"prompt_tokens": 1, "completion_tokens": 2}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # OpenAI puts members after usage: the reader must not give up on the top-level one.
        (
            json.dumps(
                {**OPENAI_CHAT, "service_tier": "default", "system_fingerprint": "fp_1"}
            ).encode(),
            TokenUsage(11, 22),
        ),
        # The content talks about usage; the last "usage" in the text is escaped inside a string.
        (
            json.dumps(
                {
                    "usage": REAL_USAGE,
                    "choices": [
                        {
                            "message": {
                                "content": '"usage": {"prompt_tokens": 999, "output_tokens": 9}'
                            }
                        }
                    ],
                }
            ).encode(),
            TokenUsage(1, 2),
        ),
        # A nested "usage" after the top-level one is not the response's usage.
        (
            json.dumps(
                {"usage": REAL_USAGE, "choices": [{"message": {"usage": {"prompt_tokens": 999}}}]}
            ).encode(),
            TokenUsage(1, 2),
        ),
        # A string that ends with `"usage` is not a key named usage (`\"usage": ...`).
        (
            b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}, '
            b'"say \\"usage": {"prompt_tokens": 999, "completion_tokens": 999}}',
            TokenUsage(1, 2),
        ),
        # A later top-level key spelled with escapes is the one a JSON parser keeps.
        (
            b'{"usage": {"prompt_tokens": 999, "completion_tokens": 999}, '
            b'"\\u0075sage": {"prompt_tokens": 1, "completion_tokens": 2}}',
            TokenUsage(1, 2),
        ),
        # Whitespace anywhere JSON allows it.
        (
            b'{ "usage" :\n {"prompt_tokens": 1, "completion_tokens": 2} \n,\t"id" : "x" }\n',
            TokenUsage(1, 2),
        ),
        # Only a nested usage (Anthropic's message_start shape as a whole body).
        (json.dumps({"message": {"usage": {"input_tokens": 3}}}).encode(), TokenUsage(3, 0)),
        # A top-level usage without counts: the body's usage is absent, not zero.
        (json.dumps({"usage": {"note": "none"}, "id": "x"}).encode(), None),
        # Not a whole JSON document (cut off, trailing comma): the last usage still counts.
        (
            b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}',
            TokenUsage(1, 2),
        ),
        (
            b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2},}',
            TokenUsage(1, 2),
        ),
    ],
)
def test_json_usage_is_the_top_level_one(raw: bytes, expected: TokenUsage | None) -> None:
    assert _read_json(raw) == expected


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["usage", "id", "message", "x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(st.sampled_from(["usage", "id", "message", "response", "x"]), _json_values),
    st.booleans(),
)
def test_json_usage_matches_a_full_parse(document: dict[str, Any], compact: bool) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    raw = json.dumps(document, separators=separators).encode()
    expected = usage_from_json(document)
    if expected is not None:
        assert _read_json(raw) == expected
    elif "usage" not in raw.decode():
        assert _read_json(raw) is None
