"""Bounded reads of a request body that replay it, untouched, to the app."""

from __future__ import annotations

import json
from typing import Any

from ._asgi import Message, Receive

#: Bodies larger than this are not parsed by any layer; they still reach the app whole.
DEFAULT_MAX_BODY = 1024 * 1024


async def peek_json(receive: Receive, limit: int = DEFAULT_MAX_BODY) -> tuple[Any, Receive]:
    """Read up to `limit` bytes of an HTTP request body and parse it as JSON.

    Returns (the parsed value, or None when the body is larger than `limit`, not JSON, or the
    client went away) and a `receive` that gives the app every message exactly as it came.
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
            parsed = json.loads(body) if body else None
        except (ValueError, RecursionError):
            parsed = None

    pending = messages

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return parsed, replay
