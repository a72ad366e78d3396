"""Writing rules: Python `Rule` records and rule files, and the errors a bad rule gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _asgi import Recorder
from _policy_support import DATA
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.rules import PolicyFileError, Rule


async def test_json_and_toml_files_hold_the_same_rules() -> None:
    toml = RoutePolicy(Recorder(), rules_file=DATA / "policy.toml")
    json_ = RoutePolicy(Recorder(), rules_file=DATA / "policy.json")
    assert [r.rule for r in toml.rules.rules] == [r.rule for r in json_.rules.rules]
    assert (toml.version, toml.default) == (json_.version, json_.default) == ("2025-06-01", "deny")


# --------------------------------------------------------------------------- configuration errors


BAD_FILES = [
    ("bad.toml", 'version = "1"\n\n[[rules]]\nid = "a"\npaths = ["/x"\n', "not valid TOML", 5),
    ("bad.toml", '[[rules]]\nid = "a"\nroles = [admin]\n', "not valid TOML", 3),
    ("bad.json", '{\n  "rules": [\n    {"id": "a",}\n  ]\n}\n', "not valid JSON", 3),
    ("bad.toml", '[[rules]]\nid = "a"\n\n[[rules]]\nid = "b"\neffect = "block"\n', "rule 2 ('b'): effect must be 'allow' or 'deny'", 4),
    ("bad.toml", '[[rules]]\nid = "a"\npaths = ["/v1/chat*"]\n', "segment 'chat*' is not supported", 1),
    ("bad.toml", '[[rules]]\nid = "a"\npaths = ["v1/chat"]\n', "must start with '/'", 1),
    ("bad.toml", '[[rules]]\nid = "a"\nroles = "admin"\n', "roles must be a list of strings", 1),
    ("bad.toml", '[[rules]]\nid = "a"\nmethods = ["FETCH"]\n', "unknown method(s) ['FETCH']", 1),
    ("bad.toml", '[[rules]]\nid = "a"\nsources = ["oauth"]\n', "unknown source(s) ['oauth']", 1),
    ("bad.toml", '[[rules]]\nid = "a"\nagent = "yes"\n', "agent must be true, false or absent", 1),
    ("bad.toml", '[[rules]]\npaths = ["/x"]\n', "every rule needs an `id`", 1),
    ("bad.toml", '[[rules]]\nid = "has space"\n', "rule id 'has space' must be", 1),
    ("bad.toml", '[[rules]]\nid = "default"\n', "reserved", 1),
    ("bad.toml", '[[rules]]\nid = "a"\n\n[[rules]]\nid = "a"\n', "rule id 'a' is used by rules 0 and 1", None),
    ("bad.toml", '[[rule]]\nid = "a"\n', "unknown top-level key(s) ['rule']", None),
    ("bad.toml", 'default = "block"\nrules = []\n', "default must be 'allow' or 'deny'", None),
    ("bad.toml", 'version = "1"\n', "must have a `rules` list", None),
    ("bad.json", '[{"id": "a"}]', "must hold a table/object", None),
    ("bad.json", '{"rules": [\n  {"id": "x"},\n  {"id": "y", "model": ["gpt-4o"]}\n]}', "unknown field(s) 'model' (did you mean 'models'?)", 3),
    ("bad.yaml", "rules: []\n", "must end in .toml or .json", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "reason", "line"), BAD_FILES)
def test_bad_rule_file_fails_at_start_up_with_the_line(
    tmp_path: Path, name: str, text: str, reason: str, line: int | None
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        RoutePolicy(Recorder(), rules_file=path)
    assert reason in str(caught.value)
    assert caught.value.line == line
    assert str(caught.value).startswith(str(path) + (f", line {line}" if line else ""))


def test_bad_rule_file_in_the_repository_names_the_rule_and_line() -> None:
    with pytest.raises(
        PolicyFileError,
        match=r"line 12: rule 3 \('admins'\): unknown field\(s\) 'role' \(did you mean 'roles'\?\)",
    ):
        RoutePolicy(Recorder(), rules_file=DATA / "policy_bad_rule.toml")


def test_missing_rule_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the rule file"):
        RoutePolicy(Recorder(), rules_file=tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roles": "admin"}, "roles must be a list"),
        ({"models": [""]}, "non-empty strings"),
        ({"effect": "permit"}, "effect must be"),
        ({"methods": ["get", "YEET"]}, "unknown method"),
    ],
)
def test_bad_python_rules_fail_when_written(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Rule(id="r", **kwargs)


def test_rule_normalizes_methods_and_keeps_path_order() -> None:
    rule = Rule(id="r", methods=["post", "get"], paths=["/b", "/a"], roles=["x", "x"])
    assert rule.methods == frozenset({"POST", "GET"})
    assert rule.paths == ("/b", "/a")
    assert rule.roles == frozenset({"x"})
