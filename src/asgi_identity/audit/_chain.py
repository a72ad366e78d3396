"""The file format: one canonical JSON object per line, each holding the hash of the line before.

A line's hash is SHA-256 over its exact bytes (without the newline), so the verifier judges what
is on disk, not what a JSON reader makes of it: a line that is not byte for byte the canonical
serialisation of what it parses to (a duplicate member, members out of order, a character escaped
another way, a space) is refused before its content is believed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

#: The version of the line format, in every genesis record.
FORMAT_VERSION: Final = 1

# Members the writer sets on every line; a record handed to AuditFile.append() cannot set them.
RESERVED: Final = frozenset({"kind", "seq", "prev", "sig"})

_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=True,  # one spelling for every character: no UTF-8 or surrogate ambiguity
    allow_nan=False,
    sort_keys=True,
    separators=(",", ":"),
)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one serialisation of `record`: sorted members, no spaces, ASCII with JSON escapes."""
    return _ENCODER.encode(record).encode("ascii")


def line_hash(line: bytes) -> str:
    """What the next line's `prev` holds: SHA-256 of this line's bytes, without its newline."""
    return hashlib.sha256(line).hexdigest()


class NotCanonical(ValueError):
    """A line that is not the canonical serialisation of a JSON object; the message says how."""


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise _Duplicate(name)
        found[name] = value
    return found


def _no_constant(name: str) -> Any:
    raise NotCanonical(f"{name} is not a JSON number")


def parse_line(line: bytes) -> dict[str, Any]:
    """The object on `line`, which must be its canonical serialisation (NotCanonical if not)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise NotCanonical(
            "not canonical: a byte outside ASCII (characters are written as \\u escapes)"
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise NotCanonical(f'not canonical: the member "{exc}" appears twice') from None
    except NotCanonical:
        raise
    except (ValueError, RecursionError):  # RecursionError: nested past what a reader can take
        raise NotCanonical("not a JSON line (cut, or edited)") from None
    if not isinstance(value, dict):
        raise NotCanonical("not a JSON object")
    try:
        again = canonical(value)
    except ValueError:  # a number out of range (1e400 reads as infinity)
        raise NotCanonical("not canonical: a number out of range") from None
    if again != line:
        raise NotCanonical(_difference(text))
    return value


def _difference(text: str) -> str:
    names = _top_level_names(text)
    if names is not None and names != sorted(names):
        return "not canonical: its members are not in sorted order"
    if any(ch in " \t\r" for ch in _outside_strings(text)):
        return "not canonical: spaces between its members"
    # Members out of order inside a nested object land here too.
    return "not canonical: a value is written another way (re-escaped characters or numbers)"


def _top_level_names(text: str) -> list[str] | None:
    try:
        return [name for name, _ in json.loads(text, object_pairs_hook=lambda p: p)]
    except (ValueError, TypeError):  # pragma: no cover - parsed once already
        return None


def _outside_strings(text: str) -> str:
    """`text` without the contents of its JSON strings."""
    kept = []
    inside = escaped = False
    for ch in text:
        if inside:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                inside = False
        elif ch == '"':
            inside = True
        else:
            kept.append(ch)
    return "".join(kept)
