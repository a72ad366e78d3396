"""Header helpers shared by every layer: one place for reading, stripping and adding headers."""

from __future__ import annotations

from collections.abc import Sequence

from asgi_identity.types import Message, Scope, Send

Headers = list[tuple[bytes, bytes]]

#: Longest single header value any layer will look at; longer values are refused, not truncated.
MAX_HEADER_VALUE = 8192


class DuplicateHeader(ValueError):
    """A header that must appear once appeared more than once."""

    def __init__(self, name: bytes) -> None:
        super().__init__(f"the {name.decode('latin-1')} header appears more than once")
        self.name = name


def single_header(scope: Scope, name: bytes) -> bytes | None:
    """The one value of header `name` (lower-case), None if absent; DuplicateHeader if repeated."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key.lower() == name:
            if found is not None:
                raise DuplicateHeader(name)
            found = value
    return found


def normalized_name(name: bytes) -> bytes:
    """Header names as proxies may rewrite them: lower case, `_` read as `-`."""
    return name.lower().replace(b"_", b"-")


def with_response_headers(send: Send, extra: Sequence[tuple[bytes, bytes]]) -> Send:
    """Wrap `send` so `http.response.start` carries `extra`; bodies pass untouched."""
    if not extra:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers
