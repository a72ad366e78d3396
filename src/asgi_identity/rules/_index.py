"""`CompiledPolicy`: rules in order, indexed by a path segment trie and one identity condition.

Compiling runs once at start-up. Per request, `CompiledPolicy.matching` finds the path's buckets
(a walk of a segment trie, memoized per path), collects each bucket's rules for the identity
(`_Bucket.collect`, a few dict lookups), then checks method and identity conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from asgi_identity._memo import Memo
from asgi_identity.identity import Identity
from asgi_identity.rules._compiled_rule import CompiledRule
from asgi_identity.rules._rule import ONE, REST, Rule, path_segments, split_path


class _Node:
    __slots__ = ("end", "literal", "one", "rest")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.one: _Node | None = None
        self.end: _Bucket | None = None  # rules whose pattern ends exactly here
        self.rest: _Bucket | None = None  # rules whose pattern ends here with a trailing `*`

    def child(self, segment: str) -> _Node:
        if segment == ONE:
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


#: Paths whose trie buckets are remembered (the method is checked per request, so it is not part
#: of the key). Paths with parameters are unbounded and a client picks them: the memo holds at most
#: 4096 paths and 1 MiB of them, and a path longer than 512 characters is walked every time
#: (remembered, 1,500 paths of 100 kB held 143 MiB).
_PATHS: Final = 4096
_LONGEST_PATH: Final = 512
_PATH_BUDGET: Final = 1 << 20


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
                segments = path_segments(compiled.id, pattern)
                trailing = bool(segments) and segments[-1] == REST
                for segment in segments[:-1] if trailing else segments:
                    node = node.child(segment)
                if trailing:
                    node.rest = node.rest or _Bucket()
                    node.rest.add(position, compiled)
                else:
                    node.end = node.end or _Bucket()
                    node.end.add(position, compiled)
        self._memo: Memo[str, tuple[_Bucket, ...]] = Memo(
            entries=_PATHS, largest=_LONGEST_PATH, budget=_PATH_BUDGET
        )

    def _buckets(self, path: str) -> tuple[_Bucket, ...]:
        found = self._memo.get(path)
        if found is None:
            buckets = [self._any_path]
            _walk(self._root, split_path(path), 0, buckets)
            found = tuple(buckets)
            self._memo.put(path, found, len(path))
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
