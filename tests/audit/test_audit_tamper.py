"""Tampering with a real audit file, each way, caught by `asgi-identity audit-verify` run as a user
runs it, with the public key only; the report names the first bad line and why."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _audit_support import (
    SIGNING_KEY,
    decision,
    edit_lines,
    key_files,
    parsed,
    read_lines,
    run_cli,
    write_audit,
)
from asgi_identity.audit import AuditFile, key_id, verify_audit
from asgi_identity.audit._chain import NotCanonical, parse_line

CUT = (
    "and there is no closing digest (the file was cut, or its writer is still running or "
    "stopped without shutting down)"
)

# The file every case starts from (7 records, a digest after every 3, closed):
#   line 1 genesis | 2-4 records 1-3 | 5 digest 1 | 6-8 records 4-6 | 9 digest 2 |
#   10 record 7 | 11 digest 3, end "shutdown". Records 2, 4 and 6 are denials.


def replace(line: int, old: bytes, new: bytes) -> Callable[[list[bytes]], list[bytes]]:
    def change(lines: list[bytes]) -> list[bytes]:
        assert old in lines[line - 1], lines[line - 1]
        lines[line - 1] = lines[line - 1].replace(old, new, 1)
        return lines

    return change


def delete(line: int) -> Callable[[list[bytes]], list[bytes]]:
    def change(lines: list[bytes]) -> list[bytes]:
        del lines[line - 1]
        return lines

    return change


def swap_signatures(lines: list[bytes]) -> list[bytes]:
    """Digest 2 given digest 1's signature: a well-formed signature, over other bytes."""
    first, second = json.loads(lines[4])["sig"], json.loads(lines[8])["sig"]
    lines[8] = lines[8].replace(second.encode(), first.encode())
    return lines


def cut_mid_line(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][:40]
    return lines


TAMPERING = [
    pytest.param(
        replace(3, b'"user_id":"user-1"', b'"user_id":"user-9"'),
        "line 3: changed after it was written, or the line after it removed: line 4 holds "
        "another hash for the line before it",
        id="an-edited-byte",
    ),
    pytest.param(
        replace(3, b'"outcome":"deny"', b'"outcome":"allow","outcome":"deny"'),
        'line 3: not canonical: the member "outcome" appears twice',
        id="a-duplicate-member-read-first-by-some-parsers",
    ),
    pytest.param(
        replace(3, b'"layer":"Test","outcome":"deny"', b'"outcome":"deny","layer":"Test"'),
        "line 3: not canonical: its members are not in sorted order",
        id="reordered-members",
    ),
    pytest.param(
        replace(3, b'"/v1/models"', b'"\\/v1\\/models"'),
        "line 3: not canonical: a value is written another way (re-escaped characters or numbers)",
        id="a-re-escaped-character",
    ),
    pytest.param(
        replace(3, b'"user-1"', b'"\\u0075ser-1"'),
        "line 3: not canonical: a value is written another way (re-escaped characters or numbers)",
        id="a-letter-written-as-an-escape",
    ),
    pytest.param(
        replace(3, b',"path"', b', "path"'),
        "line 3: not canonical: spaces between its members",
        id="a-space",
    ),
    pytest.param(
        delete(3),
        "line 3: record 2 is missing: record 3 follows record 1 (removed or moved)",
        id="a-deleted-record",
    ),
    pytest.param(
        delete(5),
        "line 4: changed after it was written, or the line after it removed: line 5 holds "
        "another hash for the line before it",
        id="a-deleted-digest",
    ),
    pytest.param(
        lambda lines: replace(2, b'"seq":2', b'"seq":1')(delete(2)(lines)),
        "line 2: does not follow line 1, which is signed: a line between them was removed, or "
        "this line was edited",
        id="the-first-record-deleted-with-its-number-fixed-up",
    ),
    pytest.param(
        lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]],
        "line 3: record 2 is missing: record 3 follows record 1 (removed or moved)",
        id="two-records-swapped",
    ),
    pytest.param(
        cut_mid_line,
        "line 11: cut mid-record: the last line has no end",
        id="the-end-cut-mid-line",
    ),
    pytest.param(
        lambda lines: lines[:-1],
        f"cut end: 1 records after digest 2 are not signed, {CUT}",
        id="the-closing-digest-cut",
    ),
    pytest.param(
        lambda lines: lines[:-2],
        f"cut end: it ends at digest 2, {CUT}",
        id="cut-back-to-a-digest",
    ),
    pytest.param(
        swap_signatures,
        "line 9: digest 2: its signature does not hold (changed or forged)",
        id="a-replaced-digest-signature",
    ),
    pytest.param(
        replace(11, b'"records":7', b'"records":6'),
        "line 11: digest 3: its signature does not hold (changed or forged)",
        id="a-digest-count-edited",
    ),
    pytest.param(
        replace(1, b'"part":0', b'"part":1'),
        "line 1: the genesis signature does not hold: the genesis was changed or forged",
        id="an-edited-genesis",
    ),
    pytest.param(
        lambda lines: lines[1:],
        "line 1: the file does not start with a genesis record",
        id="the-genesis-removed",
    ),
    pytest.param(
        lambda lines: [*lines, lines[-2]],
        "line 12: a line after the closing digest (end: shutdown)",
        id="a-line-appended-after-shutdown",
    ),
]


@pytest.mark.parametrize(("tamper", "reason"), TAMPERING)
def test_each_kind_of_tampering_is_named_at_its_first_bad_line(
    tmp_path: Path, tamper: Callable[[list[bytes]], list[bytes]], reason: str
) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    intact = run_cli("audit-verify", str(path), "--public-key", str(public))
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.endswith("intact: 1 files, 7 records\n")

    edit_lines(path, tamper)
    result = run_cli("audit-verify", str(path), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (
        1,
        f"audit.jsonl: {reason}\ntampered: 1 problem\n",
    )
    assert result.stdout == ""


def test_an_intact_file_is_reported_with_its_writer(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    genesis = parsed(path)[0]
    result = run_cli("audit-verify", str(path), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"audit.jsonl: intact: writer {genesis['writer'][:8]} (pid {genesis['pid']} on "
        f"{genesis['host']}), part 0, records 1-7, 3 digests, closed at shutdown\n"
        "intact: 1 files, 7 records\n"
    )


def test_swapped_worker_files_name_their_real_writer(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    first, second = tmp_path / "audit-111.jsonl", tmp_path / "audit-222.jsonl"
    write_audit(first, 4)
    write_audit(second, 5)
    writers = {path.name: parsed(path)[0] for path in (first, second)}
    first.rename(tmp_path / "swap")
    second.rename(first)
    (tmp_path / "swap").rename(second)
    result = run_cli("audit-verify", str(tmp_path), "--public-key", str(public))

    def swapped(name: str, other: str) -> str:
        genesis = writers[other]
        return (
            f"{name}: line 1: its genesis names {other} (writer {genesis['writer'][:8]}, pid "
            f"{genesis['pid']} on {genesis['host']}): files were swapped or renamed\n"
        )

    assert result.returncode == 1
    assert result.stderr == (
        swapped("audit-111.jsonl", "audit-222.jsonl")
        + swapped("audit-222.jsonl", "audit-111.jsonl")
        + "tampered: 2 problems\n"
    )


def test_a_rollback_to_an_earlier_copy_is_caught_against_the_saved_state(
    tmp_path: Path,
) -> None:
    _, public = key_files(tmp_path)
    path, state = tmp_path / "audit.jsonl", tmp_path / "verified.json"
    verify = ("audit-verify", str(path), "--public-key", str(public), "--state", str(state))
    file = AuditFile(path, SIGNING_KEY, digest_every=3)
    for number in range(3):
        file.append(decision(number))
    assert file.flush()
    shutil.copy(path, tmp_path / "backup.jsonl")  # genesis, 3 records, digest 1
    running = run_cli(*verify, "--live")
    assert running.returncode == 0, running.stderr
    assert "audit.jsonl: note: open: it ends at digest 1 (its writer is running)" in running.stdout
    for number in range(3, 7):
        file.append(decision(number))
    file.close()
    assert run_cli(*verify).returncode == 0
    assert json.loads(state.read_text())["files"]["audit.jsonl"]["digests"] == 3

    shutil.copy(tmp_path / "backup.jsonl", path)
    result = run_cli(*verify, "--live")
    assert (result.returncode, result.stderr) == (
        1,
        "audit.jsonl: rolled back: its last digest is 1 (3 records), but an earlier "
        "verification saw digest 3 (7 records)\ntampered: 1 problem\n",
    )
    # A failed verification leaves the saved state as it was.
    assert json.loads(state.read_text())["files"]["audit.jsonl"]["digests"] == 3


def test_a_file_swapped_for_another_writers_under_the_same_name_is_caught_by_the_state(
    tmp_path: Path,
) -> None:
    _, public = key_files(tmp_path)
    path, state = tmp_path / "audit.jsonl", tmp_path / "verified.json"
    write_audit(path, 4)
    verify = ("audit-verify", str(path), "--public-key", str(public), "--state", str(state))
    assert run_cli(*verify).returncode == 0
    before = parsed(path)[0]
    path.unlink()
    write_audit(path, 9)  # another writer's file, genuinely signed, under the same name
    after = parsed(path)[0]
    result = run_cli(*verify)
    assert (result.returncode, result.stderr) == (
        1,
        f"audit.jsonl: line 1: swapped: written by writer {after['writer'][:8]} (pid "
        f"{after['pid']}), but an earlier verification saw writer {before['writer'][:8]} (pid "
        f"{before['pid']}) here\ntampered: 1 problem\n",
    )


def rotated(tmp_path: Path) -> list[Path]:
    """One writer's 40 records over several files, rotated by size."""
    write_audit(tmp_path / "audit.jsonl", 40, rotate_bytes=2000)
    parts = [tmp_path / "audit.jsonl"]
    while (next_part := tmp_path / f"audit.{len(parts)}.jsonl").exists():
        parts.append(next_part)
    assert len(parts) >= 4
    return parts


def test_rotated_files_verify_in_order_as_one_chain(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    parts = rotated(tmp_path)
    # Given in any order: the chain orders them.
    result = run_cli("audit-verify", *map(str, reversed(parts)), "--public-key", str(public))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"intact: {len(parts)} files, 40 records\n")
    assert [parsed(part)[0]["part"] for part in parts] == list(range(len(parts)))


def test_a_removed_rotated_file_is_a_gap(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    parts = rotated(tmp_path)
    gone = parts[1]
    missing_end = parsed(parts[2])[0]["prev"]
    gone.unlink()
    result = run_cli("audit-verify", str(tmp_path), "--public-key", str(public))
    assert result.returncode == 1
    assert result.stderr == (
        "audit.2.jsonl: line 1: the file before it is missing: its genesis continues a file "
        f"ending in line {missing_end[:16]}..., not among those given (removed, or rolled back "
        "to an earlier copy)\n"
        "audit.jsonl: rotated, but its next file (part 1) is missing\n"
        "tampered: 2 problems\n"
    )


def test_the_last_rotated_file_removed_is_missing_too(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    parts = rotated(tmp_path)
    parts[-1].unlink()
    result = run_cli("audit-verify", str(tmp_path), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (
        1,
        f"{parts[-2].name}: rotated, but its next file (part {len(parts) - 1}) is missing\n"
        "tampered: 1 problem\n",
    )


def test_a_file_removed_since_the_last_verification_is_missing(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    write_audit(tmp_path / "audit-1.jsonl", 3)
    write_audit(tmp_path / "audit-2.jsonl", 3)
    state = tmp_path / "verified.json"
    verify = ("audit-verify", str(tmp_path), "--public-key", str(public), "--state", str(state))
    assert run_cli(*verify).returncode == 0
    (tmp_path / "audit-2.jsonl").unlink()
    result = run_cli(*verify)
    assert (result.returncode, result.stderr) == (
        1,
        "audit-2.jsonl: missing: verified before (3 records, 2 digests), not among the files "
        "given\ntampered: 1 problem\n",
    )


def test_a_file_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    forger = Ed25519PrivateKey.generate()
    file = AuditFile(path, forger)
    file.append(decision(1))
    file.close()
    result = run_cli("audit-verify", str(path), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (
        1,
        f"audit.jsonl: line 1: signed with key {key_id(forger)}, not a given public key "
        f"({key_id(SIGNING_KEY)})\ntampered: 1 problem\n",
    )


def test_json_report_for_machines(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    edit_lines(path, lambda lines: lines[:-1])
    result = run_cli("audit-verify", str(path), "--public-key", str(public), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problems"] == [
        {
            "file": "audit.jsonl",
            "line": None,
            "reason": f"cut end: 1 records after digest 2 are not signed, {CUT}",
        }
    ]
    [file] = report["files"]
    assert (file["records"], file["digests"], file["unsigned"], file["end"]) == (7, 2, 1, None)


def test_the_python_api_reports_the_same(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    report = verify_audit(path, SIGNING_KEY.public_key())
    assert report.ok
    assert bool(report)
    edit_lines(path, delete(3))
    report = verify_audit([path], [SIGNING_KEY.public_key()])
    assert not report
    [problem] = report.problems
    assert (problem.file, problem.line) == ("audit.jsonl", 3)
    assert report.state == {}  # nothing to save from a file that does not verify


def test_an_empty_file_has_no_genesis(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    (tmp_path / "audit.jsonl").write_bytes(b"")
    result = run_cli("audit-verify", str(tmp_path / "audit.jsonl"), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (
        1,
        "audit.jsonl: line 1: empty: no genesis record\ntampered: 1 problem\n",
    )


def test_lines_are_plain_ascii_whatever_the_names(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY)
    file.append({"outcome": "allow", "user_id": "zoë", "detail": "line\nbreak \ud800"})
    file.close()
    assert all(line.isascii() for line in read_lines(path))
    assert parsed(path)[1]["user_id"] == "zoë"
    assert verify_audit(path, SIGNING_KEY.public_key()).ok


def wait_for(path: Path, kinds: list[str]) -> None:
    # Waiting for the writer thread, bounded; not a timing assertion.
    deadline = time.monotonic() + 20
    while [line["kind"] for line in parsed(path)] != kinds:
        assert time.monotonic() < deadline, parsed(path)
        time.sleep(0.01)


def test_a_digest_is_signed_when_records_have_waited_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY, digest_every=1000, digest_seconds=0.05)
    file.append(decision(1))
    wait_for(path, ["genesis", "record", "digest"])
    report = verify_audit(path, SIGNING_KEY.public_key(), live=True)
    assert report.ok
    assert [note.reason for note in report.notes] == [
        "open: it ends at digest 1 (its writer is running)"
    ]
    file.close()


def test_files_rotate_by_age_once_they_hold_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY, rotate_seconds=0.05)
    file.append(decision(1))
    wait_for(path, ["genesis", "record", "digest"])
    assert parsed(path)[-1]["end"] == "rotate"
    file.close()
    assert [line["kind"] for line in parsed(tmp_path / "audit.1.jsonl")] == ["genesis", "digest"]
    assert verify_audit(tmp_path, SIGNING_KEY.public_key()).ok


def test_a_line_nested_past_what_a_reader_takes_is_refused_not_crashed_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_audit(path, 1)
    edit_lines(path, lambda lines: [*lines[:2], b"[" * 100_000 + b"\n", *lines[2:]])
    report = verify_audit(path, SIGNING_KEY.public_key())
    assert [(p.line, p.reason) for p in report.problems] == [
        (3, "not a JSON line (cut, or edited)")
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"x":1e400}', "not canonical: a number out of range"),
        (
            b'{"x":1E2}',
            "not canonical: a value is written another way (re-escaped characters or numbers)",
        ),
        (
            b'{"x":-0}',
            "not canonical: a value is written another way (re-escaped characters or numbers)",
        ),
        (b'{"x":NaN}', "NaN is not a JSON number"),
        (
            b'{"x":"caf\xc3\xa9"}',
            "not canonical: a byte outside ASCII (characters are written as \\u escapes)",
        ),
        (b"[1]", "not a JSON object"),
    ],
)
def test_numbers_and_bytes_have_one_spelling(line: bytes, reason: str) -> None:
    with pytest.raises(NotCanonical) as raised:
        parse_line(line)
    assert str(raised.value) == reason


def test_a_forger_who_re_chains_every_line_is_caught_at_the_next_digest(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    lines = read_lines(path)
    lines[2] = lines[2].replace(b'"outcome":"deny"', b'"outcome":"allow"')
    for index in range(3, len(lines)):  # every later prev recomputed: only a signature stops it
        line = json.loads(lines[index])
        line["prev"] = hashlib.sha256(lines[index - 1].rstrip(b"\n")).hexdigest()
        lines[index] = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    result = run_cli("audit-verify", str(path), "--public-key", str(public))
    assert (result.returncode, result.stderr) == (
        1,
        "audit.jsonl: line 5: digest 1: its signature does not hold (changed or forged)\n"
        "tampered: 1 problem\n",
    )
