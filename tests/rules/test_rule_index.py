"""The rule index: path patterns, rule order, and agreement with reading every rule in turn."""

from __future__ import annotations

import fnmatch
import random
from typing import Any

import pytest

from _asgi import Recorder
from _policy_support import IDENTITIES
from asgi_identity import Actor, Identity
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.rules import Rule


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/v1/chat/*", "/v1/chat/completions", True),
        ("/v1/chat/*", "/v1/chat/a/b", True),
        ("/v1/chat/*", "/v1/chat", False),
        ("/v1/chat/*", "/v1/chatter/x", False),
        ("/v1/*/jobs", "/v1/fine_tuning/jobs", True),
        ("/v1/*/jobs", "/v1/a/b/jobs", False),
        ("/v1/models/{model}", "/v1/models/gpt-4o", True),
        ("/v1/models/{model}", "/v1/models", False),
        ("/v1/models/{model}", "/v1/models/a/b", False),
        ("/v1/models", "/v1/models/", True),
        ("/v1/models", "//v1//models", True),
        ("/", "/", True),
        ("/*", "/anything/at/all", True),
        ("/*", "/", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    policy = RoutePolicy(Recorder(), rules=[Rule(id="r", paths=[pattern])])
    assert policy.decide(IDENTITIES["anonymous"], "GET", path).allowed is matches


def test_literal_and_wildcard_rules_keep_their_order() -> None:
    rules = [
        Rule(id="any-v1", effect="deny", paths=["/v1/*"], groups=["free"]),
        Rule(id="exact", paths=["/v1/models"]),
        Rule(id="param", effect="deny", paths=["/v1/{name}"]),
    ]
    policy = RoutePolicy(Recorder(), rules=rules)
    assert policy.decide(IDENTITIES["free_user"], "GET", "/v1/models").rule_id == "any-v1"
    assert policy.decide(IDENTITIES["pro_user"], "GET", "/v1/models").rule_id == "exact"
    assert policy.decide(IDENTITIES["pro_user"], "GET", "/v1/files").rule_id == "param"


def test_a_thousand_rules_still_pick_the_first_match() -> None:
    rules = [
        Rule(id=f"tenant-{i}", paths=[f"/t/{i}/*"], tenants=[f"t{i}"], methods=["POST"])
        for i in range(1000)
    ]
    rules.append(Rule(id="late-catch-all", effect="deny", paths=["/t/*"]))
    policy = RoutePolicy(Recorder(), rules=rules)
    tenant = Identity(source="jwt", user_id="u", tenant="t999")
    assert policy.decide(tenant, "POST", "/t/999/chat").rule_id == "tenant-999"
    assert policy.decide(tenant, "POST", "/t/998/chat").rule_id == "late-catch-all"
    assert [r.id for r in policy.rules.matching(tenant, "POST", "/t/5/x")] == ["late-catch-all"]


def _naive_path_match(pattern: str, path: str) -> bool:
    want = [s for s in pattern.split("/") if s]
    have = [s for s in path.split("/") if s]
    if want and want[-1] == "*":
        head = want[:-1]
        return len(have) > len(head) and all(
            w in ("*", have[i]) or w.startswith("{") for i, w in enumerate(head)
        )
    return len(want) == len(have) and all(
        w in ("*", h) or w.startswith("{") for w, h in zip(want, have, strict=True)
    )


def _naive_decide(
    rules: list[Rule], default: str, identity: Identity, method: str, path: str, model: str | None
) -> str:
    """First match by reading every rule, as the docs describe it: the index must agree."""
    for rule in rules:
        methods = set(rule.methods) | ({"HEAD"} if "GET" in rule.methods else set())
        if methods and method not in methods:
            continue
        if rule.paths and not any(_naive_path_match(p, path) for p in rule.paths):
            continue
        if rule.models and (
            model is None
            or not any(fnmatch.fnmatchcase(model.lower(), m.lower()) for m in rule.models)
        ):
            continue
        checks = [
            not rule.roles or bool(set(rule.roles) & identity.roles),
            not rule.scopes or bool(set(rule.scopes) & identity.scopes),
            not rule.groups or identity.group in rule.groups,
            not rule.tenants or identity.tenant in rule.tenants,
            not rule.sources or identity.source in rule.sources,
            not rule.users or identity.user_id in rule.users,
            not rule.clients or identity.client_id in rule.clients,
            not (set(rule.without_roles) & identity.roles),
            not (set(rule.without_scopes) & identity.scopes),
            identity.group not in rule.without_groups,
            rule.agent is None or rule.agent == (identity.actor is not None),
        ]
        if all(checks):
            return rule.id
    return "default"


def test_indexed_evaluation_agrees_with_reading_every_rule() -> None:
    rng = random.Random(9)
    values = {
        "roles": ["admin", "user", "ops"], "scopes": ["chat", "files", "ai:delegate"],
        "groups": ["free", "pro", "enterprise"], "tenants": ["acme", "globex"],
        "sources": ["jwt", "api_key", "anonymous"], "users": ["alice", "bob"],
        "clients": ["app-1", "app-2"], "without_roles": ["admin"],
        "without_scopes": ["ai:delegate"], "without_groups": ["free"],
    }  # fmt: skip
    patterns = [
        "/v1/chat/*",
        "/v1/chat/completions",
        "/v1/*/jobs",
        "/v1/models/{model}",
        "/admin/*",
        "/",
        "/*",
    ]
    rules: list[Rule] = []
    for i in range(400):
        fields: dict[str, Any] = {
            name: rng.sample(options, rng.randint(1, min(2, len(options))))
            for name, options in values.items()
            if rng.random() < 0.35
        }
        if rng.random() < 0.7:
            fields["paths"] = rng.sample(patterns, rng.randint(1, 2))
        if rng.random() < 0.3:
            fields["methods"] = rng.sample(["GET", "POST", "DELETE"], 1)
        if rng.random() < 0.2:
            fields["models"] = rng.sample(["gpt-4o*", "o1", "claude-*"], 1)
        if rng.random() < 0.1:
            fields["agent"] = rng.random() < 0.5
        rules.append(Rule(id=f"r{i}", effect=rng.choice(["allow", "deny"]), **fields))
    policy = RoutePolicy(Recorder(), rules=rules)
    paths = [
        "/v1/chat/completions",
        "/v1/chat/a/b",
        "/v1/fine_tuning/jobs",
        "/v1/models/o1",
        "/admin/x",
        "/",
        "/v2",
    ]
    decided: list[str] = []
    for _ in range(3000):
        identity = Identity(
            source=rng.choice(["jwt", "api_key", "anonymous", "header"]),
            user_id=rng.choice(["alice", "bob", None]),
            client_id=rng.choice(["app-1", "app-2", None]),
            tenant=rng.choice(["acme", "globex", None]),
            group=rng.choice(["free", "pro", "enterprise", None]),
            roles=frozenset(rng.sample(values["roles"], rng.randint(0, 2))),
            scopes=frozenset(rng.sample(values["scopes"], rng.randint(0, 2))),
            actor=Actor("agent") if rng.random() < 0.3 else None,
        )
        method, path = rng.choice(["GET", "HEAD", "POST", "DELETE"]), rng.choice(paths)
        model = rng.choice(["gpt-4o-mini", "O1", "claude-3", None])
        decided.append(policy.decide(identity, method, path, model).rule_id)
        assert decided[-1] == _naive_decide(rules, "deny", identity, method, path, model), (
            identity,
            method,
            path,
            model,
        )
    # The sample must exercise the index, not only the default.
    assert len(set(decided)) > 50
    assert decided.count("default") < len(decided) / 2
