"""RoutePolicy's MCP conditions (tools, mcp_methods, resources, prompts) and step_up."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from asgi_identity import Identity, RoutePolicy, Rule
from asgi_identity.testing import with_identity

VIEWER = Identity(source="jwt", user_id="v", roles=frozenset({"viewer"}),
                  scopes=frozenset({"mcp:tools"}))  # fmt: skip
ADMIN = VIEWER.replace(user_id="a", scopes=frozenset({"mcp:tools", "repo:delete"}))

RULES = [
    Rule(id="delete-needs-scope", tools=["delete_*"], step_up=["mcp:tools", "repo:delete"]),
    Rule(id="no-secrets", effect="deny", resources=["file:///secrets/*"]),
    Rule(id="no-admin-prompts", effect="deny", prompts=["admin-*"]),
    Rule(id="no-sampling", effect="deny", mcp_methods=["sampling/*"]),
]


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _post(identity: Identity, message: dict[str, Any]) -> tuple[int, dict[bytes, bytes]]:
    app = with_identity(RoutePolicy(_ok, rules=RULES, default="allow"), identity)
    body = json.dumps(message).encode()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "raw_path": b"/mcp",
             "headers": [(b"content-type", b"application/json")], "query_string": b""}  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


def _rpc(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


@pytest.mark.parametrize(
    ("message", "status"),
    [
        (_rpc("tools/call", name="search"), 200),
        (_rpc("tools/call", name="delete_repo"), 403),
        (_rpc("tools/list"), 200),
        # A tool rule judges tools/call only: a prompt of the same name is another thing.
        (_rpc("prompts/get", name="delete_repo"), 200),
        (_rpc("resources/read", uri="file:///secrets/key"), 403),
        (_rpc("resources/read", uri="file:///public/readme"), 200),
        (_rpc("prompts/get", name="admin-reset"), 403),
        (_rpc("sampling/createMessage"), 403),
    ],
)
async def test_mcp_conditions_judge_the_jsonrpc_message(
    message: dict[str, Any], status: int
) -> None:
    assert (await _post(VIEWER, message))[0] == status


async def test_step_up_names_every_scope_the_tool_needs() -> None:
    status, headers = await _post(VIEWER, _rpc("tools/call", name="delete_repo"))
    assert status == 403
    assert headers[b"www-authenticate"] == (
        b'Bearer error="insufficient_scope", scope="mcp:tools repo:delete"'
    )


async def test_step_up_lets_the_next_rules_decide_once_the_scopes_are_held() -> None:
    assert (await _post(ADMIN, _rpc("tools/call", name="delete_repo")))[0] == 200


def test_decide_takes_the_mcp_message() -> None:
    policy = RoutePolicy(_ok, rules=RULES, default="allow")
    refused = policy.decide(VIEWER, "POST", "/mcp", mcp_method="tools/call", name="delete_repo")
    assert refused.rule_id == "delete-needs-scope"
    assert not refused.allowed
    assert policy.decide(ADMIN, "POST", "/mcp", mcp_method="tools/call", name="delete_x").allowed


def test_a_step_up_rule_cannot_deny() -> None:
    with pytest.raises(ValueError, match="step_up"):
        Rule(id="x", effect="deny", tools=["t"], step_up=["s"])
