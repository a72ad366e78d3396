"""MCPResourceServer: the RFC 9728 document, the challenges, refusals in each refusal_status,
and the start-up checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _mcp_support import MCPServerUnderTest, running_example

from asgi_identity import JWTIssuer
from asgi_identity.mcp import MCPResourceServer, mcp_stack

ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def server() -> Iterator[MCPServerUnderTest]:
    with running_example(tool_limit="100/minute") as running:
        yield running


def _call(tool: str, rpc_id: int = 5) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
            "params": {"name": tool, "arguments": {"name": "x"}}}  # fmt: skip


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource/mcp",
                                  "/.well-known/oauth-protected-resource"])  # fmt: skip
async def test_metadata_is_served_at_both_uris_without_credentials(
    server: MCPServerUnderTest, path: str
) -> None:
    async with httpx.AsyncClient(base_url=server.base) as http:
        # A bad token and a forged Host change nothing: the document comes from configuration.
        response = await http.get(
            path, headers={"authorization": "Bearer not-a-token", "host": "evil.example"}
        )
        head = await http.head(path)
        preflight = await http.options(
            path, headers={"origin": "https://app.example", "access-control-request-method": "GET"}
        )
    assert response.status_code == 200
    assert response.json() == {
        "resource": server.resource,
        "authorization_servers": ["https://issuer.test"],
        "scopes_supported": ["mcp:tools"],
        "bearer_methods_supported": ["header"],
        "resource_name": "asgi-identity example MCP server",
    }
    assert "null" not in response.text
    assert "offline_access" not in response.text
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.headers["access-control-allow-origin"] == "*"
    assert head.status_code == 200
    assert head.content == b""
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["access-control-allow-methods"]


async def test_401_without_a_credential_names_the_metadata_and_no_error(
    server: MCPServerUnderTest,
) -> None:
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post("/mcp", json=_call("whoami"), headers={"accept": ACCEPT})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp", '
        'scope="mcp:tools"'
    )
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["data"]["code"] == "missing_credentials"


async def test_a_token_for_another_audience_is_an_invalid_token_challenge(
    server: MCPServerUnderTest,
) -> None:
    token = server.issuer.mint(sub="alice", aud="https://other.example/mcp")
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post(
            "/mcp",
            json=_call("whoami"),
            headers={"accept": ACCEPT, "authorization": f"Bearer {token}"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(
        'Bearer error="invalid_token", resource_metadata="'
    )
    assert response.json()["error"]["data"]["code"] == "invalid_token"


async def test_a_policy_refusal_is_a_403_jsonrpc_error_without_a_challenge(
    server: MCPServerUnderTest,
) -> None:
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post(
            "/mcp",
            json=_call("delete_repo", 41),
            headers={"accept": ACCEPT, "authorization": f"Bearer {server.token('v')}"},
        )
    assert response.status_code == 403
    assert "www-authenticate" not in response.headers
    body = response.json()
    assert body["id"] == 41
    assert body["error"]["code"] == -32000
    assert body["error"]["message"] == (
        "Only admins may delete a repository. (rule 'delete-is-for-admins')"
    )
    assert body["error"]["data"] == {"code": "policy_denied", "type": "permission_error",
                                     "status": 403}  # fmt: skip


async def test_non_mcp_routes_keep_the_openai_style_body(server: MCPServerUnderTest) -> None:
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.get("/elsewhere")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_credentials"
    assert "resource_metadata" not in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("refusal_status", "status", "shape"),
    [("http", 403, "error"), ("jsonrpc", 200, "error"), ("tool_result", 200, "result")],
)
async def test_each_refusal_status(refusal_status: str, status: int, shape: str) -> None:
    with running_example(refusal_status=refusal_status) as running:
        async with httpx.AsyncClient(base_url=running.base) as http:
            response = await http.post(
                "/mcp",
                json=_call("delete_repo", 3),
                headers={"accept": ACCEPT, "authorization": f"Bearer {running.token('v')}"},
            )
            unauthenticated = await http.post("/mcp", json=_call("whoami"))
    assert response.status_code == status
    body = response.json()
    assert body["id"] == 3
    assert shape in body
    if shape == "result":
        assert body["result"]["isError"] is True
        assert "Only admins" in body["result"]["content"][0]["text"]
    # 401 keeps its status in every mode: it is what starts the client's OAuth flow.
    assert unauthenticated.status_code == 401


async def test_429_carries_retry_after_in_the_error_data() -> None:
    with running_example(tool_limit="1/minute", refusal_status="jsonrpc") as running:
        headers = {"accept": ACCEPT, "authorization": f"Bearer {running.token('r')}"}
        async with httpx.AsyncClient(base_url=running.base) as http:
            await http.post("/mcp", json=_call("search"), headers=headers)
            limited = await http.post("/mcp", json=_call("search", 8), headers=headers)
    assert limited.status_code == 200
    error = limited.json()["error"]
    assert error["data"]["code"] == "rate_limited"
    assert error["data"]["retry_after"] == int(limited.headers["retry-after"])


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ("http://mcp.example.com/mcp", "https"),
        ("https://mcp.example.com/mcp#x", "fragment"),
        ("https://mcp.example.com/mcp?x=1", "query"),
        ("/mcp", "absolute"),
    ],
)
def test_a_resource_that_is_not_canonical_is_refused_at_start(resource: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        MCPResourceServer(_app, resource=resource, authorization_servers=["https://as.example"])


def test_an_issuer_for_another_audience_is_refused_at_start() -> None:
    issuer = JWTIssuer("https://as.example", audience="gateway", public_key="unused")
    with pytest.raises(ValueError, match="audience"):
        mcp_stack(_app, resource="https://mcp.example.com/mcp", issuers=[issuer])


def test_offline_access_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="offline_access"):
        MCPResourceServer(_app, resource="https://mcp.example.com/mcp",
                          authorization_servers=["https://as.example"],
                          scopes_supported=["mcp:tools", "offline_access"])  # fmt: skip


def test_loopback_may_use_http() -> None:
    server = MCPResourceServer(
        _app, resource="http://127.0.0.1:8000/mcp", authorization_servers=["https://as.example"]
    )
    assert server.metadata_url == "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
