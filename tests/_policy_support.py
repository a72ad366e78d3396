"""Shared by the route policy tests: the rule files and the callers of the rule table."""

from __future__ import annotations

from pathlib import Path

from asgi_identity import Actor, Identity

DATA = Path(__file__).parent / "data"


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
