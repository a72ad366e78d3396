"""The one way the tests drive an ASGI app: a request or a WebSocket connect as a server delivers
it, a lifespan, an app that records what reached it, and an httpx client over ASGI.

Every call has a deadline: an app that hangs fails its test instead of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from asgi_identity.identity import Identity
from asgi_identity.types import AnyASGIApp, Message, Receive, Scope, Send

#: Seconds any one call may take.
DEADLINE = 10.0

RawHeaders = Sequence[tuple[bytes | str, bytes | str]]
Kind = Literal["http", "websocket"]


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def make_scope(
    kind: Kind = "http",
    *,
    method: str = "GET",
    path: str = "/",
    raw_path: bytes | None = None,
    query: bytes = b"",
    root_path: str = "",
    headers: RawHeaders = (),
    client: tuple[str, int] | None = ("127.0.0.1", 1),
    server: tuple[str, int] | None = ("testserver", 80),
    extensions: dict[str, Any] | None = None,
    **extra: Any,
) -> Scope:
    """A scope as a server builds it; header names are kept as given (any case, any spelling),
    str values are sent as UTF-8. `extra` adds or replaces keys (`state`, `identity`, `asgi`)."""
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode("utf-8") if raw_path is None else raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": [(_bytes(name), _bytes(value)) for name, value in headers],
        "client": client,
        "server": server,
    }
    if kind == "http":
        scope["method"] = method
    if extensions is not None:
        scope["extensions"] = extensions
    scope.update(extra)
    return scope


@dataclass
class Reply:
    """What the app sent: the response (or WebSocket denial response) and every message."""

    #: The response status; 101 for an accepted WebSocket, 0 when the app started no response.
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[Message] = field(default_factory=list)
    #: How many times the app called `receive`.
    reads: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        code: str = self.json["error"]["code"]
        return code

    @property
    def message(self) -> str:
        message: str = self.json["error"]["message"]
        return message

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


async def request(
    app: AnyASGIApp,
    *,
    scope: Scope | None = None,
    kind: Kind = "http",
    method: str = "GET",
    path: str = "/",
    query: bytes = b"",
    headers: RawHeaders = (),
    client: tuple[str, int] | None = ("127.0.0.1", 1),
    body: bytes = b"",
    chunks: Sequence[bytes] | None = None,
    messages: Sequence[Message] | None = None,
    disconnect: bool = False,
    then: Literal["disconnect", "wait"] = "disconnect",
    on_send: Callable[[Message], Awaitable[None]] | None = None,
    deadline: float | None = DEADLINE,
) -> Reply:
    """One request (or WebSocket connect) through `app`; `scope` is sent as it is when given.

    The app receives `messages` when given, else the body in `chunks` (or `body`) and, with
    `disconnect`, the client going away (the last chunk then says more is coming); a WebSocket
    receives its connect. Once those are read, `receive` answers the disconnect at once, or with
    `then="wait"` only at the deadline, as a well-behaved server waits for the client to leave.
    `on_send` sees each message as the app sends it. `deadline=None` awaits the app in the
    caller's task, for loops of many thousand calls that time themselves.
    """
    if scope is None:
        scope = make_scope(
            kind, method=method, path=path, query=query, headers=headers, client=client
        )
    kind = scope["type"]
    pending: list[Message]
    if messages is not None:
        pending = list(messages)
    elif kind == "websocket":
        pending = [{"type": "websocket.connect"}]
    else:
        parts = [body] if chunks is None else list(chunks)
        pending = [
            {"type": "http.request", "body": part, "more_body": disconnect or i < len(parts) - 1}
            for i, part in enumerate(parts)
        ]
        if disconnect:
            pending.append({"type": "http.disconnect"})
    sent: list[Message] = []
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        if pending:
            return pending.pop(0)
        if then == "wait":
            await asyncio.sleep(DEADLINE if deadline is None else deadline)
        if kind == "websocket":
            return {"type": "websocket.disconnect", "code": 1000}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if on_send is not None:
            await on_send(message)

    if deadline is None:
        await app(scope, receive, send)
    else:
        await asyncio.wait_for(app(scope, receive, send), deadline)
    return _reply(sent, reads)


def _reply(sent: list[Message], reads: int) -> Reply:
    starts = [
        m for m in sent if m["type"] in ("http.response.start", "websocket.http.response.start")
    ]
    if not starts:
        accepted = any(m["type"] == "websocket.accept" for m in sent)
        return Reply(101 if accepted else 0, [], b"", sent, reads)
    body = b"".join(
        m.get("body", b"")
        for m in sent
        if m["type"] in ("http.response.body", "websocket.http.response.body")
    )
    return Reply(starts[0]["status"], list(starts[0].get("headers", [])), body, sent, reads)


async def lifespan(app: AnyASGIApp, *, scope: Scope | None = None) -> list[str]:
    """Start-up then shutdown, as a server runs them; the types of the app's answers."""
    if scope is None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    sent: list[str] = []

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await asyncio.wait_for(app(scope, inbox.get, send), DEADLINE)
    return sent


@contextlib.asynccontextmanager
async def running(app: AnyASGIApp) -> AsyncIterator[None]:
    """The app between start-up and shutdown, as a server runs it (its layers warm up and close
    their connections); the start-up and shutdown must complete."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), DEADLINE))["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        answer = await asyncio.wait_for(outbox.get(), DEADLINE)
        assert answer["type"] == "lifespan.shutdown.complete"
        await asyncio.wait_for(task, DEADLINE)


class Recorder:
    """The app behind the layer under test: records every scope and request message it got,
    answers 200 with the body it read, accepts a WebSocket and completes a lifespan."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.messages: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    @property
    def scope(self) -> Scope | None:
        """The last scope the app was given."""
        return self.scopes[-1] if self.scopes else None

    @property
    def calls(self) -> int:
        return len(self.scopes)

    @property
    def identity(self) -> Identity:
        assert self.scope is not None, "the app was not called"
        identity: Identity = self.scope["identity"]
        return identity

    def header(self, name: str) -> list[str]:
        """The values of header `name` the app got, in order."""
        assert self.scope is not None, "the app was not called"
        return [v.decode() for k, v in self.scope["headers"] if k.decode().lower() == name]

    def forwarded(self, prefix: bytes = b"x-user-") -> dict[str, str]:
        """The identity headers forwarded to the app."""
        assert self.scope is not None, "the app was not called"
        return {k.decode(): v.decode() for k, v in self.scope["headers"] if k.startswith(prefix)}

    def header_names(self) -> list[str]:
        assert self.scope is not None, "the app was not called"
        return [k.decode().lower() for k, _ in self.scope["headers"]]


def http_client(
    app: AnyASGIApp,
    *,
    base_url: str = "http://gateway",
    peer: tuple[str, int] | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """An httpx client that calls `app` in process; `peer` is the client address the app sees."""
    transport = (
        httpx.ASGITransport(app=app) if peer is None else httpx.ASGITransport(app=app, client=peer)
    )
    return httpx.AsyncClient(transport=transport, base_url=base_url, **options)
