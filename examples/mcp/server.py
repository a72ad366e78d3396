"""The tools, the policy and the stack: what `python -m examples.mcp` serves."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from asgi_identity import JWTIssuer, Rule
from asgi_identity.mcp import current_identity, mcp_stack
from asgi_identity.types import ASGIApp

REPOS = ["asgi-identity", "mcp-python-sdk", "oidc-provider", "starlette"]

# Tool calls are judged one by one: every MCP message is `POST /mcp`, so path rules cannot.
POLICY = [
    Rule(id="admins-delete", tools=["delete_repo"], roles=["admin"]),
    Rule(
        id="delete-is-for-admins",
        effect="deny",
        tools=["delete_repo"],
        message="Only admins may delete a repository.",
    ),
]


def build_tools() -> MCPServer:
    server = MCPServer("asgi-identity example")

    @server.tool()
    def whoami() -> dict[str, Any]:
        """The caller, as the server sees them."""
        identity = current_identity()
        if identity is None:
            return {"user": None}
        return {
            "user": identity.user_id,
            "roles": sorted(identity.roles),
            "actor": list(identity.actor.chain) if identity.actor is not None else [],
        }

    @server.tool()
    def search(q: str) -> list[str]:
        """Repositories whose name holds `q`."""
        return [name for name in REPOS if q.lower() in name]

    @server.tool()
    def delete_repo(name: str) -> str:
        """Delete a repository (admins only; the route policy refuses everyone else)."""
        identity = current_identity()
        return f"{name} deleted by {identity.user_id if identity else 'nobody'}"

    @server.tool()
    async def count(n: int, ctx: Context) -> int:
        """Count to `n`, reporting progress at each step."""
        for step in range(1, n + 1):
            await ctx.report_progress(step, n, f"{step} of {n}")
        return n

    return server


def build_app(
    *,
    resource: str,
    issuer: JWTIssuer,
    tool_limit: str | None = None,
    refusal_status: Any = "http",
) -> ASGIApp:
    tools = build_tools()
    app = tools.streamable_http_app(streamable_http_path="/mcp")
    return mcp_stack(
        app,
        resource=resource,
        issuers=[issuer],
        policy={"rules": POLICY, "default": "allow"},
        # The limit counts every request on the MCP endpoint, protocol messages included:
        # per-tool-call counting is not built yet (docs/mcp.md).
        rate_limit={"limits": tool_limit} if tool_limit else None,
        scopes_supported=["mcp:tools"],
        refusal_status=refusal_status,
        resource_name="asgi-identity example MCP server",
    )
