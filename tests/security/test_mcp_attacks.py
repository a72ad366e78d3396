"""Red team: MCPResourceServer, MCPGuard and RoutePolicy's MCP conditions under attack.

A passing test is a defence that holds; an xfail(strict) test names a FINDING and asserts the
safe behaviour the fix must bring.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from _asgi import Reply, request
from asgi_identity import JWTIssuer, Rule
from asgi_identity.mcp import MCPResourceServer, mcp_stack
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import Receive, Scope, Send

RESOURCE = "https://mcp.example.com/mcp"
LOCAL = LocalIssuer(issuer="https://issuer.test", audience=RESOURCE, algorithm="ES256")
OTHER = LocalIssuer(issuer="https://other.test", audience=RESOURCE, algorithm="ES256")
RULES = [
    Rule(id="delete-step-up", tools=["delete_*"], step_up=["repo:delete"]),
    Rule(id="no-delete", effect="deny", tools=["delete_*"], roles=["viewer"]),
]


class FakeMCP:
    """An MCP app that opens a session on every POST without one and records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[tuple[bytes, bytes]], bytes]] = []
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["method"], list(scope["headers"]), body))
        headers = [(b"content-type", b"application/json")]
        has_session = any(name == b"mcp-session-id" for name, _ in scope["headers"])
        if scope["method"] == "POST" and not has_session:
            headers.append((b"mcp-session-id", f"session-{next(self._ids)}".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"result":{}}'})


def build(app: FakeMCP, **options: Any) -> MCPResourceServer:
    return mcp_stack(
        app,
        resource=RESOURCE,
        issuers=[
            JWTIssuer(LOCAL.issuer, audience=RESOURCE, public_key=LOCAL.signing_key.public_pem),
            JWTIssuer(OTHER.issuer, audience=RESOURCE, public_key=OTHER.signing_key.public_pem),
        ],
        scopes_supported=["mcp:tools"],
        policy={"rules": RULES, "default": "allow"},
        **options,
    )


def headers(token: str | None, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    sent = [(b"content-type", b"application/json"), *extra]
    if token is not None:
        sent.append((b"authorization", f"Bearer {token}".encode()))
    return sent


def rpc(method: str = "tools/call", rpc_id: Any = 1, **params: Any) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if rpc_id is not ...:
        message["id"] = rpc_id
    return json.dumps(message).encode()


def viewer() -> str:
    return LOCAL.mint(sub="alice", roles=["viewer"], scope="mcp:tools")


async def post(
    stack: MCPResourceServer, token: str | None, body: bytes, *extra: tuple[bytes, bytes]
) -> Reply:
    return await request(
        stack, method="POST", path="/mcp", headers=headers(token, *extra), body=body
    )


# -- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [{"aud": "https://other.example/mcp"}, {"aud": "https://mcp.example.com/mcp/other"}],
)
async def test_a_token_for_another_audience_never_reaches_the_app(claims: dict[str, Any]) -> None:
    app = FakeMCP()
    reply = await post(build(app), LOCAL.mint(sub="alice", **claims), rpc(name="search"))
    assert reply.status == 401
    assert app.seen == []


async def test_a_token_of_an_unknown_issuer_never_reaches_the_app() -> None:
    stranger = LocalIssuer(issuer="https://evil.test", audience=RESOURCE, algorithm="ES256")
    app = FakeMCP()
    reply = await post(build(app), stranger.mint(sub="alice"), rpc(name="search"))
    assert reply.status == 401
    assert app.seen == []


def test_an_issuer_for_another_audience_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="audience"):
        mcp_stack(
            FakeMCP(),
            resource=RESOURCE,
            issuers=[
                JWTIssuer(
                    LOCAL.issuer,
                    audience=[RESOURCE, "gateway"],
                    public_key=LOCAL.signing_key.public_pem,
                )
            ],
        )


# -- hiding the tool name from the policy ----------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\\u0061me":"delete_repo"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"d\\u0065lete_repo"}}',
        b'{"jsonrpc":"2.0","id":1,"m\\u0065thod":"tools/call","params":{"name":"delete_repo"}}',
    ],
)
async def test_json_escapes_do_not_hide_a_step_up_tool(body: bytes) -> None:
    app = FakeMCP()
    reply = await post(build(app), LOCAL.mint(sub="a", scope="mcp:tools"), body)
    assert reply.status == 403
    assert reply.json["error"]["data"]["code"] == "insufficient_scope"
    assert app.seen == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"search","name":"delete_repo"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"},'
        b'"params":{"name":"delete_repo"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
        b'"params":{"name":"delete_repo"}}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo"}}',
        b' \r\n\t[ {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo"}} ]',
        b"[]",
        b'"tools/call"',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_\xff"}}',
    ],
)
async def test_ambiguous_or_disguised_messages_are_refused(body: bytes) -> None:
    app = FakeMCP()
    reply = await post(build(app), viewer(), body)
    assert reply.status == 400
    assert reply.json["jsonrpc"] == "2.0"
    assert app.seen == []


async def test_a_case_variant_is_another_tool_as_mcp_says() -> None:
    # MCP names are case-sensitive: Delete_Repo is not delete_repo, and an SDK looks it up
    # exactly (an unknown tool). Recorded so that a case-folding app is known to need a rule.
    app = FakeMCP()
    reply = await post(build(app), viewer(), rpc(name="Delete_Repo"))
    assert reply.status == 200


async def test_huge_params_are_refused_before_the_app() -> None:
    app = FakeMCP()
    body = rpc(name="search", arguments={"q": "x" * (2 << 20)})
    reply = await post(build(app), viewer(), body)
    assert reply.status == 413
    assert app.seen == []


@pytest.mark.parametrize(
    "body",
    [
        rpc(name=["delete_repo"]),
        rpc(name={"0": "delete_repo"}),
        json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["delete_repo", {}]}
        ).encode(),
    ],
)
async def test_a_non_string_tool_name_fails_closed(body: bytes) -> None:
    app = FakeMCP()
    reply = await post(build(app), viewer(), body)
    assert reply.status in (400, 403)
    assert app.seen == []


# -- Mcp-Method / Mcp-Name headers -------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        (b"mcp-name", b"search"),
        (b"mcp-name", b"=?base64?ZGVsZXRlX3JlcG8?="),  # unpadded: refused, not decoded
        (b"mcp-name", b"=?base64?ZGVsZXRl X3JlcG8=?="),
        (b"mcp-method", b"tools/list"),
    ],
)
async def test_a_header_that_disagrees_with_the_body_is_refused(extra: tuple[bytes, bytes]) -> None:
    app = FakeMCP()
    reply = await post(build(app), LOCAL.mint(sub="a", scope="mcp:tools repo:delete"),
                       rpc(name="delete_repo"), extra)  # fmt: skip
    assert reply.status == 400
    assert reply.json["error"]["code"] == -32020
    assert app.seen == []


async def test_a_base64_header_that_agrees_passes() -> None:
    app = FakeMCP()
    reply = await post(build(app), viewer(), rpc(name="search"),
                       (b"mcp-name", b"=?base64?c2VhcmNo?="))  # fmt: skip
    assert reply.status == 200


@pytest.mark.parametrize(
    "extra",
    [
        ((b"mcp-name", b"delete_repo"), (b"mcp-name", b"search")),
        ((b"mcp-method", b"tools/list"), (b"mcp-method", b"tools/call")),
    ],
)
async def test_repeated_mcp_headers_are_refused(
    extra: tuple[tuple[bytes, bytes], tuple[bytes, bytes]],
) -> None:
    app = FakeMCP()
    reply = await post(build(app), viewer(), rpc(name="search"), *extra)
    assert reply.status == 400
    assert app.seen == []


# -- sessions --------------------------------------------------------------------------------


async def _open(stack: MCPResourceServer, token: str) -> bytes:
    reply = await post(stack, token, rpc("initialize"))
    assert reply.status == 200
    return dict(reply.headers)[b"mcp-session-id"]


@pytest.mark.parametrize(
    "intruder",
    [
        lambda: LOCAL.mint(sub="bob"),
        lambda: OTHER.mint(sub="alice"),  # the same sub at another issuer is another person
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_another_principal_gets_404_on_a_session(method: str, intruder: Any) -> None:
    app = FakeMCP()
    stack = build(app)
    session = await _open(stack, LOCAL.mint(sub="alice"))
    reply = await request(stack, method=method, path="/mcp", body=rpc(name="search"),
                          headers=headers(intruder(), (b"mcp-session-id", session)))  # fmt: skip
    assert reply.status == 404
    assert reply.json["error"]["code"] == -32001
    assert len(app.seen) == 1


async def test_a_client_named_like_a_user_is_not_that_user() -> None:
    app = FakeMCP()
    stack = build(app)
    session = await _open(stack, LOCAL.mint(sub="alice"))
    reply = await post(stack, LOCAL.mint(azp="alice"), rpc(name="search"),
                       (b"mcp-session-id", session))  # fmt: skip
    assert reply.status == 404


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_a_session_without_a_credential_is_401(method: str) -> None:
    app = FakeMCP()
    stack = build(app)
    session = await _open(stack, LOCAL.mint(sub="alice"))
    reply = await request(stack, method=method, path="/mcp",
                          headers=headers(None, (b"mcp-session-id", session)))  # fmt: skip
    assert reply.status == 401
    assert len(app.seen) == 1


async def test_a_refreshed_token_keeps_its_session_and_the_token_never_reaches_the_app() -> None:
    app = FakeMCP()
    stack = build(app)
    session = await _open(stack, LOCAL.mint(sub="alice"))
    fresh = LOCAL.mint(sub="alice", jti="refreshed")
    reply = await post(stack, fresh, rpc(name="search"), (b"mcp-session-id", session))
    assert reply.status == 200
    for _, sent, _ in app.seen:
        assert all(name.lower() != b"authorization" for name, _ in sent)


async def test_two_session_ids_are_refused() -> None:
    app = FakeMCP()
    stack = build(app)
    mine = await _open(stack, LOCAL.mint(sub="bob"))
    reply = await post(stack, LOCAL.mint(sub="bob"), rpc(name="search"),
                       (b"mcp-session-id", mine), (b"mcp-session-id", b"session-x"))  # fmt: skip
    assert reply.status == 400


async def test_an_evicted_binding_does_not_hand_the_session_to_anyone() -> None:
    app = FakeMCP()
    stack = build(app, guard={"max_sessions": 2})
    victim = await _open(stack, LOCAL.mint(sub="alice"))
    bob = LOCAL.mint(sub="bob")
    for _ in range(2):
        await _open(stack, bob)
    reply = await post(stack, bob, rpc(name="search"), (b"mcp-session-id", victim))
    assert reply.status == 404


# -- what the answers carry --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]
)
async def test_metadata_ignores_forged_host_headers(path: str) -> None:
    reply = await request(build(FakeMCP()), path=path, headers=[
        (b"host", b"evil.example"), (b"x-forwarded-host", b"evil.example"),
        (b"forwarded", b"host=evil.example;proto=http"), (b"x-forwarded-proto", b"http")])  # fmt: skip
    assert reply.status == 200
    assert b"evil" not in reply.body
    assert reply.json["resource"] == RESOURCE


@pytest.mark.parametrize(
    "authorization",
    [b'Bearer x", scope="admin', b"Bearer evil\r\nx: y", b'Bearer a.b.c", error="none'],
)
async def test_a_401_challenge_and_body_echo_nothing_the_client_sent(authorization: bytes) -> None:
    reply = await request(build(FakeMCP()), method="POST", path="/mcp",
                          headers=[(b"authorization", authorization), (b"host", b"evil.example")],
                          body=rpc(name="search"))  # fmt: skip
    assert reply.status == 401
    challenge = reply.header("www-authenticate") or ""
    assert challenge == (
        'Bearer error="invalid_token", resource_metadata="https://mcp.example.com/'
        '.well-known/oauth-protected-resource/mcp", scope="mcp:tools"'
    )
    for fragment in (b"admin", b"evil", b"none"):
        assert fragment not in reply.body


async def test_a_jsonrpc_error_does_not_echo_the_body_or_the_token() -> None:
    token = viewer()
    body = rpc(name="delete_repo", arguments={"secret": "sk-live-123"})
    reply = await post(build(FakeMCP()), token, body)
    assert reply.status == 403
    assert b"sk-live-123" not in reply.body
    assert token.encode() not in reply.body
    assert all(token.encode() not in value for _, value in reply.headers)


@pytest.mark.parametrize("mode", ["http", "jsonrpc", "tool_result"])
async def test_a_step_up_keeps_403_for_notifications_and_null_ids(mode: str) -> None:
    stack = build(FakeMCP(), refusal_status=mode)
    for rpc_id in (..., None):
        reply = await post(stack, LOCAL.mint(sub="a"), rpc(rpc_id=rpc_id, name="delete_repo"))
        assert reply.status == 403
        assert reply.json["id"] is None
        assert "error" in reply.json


@pytest.mark.parametrize("mode", ["jsonrpc", "tool_result"])
async def test_a_refused_notification_keeps_an_error_status(mode: str) -> None:
    stack = build(FakeMCP(), refusal_status=mode)
    token = LOCAL.mint(sub="v", roles=["viewer"], scope="repo:delete")
    reply = await post(stack, token, rpc(rpc_id=..., name="delete_repo"))
    assert reply.status == 403


async def test_a_boolean_id_is_not_echoed() -> None:
    reply = await post(build(FakeMCP()), viewer(), rpc(rpc_id=True, name="delete_repo"))
    assert reply.json["id"] is None
