"""`python -m examples.mcp`: the example MCP server, configured from the environment.

Without MCP_ISSUER it is a self-contained demo: a local issuer, and tokens printed for a viewer,
an admin and an agent acting for the viewer.
"""

from __future__ import annotations

import os

import uvicorn

from asgi_identity import ClaimMap, JWTIssuer
from asgi_identity.testing import LocalIssuer
from examples.mcp.server import build_app


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    resource = os.environ.get("MCP_RESOURCE", f"http://{host}:{port}/mcp")
    claims = ClaimMap(roles="roles")
    issuer_uri = os.environ.get("MCP_ISSUER")
    local: LocalIssuer | None = None
    if issuer_uri:
        jwks_url = os.environ.get("MCP_JWKS_URL")
        issuer = JWTIssuer(
            issuer_uri,
            audience=resource,
            claims=claims,
            **({"jwks_url": jwks_url} if jwks_url else {"discovery": True}),
        )
    else:
        local = LocalIssuer(issuer="https://issuer.example.test", audience=resource, lifetime=3600)
        issuer = JWTIssuer(local.issuer, audience=resource, public_key=local.signing_key.public_pem,
                           claims=claims)  # fmt: skip
    app = build_app(resource=resource, issuer=issuer, tool_limit=os.environ.get("MCP_TOOL_LIMIT"))
    if local is not None:
        print(f"MCP server (demo issuer) at {resource}", flush=True)
        for label, token in (
            ("viewer", local.mint(sub="viewer", roles=["viewer"])),
            ("admin", local.mint(sub="admin", roles=["admin"])),
            ("agent", local.mint(sub="viewer", roles=["viewer"], act={"sub": "agent-1"})),
        ):
            print(f"{label} token: {token}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
