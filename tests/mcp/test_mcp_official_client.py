"""The official `mcp` client, unmodified, against the example server behind mcp_stack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _mcp_support import MCPServerUnderTest, running_example
from mcp.shared.exceptions import MCPError


@pytest.fixture(scope="module")
def server() -> Iterator[MCPServerUnderTest]:
    with running_example() as running:
        yield running


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_whoami_sees_the_user_in_both_protocol_eras(
    server: MCPServerUnderTest, mode: str
) -> None:
    token = server.token("alice", roles=["viewer"], act={"sub": "agent-7"})
    async with server.client(token, mode=mode) as client:
        result = await client.call_tool("whoami", {})
    assert not result.is_error
    assert json.loads(_text(result)) == {"user": "alice", "roles": ["viewer"], "actor": ["agent-7"]}


async def test_a_viewer_is_refused_delete_repo_with_a_readable_error(
    server: MCPServerUnderTest,
) -> None:
    token = server.token("bob", roles=["viewer"])
    async with server.client(token, mode="auto") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("delete_repo", {"name": "starlette"})
    assert "Only admins may delete a repository." in str(refused.value)
    assert "delete-is-for-admins" in str(refused.value)


async def test_an_admin_deletes_a_repository(server: MCPServerUnderTest) -> None:
    async with server.client(server.token("root", roles=["admin"]), mode="legacy") as client:
        result = await client.call_tool("delete_repo", {"name": "starlette"})
    assert _text(result) == "starlette deleted by root"


async def test_progress_notifications_reach_the_client(server: MCPServerUnderTest) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with server.client(server.token("carol"), mode="legacy") as client:
        result = await client.call_tool("count", {"n": 3}, progress_callback=on_progress)
    assert _text(result) == "3"
    assert seen == [1, 2, 3]


async def test_another_user_cannot_drive_a_session(server: MCPServerUnderTest) -> None:
    owner, thief = server.token("dave"), server.token("mallory")
    async with server.client(owner, mode="legacy") as client:
        await client.call_tool("search", {"q": "star"})
    # The session as the SDK opened it, then driven by hand with another user's token.
    headers = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {owner}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        opened = await http.post("/mcp", json=init, headers=headers)
        assert opened.status_code == 200
        sid = opened.headers["mcp-session-id"]
        stolen = {**headers, "authorization": f"Bearer {thief}", "mcp-session-id": sid}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        post = await http.post("/mcp", json=call, headers=stolen)
        get = await http.get("/mcp", headers=stolen)
        delete = await http.delete("/mcp", headers=stolen)
        # A refreshed token of the owner (new bytes, same person) keeps the session.
        refreshed = {**headers, "authorization": f"Bearer {server.token('dave')}"}
        ended = await http.delete("/mcp", headers={**refreshed, "mcp-session-id": sid})
    assert [post.status_code, get.status_code, delete.status_code] == [404, 404, 404]
    assert post.json()["error"]["data"]["code"] == "session_not_found"
    assert post.json()["id"] == 2
    assert ended.status_code == 200


async def test_a_batch_is_refused_as_a_jsonrpc_error(server: MCPServerUnderTest) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post(
            "/mcp",
            json=batch,
            headers={
                "authorization": f"Bearer {server.token('erin')}",
                "accept": "application/json, text/event-stream",
            },
        )
    assert response.status_code == 400
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == -32600
    assert "batches are not supported" in body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"mcp-method": "tools/list"}, "method"),
        ({"mcp-method": "tools/call", "mcp-name": "whoami"}, "name"),
        ({"mcp-method": "tools/call", "mcp-name": "=?base64?d2hvYW1p?="}, "name"),
    ],
)
async def test_headers_that_disagree_with_the_body_are_refused(
    server: MCPServerUnderTest, headers: dict[str, str], field: str
) -> None:
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "delete_repo"}}
    async with httpx.AsyncClient(base_url=server.base) as http:
        response = await http.post(
            "/mcp",
            json=call,
            headers={
                **headers,
                "authorization": f"Bearer {server.token('admin', roles=['admin'])}",
                "accept": "application/json, text/event-stream",
            },
        )
    assert response.status_code == 400
    body = response.json()
    assert body["id"] == 9
    assert body["error"]["code"] == -32020
    assert f"body's {field}" in body["error"]["message"]
