"""MCPResourceServer: an MCP server as an OAuth 2.1 resource server (outermost layer).

It serves the RFC 9728 metadata without credentials, names it in every 401 challenge, and
answers every refusal of the inner layers on the MCP endpoint as a JSON-RPC error (MCP.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from asgi_identity._http.view import SCOPE_KEY as VIEW_KEY
from asgi_identity._http.view import RequestView
from asgi_identity.errors import REFUSAL_KEY, IdentityError
from asgi_identity.mcp import _jsonrpc
from asgi_identity.mcp._jsonrpc import REFUSAL_STATUSES, RefusalStatus
from asgi_identity.mcp._metadata import (
    CACHE_CONTROL,
    check_audiences,
    check_resource,
    check_scopes,
    endpoint_path,
    metadata_document,
    metadata_paths,
    metadata_url,
)
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend, Message, Send

LAYER: Final = "MCPResourceServer"
_CORS: Final = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
    (b"access-control-allow-headers", b"*"),
    (b"access-control-max-age", b"86400"),
]


class MCPResourceServer:
    """Protected Resource Metadata, MCP challenges and JSON-RPC refusals; see docs/mcp.md."""

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        resource: str,
        authorization_servers: Sequence[str] | None = None,
        issuers: Sequence[Any] = (),
        scopes_supported: Iterable[str] = (),
        challenge_scopes: Iterable[str] | None = None,
        refusal_status: RefusalStatus = "http",
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        resource_policy_uri: str | None = None,
        resource_tos_uri: str | None = None,
    ) -> None:
        self.app = app
        self.resource = check_resource(LAYER, resource)
        if refusal_status not in REFUSAL_STATUSES:
            raise ValueError(
                f"{LAYER}: refusal_status must be 'http', 'jsonrpc' or 'tool_result', "
                f"not {refusal_status!r}"
            )
        check_audiences(LAYER, self.resource, issuers)
        servers = (
            list(authorization_servers)
            if authorization_servers is not None
            else [issuer.issuer for issuer in issuers]
        )
        if isinstance(authorization_servers, str) or not all(
            isinstance(s, str) and s for s in servers
        ):
            raise TypeError(f"{LAYER}: authorization_servers must be a list of issuer URIs")
        if not servers:
            raise ValueError(
                f"{LAYER}: name the authorization servers (authorization_servers=[...] or "
                "issuers=[...]): MCP clients find where to sign in only through them"
            )
        self.scopes_supported = check_scopes(LAYER, "scopes_supported", scopes_supported)
        self.challenge_scopes = (
            self.scopes_supported
            if challenge_scopes is None
            else check_scopes(LAYER, "challenge_scopes", challenge_scopes)
        )
        self.refusal_status: RefusalStatus = refusal_status
        self.path = endpoint_path(self.resource)
        self.metadata_url = metadata_url(self.resource)
        self._metadata_paths = frozenset(metadata_paths(self.resource))
        self._document = metadata_document(
            self.resource,
            servers,
            self.scopes_supported,
            {
                "resource_name": resource_name,
                "resource_documentation": resource_documentation,
                "resource_policy_uri": resource_policy_uri,
                "resource_tos_uri": resource_tos_uri,
            },
        )

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self._metadata_paths:
            await self._metadata(scope["method"], send)
            return
        await self.app(scope, receive, _Translator(self, scope, send).send)

    async def _metadata(self, method: str, send: Send) -> None:
        # Without credentials, from the configuration alone: never from the Host header.
        if method == "OPTIONS":
            await _respond(send, 204, _CORS, b"")
            return
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, [(b"allow", b"GET, HEAD, OPTIONS"), *_CORS], b"")
            return
        body = self._document
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", CACHE_CONTROL.encode()),
            *_CORS,
        ]
        await _respond(send, 200, headers, b"" if method == "HEAD" else body, sized=True)

    def on_endpoint(self, scope: AnyScope) -> bool:
        view: RequestView | None = scope.get(VIEW_KEY)
        # The view's path is the canonical one every layer judged (and the app routes).
        path = view.path if view is not None and view.scope is scope else scope["path"]
        return bool(path == self.path or path.rstrip("/") == self.path)


class _Translator:
    """Wraps `send` for one request: a refusal of an inner layer on the MCP endpoint is held
    back and answered in MCP's shape; anything else passes untouched."""

    __slots__ = ("_error", "_owner", "_scope", "_send", "_start")

    def __init__(self, owner: MCPResourceServer, scope: AnyScope, send: AnySend) -> None:
        self._owner = owner
        self._scope = scope
        self._send = send
        self._error: IdentityError | None = None
        self._start: Message | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            error = self._scope.get(REFUSAL_KEY)
            if (
                isinstance(error, IdentityError)
                and message.get("status") == error.status
                and self._owner.on_endpoint(self._scope)
            ):
                self._error, self._start = error, message
                return
        elif kind == "http.response.body" and self._error is not None:
            if not message.get("more_body", False):
                await self._refuse(self._error)
            return
        await self._send(message)

    async def _refuse(self, error: IdentityError) -> None:
        owner, scope = self._owner, self._scope
        assert self._start is not None
        original = list(self._start.get("headers", ()))
        view: RequestView | None = scope.get(VIEW_KEY)
        fields = view.read_fields if view is not None else None
        mode = owner.refusal_status
        body = _jsonrpc.render(error, fields, original, as_tool_result=mode == "tool_result")
        status = error.status
        notification = fields is not None and fields.rpc_notification
        if mode != "http" and not _jsonrpc.keeps_status(error, scope["method"], notification):
            status = 200
        www = _jsonrpc.challenge(error, owner.metadata_url, owner.challenge_scopes)
        headers = _jsonrpc.response_headers(original, body, www)
        await _respond(self._send, status, headers, body, sized=True)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, sized: bool = False
) -> None:
    if not sized:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
