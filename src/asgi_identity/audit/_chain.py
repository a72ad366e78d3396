"""The chain format: each record's MAC covers the previous MAC and the record's canonical JSON."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

_MIN_KEY_BYTES: Final = 16


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def mac(key: bytes, previous: str, canonical: bytes) -> str:
    return hmac.new(key, previous.encode("ascii") + b"\n" + canonical, hashlib.sha256).hexdigest()


def key_bytes(key: bytes | str, where: str) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError(f"{where}: the audit key must be bytes or str")
    if not key:
        raise ValueError(f"{where}: the audit key must not be empty")
    return key


def file_key(key: bytes | str) -> bytes:
    key = key_bytes(key, "AuditFile")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"AuditFile: the audit key must be at least {_MIN_KEY_BYTES} bytes")
    return key
