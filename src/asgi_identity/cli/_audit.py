"""`asgi-identity audit-keygen` and `audit-verify`: the signing pair, and files checked with the
public key alone (the audit package does the checking)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from asgi_identity.audit import AuditReport, key_id, load_public_key, public_key_pem, verify_audit
from asgi_identity.audit._keys import signing_key_pem
from asgi_identity.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    CommandError,
    write_file,
)


def add_audit_commands(commands: Any) -> None:
    # allow_abbrev=False: no prefix of an option is taken for it, so a mistyped `--k VALUE`
    # is refused (without echoing the value) instead of being read as some other option.
    keygen = commands.add_parser(
        "audit-keygen",
        help="make the Ed25519 pair that signs audit files",
        allow_abbrev=False,
    )
    keygen.add_argument("private_key", metavar="PRIVATE_PEM", help="where to write the private key")
    keygen.add_argument("--public-out", metavar="PEM", help="also write the public key here")
    keygen.set_defaults(handler=cmd_audit_keygen)

    verify = commands.add_parser(
        "audit-verify",
        help="check audit files with the public key",
        allow_abbrev=False,
    )
    verify.add_argument(
        "paths", nargs="+", metavar="PATH", help="audit files, or directories of *.jsonl files"
    )
    verify.add_argument(
        "--public-key",
        action="append",
        required=True,
        metavar="PEM",
        help="the writers' public key (repeat for several)",
    )
    verify.add_argument(
        "--state",
        metavar="FILE",
        help="what the last verification saw: catches rollbacks, swaps and removed files; "
        "updated when the files verify",
    )
    verify.add_argument(
        "--live",
        action="store_true",
        help="the writers are running: unsigned records at the end are a note, not a cut",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_audit_verify)


def cmd_audit_keygen(args: argparse.Namespace, out: TextIO) -> int:
    target = Path(args.private_key)
    if target.exists():
        raise CommandError(f"{target} exists: a signing key is never overwritten")
    key = Ed25519PrivateKey.generate()
    write_file(str(target), signing_key_pem(key), private=True)
    public = public_key_pem(key)
    if args.public_out:
        write_file(args.public_out, public)
    print(f"private key written to {target} (mode 0600): keep it with the gateway only", file=out)
    print(f"key id: {key_id(key)}", file=out)
    print(public.decode("ascii"), end="", file=out)
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    keys = []
    for number, path in enumerate(args.public_key, start=1):
        try:
            keys.append(load_public_key(Path(path), "--public-key"))
        except ValueError as exc:
            # The path is not repeated: a value mistyped into this option could be a secret.
            raise CommandError(f"public key {number}: {str(exc).split(': ', 1)[-1]}") from None
    state = _read_state(args.state) if args.state else None
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise CommandError(f"no such file: {missing[0]}", EXIT_UNAVAILABLE)
    try:
        report = verify_audit(args.paths, keys, state=state, live=args.live)
    except OSError as exc:
        raise CommandError(
            f"cannot read {exc.filename}: {exc.strerror}", EXIT_UNAVAILABLE
        ) from None
    if args.json:
        print(json.dumps(_as_json(report), indent=2), file=out)
    else:
        _print(report, out)
    if not report.ok:
        return EXIT_INVALID
    if args.state:
        _write_state(args.state, report.state)
    return EXIT_OK


def _print(report: AuditReport, out: TextIO) -> None:
    for problem in report.problems:
        where = f"line {problem.line}: " if problem.line is not None else ""
        print(f"{problem.file}: {where}{problem.reason}", file=sys.stderr)
    for note in report.notes:
        print(f"{note.file}: note: {note.reason}", file=out)
    faulty = {problem.file for problem in report.problems}
    for file in report.files:
        if file.path.name in faulty:
            continue
        ending = {"shutdown": "closed at shutdown", "rotate": "rotated"}.get(file.end or "", "open")
        print(
            f"{file.path.name}: intact: writer {(file.writer or '?')[:8]} (pid {file.pid} on "
            f"{file.host}), part {file.part}, records {file.start_records + 1}-{file.records}, "
            f"{file.digests - file.start_digests} digests, {ending}",
            file=out,
        )
    if report.ok:
        records = sum(file.records - file.start_records for file in report.files)
        print(f"intact: {len(report.files)} files, {records} records", file=out)
    else:
        count = len(report.problems)
        print(f"tampered: {count} problem{'s' if count > 1 else ''}", file=sys.stderr)


def _as_json(report: AuditReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "problems": [vars_of(problem) for problem in report.problems],
        "notes": [vars_of(note) for note in report.notes],
        "files": [
            {
                "file": file.path.name,
                "ok": file.ok,
                "writer": file.writer,
                "pid": file.pid,
                "host": file.host,
                "part": file.part,
                "records": file.records - file.start_records,
                "digests": file.digests - file.start_digests,
                "unsigned": file.unsigned,
                "lost": file.lost,
                "end": file.end,
            }
            for file in report.files
        ],
    }


def vars_of(problem: Any) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "reason": problem.reason}


def _read_state(path: str) -> dict[str, Any] | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None  # the first verification starts it
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    try:
        state = json.loads(text)
    except ValueError:
        raise CommandError(f"{path} is not a verification state (JSON)") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise CommandError(f"{path} is not a verification state")
    return state


def _write_state(path: str, state: dict[str, Any]) -> None:
    temporary = f"{path}.tmp"
    write_file(temporary, json.dumps(state, indent=2, sort_keys=True).encode() + b"\n")
    try:
        os.replace(temporary, path)  # whole or not at all
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", EXIT_UNAVAILABLE) from None
