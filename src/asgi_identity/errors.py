"""The one error contract: codes, statuses, the JSON body and how a rejection is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from asgi_identity.types import Receive, Scope, Send

#: Every code the package can answer with, and its HTTP status.
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "missing_credentials": 401,
    "invalid_token": 401,
    "invalid_api_key": 401,
    "ambiguous_credentials": 400,
    "invalid_request": 400,
    "identity_required": 403,
    "domain_not_allowed": 403,
    "email_unverified": 403,
    "invalid_group": 400,
    "policy_denied": 403,
    "cross_site_request": 403,
    "insufficient_scope": 403,
    "session_not_found": 404,
    "request_too_large": 413,
    "rate_limited": 429,
    "token_quota_exceeded": 429,
    "identity_provider_unavailable": 503,
    "rate_limit_unavailable": 503,
    "invalid_conversation_id": 400,
}

# OpenAI-compatible clients show `type` next to the message.
_TYPE_BY_STATUS: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}

#: Where send_error() leaves the refusal it sends, for an outer layer that renders it differently.
REFUSAL_KEY: Final = "asgi_identity.refusal"

_REALM_CODES: Final = frozenset({"missing_credentials", "invalid_token", "invalid_api_key"})


class IdentityError(Exception):
    """A request refused by one of the layers; rendered as the error contract says.

    `message` is shown to the client as is, so it must never contain a credential.
    """

    __slots__ = ("code", "detail", "headers", "jsonrpc_code", "message", "status")

    def __init__(
        self,
        code: str,
        message: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        detail: str | None = None,
        jsonrpc_code: int | None = None,
    ) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = STATUS_BY_CODE[code]
        self.message = message
        self.headers = tuple(headers)
        # For logs, span events and audit records only; never sent to the client.
        self.detail = detail
        # The JSON-RPC error code when the refusal is answered as a JSON-RPC error (MCP), when it
        # is more precise than the one its status gives (e.g. -32020, header/body mismatch).
        self.jsonrpc_code = jsonrpc_code

    @property
    def type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "error")

    def __repr__(self) -> str:
        return f"IdentityError({self.code!r}, {self.message!r})"


class MiddlewareOrderError(RuntimeError):
    """A layer that reads the identity runs without IdentityMiddleware outside it."""

    def __init__(self, layer: str) -> None:
        super().__init__(
            f"{layer} found no identity in the scope: IdentityMiddleware must run before it. "
            "With app.add_middleware(), the middleware added last runs first, so add "
            f"{layer} before IdentityMiddleware (or build the chain with identity_stack())."
        )


#: A renderer turns an error into (body, content type); it replaces the default JSON body.
ErrorRenderer = Callable[[IdentityError], tuple[bytes, str]]


def render_json(error: IdentityError) -> tuple[bytes, str]:
    body = {"error": {"message": error.message, "type": error.type, "code": error.code}}
    return json.dumps(body, separators=(",", ":")).encode(), "application/json"


def error_headers(error: IdentityError) -> list[tuple[str, str]]:
    """The headers every refusal carries besides its body's: `cache-control: no-store`, a
    `www-authenticate` challenge on a 401 (unless the error brings its own), then the error's
    own headers. Framework integrations use it so their refusals match `send_error()`'s."""
    headers = [("cache-control", "no-store")]
    names = {name.lower() for name, _ in error.headers}
    if error.status == 401 and "www-authenticate" not in names:
        www = 'Bearer error="invalid_token"' if error.code != "missing_credentials" else "Bearer"
        headers.append(("www-authenticate", www))
    headers.extend((name.lower(), value) for name, value in error.headers)
    return headers


def _response_headers(
    error: IdentityError, body: bytes, content_type: str
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in error_headers(error)
    )
    return headers


async def send_error(
    error: IdentityError,
    scope: Scope,
    receive: Receive,
    send: Send,
    renderer: ErrorRenderer | None = None,
) -> None:
    """Send `error` as the response to `scope` (HTTP or WebSocket before accept)."""
    body, content_type = (renderer or render_json)(error)
    headers = _response_headers(error, body, content_type)
    if scope["type"] == "http":
        # An outer layer that answers refusals in another shape (MCPResourceServer: JSON-RPC on
        # the MCP endpoint) learns here which response is a refusal, and which one.
        scope[REFUSAL_KEY] = error
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # WebSocket: the handshake has not been answered yet. Consume the connect event first, as the
    # protocol expects, then answer with an HTTP response when the server supports the extension.
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {"type": "websocket.http.response.start", "status": error.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # Close reasons are capped at 123 bytes by RFC 6455.
        reason = error.code.encode()[:123].decode()
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
