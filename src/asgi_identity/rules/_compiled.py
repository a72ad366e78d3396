"""Route policy rules: the `Rule` record, loading from TOML/JSON, and compilation into an index.

Loading and compiling run once at start-up. Per request, `CompiledPolicy.matching` finds the
path's buckets (a walk of a segment trie, memoized per path), collects each bucket's rules for
the identity (`_Bucket.collect`, a few dict lookups), then checks method and identity conditions.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal

from asgi_identity.identity import Identity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

Effect = Literal["allow", "deny"]

_SOURCES: Final = frozenset({"jwt", "header", "api_key", "anonymous"})
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "WEBSOCKET"}
)
_PARAM: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_RULE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")

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
                    _path_segments(self.id, pattern)
            elif f.name == "sources":
                unknown = [v for v in values if v not in _SOURCES]
                if unknown:
                    raise ValueError(
                        f"rule {self.id!r}: unknown source(s) {unknown}; use {sorted(_SOURCES)}"
                    )
            keep_order = f.name in ("paths", "models")
            object.__setattr__(self, f.name, values if keep_order else frozenset(values))


# ---------------------------------------------------------------------------------------------
# Paths


def _split(path: str) -> list[str]:
    # Empty segments are dropped so `/v1//chat/` is judged as `/v1/chat`: frameworks that ignore
    # a trailing or doubled slash must not reach a route its rules did not see.
    return [segment for segment in path.split("/") if segment]


_ONE: Final = "\x00one"  # a `{param}` or a `*` that is not last: exactly one segment
_REST: Final = "\x00rest"  # a trailing `*`: one or more segments


def _path_segments(rule_id: str, pattern: str) -> tuple[str, ...]:
    if not pattern.startswith("/"):
        raise ValueError(f"rule {rule_id!r}: path {pattern!r} must start with '/'")
    parts = _split(pattern)
    segments: list[str] = []
    for position, part in enumerate(parts):
        if part == "*":
            segments.append(_REST if position == len(parts) - 1 else _ONE)
        elif _PARAM.fullmatch(part):
            segments.append(_ONE)
        elif any(char in part for char in "*{}"):
            raise ValueError(
                f"rule {rule_id!r}: path {pattern!r}: segment {part!r} is not supported; a "
                "segment is literal text, a {name} parameter or *, e.g. /v1/chat/* or "
                "/v1/models/{model}"
            )
        else:
            segments.append(part)
    return tuple(segments)


class _Node:
    __slots__ = ("end", "literal", "one", "rest")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.one: _Node | None = None
        self.end: _Bucket | None = None  # rules whose pattern ends exactly here
        self.rest: _Bucket | None = None  # rules whose pattern ends here with a trailing `*`

    def child(self, segment: str) -> _Node:
        if segment == _ONE:
            if self.one is None:
                self.one = _Node()
            return self.one
        node = self.literal.get(segment)
        if node is None:
            node = self.literal[segment] = _Node()
        return node


def _walk(node: _Node, segments: Sequence[str], start: int, found: list[_Bucket]) -> None:
    if node.rest is not None and start < len(segments):
        found.append(node.rest)
    if start == len(segments):
        if node.end is not None:
            found.append(node.end)
        return
    literal = node.literal.get(segments[start])
    if literal is not None:
        _walk(literal, segments, start + 1, found)
    if node.one is not None:
        _walk(node.one, segments, start + 1, found)


class _Bucket:
    """The rules of one path pattern, indexed by one identity condition each.

    A rule only matches when all its conditions hold, so any one of its equality conditions
    (its user, client, tenant, group, source, a role or a scope) is a safe key to file it under:
    a request then only looks at the rules filed under its own identity's values.
    """

    __slots__ = ("always", "by_client", "by_group", "by_role", "by_scope", "by_source",
                 "by_tenant", "by_user")  # fmt: skip

    def __init__(self) -> None:
        self.always: list[int] = []
        self.by_user: dict[str, list[int]] = {}
        self.by_client: dict[str, list[int]] = {}
        self.by_tenant: dict[str, list[int]] = {}
        self.by_group: dict[str, list[int]] = {}
        self.by_source: dict[str, list[int]] = {}
        self.by_role: dict[str, list[int]] = {}
        self.by_scope: dict[str, list[int]] = {}

    def add(self, position: int, rule: CompiledRule) -> None:
        # The first condition in this order is usually the most selective one.
        for values, index in (
            (rule.users, self.by_user),
            (rule.clients, self.by_client),
            (rule.tenants, self.by_tenant),
            (rule.groups, self.by_group),
            (rule.sources, self.by_source),
            (rule.roles, self.by_role),
            (rule.scopes, self.by_scope),
        ):
            if values is not None:
                for value in values:
                    index.setdefault(value, []).append(position)
                return
        self.always.append(position)

    def collect(self, identity: Identity, out: list[int]) -> None:
        out += self.always
        if self.by_user and identity.user_id is not None:
            out += self.by_user.get(identity.user_id, ())
        if self.by_client and identity.client_id is not None:
            out += self.by_client.get(identity.client_id, ())
        if self.by_tenant and identity.tenant is not None:
            out += self.by_tenant.get(identity.tenant, ())
        if self.by_group and identity.group is not None:
            out += self.by_group.get(identity.group, ())
        if self.by_source:
            out += self.by_source.get(identity.source, ())
        if self.by_role:
            for role in identity.roles:
                out += self.by_role.get(role, ())
        if self.by_scope:
            for scope in identity.scopes:
                out += self.by_scope.get(scope, ())


# ---------------------------------------------------------------------------------------------
# Compiled rules


class CompiledRule:
    """A rule with its conditions reduced to what a request check needs."""

    __slots__ = (
        "agent",
        "clients",
        "effect",
        "groups",
        "id",
        "message",
        "methods",
        "model_patterns",
        "models",
        "roles",
        "rule",
        "scopes",
        "sources",
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


def _set_or_none(values: Collection[str]) -> frozenset[str] | None:
    return frozenset(values) or None


#: Distinct paths whose trie buckets are remembered (the method is checked per request, so it is
#: not part of the key); paths with parameters are unbounded, so the memo is emptied when full
#: rather than allowed to grow.
_MEMO_SIZE: Final = 4096


class CompiledPolicy:
    """Rules in order, indexed by path segments, then by one identity condition per rule."""

    __slots__ = ("_any_path", "_memo", "_root", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        seen: dict[str, int] = {}
        for position, rule in enumerate(rules):
            if not isinstance(rule, Rule):
                raise TypeError(f"rules[{position}] must be a Rule, not {type(rule).__name__}")
            if rule.id in seen:
                raise ValueError(
                    f"rule id {rule.id!r} is used by rules {seen[rule.id]} and {position}; "
                    "ids name the rule in refusals and audit records, so they must be unique"
                )
            seen[rule.id] = position
        self.rules = tuple(CompiledRule(rule) for rule in rules)
        self._root = _Node()
        self._any_path = _Bucket()
        for position, compiled in enumerate(self.rules):
            if not compiled.rule.paths:
                self._any_path.add(position, compiled)
            for pattern in compiled.rule.paths:
                node = self._root
                segments = _path_segments(compiled.id, pattern)
                trailing = bool(segments) and segments[-1] == _REST
                for segment in segments[:-1] if trailing else segments:
                    node = node.child(segment)
                if trailing:
                    node.rest = node.rest or _Bucket()
                    node.rest.add(position, compiled)
                else:
                    node.end = node.end or _Bucket()
                    node.end.add(position, compiled)
        self._memo: dict[str, tuple[_Bucket, ...]] = {}

    def _buckets(self, path: str) -> tuple[_Bucket, ...]:
        found = self._memo.get(path)
        if found is None:
            buckets = [self._any_path]
            _walk(self._root, _split(path), 0, buckets)
            found = tuple(buckets)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[path] = found
        return found

    def matching(self, identity: Identity, method: str, path: str) -> list[CompiledRule]:
        """The rules whose method, path and identity conditions hold, in policy order.

        The model is left to the caller, which reads the body only if such a rule needs it.
        """
        positions: list[int] = []
        for bucket in self._buckets(path):
            bucket.collect(identity, positions)
        if len(positions) > 1:
            positions = sorted(set(positions))
        rules = self.rules
        return [
            rule
            for rule in (rules[p] for p in positions)
            if (rule.methods is None or method in rule.methods) and rule.matches_identity(identity)
        ]


# ---------------------------------------------------------------------------------------------
# Files


class PolicyFileError(ValueError):
    """A rule file that cannot be used; the message names the file, the line and the reason."""

    def __init__(self, path: str, reason: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


_RULE_FIELDS: Final = frozenset(f.name for f in fields(Rule))
_TOP_LEVEL: Final = frozenset({"version", "default", "rules"})


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    rules: tuple[Rule, ...]
    version: str | None
    default: Effect | None


def load_policy_file(path: str | Path) -> PolicyDocument:
    """Read `path` (.toml or .json): top-level `version`, `default` and a `rules` list."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(name, f"cannot read the rule file: {exc}") from None
    suffix = Path(path).suffix.lower()
    data: Any
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            if match:
                line: int | None = int(match.group(1))
            elif "end of document" in str(exc):
                line = len(text.rstrip().splitlines()) or 1
            else:
                line = None
            raise PolicyFileError(name, f"not valid TOML: {exc}", line) from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyFileError(name, f"not valid JSON: {exc.msg}", exc.lineno) from None
    else:
        raise PolicyFileError(name, "rule files must end in .toml or .json")
    return _document(name, text, data)


def _document(name: str, text: str, data: Any) -> PolicyDocument:
    if not isinstance(data, Mapping):
        raise PolicyFileError(name, "the file must hold a table/object with a `rules` list")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise PolicyFileError(
            name, f"unknown top-level key(s) {unknown}; expected version, default and rules"
        )
    version = data.get("version")
    if version is not None and not isinstance(version, (str, int)):
        raise PolicyFileError(name, "version must be a string")
    default = data.get("default")
    if default is not None and default not in ("allow", "deny"):
        raise PolicyFileError(name, f"default must be 'allow' or 'deny', not {default!r}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        raise PolicyFileError(name, "the file must have a `rules` list ([[rules]] in TOML)")
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        rule_id = raw.get("id") if isinstance(raw, Mapping) else None
        line = _rule_line(text, index, rule_id)
        label = f"rule {index + 1}" + (f" ({rule_id!r})" if isinstance(rule_id, str) else "")
        if not isinstance(raw, Mapping):
            raise PolicyFileError(name, f"{label}: a rule must be a table/object", line)
        unknown = sorted(set(raw) - _RULE_FIELDS)
        if unknown:
            hints = [_hint(key) for key in unknown]
            raise PolicyFileError(name, f"{label}: unknown field(s) {', '.join(hints)}", line)
        if "id" not in raw:
            raise PolicyFileError(name, f"{label}: every rule needs an `id`", line)
        try:
            rules.append(Rule(**raw))
        except (TypeError, ValueError) as exc:
            reason = str(exc).removeprefix(f"rule {rule_id!r}: ")
            raise PolicyFileError(name, f"{label}: {reason}", line) from None
    try:
        CompiledPolicy(rules)  # duplicate ids are a file error, reported with the file name
    except (TypeError, ValueError) as exc:
        raise PolicyFileError(name, str(exc)) from None
    return PolicyDocument(tuple(rules), None if version is None else str(version), default)


def _hint(key: str) -> str:
    close = [f for f in _RULE_FIELDS if f.rstrip("s") == key.rstrip("s") or f == f"{key}s"]
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


_TOML_RULE_HEADER: Final = re.compile(r"^[ \t]*\[\[[ \t]*rules[ \t]*\]\]", re.MULTILINE)


def _rule_line(text: str, index: int, rule_id: Any) -> int | None:
    """The line where rule `index` starts: its [[rules]] header in TOML, else its id."""
    headers = list(_TOML_RULE_HEADER.finditer(text))
    if index < len(headers):
        return text.count("\n", 0, headers[index].start()) + 1
    if isinstance(rule_id, str):
        match = re.search(r"[\"']?id[\"']?\s*[:=]\s*" + re.escape(json.dumps(rule_id)), text)
        if match:
            return text.count("\n", 0, match.start()) + 1
    return None
