"""Bounded reads of a request body that replay it, untouched, to the app."""

from __future__ import annotations

import json
from typing import Any

from ._asgi import Message, Receive

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


async def peek_json(receive: Receive, limit: int = DEFAULT_MAX_BODY) -> tuple[Any, Receive]:
    """Read up to `limit` bytes of an HTTP request body and parse it as JSON.

    Returns (the parsed value; None when the body is larger than `limit`, not JSON, or the
    client went away; AMBIGUOUS when an object repeats a key) and a `receive` that gives the app
    every message exactly as it came.
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

    parsed: Any = None
    if complete and size <= limit:
        body = b"".join(m.get("body", b"") for m in messages)
        try:
            parsed = json.loads(body, object_pairs_hook=_unique_keys) if body else None
        except _DuplicateKey:
            parsed = AMBIGUOUS
        except (ValueError, RecursionError):
            parsed = None

    pending = messages

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return parsed, replay
