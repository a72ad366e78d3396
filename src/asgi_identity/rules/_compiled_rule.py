"""`CompiledRule`: one rule's conditions reduced to what a request check needs."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection

from asgi_identity._http.body import BodyFields
from asgi_identity.identity import Identity
from asgi_identity.rules._rule import Rule


class CompiledRule:
    """A rule with its conditions reduced to what a request check needs."""

    __slots__ = (
        "agent",
        "clients",
        "effect",
        "groups",
        "id",
        "mcp_patterns",
        "message",
        "methods",
        "model_patterns",
        "models",
        "needs_body",
        "roles",
        "rule",
        "scopes",
        "sources",
        "step_up",
        "tenants",
        "users",
        "without_groups",
        "without_roles",
        "without_scopes",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.id = rule.id
        self.effect = rule.effect
        self.message = rule.message
        methods = frozenset(rule.methods)
        # A GET route also answers HEAD in Starlette and Litestar: a rule on GET must cover it.
        if "GET" in methods:
            methods |= {"HEAD"}
        self.methods: frozenset[str] | None = methods or None
        self.roles = _set_or_none(rule.roles)
        self.scopes = _set_or_none(rule.scopes)
        self.groups = _set_or_none(rule.groups)
        self.tenants = _set_or_none(rule.tenants)
        self.sources = _set_or_none(rule.sources)
        self.users = _set_or_none(rule.users)
        self.clients = _set_or_none(rule.clients)
        self.without_roles = _set_or_none(rule.without_roles)
        self.without_scopes = _set_or_none(rule.without_scopes)
        self.without_groups = _set_or_none(rule.without_groups)
        self.agent = rule.agent
        self.models = tuple(rule.models)
        # Model names are compared case-insensitively: an app that lower-cases the model must not
        # reach `GPT-4o` past a rule written for `gpt-4o`.
        self.model_patterns: re.Pattern[str] | None = (
            re.compile("|".join(fnmatch.translate(m.lower()) for m in rule.models))
            if rule.models
            else None
        )
        # MCP conditions: (the JSON-RPC field judged, the method it belongs to, its pattern).
        # Tool, prompt and resource names compare exactly, as MCP servers look them up.
        self.mcp_patterns = tuple(
            (field, method, re.compile("|".join(fnmatch.translate(p) for p in patterns)))
            for field, method, patterns in (
                ("rpc_method", None, rule.mcp_methods),
                ("rpc_name", "tools/call", rule.tools),
                ("rpc_name", "prompts/get", rule.prompts),
                ("rpc_uri", "resources/read", rule.resources),
            )
            if patterns
        )
        self.needs_body = self.model_patterns is not None or bool(self.mcp_patterns)
        self.step_up = tuple(rule.step_up)

    def matches_identity(self, identity: Identity) -> bool:
        if self.sources is not None and identity.source not in self.sources:
            return False
        if self.roles is not None and self.roles.isdisjoint(identity.roles):
            return False
        if self.scopes is not None and self.scopes.isdisjoint(identity.scopes):
            return False
        if self.groups is not None and identity.group not in self.groups:
            return False
        if self.tenants is not None and identity.tenant not in self.tenants:
            return False
        if self.users is not None and identity.user_id not in self.users:
            return False
        if self.clients is not None and identity.client_id not in self.clients:
            return False
        if self.without_roles is not None and not self.without_roles.isdisjoint(identity.roles):
            return False
        if self.without_scopes is not None and not self.without_scopes.isdisjoint(identity.scopes):
            return False
        if self.without_groups is not None and identity.group in self.without_groups:
            return False
        return self.agent is None or self.agent == (identity.actor is not None)

    def matches_model(self, model: str | None) -> bool:
        if self.model_patterns is None:
            return True
        return model is not None and self.model_patterns.fullmatch(model.lower()) is not None

    def matches_message(self, fields: BodyFields) -> bool:
        """The body's model and JSON-RPC message hold this rule's model and MCP conditions."""
        if not self.matches_model(fields.model):
            return False
        for field, method, pattern in self.mcp_patterns:
            if method is not None and fields.rpc_method != method:
                return False
            value: str | None = getattr(fields, field)
            if value is None or pattern.fullmatch(value) is None:
                return False
        return True


def _set_or_none(values: Collection[str]) -> frozenset[str] | None:
    return frozenset(values) or None
