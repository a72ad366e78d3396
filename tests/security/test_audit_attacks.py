"""Red team: the signed audit trail and `asgi-identity audit-verify` under attack.

A passing test is a defence that holds; an xfail(strict) test names a FINDING.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import pytest

from _audit_support import (
    SIGNING_KEY,
    decision,
    key_files,
    read_lines,
    run_cli,
    write_audit,
)
from asgi_identity.audit import AuditFile, verify_audit
from asgi_identity.audit._chain import canonical
from asgi_identity.audit._keys import signing_key_pem


def _problems(*paths: Path, public: Path) -> list[str]:
    report = verify_audit([str(p) for p in paths], [public])
    assert not report.ok
    return [problem.reason for problem in report.problems]


def _rechain(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute every `prev` from line `start` on, as a forger without the key would."""
    out = list(lines)
    for index in range(start, len(out)):
        record = json.loads(out[index])
        record["prev"] = hashlib.sha256(out[index - 1].rstrip(b"\n")).hexdigest()
        out[index] = canonical(record) + b"\n"
    return out


def _rotated(tmp_path: Path) -> list[Path]:
    file = AuditFile(tmp_path / "audit.jsonl", SIGNING_KEY, digest_every=2, rotate_bytes=600)
    for number in range(12):
        file.append(decision(number))
        file.flush()
    file.close()
    paths = sorted(tmp_path.glob("audit*.jsonl"), key=lambda p: (len(p.name), p.name))
    assert len(paths) >= 3
    return paths


def test_a_line_moved_between_two_files_of_one_writer_is_caught(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    first, second, *_ = _rotated(tmp_path)
    a, b = read_lines(first), read_lines(second)
    moved = a.pop(1)
    b.insert(1, moved)
    first.write_bytes(b"".join(a))
    second.write_bytes(b"".join(b))
    assert _problems(*_rotated_paths(tmp_path), public=public)


def _rotated_paths(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("audit*.jsonl"))


def test_a_digest_copied_from_another_writers_file_is_caught(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    write_audit(one, 6)
    write_audit(two, 6)
    a, b = read_lines(one), read_lines(two)
    a[4] = b[4]  # the first digest of the other file: a genuine signature
    one.write_bytes(b"".join(a))
    assert _problems(one, public=public)


def test_a_file_cut_exactly_at_a_periodic_digest_is_reported(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 7)
    lines = read_lines(path)
    digests = [i for i, line in enumerate(lines) if b'"kind":"digest"' in line]
    path.write_bytes(b"".join(lines[: digests[0] + 1]))
    assert any("cut end" in reason for reason in _problems(path, public=public))


def test_a_genesis_replayed_into_another_file_is_caught(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    write_audit(one, 3)
    write_audit(two, 3)
    b = read_lines(two)
    b[0] = read_lines(one)[0]
    two.write_bytes(b"".join(b))
    assert _problems(two, public=public)
    a = read_lines(one)
    one.write_bytes(b"".join([*a, a[0]]))  # the genesis again, at the end
    assert _problems(one, public=public)


def test_a_seq_jump_with_a_recomputed_chain_is_caught(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    write_audit(path, 6)
    lines = read_lines(path)
    record = json.loads(lines[5])
    assert record["kind"] == "record"
    record["seq"] += 1
    lines[5] = canonical(record) + b"\n"
    path.write_bytes(b"".join(_rechain(lines, 6)))
    assert _problems(path, public=public)


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_value_renormalised_is_caught(tmp_path: Path, form: Literal["NFC", "NFD"]) -> None:
    import unicodedata

    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    user = unicodedata.normalize("NFD" if form == "NFC" else "NFC", "josé")
    file = AuditFile(path, SIGNING_KEY, digest_every=1)
    file.append({"outcome": "allow", "layer": "Test", "user_id": user})
    file.close()
    lines = read_lines(path)
    record = json.loads(lines[1])
    record["user_id"] = unicodedata.normalize(form, record["user_id"])
    assert canonical(record) + b"\n" != lines[1]
    lines[1] = canonical(record) + b"\n"
    path.write_bytes(b"".join(lines))
    assert _problems(path, public=public)


def test_a_writer_whose_clock_goes_backwards_still_verifies(tmp_path: Path) -> None:
    # Time is what the writer's clock said, not part of the proof: a step back (NTP) is not
    # tampering, and a changed time breaks the chain like any other byte.
    _, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY, digest_every=2)
    file.append({**decision(1), "time": "2030-01-01T00:00:00.000000Z"})
    file.append({**decision(2), "time": "2001-01-01T00:00:00.000000Z"})
    file.close()
    assert verify_audit([str(path)], [public]).ok


def test_two_writers_on_one_path_are_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditFile(path, SIGNING_KEY)
    try:
        with pytest.raises(RuntimeError, match="in use by another writer"):
            AuditFile(path, SIGNING_KEY)
    finally:
        first.close()


def test_two_processes_on_one_path_without_pid_are_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    private, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from asgi_identity.audit import AuditFile\n"
        f"f = AuditFile({str(path)!r}, Path({str(private)!r}))\n"
        "print('up', flush=True); time.sleep(float(sys.argv[1])); f.close()\n"
    )
    with subprocess.Popen([sys.executable, "-c", code, "5"], stdout=subprocess.PIPE) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"up"
        second = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True,
                                timeout=60, check=False)  # fmt: skip
        holder.wait(30)
    assert second.returncode != 0
    assert b"in use by another writer" in second.stderr
    assert verify_audit([str(path)], [public]).ok


def test_a_path_that_cannot_be_written_fails_at_start_not_on_requests(tmp_path: Path) -> None:
    # Running as root, a read-only directory is writable: a directory in the file's place is
    # the unwritable path here.
    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(OSError):
        AuditFile(tmp_path / "audit.jsonl", SIGNING_KEY)


# -- audit-verify on hostile input ---------------------------------------------------------------


def _hostile(tmp_path: Path) -> dict[str, bytes]:
    genesis = read_lines(_one(tmp_path))[0]
    return {
        "huge-line": b'{"kind":"record","x":"' + b"a" * (10 << 20) + b'"}\n',
        "huge-spaced-line": b"{" + b" " * (10 << 20) + b"}\n",
        "deep": b"[" * 200_000 + b"]" * 200_000 + b"\n",
        "deep-after-genesis": genesis + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
        "invalid-utf8": b"\xff\xfe\xc3\x28 not json\n",
        "binary": bytes(range(256)) * 64,
        "nul": b"\x00" * 4096 + b"\n",
        "big-int": genesis + b'{"kind":"record","seq":' + b"9" * 100_000 + b"}\n",
        "huge-seq": genesis.replace(b'"records":0', b'"records":' + b"9" * 5000),
    }


def _one(tmp_path: Path) -> Path:
    path = tmp_path / "genuine" / "audit.jsonl"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        write_audit(path, 2)
    return path


def test_audit_verify_on_hostile_files_gives_a_verdict_quickly(tmp_path: Path) -> None:
    _, public = key_files(tmp_path)
    secret = signing_key_pem(SIGNING_KEY)
    for name, content in _hostile(tmp_path).items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(content)
        started = time.monotonic()
        result = run_cli("audit-verify", str(path), "--public-key", str(public))
        took = time.monotonic() - started
        assert result.returncode == 1, (name, result.stderr[-500:])
        assert "Traceback" not in result.stderr, name
        assert "tampered" in result.stderr, name
        assert took < 30, (name, took)
        assert secret.decode() not in result.stdout + result.stderr


def test_audit_verify_never_prints_a_secret_key_given_in_the_wrong_place(tmp_path: Path) -> None:
    private, _ = key_files(tmp_path)
    path = _one(tmp_path)
    secret = private.read_text()
    body = "".join(secret.strip().splitlines()[1:-1])
    for args in (
        ("audit-verify", str(path), "--public-key", str(private)),
        ("audit-verify", str(path), "--public-key", secret),
        ("audit-verify", str(private), "--public-key", str(private)),
        ("audit-verify", "--public-key", secret, "--bogus", secret),
        ("audit-verify", str(path), "--public-key", str(private), "--state", str(private)),
    ):
        result = run_cli(*args)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        output = result.stdout + result.stderr
        assert body[:40] not in output, args
