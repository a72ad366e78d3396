"""The signing pair: made by `asgi-identity audit-keygen`, loaded from a file or an environment
variable; verifiers hold only the public key, and the CLI never shows what it is given."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _audit_support import decision, key_files, run_cli, write_audit
from asgi_identity.audit import (
    AuditFile,
    configure_audit,
    key_id,
    load_public_key,
    load_signing_key,
    public_key_pem,
    shutdown_audit,
    verify_audit,
)
from asgi_identity.audit._keys import signing_key_pem

SECRET = "sk-live-0123456789-do-not-print"


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_public_one(
    tmp_path: Path,
) -> None:
    private, public = tmp_path / "signing.pem", tmp_path / "public.pem"
    result = run_cli("audit-keygen", str(private), "--public-out", str(public))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_signing_key(private)
    assert public.read_bytes() == public_key_pem(key)
    assert result.stdout == (
        f"private key written to {private} (mode 0600): keep it with the gateway only\n"
        f"key id: {key_id(key)}\n{public_key_pem(key).decode()}"
    )
    assert "PRIVATE" not in result.stdout

    again = run_cli("audit-keygen", str(private))
    assert (again.returncode, again.stderr) == (
        2,
        f"asgi-identity audit-keygen: {private} exists: a signing key is never overwritten\n",
    )

    file = AuditFile(tmp_path / "audit.jsonl", private)
    file.append(decision(1))
    file.close()
    verified = run_cli("audit-verify", str(tmp_path / "audit.jsonl"), "--public-key", str(public))
    assert verified.returncode == 0, verified.stderr


def test_the_signing_key_can_come_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv("AUDIT_SIGNING_KEY", signing_key_pem(key).decode())
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=os.environ["AUDIT_SIGNING_KEY"], emit="none")
    shutdown_audit()
    assert verify_audit(path, public_key_pem(key)).ok


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("audit-signing.pem", ValueError, "not PEM text (pass a pathlib.Path"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", ValueError, "not an"),
        (42, TypeError, "must be an Ed25519 key, its PEM text"),
    ],
)
def test_a_bad_signing_key_is_refused_without_quoting_it(
    source: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="AuditFile: ") as raised:
        AuditFile("never-opened.jsonl", source)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert "AAAA" not in str(raised.value)


def test_verifiers_take_only_a_public_key(tmp_path: Path) -> None:
    private, _ = key_files(tmp_path)
    with pytest.raises(ValueError, match="this is a private key"):
        load_public_key(private)
    write_audit(tmp_path / "audit.jsonl", 1)
    result = run_cli("audit-verify", str(tmp_path / "audit.jsonl"), "--public-key", str(private))
    assert (result.returncode, result.stderr) == (
        2,
        "asgi-identity audit-verify: public key 1: this is a private key: verifiers need only "
        "the public key\n",
    )


def test_files_of_several_keys_verify_with_all_their_public_keys(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for name, key in (("old.jsonl", old), ("new.jsonl", new)):
        file = AuditFile(tmp_path / name, key)
        file.append(decision(1))
        file.close()
    for name, key in (("old.pem", old), ("new.pem", new)):
        (tmp_path / name).write_bytes(public_key_pem(key))
    keys = ("--public-key", str(tmp_path / "old.pem"), "--public-key", str(tmp_path / "new.pem"))
    result = run_cli("audit-verify", str(tmp_path), *keys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("intact: 2 files, 2 records\n")


@pytest.mark.parametrize(
    "arguments",
    [
        ["--key", SECRET],
        ["--k", SECRET],
        [f"--key={SECRET}"],
        ["--key-env", SECRET],
        ["--public", SECRET],  # a prefix of --public-key is not taken for it
        [SECRET],
    ],
    ids=["key", "k", "key=", "key-env", "prefix", "positional"],
)
def test_audit_verify_never_prints_what_was_given_in_place_of_a_key(
    tmp_path: Path, arguments: list[str]
) -> None:
    _, public = key_files(tmp_path)
    write_audit(tmp_path / "audit.jsonl", 1)
    result = run_cli(
        "audit-verify", str(tmp_path / "audit.jsonl"), "--public-key", str(public), *arguments
    )
    assert result.returncode in (2, 3)
    assert SECRET not in result.stdout + result.stderr
    assert result.stderr.strip()  # refused with a reason


def test_a_public_key_option_holding_a_secret_is_not_printed(tmp_path: Path) -> None:
    write_audit(tmp_path / "audit.jsonl", 1)
    result = run_cli("audit-verify", str(tmp_path / "audit.jsonl"), "--public-key", SECRET)
    assert (result.returncode, result.stderr) == (
        2,
        "asgi-identity audit-verify: public key 1: cannot read the public key file: No such "
        "file or directory\n",
    )
