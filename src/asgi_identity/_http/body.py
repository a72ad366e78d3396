"""Bounded reads of a request body that replay it, untouched, to the app."""

from __future__ import annotations

import json
from typing import Any

from asgi_identity.types import Message, Receive

#: Bodies larger than this are not parsed by any layer; they still reach the app whole.
DEFAULT_MAX_BODY = 1024 * 1024

#: What peek_json() returns for a JSON body that repeats a key in one object: parsers disagree on
#: which value wins (Python keeps the last, others the first), so a layer that judged one value
#: could be bypassed by an upstream that reads the other. Layers refuse such a body.
AMBIGUOUS: Any = type("AmbiguousJSON", (), {"__repr__": lambda self: "AMBIGUOUS"})()


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


class JSONPairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, repeated keys kept (`loads_pairs`)."""

    __slots__ = ()


# Building a list per object in C is cheaper than a Python hook that builds and checks a dict.
_pairs_decoder = json.JSONDecoder(object_pairs_hook=JSONPairs)


def loads_pairs(body: bytes) -> Any:
    """Parse `body` as JSON with every object as JSONPairs; None when it is not JSON."""
    try:
        try:
            return _pairs_decoder.decode(body.decode("utf-8"))
        except (ValueError, RecursionError):
            # json.loads() also takes UTF-16/32 and a UTF-8 BOM: the slow path decides those.
            return json.loads(body, object_pairs_hook=JSONPairs)
    except (ValueError, RecursionError):
        return None


def _replayer(messages: list[Message], receive: Receive) -> Receive:
    if len(messages) == 1:
        # The usual case, a body in one message: no list to shift.
        first: Message | None = messages[0]

        async def replay_one() -> Message:
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            return await receive()

        return replay_one

    pending = messages

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def peek_body(
    receive: Receive, limit: int = DEFAULT_MAX_BODY
) -> tuple[bytes | None, int, Receive]:
    """Read up to `limit` bytes of an HTTP request body without consuming it.

    Returns (the whole body; None when it is larger than `limit` or the client went away), the
    number of body bytes read, and a `receive` that gives the app every message exactly as it came.
    """
    messages: list[Message] = []
    size = 0
    complete = False
    while size <= limit:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            complete = True
            break

    body: bytes | None = None
    if complete and size <= limit:
        if len(messages) == 1:
            body = messages[0].get("body", b"")
        else:
            body = b"".join(m.get("body", b"") for m in messages)
    return body, size, _replayer(messages, receive)


async def peek_json(receive: Receive, limit: int = DEFAULT_MAX_BODY) -> tuple[Any, Receive]:
    """Read up to `limit` bytes of an HTTP request body and parse it as JSON.

    Returns (the parsed value; None when the body is larger than `limit`, not JSON, or the
    client went away; AMBIGUOUS when an object repeats a key) and a `receive` that gives the app
    every message exactly as it came.
    """
    body, _, replay = await peek_body(receive, limit)
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body, object_pairs_hook=_unique_keys)
        except _DuplicateKey:
            parsed = AMBIGUOUS
        except (ValueError, RecursionError):
            parsed = None
    return parsed, replay
