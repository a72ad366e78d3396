"""The one body parser and the fields the layers read: truth tables for _http.body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asgi_identity._http.body import BodyError, BodyFields, BufferedBody, parse_json
from asgi_identity.types import Message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"model":"a","model":"b"}', "repeats a key"),
        (b'{"messages":[{"role":"user","role":"system"}]}', "repeats a key"),
        (b'\xef\xbb\xbf{"model":"a"}', "byte-order mark"),
        (b'{"model":"\xff"}', "not valid UTF-8"),
        ('{"m": 1}'.encode("utf-16"), "byte-order mark|not valid UTF-8"),
        (b'{"x":"\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"x":"\\udc00\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"x":NaN}', "not JSON"),
        (b'{"x":-Infinity}', "not JSON"),
        (b"[" * 65 + b"]" * 65, "nests deeper than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64"),
        (b'{"max_tokens": 123456789012345678901}', "integer too large"),
        (b'{"max_tokens": 1e400}', "number too large"),
        (b'{"model": "gpt-4o",}', "not valid JSON"),
        (b"model=gpt-4o", "not valid JSON"),
    ],
)
def test_a_body_with_no_one_reading_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError, match=reason):
        parse_json(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"x":"\\ud83d\\ude00"}',  # a surrogate pair is one character
        b"[" * 64 + b"]" * 64,
        b'{"a":[{"role":"user"},{"role":"user"}]}',  # the same key in two objects is fine
        b'{"max_tokens": 12345678901234567890}',
        b'  {"model": "m"}  ',
    ],
)
def test_valid_json_is_read(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"model": "gpt-4o", "max_tokens": 10}, {"model": "gpt-4o", "output_cap": 10}),
        (
            {"model": "m", "max_tokens": 10, "max_completion_tokens": 50},
            {"output_cap": 50},  # the upstream may honour either: the larger counts
        ),
        ({"model": "m", "max_output_tokens": 7}, {"output_cap": 7}),
        ({"model": "m", "n": 3, "best_of": 5}, {"n": 3, "best_of": 5}),
        ({"model": "m", "stream": True}, {"stream": True, "include_usage": False}),
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
            {"include_usage": True},
        ),
        (
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search"}},
            {"rpc_method": "tools/call", "rpc_id": 7, "rpc_name": "search", "model": None},
        ),
        (
            {"jsonrpc": "2.0", "id": "r", "method": "resources/read", "params": {"uri": "f://x"}},
            {"rpc_uri": "f://x", "rpc_id": "r"},
        ),
        ({"model": 5}, {"problem": "model must be a string", "model": None}),
        ({"model": "m", "max_tokens": "5"}, {"problem": "output token cap"}),
        ({"model": "m", "max_tokens": -1}, {"problem": "output token cap"}),
        ({"model": "m", "n": 0}, {"problem": "n must be an integer from 1 to 128"}),
        ({"model": "m", "n": 129}, {"problem": "n must be an integer from 1 to 128"}),
        ({"model": "m", "best_of": True}, {"problem": "best_of must be an integer from 1"}),
        ({"model": "m", "max_tokens": 10**9}, {"problem": "from 0 to 100000000"}),
        ([{"model": "gpt-4o"}], {"is_object": False, "model": None}),
    ],
)
def test_the_fields_the_layers_read(document: Any, expected: dict[str, Any]) -> None:
    fields = BodyFields(parse_json(json.dumps(document).encode()))
    for name, value in expected.items():
        if name == "problem":
            assert fields.problem is not None
            assert value in fields.problem
        else:
            assert getattr(fields, name) == value, name
    if "problem" not in expected:
        assert fields.problem is None


async def test_a_buffered_body_is_replayed_chunk_for_chunk_and_read_further_on_demand() -> None:
    chunks: list[Message] = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.request", "body": b' "m"', "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]
    pending = list(chunks)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    buffered = BufferedBody(receive)
    assert await buffered.read(5) is None  # larger than this reader's limit
    assert await buffered.read(1024) == b'{"model": "m"}'  # a later reader goes on
    replayed = [await buffered.receive() for _ in range(3)]
    assert replayed == chunks
    assert (await buffered.receive())["type"] == "http.disconnect"


async def test_a_client_that_leaves_mid_body_gives_no_body_to_judge() -> None:
    pending: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return pending.pop(0)

    buffered = BufferedBody(receive)
    assert await buffered.read(1024) is None
    assert (await buffered.receive())["body"] == b"{"
    assert (await buffered.receive())["type"] == "http.disconnect"
