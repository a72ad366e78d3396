"""Shared by the route policy tests: the app behind the policy and the callers of the rule table."""

from __future__ import annotations

from pathlib import Path

from asgi_identity import Actor, Identity
from asgi_identity.types import Message, Receive, Scope, Send

DATA = Path(__file__).parent / "data"


class Recorder:
    """The app behind the policy: answers 200 with the exact body bytes it received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.identity: Identity | None = None
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.identity = scope.get("identity")
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


IDENTITIES: dict[str, Identity] = {
    "anonymous": Identity(source="anonymous"),
    "free_user": Identity(
        source="jwt", user_id="alice", roles=frozenset({"user"}), scopes=frozenset({"chat"}),
        group="free",
    ),
    "pro_user": Identity(source="jwt", user_id="bob", scopes=frozenset({"chat"}), group="pro"),
    "admin": Identity(source="jwt", user_id="carol", roles=frozenset({"admin"}), group="free"),
    "agent_for_pro_delegated": Identity(
        source="jwt", user_id="bob", scopes=frozenset({"ai:delegate"}), group="pro",
        actor=Actor("agent-7", client_id="copilot"),
    ),
    "agent_for_pro_undelegated": Identity(
        source="jwt", user_id="bob", scopes=frozenset({"chat"}), group="pro",
        actor=Actor("agent-7", client_id="copilot"),
    ),
    "agent_for_free_delegated": Identity(
        source="jwt", user_id="alice", scopes=frozenset({"ai:delegate"}), group="free",
        actor=Actor("agent-9", actor=Actor("orchestrator")),
    ),
    "acme_key": Identity(source="api_key", client_id="batch-app", tenant="acme"),
    "globex_key": Identity(source="api_key", client_id="other-app", tenant="globex"),
}  # fmt: skip
