"""RFC 9728 Protected Resource Metadata: the resource URI's checks, the document, its two URIs."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
#: Never advertised nor accepted: MCP clients must not ask a resource server's users for
#: refresh tokens through its metadata (the authorization server decides that).
OFFLINE_ACCESS: Final = "offline_access"
#: Metadata changes with deployments, not per request: clients may keep it an hour.
CACHE_CONTROL: Final = "public, max-age=3600"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_resource(layer: str, resource: str) -> str:
    """The canonical resource URI (RFC 8707 / MCP): absolute https (http for loopback), no
    fragment, no query. Returns it without a trailing slash, except for the root."""
    if not isinstance(resource, str) or not resource:
        raise ValueError(f"{layer}: resource must be the server's canonical URI, e.g. "
                         "'https://mcp.example.com/mcp'")  # fmt: skip
    parts = urlsplit(resource)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{layer}: resource {resource!r} must be an absolute https URI")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            f"{layer}: resource {resource!r} must use https (http only for loopback addresses)"
        )
    if parts.fragment or "#" in resource:
        raise ValueError(f"{layer}: resource {resource!r} must not have a fragment")
    if parts.query or "?" in resource:
        raise ValueError(f"{layer}: resource {resource!r} must not have a query")
    if parts.username or parts.password:
        raise ValueError(f"{layer}: resource must not carry credentials")
    return resource


def endpoint_path(resource: str) -> str:
    """The path of the MCP endpoint the resource names (`/mcp`), `/` for a bare origin."""
    path = urlsplit(resource).path.rstrip("/")
    return path or "/"


def metadata_paths(resource: str) -> tuple[str, ...]:
    """Where the document is served: the path-inserted URI first, then the root form."""
    path = endpoint_path(resource)
    return (WELL_KNOWN,) if path == "/" else (WELL_KNOWN + path, WELL_KNOWN)


def metadata_url(resource: str) -> str:
    """The URI a 401 challenge names in `resource_metadata` (RFC 9728 §3.1, path-inserted)."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{metadata_paths(resource)[0]}"


def check_scopes(layer: str, name: str, scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise TypeError(f"{layer}: {name} must be a list of scopes, not a string")
    values = tuple(scopes)
    for scope in values:
        if not isinstance(scope, str) or not scope or any(c in scope for c in ' "\\'):
            raise ValueError(f"{layer}: {name} holds an invalid scope {scope!r}")
    if OFFLINE_ACCESS in values:
        raise ValueError(
            f"{layer}: {name} must not hold {OFFLINE_ACCESS!r}: it is for the authorization "
            "server to grant, never for a resource server to ask for"
        )
    return values


def check_audiences(layer: str, resource: str, issuers: Sequence[Any]) -> None:
    """Every issuer's audience must be the resource: a token minted for another server must
    never be accepted here (RFC 8707; MCP forbids token passthrough)."""
    accepted = {resource, resource.rstrip("/"), resource.rstrip("/") + "/"}
    for issuer in issuers:
        audience = getattr(issuer, "audience", None)
        audiences = [audience] if isinstance(audience, str) else list(audience or ())
        wrong = [a for a in audiences if a not in accepted]
        if not audiences or wrong:
            raise ValueError(
                f"{layer}: issuer {getattr(issuer, 'issuer', issuer)!r} accepts tokens for "
                f"the audience {audience!r}; on an MCP server it must be the resource "
                f"{resource!r} alone (JWTIssuer(..., audience={resource!r}))"
            )


def metadata_document(
    resource: str,
    authorization_servers: Sequence[str],
    scopes_supported: Sequence[str],
    extra: Mapping[str, Any],
) -> bytes:
    document: dict[str, Any] = {"resource": resource}
    if authorization_servers:
        document["authorization_servers"] = list(authorization_servers)
    if scopes_supported:
        document["scopes_supported"] = list(scopes_supported)
    document["bearer_methods_supported"] = ["header"]
    # RFC 9728 says to omit a member rather than send it as null.
    document.update({name: value for name, value in extra.items() if value is not None})
    return json.dumps(document, separators=(",", ":")).encode()
