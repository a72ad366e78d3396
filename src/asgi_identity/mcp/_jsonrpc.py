"""A refusal as MCP clients read it: a JSON-RPC error (or a tool result) and the challenge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Literal

from asgi_identity._http.body import BodyFields
from asgi_identity.errors import IdentityError

RefusalStatus = Literal["http", "jsonrpc", "tool_result"]
REFUSAL_STATUSES: Final = frozenset({"http", "jsonrpc", "tool_result"})

INVALID_REQUEST: Final = -32600
#: MCP's code for a request whose Mcp-Method / Mcp-Name headers disagree with its body.
HEADER_MISMATCH: Final = -32020
#: JSON-RPC's "server error" range: the package's own code is in `error.data.code`.
SERVER_ERROR: Final = -32000

Headers = list[tuple[bytes, bytes]]


def jsonrpc_code(error: IdentityError) -> int:
    if error.jsonrpc_code is not None:
        return error.jsonrpc_code
    return INVALID_REQUEST if error.status == 400 else SERVER_ERROR


def keeps_status(error: IdentityError, method: str, notification: bool = False) -> bool:
    """Refusals whose HTTP status the client acts on keep it in every refusal_status: 401 and
    403 `insufficient_scope` start the OAuth flow, 404 ends a session; a GET or DELETE is not
    a JSON-RPC message at all, and a refused notification has no response to carry an error."""
    return (
        notification
        or method != "POST"
        or error.status in (401, 404)
        or error.code == "insufficient_scope"
    )


def retry_after(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def render(
    error: IdentityError,
    fields: BodyFields | None,
    headers: Sequence[tuple[bytes, bytes]],
    as_tool_result: bool,
) -> bytes:
    rpc_id = fields.rpc_id if fields is not None else None
    if (
        as_tool_result
        and rpc_id is not None
        and fields is not None
        and fields.rpc_method == ("tools/call")
    ):
        result = {"content": [{"type": "text", "text": error.message}], "isError": True}
        return _dump({"jsonrpc": "2.0", "id": rpc_id, "result": result})
    data: dict[str, Any] = {"code": error.code, "type": error.type, "status": error.status}
    if error.status in (429, 503):
        seconds = retry_after(headers)
        if seconds is not None:
            data["retry_after"] = seconds
    body = {"code": jsonrpc_code(error), "message": error.message, "data": data}
    return _dump({"jsonrpc": "2.0", "id": rpc_id, "error": body})


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def challenge(error: IdentityError, metadata_url: str, scopes: Sequence[str]) -> bytes | None:
    """The `WWW-Authenticate` value on the MCP endpoint, None for none at all.

    A 401 names the metadata and the scopes to ask for (no `error` when no credential was
    sent, RFC 6750 §3.1); a 403 `insufficient_scope` keeps the scopes its layer named and gains
    the metadata; any other 403 has none: signing in again cannot change a role or a domain.
    """
    parts: list[str] = []
    if error.status == 401:
        if error.code != "missing_credentials":
            parts.append('error="invalid_token"')
        parts.append(f'resource_metadata="{metadata_url}"')
        if scopes:
            parts.append(f'scope="{" ".join(scopes)}"')
    elif error.code == "insufficient_scope":
        own = [value for name, value in error.headers if name.lower() == "www-authenticate"]
        base = own[0] if own else 'Bearer error="insufficient_scope"'
        return f'{base}, resource_metadata="{metadata_url}"'.encode("latin-1")
    else:
        return None
    return ("Bearer " + ", ".join(parts)).encode("latin-1")


def response_headers(
    original: Sequence[tuple[bytes, bytes]], body: bytes, www_authenticate: bytes | None
) -> Headers:
    """The refusal's headers as the layers made them (rate-limit headers, Retry-After,
    cache-control), with the body's type and length and the MCP challenge."""
    dropped = {b"content-type", b"content-length", b"www-authenticate"}
    headers = [(n, v) for n, v in original if n.lower() not in dropped]
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    if www_authenticate is not None:
        headers.append((b"www-authenticate", www_authenticate))
    return headers
