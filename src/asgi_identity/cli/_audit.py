"""`asgi-identity audit-verify`: check a tamper-evident audit file with the audit package."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from asgi_identity.audit import verify_audit_file
from asgi_identity.cli._common import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, CommandError


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    # The key comes from the environment, so it never shows in the process list or history.
    secret = os.environ.get(args.key_env)
    if not secret:
        raise CommandError(f"environment variable {args.key_env} is not set or empty")
    try:
        result = verify_audit_file(args.file, secret)
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    if not result.ok:
        print(f"tampered: line {result.line}: {result.reason}", file=sys.stderr)
        print(f"{result.records} records verified before it", file=sys.stderr)
        return EXIT_INVALID
    if args.last_mac is not None and result.last_mac != args.last_mac:
        print(
            f"tampered: the chain ends at a different record than --last-mac "
            f"(records were cut from the end); {result.records} records verified",
            file=sys.stderr,
        )
        return EXIT_INVALID
    print(f"intact: {result.records} records, last mac {result.last_mac or '-'}", file=out)
    return EXIT_OK
