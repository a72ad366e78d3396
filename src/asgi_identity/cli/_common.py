"""What every subcommand shares: exit codes, the error it reports, reading and writing files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_text(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    except UnicodeDecodeError:
        # PEM and JWKS are text; a DER key or another binary file lands here.
        raise CommandError(f"{path} is not a text file (PEM or JSON expected)") from None


def write_file(path: str, data: bytes, *, private: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
        with os.fdopen(fd, "wb") as file:
            if private:
                # The mode given to open() applies only to a new file: an existing one keeps
                # its permissions (often 0644) unless changed here, before the key is written.
                os.fchmod(file.fileno(), 0o600)
            file.write(data)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", EXIT_UNAVAILABLE) from None
