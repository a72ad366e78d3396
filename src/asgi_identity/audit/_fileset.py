"""verify_audit(): a set of audit files, each checked alone, then in order across rotations and
restarts, and against what an earlier verification saw (rollbacks, swaps, removed files)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asgi_identity.audit._keys import PublicKeySource, key_id, load_public_key
from asgi_identity.audit._verify import FileReport, verify_file


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    reason: str


@dataclass(slots=True)
class AuditReport:
    """The result of `verify_audit()`: true when every file and the set as a whole hold.

    `problems` name each file's first fault (line and reason) and the set's (gaps, swaps,
    rollbacks, cut ends); `notes` say what holds but deserves a look; `state` is what to save
    and pass to the next verification (`verify_audit(state=...)`).
    """

    files: list[FileReport]
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok


def verify_audit(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    public_keys: PublicKeySource | Iterable[PublicKeySource],
    *,
    state: Mapping[str, Any] | None = None,
    live: bool = False,
) -> AuditReport:
    """Verify audit files (a directory stands for its `*.jsonl` files) with the public key(s).

    - `state`: the `AuditReport.state` of an earlier verification of the same set: a file that
      went back to fewer digests (rolled back), changed writer (swapped) or is gone is a problem.
    - `live`: the writers are still running, so the last file of each may end with records not
      signed yet, as a note, instead of being reported as cut.
    """
    keys = {key_id(key): key for key in map(load_public_key, _listed(public_keys))}
    files = [verify_file(path, keys) for path in _expand(paths)]
    report = AuditReport(files)
    for file in files:
        if file.problem is not None:
            report.problems.append(Problem(file.path.name, file.line, file.problem))
    report.files = _in_order(files, _link(report, live))
    if state is not None:
        _compare(report, state)
    if report.ok:
        report.state = {
            "version": 1,
            "files": {
                file.path.name: {
                    "writer": file.writer,
                    "pid": file.pid,
                    "part": file.part,
                    "digests": file.digests,
                    "records": file.signed_records,
                    "digest_hash": file.digest_hash,
                }
                for file in files
            },
        }
    return report


def _listed(keys: PublicKeySource | Iterable[PublicKeySource]) -> list[PublicKeySource]:
    if isinstance(keys, (str, bytes, os.PathLike)) or not isinstance(keys, Iterable):
        return [keys]
    return list(keys)


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for item in map(Path, given):
        found.extend(sorted(item.glob("*.jsonl")) if item.is_dir() else [item])
    return found


def _in_order(files: list[FileReport], following: dict[int, FileReport]) -> list[FileReport]:
    """Each chain from its first file on, across rotations and restarts."""
    continuing = {id(file) for file in following.values()}
    ordered: list[FileReport] = []
    for first in files:
        file: FileReport | None = first
        if id(first) in continuing:
            continue
        while file is not None:
            ordered.append(file)
            file = following.get(id(file))
    placed = {id(file) for file in ordered}
    return ordered + [file for file in files if id(file) not in placed]


def _link(report: AuditReport, live: bool) -> dict[int, FileReport]:
    """Put the files in order: each genesis names the last line of the file before it."""
    problems, notes = report.problems, report.notes
    by_end: dict[str, FileReport] = {}
    for file in report.files:
        if file.end_hash is not None and file.writer is not None:
            by_end.setdefault(file.end_hash, file)
    following: dict[int, FileReport] = {}
    for file in report.files:
        if file.writer is None or file.prev is None:
            continue
        before = by_end.get(file.prev)
        name = file.path.name
        if before is None:
            problems.append(
                Problem(
                    name,
                    1,
                    f"the file before it is missing: its genesis continues a file ending in "
                    f"line {file.prev[:16]}..., not among those given (removed, or rolled back "
                    "to an earlier copy)",
                )
            )
            continue
        if id(before) in following:
            problems.append(
                Problem(
                    name,
                    1,
                    f"{following[id(before)].path.name} and {name} both continue "
                    f"{before.path.name}: one of them is not what its writer wrote there",
                )
            )
            continue
        following[id(before)] = file
        _check_link(report, before, file)
    for file in report.files:
        if file.writer is None or id(file) in following:
            continue
        name = file.path.name
        if file.end == "rotate":
            problems.append(
                Problem(name, None, f"rotated, but its next file (part {file.part + 1}) is missing")
            )
        elif file.end is None and file.ok:
            where = (
                f"{file.unsigned} records after digest {file.digests} are not signed"
                if file.unsigned
                else f"it ends at digest {file.digests}"
                if file.digests > file.start_digests
                else "it ends at its genesis"
            )
            if live:
                notes.append(Problem(name, None, f"open: {where} (its writer is running)"))
            else:
                problems.append(
                    Problem(
                        name,
                        None,
                        f"cut end: {where}, and there is no closing digest (the file was cut, "
                        "or its writer is still running or stopped without shutting down)",
                    )
                )
    for file in report.files:
        after = following.get(id(file))
        if file.lost and (after is None or after.writer != file.writer):
            notes.append(
                Problem(file.path.name, None, f"its writer lost {file.lost} records (see its log)")
            )
    return following


def _check_link(report: AuditReport, before: FileReport, file: FileReport) -> None:
    name = file.path.name
    if before.writer == file.writer:
        if before.end != "rotate" or file.part != before.part + 1:
            report.problems.append(
                Problem(name, 1, f"does not follow {before.path.name} as its next part")
            )
        elif (file.start_records, file.start_digests) != (before.records, before.digests):
            report.problems.append(
                Problem(
                    name,
                    1,
                    f"starts after record {file.start_records} and digest {file.start_digests}, "
                    f"but {before.path.name} ends at record {before.records} and digest "
                    f"{before.digests}",
                )
            )
    elif before.end == "rotate":
        report.problems.append(
            Problem(
                name,
                1,
                f"swapped: {before.path.name} rotated to its own next file, but this one is "
                f"by another writer ({file.writer or '?'})",
            )
        )
    elif before.end is None and before.ok:
        report.notes.append(
            Problem(
                before.path.name,
                None,
                f"its writer stopped without a closing digest; its last {before.unsigned} "
                f"records are covered by the genesis of {name}",
            )
        )


def _compare(report: AuditReport, state: Mapping[str, Any]) -> None:
    """What an earlier verification saw: nothing may shrink, change writer or disappear."""
    seen = state.get("files")
    if not isinstance(seen, Mapping):
        raise ValueError("verify_audit: state is not an AuditReport.state")
    present = {file.path.name: file for file in report.files}
    for name, before in seen.items():
        if not isinstance(before, Mapping):
            raise ValueError("verify_audit: state is not an AuditReport.state")
        file = present.get(name)
        if file is None:
            report.problems.append(
                Problem(
                    name,
                    None,
                    f"missing: verified before ({before.get('records')} records, "
                    f"{before.get('digests')} digests), not among the files given",
                )
            )
        elif file.writer is not None and file.writer != before.get("writer"):
            report.problems.append(
                Problem(
                    name,
                    1,
                    f"swapped: written by writer {file.writer[:8]} (pid {file.pid}), but an "
                    f"earlier verification saw writer {str(before.get('writer'))[:8]} (pid "
                    f"{before.get('pid')}) here",
                )
            )
        elif file.digests < before.get("digests", 0):
            report.problems.append(
                Problem(
                    name,
                    None,
                    f"rolled back: its last digest is {file.digests} ({file.signed_records} "
                    f"records), but an earlier verification saw digest {before.get('digests')} "
                    f"({before.get('records')} records)",
                )
            )
        elif file.digests == before.get("digests") and file.digest_hash != before.get(
            "digest_hash"
        ):
            report.problems.append(
                Problem(
                    name,
                    None,
                    f"rewritten: digest {file.digests} is not the one an earlier verification "
                    "saw (only a holder of the signing key can do that)",
                )
            )
