"""The red team's wire: the whole stack (`identity_stack`) in front of a recording app, raw ASGI
calls with any chunking, and raw sockets against real uvicorn (httpx would normalize the target).

Every exchange has a deadline: an attack that hangs the stack fails the test instead of the run.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from _asgi import Kind, Reply, make_scope
from _asgi import request as deliver
from _servers import serve
from asgi_identity import APIKey, Identity, Rule, hash_api_key, identity_stack
from asgi_identity._http.target import PathPolicy
from asgi_identity._http.view import SCOPE_KEY
from asgi_identity.types import ASGIApp, Receive, Scope, Send

#: The caller's API key (a client, no person behind it; EnforceIdentity is told not to insist).
KEY = "sk-redteam-key-00000000000000000000001"
#: Every exchange must end within this many seconds: no attack may hang the stack.
DEADLINE = 10.0
#: The parsers uvicorn offers; httptools is what production runs (`uvicorn[standard]`).
PARSERS = ["h11", "httptools"]

RULES = [
    Rule(id="no-admin", effect="deny", paths=["/admin", "/admin/*"]),
    Rule(id="no-secret-get", effect="deny", methods=["GET"], paths=["/secret"]),
    Rule(id="no-4o", effect="deny", models=["gpt-4o*"]),
]


def key_record() -> APIKey:
    return APIKey(id="redteam", sha256=hash_api_key(KEY))


@dataclass
class Seen:
    """One request as the app behind the stack received it."""

    kind: str
    method: str
    path: str
    raw_path: bytes
    query: bytes
    #: The path the layers judged (the request view's), to compare with what the app routes.
    judged: str | None
    headers: list[tuple[bytes, bytes]]
    identity: Identity | None
    body: bytes = b""
    disconnected: bool = False

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


@dataclass
class Recorder:
    """The app behind the stack: records every request and answers with what it received."""

    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        view = scope.get(SCOPE_KEY)
        seen = Seen(
            kind=scope["type"],
            method=scope.get("method", "WEBSOCKET"),
            path=scope["path"],
            raw_path=scope.get("raw_path") or b"",
            query=scope.get("query_string", b""),
            judged=None if view is None else view.path,
            headers=list(scope["headers"]),
            identity=scope.get("identity"),
        )
        self.seen.append(seen)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.disconnected = True
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        seen.body = b"".join(chunks)
        answer = json.dumps(
            {
                "path": seen.path,
                "sha256": hashlib.sha256(seen.body).hexdigest(),
                "length": len(seen.body),
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def gateway(
    app: ASGIApp,
    *,
    rules: Sequence[Rule] = RULES,
    path_policy: PathPolicy | None = None,
    exclude_paths: Iterable[str] = ("/health", "/public/"),
    default: str = "allow",
    **identity: Any,
) -> ASGIApp:
    """The whole stack as a user builds it: identity, enforce, policy, rate limit, conversation."""
    identity.setdefault("api_keys", [key_record()])
    return identity_stack(
        app,
        identity=identity,
        enforce={"required": False},
        policy={"rules": list(rules), "default": default},
        rate_limit={"limits": "100000/minute", "tokens": "1000000000/day"},
        exclude_paths=list(exclude_paths),
        path_policy=path_policy,
    )


# -- raw ASGI ------------------------------------------------------------------------------------


async def asgi(
    app: ASGIApp,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    raw_path: bytes | None = None,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] = (b"",),
    disconnect: bool = False,
    kind: Kind = "http",
    root_path: str = "",
    authenticated: bool = True,
) -> Reply:
    """One request through `app` as an ASGI server would deliver it, body in `chunks`.

    `disconnect`: the client goes away after the chunks (the last one says more is coming).
    """
    sent_headers = list(headers)
    if authenticated:
        sent_headers.append((b"x-api-key", KEY.encode()))
    scope = make_scope(
        kind,
        method=method,
        path=path,
        raw_path=raw_path,
        query=query,
        root_path=root_path,
        headers=[(b"host", b"gateway"), *sent_headers],
        client=("203.0.113.7", 40000),
        server=("gateway", 80),
        extensions={"websocket.http.response": {}},
    )
    # A well-behaved server waits for the disconnect.
    return await deliver(app, scope=scope, chunks=chunks, disconnect=disconnect, then="wait")


# -- raw sockets against uvicorn -----------------------------------------------------------------


@dataclass
class Wire:
    """A response as it came over the socket."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def from_stack(self) -> bool:
        """The JSON error body of the package (uvicorn's own 400 is plain text)."""
        return self.header(b"content-type") == b"application/json"

    @property
    def code(self) -> str | None:
        if not self.from_stack or self.status < 400:
            return None
        code: str = json.loads(self.body)["error"]["code"]
        return code


def request(
    method: bytes | str,
    target: bytes | str,
    headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
    authenticated: bool = True,
    content_length: bool = True,
) -> bytes:
    """The bytes of one request, exactly as given (plus Host, Connection: close, the key)."""

    def b(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [b(method) + b" " + b(target) + b" " + version, b"Host: gateway", b"Connection: close"]
    if authenticated:
        lines.append(b"X-API-Key: " + KEY.encode())
    lines.extend(b(name) + b": " + b(value) for name, value in headers)
    if body and content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


@contextmanager
def connection(base: str) -> Iterator[socket.socket]:
    sock = socket.create_connection(_address(base), timeout=DEADLINE)
    try:
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket, *, head: bool = False) -> Wire:
    """Read one response; an AssertionError when the server neither answers nor closes in time."""
    deadline = time.monotonic() + DEADLINE
    data = b""

    def more() -> bool:
        nonlocal data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no complete response in {DEADLINE}s: {data[:300]!r}") from None
        except ConnectionResetError:
            return False
        data += chunk
        return bool(chunk)

    while b"\r\n\r\n" not in data:
        if not more():
            raise AssertionError(f"connection closed before a response: {data!r}")
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.split(b"\r\n")
    _, status, reason = ([*status_line.split(b" ", 2), b""])[:3]
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in header_lines)
    ]
    found = dict(headers)
    code = int(status)
    if code == 100:  # an interim response: the real one follows
        tail = Wire(code, reason, headers, b"", data)
        data = rest
        while b"\r\n\r\n" not in data:
            if not more():
                return tail
        final = _parse_buffered(data, sock, deadline, head=head)
        final.raw = tail.raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" + final.raw
        return final
    return _finish(code, reason, headers, found, rest, sock, deadline, head, data)


def _parse_buffered(data: bytes, sock: socket.socket, deadline: float, *, head: bool) -> Wire:
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.split(b"\r\n")
    _, status, reason = ([*status_line.split(b" ", 2), b""])[:3]
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in header_lines)
    ]
    return _finish(int(status), reason, headers, dict(headers), rest, sock, deadline, head, data)


def _finish(
    code: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    found: dict[bytes, bytes],
    rest: bytes,
    sock: socket.socket,
    deadline: float,
    head: bool,
    raw: bytes,
) -> Wire:
    def more() -> bytes:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"response body incomplete after {DEADLINE}s") from None
        except ConnectionResetError:
            return b""

    if code == 101 or head or code in (204, 304):
        return Wire(code, reason, headers, b"", raw)
    if b"content-length" in found:
        size = int(found[b"content-length"])
        while len(rest) < size:
            chunk = more()
            if not chunk:
                break
            rest += chunk
            raw += chunk
        return Wire(code, reason, headers, rest[:size], raw)
    if found.get(b"transfer-encoding") == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = more()
            if not chunk:
                break
            rest += chunk
            raw += chunk
        return Wire(code, reason, headers, _dechunk(rest), raw)
    while True:
        chunk = more()
        if not chunk:
            return Wire(code, reason, headers, rest, raw)
        rest += chunk
        raw += chunk


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def exchange(base: str, data: bytes, *, head: bool = False) -> Wire:
    """Send `data` on a new connection and read the response."""
    with connection(base) as sock:
        sock.sendall(data)
        return read_response(sock, head=head)


@contextmanager
def served(app: ASGIApp, http: str, **config: Any) -> Iterator[str]:
    with serve(app, http=http, **config) as base:
        yield base
