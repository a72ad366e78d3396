"""verify_audit_file(): does the chain hold, and where does it first break?"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from asgi_identity.audit._chain import canonical, key_bytes, mac


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The result of `verify_audit_file()`: true when the whole chain holds.

    `line` (1-based) and `reason` name the first broken record; `records` counts the records
    verified before it. Keep `last_mac` somewhere else to detect records cut from the end.
    """

    ok: bool
    records: int
    line: int | None = None
    reason: str | None = None
    last_mac: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def verify_audit_file(path: str | Path, key: bytes | str) -> AuditVerification:
    """Check every record's sequence number and MAC chain; name the first broken record."""
    key = key_bytes(key, "verify_audit_file")
    previous = ""
    count = 0

    def broken(line: int, reason: str) -> AuditVerification:
        return AuditVerification(False, count, line, reason, previous or None)

    with Path(path).open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            if not raw.strip():
                return broken(line_number, "empty line inside the file")
            try:
                record = json.loads(raw)
            except ValueError:
                return broken(line_number, "not a JSON record (truncated or edited)")
            if not isinstance(record, dict):
                return broken(line_number, "not a JSON object")
            found = record.pop("mac", None)
            seq = record.get("seq")
            if not isinstance(found, str) or not isinstance(seq, int) or isinstance(seq, bool):
                return broken(line_number, "the record has no seq or mac")
            expected = count + 1
            if seq > expected:
                return broken(
                    line_number,
                    f"record {expected} is missing: the sequence jumps from {count} to {seq} "
                    "(removed or moved)",
                )
            if seq < expected:
                return broken(
                    line_number,
                    f"record {seq} is out of order: it comes after record {count}",
                )
            if not hmac.compare_digest(found, mac(key, previous, canonical(record))):
                return broken(
                    line_number,
                    f"record {seq} was changed: its MAC does not match (or the key is wrong)",
                )
            previous = found
            count += 1
    return AuditVerification(True, count, None, None, previous or None)
