"""Real parts for the end-to-end tests of "one reading of the request" (DESIGN.md).

An upstream that records what reaches it, a gateway that forwards to it over HTTP exactly what it
was given, and a raw-socket client: httpx removes dot-segments and normalizes header names before
sending, so it cannot write the requests these tests are about.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from _asgi import make_scope, request
from _servers import serve
from asgi_identity.identity import Identity
from asgi_identity.types import Receive, Scope, Send

#: Every socket operation of the client is bounded by this many seconds.
SOCKET_TIMEOUT = 10.0

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones httpx writes itself from the body it sends.
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@dataclass(frozen=True)
class Received:
    """One request as the upstream server read it."""

    method: str
    raw_path: bytes
    path: str
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header_names(self) -> list[bytes]:
        return [name for name, _ in self.headers]

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


@dataclass(frozen=True)
class Handled:
    """What the gateway's handler (the app inside the stack) was given."""

    method: str
    path: str
    identity: Identity | None


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_json(send: Send, status: int, document: Any, extra: Iterable[Any] = ()) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Upstream:
    """The model provider: records every request and answers 200 (with `usage` for chat)."""

    def __init__(self) -> None:
        self.url = ""  # set once it is served
        self.received: list[Received] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        assert scope["type"] == "http"
        body = await _read_body(receive)
        self.received.append(
            Received(
                method=scope["method"],
                raw_path=scope["raw_path"],
                path=scope["path"],
                query_string=scope["query_string"],
                headers=tuple(scope["headers"]),
                body=body,
            )
        )
        document: dict[str, Any] = {"ok": True}
        if scope["path"].endswith("/chat/completions"):
            document = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": USAGE,
            }
        await _send_json(send, 200, document)


class Forwarder:
    """The app behind the stack: forwards what it is given to the upstream, target as sent."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self.handled: list[Handled] = []
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            if self._client is not None:
                await self._client.aclose()
            return
        assert scope["type"] == "http"
        identity = scope.get("identity")
        self.handled.append(Handled(scope["method"], scope["path"], identity))
        body = await _read_body(receive)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SOCKET_TIMEOUT)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        request = self._client.build_request(
            "GET", self.upstream_url, headers=headers, content=body
        )
        # As sent to us, not as httpx would spell them: httpx upper-cases the method and
        # removes dot-segments, and an upstream that reads them differently is the attack.
        request.method = scope["method"]
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        request.extensions["target"] = target
        response = await self._client.send(request)
        content_type = response.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": response.content})


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[int]:
    """Run `app` under real uvicorn on a free loopback port; yield the port."""
    with serve(app, **config) as url:
        yield int(url.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------- the client


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        """The `code` of the package's error body, None when the body is something else (the
        HTTP server's own refusal, or the upstream's answer)."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            code = document["error"].get("code")
            return code if isinstance(code, str) else None
        return None


def request_bytes(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
) -> bytes:
    """An HTTP/1.1 request spelled exactly as given, with Host, Connection: close and, for a
    body, Content-Length added."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gateway.test", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked_request(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], chunks: Sequence[bytes]
) -> list[bytes]:
    """The parts of a `Transfer-Encoding: chunked` request, one write per chunk."""
    head = request_bytes(method, target, [*headers, (b"Transfer-Encoding", b"chunked")])
    parts = [head]
    for chunk in chunks:
        parts.append(f"{len(chunk):x}".encode() + b"\r\n" + chunk + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return parts


def raw_request(port: int, data: bytes | Sequence[bytes]) -> RawResponse:
    """Write `data` (or each part of it, in separate writes) to 127.0.0.1:`port`, read the
    response until the server closes the connection. Every step is bounded by SOCKET_TIMEOUT."""
    parts = [data] if isinstance(data, bytes) else list(data)
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        for index, part in enumerate(parts):
            if index:
                # Lets the server read each chunk as its own receive() message; no assertion
                # depends on it.
                time.sleep(0.01)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before the whole body was sent: the response says why
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return _parse_response(bytes(received))


def _parse_response(data: bytes) -> RawResponse:
    head, separator, rest = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response: {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    response = RawResponse(status, headers)
    if response.header("transfer-encoding") == "chunked":
        body = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        response.body = bytes(body)
    else:
        length = response.header("content-length")
        response.body = rest if length is None else rest[: int(length)]
    return response


# --------------------------------------------------------------------------- ASGI, for the peers


async def asgi_get(
    app: Any,
    *,
    client: tuple[str, int] | None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    path: str = "/v1/models",
) -> int:
    """One GET through `app` as a server would call it, with `client` as the peer; the status."""
    scope = make_scope(
        path=path,
        headers=[(b"host", b"gateway.test"), *headers],
        client=client,
        server=("127.0.0.1", 8000),
        asgi={"version": "3.0", "spec_version": "2.3"},
        state={},
    )
    sent = (await request(app, scope=scope)).messages
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    status: int = starts[0]["status"]
    return status
