"""MCPGuard: which MCP message is this, and may this caller use this session? (after identity)"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Final

from asgi_identity._http.body import DEFAULT_MAX_BODY, BodyError, BodyFields
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import require_identity
from asgi_identity.mcp._context import _current
from asgi_identity.mcp._jsonrpc import HEADER_MISMATCH
from asgi_identity.mcp._sessions import DEFAULT_MAX_SESSIONS, Principal, SessionBindings
from asgi_identity.mcp._sessions import principal_of as principal_of
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend, Message

LAYER: Final = "MCPGuard"
_SESSION: Final = b"mcp-session-id"
_METHOD: Final = b"mcp-method"
_NAME: Final = b"mcp-name"
# The methods whose Mcp-Name header mirrors a body parameter (MCP 2026-07-28).
_NAMED: Final = {"tools/call": "rpc_name", "prompts/get": "rpc_name", "resources/read": "rpc_uri"}
_BASE64: Final = re.compile(r"=\?base64\?(.*)\?=")

_NOT_FOUND: Final = IdentityError(
    "session_not_found",
    "Session not found.",
    detail="MCP session of another principal",
    jsonrpc_code=-32001,
)


class MCPGuard:
    """Reads the JSON-RPC message once (after authentication), refuses batches and header/body
    mismatches, binds each session to its principal, and withholds the bearer token."""

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        path: str = "/mcp",
        max_body: int = DEFAULT_MAX_BODY,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        strip_headers: Iterable[str] = ("authorization",),
        mode: Mode = "enforce",
        renderer: ErrorRenderer | None = None,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{LAYER}: path must be the MCP endpoint's path, e.g. '/mcp'")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
            raise ValueError(f"{LAYER}: max_body must be a positive number of bytes")
        if isinstance(strip_headers, str):
            raise TypeError(f"{LAYER}: strip_headers must be a list of header names")
        self.app = app
        self.path = path.rstrip("/") or "/"
        self.max_body = max_body
        self.sessions = SessionBindings(max_sessions)
        self._strip = frozenset(name.lower().encode("latin-1") for name in strip_headers)
        self.policy = LayerPolicy(LAYER, mode=mode, renderer=renderer)

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        view = await self.policy.view(scope, receive, send)
        if view is None:
            return
        if (view.path.rstrip("/") or "/") != self.path or self.policy.skips(view):
            await self.app(scope, receive, send)
            return
        identity = require_identity(scope, LAYER)
        principal = principal_of(identity)
        session_ids: list[bytes] = []
        headers: dict[bytes, bytes] = {}
        repeated = False
        kept = []
        for name, value in scope["headers"]:
            lowered = name.lower()
            if lowered == _SESSION:
                session_ids.append(value)
            elif lowered in (_METHOD, _NAME):
                # Readers disagree on which of two wins (the first, the last): refuse both.
                repeated = repeated or lowered in headers
                headers[lowered] = value
            if lowered not in self._strip:
                kept.append((name, value))
        scope["headers"] = kept

        if len(session_ids) > 1 or repeated:
            error = IdentityError(
                "invalid_request",
                "The request repeats the Mcp-Session-Id, Mcp-Method or Mcp-Name header.",
            )
            if await self.policy.refuse(error, scope, receive, send):
                return
        session_id = session_ids[0] if session_ids else None
        problem: IdentityError | None = None
        if view.method == "POST":
            # Read first, so that every refusal below answers with the message's id.
            fields, receive = await view.fields(receive, self.max_body)
            problem = self._message_error(fields, view.body_size, headers)
        if session_id is not None:
            owner = self.sessions.owner(session_id)
            # 404, as for a session that does not exist: another user's session id is never
            # confirmed to exist, nor usable; nor is one with no owner on record (never handed
            # out here, or forgotten past max_sessions): the client starts a new session.
            if owner != principal and await self.policy.refuse(_NOT_FOUND, scope, receive, send):
                return
        if problem is not None and await self.policy.refuse(problem, scope, receive, send):
            return
        if session_id is None or view.method == "DELETE":
            send = self._binding(send, session_id, principal)
        token = _current.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)

    def _message_error(
        self, fields: BodyFields | BodyError, size: int, headers: dict[bytes, bytes]
    ) -> IdentityError | None:
        if isinstance(fields, BodyError):
            if fields.too_large:
                return IdentityError("request_too_large", str(fields), detail="MCP message")
            return IdentityError("invalid_request", str(fields), jsonrpc_code=-32700)
        if not fields.is_object and size:
            return IdentityError(
                "invalid_request",
                "The request body must be one JSON-RPC message (an object); batches are not "
                "supported.",
                detail="JSON-RPC batch or non-object message",
            )
        if _METHOD in headers and _header_text(headers[_METHOD]) != fields.rpc_method:
            return _mismatch("Mcp-Method", "method")
        named = _NAMED.get(fields.rpc_method or "")
        if (
            named is not None
            and _NAME in headers
            and (_header_text(headers[_NAME]) != getattr(fields, named))
        ):
            return _mismatch("Mcp-Name", "name" if named == "rpc_name" else "uri")
        return None

    def _binding(self, send: AnySend, session_id: bytes | None, principal: Principal) -> AnySend:
        sessions = self.sessions

        async def bind(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message.get("status", 0)
                if session_id is not None:  # DELETE: the session ends with a 2xx
                    if 200 <= status < 300:
                        sessions.forget(session_id)
                elif 200 <= status < 300:
                    for name, value in message.get("headers", ()):
                        if name.lower() == _SESSION:
                            sessions.bind(value, principal)
            await send(message)

        return bind


def _header_text(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    encoded = _BASE64.fullmatch(text)
    if encoded is None:
        return text
    try:
        return base64.b64decode(encoded.group(1), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _mismatch(header: str, field: str) -> IdentityError:
    return IdentityError(
        "invalid_request",
        f"The {header} header does not match the request body's {field}.",
        detail=f"{header} header/body mismatch",
        jsonrpc_code=HEADER_MISMATCH,
    )
