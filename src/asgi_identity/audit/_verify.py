"""One audit file checked with the public key alone: its bytes, its chain, its signatures."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from asgi_identity.audit._chain import FORMAT_VERSION, NotCanonical, line_hash, parse_line
from asgi_identity.audit._keys import signature_holds

_HASH: Final = re.compile(r"[0-9a-f]{64}")
_ENDS: Final = (None, "rotate", "shutdown")


@dataclass(slots=True)
class FileReport:
    """What one file holds, as far as it verified. `line` and `problem` name the first fault."""

    path: Path
    line: int | None = None
    problem: str | None = None
    writer: str | None = None
    pid: int | None = None
    host: str | None = None
    part: int = 0
    prev: str | None = None  # the genesis's link to the file before
    start_records: int = 0
    start_digests: int = 0
    records: int = 0  # the writer's records up to the end of this file
    digests: int = 0  # the number of the last digest
    signed_records: int = 0  # records covered by the last digest
    lost: int = 0
    end: str | None = None  # the closing digest's "end": "rotate", "shutdown" or None
    end_hash: str | None = None  # the hash of the last whole line, which a next file continues
    digest_hash: str | None = None  # the hash of the last digest line
    key: Ed25519PublicKey | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Records after the last digest: not covered by any signature yet."""
        return self.records - self.signed_records


class _Fault(Exception):
    def __init__(self, line: int, reason: str) -> None:
        self.line, self.reason = line, reason


def verify_file(path: Path, keys: Mapping[str, Ed25519PublicKey]) -> FileReport:
    report = FileReport(path)
    previous: tuple[bytes, str] | None = None  # the last whole line and its kind
    number = 0
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                if not raw.endswith(b"\n"):
                    raise _Fault(number, "cut mid-record: the last line has no end")
                line = raw[:-1]
                if report.problem is None:
                    try:
                        kind = _check(report, number, line, previous, keys)
                    except _Fault as fault:
                        report.line, report.problem = fault.line, fault.reason
                        kind = "?"
                else:
                    kind = "?"
                previous = (line, kind)
    except _Fault as fault:
        if report.problem is None:
            report.line, report.problem = fault.line, fault.reason
    if number == 0 and report.problem is None:
        report.line, report.problem = 1, "empty: no genesis record"
    if previous is not None:
        report.end_hash = line_hash(previous[0])
    return report


def _check(
    report: FileReport,
    number: int,
    line: bytes,
    previous: tuple[bytes, str] | None,
    keys: Mapping[str, Ed25519PublicKey],
) -> str:
    try:
        record = parse_line(line)
    except NotCanonical as exc:
        raise _Fault(number, str(exc)) from None
    kind = record.get("kind")
    if previous is None:
        if kind != "genesis":
            raise _Fault(number, "the file does not start with a genesis record")
        _genesis(report, record, keys)
        return "genesis"
    if report.end is not None:
        raise _Fault(number, f"a line after the closing digest (end: {report.end})")
    if kind == "record":
        _record(report, number, record)
    elif kind == "digest":
        _digest(report, number, record)
    elif kind == "genesis":
        raise _Fault(number, "a second genesis record inside the file")
    else:
        raise _Fault(number, f"not an audit line (kind {kind!r})")
    if record.get("prev") != line_hash(previous[0]):
        if previous[1] in ("genesis", "digest"):
            raise _Fault(
                number,
                f"does not follow line {number - 1}, which is signed: a line between them "
                "was removed, or this line was edited",
            )
        raise _Fault(
            number - 1,
            f"changed after it was written, or the line after it removed: line {number} holds "
            "another hash for the line before it",
        )
    if kind == "digest":
        report.digest_hash = line_hash(line)
    return str(kind)


def _genesis(
    report: FileReport, record: dict[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> None:
    if record.get("v") != FORMAT_VERSION:
        raise _Fault(1, f"format version {record.get('v')!r} is not {FORMAT_VERSION}")
    fields = {
        "writer": str,
        "pid": int,
        "host": str,
        "file": str,
        "part": int,
        "kid": str,
        "records": int,
        "digests": int,
        "lost": int,
    }
    for name, kind in fields.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise _Fault(1, f"the genesis record has no valid {name}")
    prev = record.get("prev")
    if prev is not None and not (isinstance(prev, str) and _HASH.fullmatch(prev)):
        raise _Fault(1, "the genesis record has no valid prev")
    key = keys.get(record["kid"])
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        raise _Fault(1, f"signed with key {record['kid']}, not a given public key ({known})")
    if not signature_holds(key, record):
        raise _Fault(1, "the genesis signature does not hold: the genesis was changed or forged")
    report.writer, report.pid, report.host = record["writer"], record["pid"], record["host"]
    report.part, report.prev = record["part"], prev
    report.start_records = report.records = report.signed_records = record["records"]
    report.start_digests = report.digests = record["digests"]
    report.lost = record["lost"]
    report.key = key
    if record["file"] != report.path.name:
        raise _Fault(
            1,
            f"its genesis names {record['file']} (writer {record['writer'][:8]}, pid "
            f"{record['pid']} on {record['host']}): files were swapped or renamed",
        )


def _record(report: FileReport, number: int, record: dict[str, Any]) -> None:
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise _Fault(number, "a record without a seq")
    expected = report.records + 1
    if seq > expected:
        raise _Fault(
            number,
            f"record {expected} is missing: record {seq} follows record {report.records} "
            "(removed or moved)",
        )
    if seq < expected:
        raise _Fault(number, f"record {seq} is out of place: it follows record {report.records}")
    report.records = seq


def _digest(report: FileReport, number: int, record: dict[str, Any]) -> None:
    digest, records = record.get("digest"), record.get("records")
    if not isinstance(digest, int) or not isinstance(records, int):
        raise _Fault(number, "a digest without its number or record count")
    if report.key is None or not signature_holds(report.key, record):
        raise _Fault(number, f"digest {digest}: its signature does not hold (changed or forged)")
    if digest != report.digests + 1:
        raise _Fault(
            number,
            f"digest {report.digests + 1} is missing: digest {digest} follows digest "
            f"{report.digests}",
        )
    if records != report.records:
        raise _Fault(
            number,
            f"digest {digest} counts {records} records, the file holds {report.records}",
        )
    end = record.get("end")
    if end not in _ENDS:
        raise _Fault(number, f"digest {digest}: unknown end {end!r}")
    lost = record.get("lost")
    report.digests, report.signed_records, report.end = digest, records, end
    report.lost = lost if isinstance(lost, int) else report.lost
