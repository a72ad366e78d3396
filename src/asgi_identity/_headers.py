"""Header helpers shared by every layer: one place for reading, stripping and adding headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._asgi import Message, Scope, Send

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


def without_prefixed(headers: Iterable[tuple[bytes, bytes]], prefixes: Sequence[bytes]) -> Headers:
    """Drop every header whose normalized name starts with one of `prefixes` (normalized)."""
    return [
        (key, value)
        for key, value in headers
        if not normalized_name(key).startswith(tuple(prefixes))
    ]


def with_response_headers(send: Send, extra: Sequence[tuple[bytes, bytes]]) -> Send:
    """Wrap `send` so `http.response.start` carries `extra`; bodies pass untouched."""
    if not extra:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


def ascii_header_value(value: str) -> bytes:
    """Encode a value for a header, refusing what could split or smuggle a header."""
    data = value.encode("utf-8")
    if any(byte < 0x20 or byte == 0x7F for byte in data):
        raise ValueError("header value contains control characters")
    return data
