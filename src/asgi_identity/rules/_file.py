"""Policy files: a `rules` list with `version` and `default`, in TOML or JSON, with line hints."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from asgi_identity.rules._index import CompiledPolicy
from asgi_identity.rules._rule import Effect, Rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


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
