"""An MCP server built with the official `mcp` SDK behind asgi-identity's `mcp_stack`."""
