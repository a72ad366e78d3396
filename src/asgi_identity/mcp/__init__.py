"""MCP servers as identity-aware OAuth 2.1 resource servers (docs/mcp.md).

Pure ASGI: nothing here imports the `mcp` SDK, so any ASGI MCP app can sit behind it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.mcp._context import current_identity
from asgi_identity.mcp._jsonrpc import RefusalStatus
from asgi_identity.mcp._metadata import endpoint_path
from asgi_identity.mcp.guard import MCPGuard
from asgi_identity.mcp.resource import MCPResourceServer
from asgi_identity.stack import LayerOptions, stack_layers, wrap_layers
from asgi_identity.types import AnyASGIApp

__all__ = ["MCPGuard", "MCPResourceServer", "current_identity", "mcp_stack"]


def mcp_stack(
    app: AnyASGIApp,
    *,
    resource: str,
    issuers: Sequence[JWTIssuer],
    policy: LayerOptions = None,
    rate_limit: LayerOptions = None,
    enforce: LayerOptions = None,
    domains: LayerOptions = None,
    identity: Mapping[str, Any] | None = None,
    guard: Mapping[str, Any] | None = None,
    scopes_supported: Iterable[str] = (),
    challenge_scopes: Iterable[str] | None = None,
    authorization_servers: Sequence[str] | None = None,
    refusal_status: RefusalStatus = "http",
    exclude_paths: Iterable[str] = (),
    **metadata: str,
) -> MCPResourceServer:
    """Wrap an MCP server's ASGI app in the whole chain, outermost first: MCPResourceServer,
    IdentityMiddleware, MCPGuard, then EnforceIdentity, DomainAllowlist, RoutePolicy and
    UserRateLimit when their options are given. `metadata` takes the RFC 9728 descriptive
    members (`resource_name`, `resource_documentation`, `resource_policy_uri`, `resource_tos_uri`).
    """
    path = endpoint_path(resource)
    # The resource server checks the issuers' audiences before anything is built around them.
    outer: dict[str, Any] = {
        "resource": resource,
        "issuers": list(issuers),
        "authorization_servers": authorization_servers,
        "scopes_supported": scopes_supported,
        "challenge_scopes": challenge_scopes,
        "refusal_status": refusal_status,
        **metadata,
    }
    checked = MCPResourceServer(app, **outer)
    layers = stack_layers(
        identity={"issuers": list(issuers), **(identity or {})},
        enforce=enforce,
        domains=domains,
        policy=policy,
        rate_limit=rate_limit,
        conversation=None,
        exclude_paths=exclude_paths,
    )
    (identity_cls, identity_options), *inner = layers
    wrapped = MCPGuard(wrap_layers(app, inner), **{"path": path, **(guard or {})})
    checked.app = identity_cls(wrapped, **identity_options)
    return checked
