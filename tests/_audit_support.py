"""What the audit file tests share: a signing pair, files written for real, the CLI as a user
runs it (a subprocess), and line edits for tampering."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from asgi_identity.audit import AuditFile, public_key_pem
from asgi_identity.audit._keys import signing_key_pem

SIGNING_KEY = Ed25519PrivateKey.generate()


def key_files(directory: Path) -> tuple[Path, Path]:
    """(the private key PEM, the public key PEM) of SIGNING_KEY, written to `directory`."""
    private, public = directory / "audit-signing.pem", directory / "audit-public.pem"
    private.write_bytes(signing_key_pem(SIGNING_KEY))
    public.write_bytes(public_key_pem(SIGNING_KEY))
    return private, public


def decision(number: int) -> dict[str, Any]:
    return {
        "outcome": "deny" if number % 2 else "allow",
        "layer": "Test",
        "user_id": f"user-{number}",
        "path": "/v1/models",
    }


def write_audit(path: Path, count: int, **options: Any) -> AuditFile:
    """`count` records written and the file closed (a digest after every 3 by default)."""
    options.setdefault("digest_every", 3)
    file = AuditFile(path, SIGNING_KEY, **options)
    for number in range(count):
        file.append(decision(number))
    file.close()
    return file


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def edit_lines(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(read_lines(path))))


def parsed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_identity", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
