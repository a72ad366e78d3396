"""The `Rule` record: the route policy's rule language and its validation.

Also the path pattern syntax (literal segments, `{name}`, `*`), which the index compiles.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

Effect = Literal["allow", "deny"]

_SOURCES: Final = frozenset({"jwt", "header", "api_key", "anonymous"})
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "WEBSOCKET"}
)
_PARAM: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_RULE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")

# Conditions that are glob patterns, kept in the order written.
_PATTERN_FIELDS: Final = frozenset(
    {"paths", "models", "tools", "mcp_methods", "resources", "prompts"}
)

#: The rule id named in a refusal when no rule matched and the default is deny.
DEFAULT_RULE_ID: Final = "default"


def _strings(rule_id: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"rule {rule_id!r}: {name} must be a list of strings, not {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"rule {rule_id!r}: {name} must hold non-empty strings, not {item!r}")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """One route policy rule. It matches a request when every condition it sets holds.

    Within one condition any listed value is enough (`roles=["admin", "ops"]`: either role);
    `without_*` conditions match when the identity has none of the listed values. An empty
    condition is not checked. The first matching rule decides; see docs/route-policy.md.
    """

    id: str
    effect: Effect = "allow"
    methods: Collection[str] = ()
    paths: Collection[str] = ()
    models: Collection[str] = ()
    roles: Collection[str] = ()
    scopes: Collection[str] = ()
    groups: Collection[str] = ()
    tenants: Collection[str] = ()
    sources: Collection[str] = ()
    users: Collection[str] = ()
    clients: Collection[str] = ()
    without_roles: Collection[str] = ()
    without_scopes: Collection[str] = ()
    without_groups: Collection[str] = ()
    agent: bool | None = None
    message: str | None = None
    tools: Collection[str] = ()
    mcp_methods: Collection[str] = ()
    resources: Collection[str] = ()
    prompts: Collection[str] = ()
    step_up: Collection[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _RULE_ID.fullmatch(self.id):
            raise ValueError(
                f"rule id {self.id!r} must be 1 to 128 letters, digits or _.:/@+- "
                "(it is shown to clients in refusals)"
            )
        if self.id == DEFAULT_RULE_ID:
            raise ValueError(f"rule id {DEFAULT_RULE_ID!r} is reserved for the policy default")
        if self.effect not in ("allow", "deny"):
            raise ValueError(
                f"rule {self.id!r}: effect must be 'allow' or 'deny', not {self.effect!r}"
            )
        if self.agent is not None and not isinstance(self.agent, bool):
            raise TypeError(f"rule {self.id!r}: agent must be true, false or absent")
        if self.message is not None and not isinstance(self.message, str):
            raise TypeError(f"rule {self.id!r}: message must be a string")
        if self.step_up and self.effect != "allow":
            raise ValueError(
                f"rule {self.id!r}: a step_up rule asks for more scopes; it cannot also deny"
            )
        for f in fields(self):
            if f.name in ("id", "effect", "agent", "message"):
                continue
            values = _strings(self.id, f.name, getattr(self, f.name))
            if f.name == "methods":
                values = tuple(v.upper() for v in values)
                unknown = [v for v in values if v not in _METHODS]
                if unknown:
                    raise ValueError(f"rule {self.id!r}: unknown method(s) {unknown}")
            elif f.name == "paths":
                for pattern in values:
                    path_segments(self.id, pattern)
            elif f.name == "sources":
                unknown = [v for v in values if v not in _SOURCES]
                if unknown:
                    raise ValueError(
                        f"rule {self.id!r}: unknown source(s) {unknown}; use {sorted(_SOURCES)}"
                    )
            elif f.name == "step_up":
                bad = [v for v in values if any(c in v for c in ' "\\')]
                if bad:
                    raise ValueError(f"rule {self.id!r}: step_up holds invalid scope(s) {bad}")
            keep_order = f.name in _PATTERN_FIELDS or f.name == "step_up"
            object.__setattr__(self, f.name, values if keep_order else frozenset(values))


# ---------------------------------------------------------------------------------------------
# Paths


def split_path(path: str) -> list[str]:
    # Empty segments are dropped so `/v1//chat/` is judged as `/v1/chat`: frameworks that ignore
    # a trailing or doubled slash must not reach a route its rules did not see.
    return [segment for segment in path.split("/") if segment]


ONE: Final = "\x00one"  # a `{param}` or a `*` that is not last: exactly one segment
REST: Final = "\x00rest"  # a trailing `*`: one or more segments


def path_segments(rule_id: str, pattern: str) -> tuple[str, ...]:
    if not pattern.startswith("/"):
        raise ValueError(f"rule {rule_id!r}: path {pattern!r} must start with '/'")
    parts = split_path(pattern)
    segments: list[str] = []
    for position, part in enumerate(parts):
        if part == "*":
            segments.append(REST if position == len(parts) - 1 else ONE)
        elif _PARAM.fullmatch(part):
            segments.append(ONE)
        elif any(char in part for char in "*{}"):
            raise ValueError(
                f"rule {rule_id!r}: path {pattern!r}: segment {part!r} is not supported; a "
                "segment is literal text, a {name} parameter or *, e.g. /v1/chat/* or "
                "/v1/models/{model}"
            )
        else:
            segments.append(part)
    return tuple(segments)
