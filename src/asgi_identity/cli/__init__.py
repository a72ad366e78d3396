"""The `asgi-identity` command: API keys, development tokens, key sets, token checks, audit files.

Exit codes (also in docs/cli.md): 0 success, 1 the token or audit file failed verification,
2 bad usage or input, 3 keys or files could not be read (network, file system).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from asgi_identity import __version__
from asgi_identity.cli._audit import add_audit_commands
from asgi_identity.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
)
from asgi_identity.cli._jwks import cmd_jwks
from asgi_identity.cli._keys import cmd_hash, cmd_keygen, cmd_mint
from asgi_identity.cli._verify import cmd_verify
from asgi_identity.credentials._issuer import DEFAULT_LEEWAY

__all__ = [
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "build_parser",
    "main",
]


class _Parser(argparse.ArgumentParser):
    """argparse, except that a value it cannot place is never repeated (it may be a secret)."""

    def error(self, message: str) -> NoReturn:
        message = _QUOTED_VALUE.sub(r"\1", message)
        super().error(message)


# "invalid choice: 'x' (choose from ...)", "invalid int value: 'x'": argparse quotes the value.
_QUOTED_VALUE = re.compile(r"(invalid (?:choice|\w+ value)): '.*?'(?= \(choose from|$)", re.S)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asgi-identity",
        description="API keys, development tokens, key sets and audit files for asgi-identity.",
        epilog="Exit codes: 0 ok, 1 verification failed, 2 bad usage or input, "
        "3 keys or files could not be read.",
        # No prefix of an option is taken for it: `verify --jwks SECRET` or `--key SECRET`
        # would otherwise land in whatever option it abbreviates, and may be echoed from there.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"asgi-identity {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser(
        "keygen", help="make a new API key and print its SHA-256 digest", allow_abbrev=False
    )
    keygen.add_argument("--id", default="my-app", help="the record id shown in the snippet")
    keygen.add_argument("--tenant", help="tenant for the JSON record")
    keygen.add_argument("--group", help="group (tier) for the JSON record")
    keygen.add_argument("--json", action="store_true", help="print the key and a record as JSON")
    keygen.set_defaults(handler=cmd_keygen)

    hash_ = commands.add_parser(
        "hash", help="print the digest of a key read from standard input", allow_abbrev=False
    )
    hash_.set_defaults(handler=cmd_hash)

    mint = commands.add_parser("mint", help="sign a development token", allow_abbrev=False)
    mint.add_argument("--key", metavar="PEM", help="private key file (default: generate one)")
    mint.add_argument("--key-out", metavar="FILE", help="save the generated private key here")
    mint.add_argument("--jwks-out", metavar="FILE", help="write the public key set here")
    mint.add_argument("--alg", help="signing algorithm (default: from the key, or ES256)")
    mint.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    mint.add_argument("--issuer", default="https://issuer.test", help="iss claim")
    mint.add_argument(
        "--audience", action="append", help="aud claim (repeat for several; default: gateway)"
    )
    mint.add_argument("--sub", default="dev-user", help="sub claim")
    mint.add_argument("--email", help="email claim (email_verified is set to true)")
    mint.add_argument(
        "--claim", action="append", default=[], metavar="NAME=VALUE", help="any claim; JSON values"
    )
    mint.add_argument("--lifetime", type=int, default=3600, help="seconds until exp (3600)")
    mint.set_defaults(handler=cmd_mint)

    jwks = commands.add_parser(
        "jwks", help="fetch and inspect an issuer's key set", allow_abbrev=False
    )
    jwks.add_argument("source", help="JWKS URL, issuer URL (discovery is followed) or file")
    jwks.add_argument("--json", action="store_true", help="print the key set itself")
    jwks.set_defaults(handler=cmd_jwks)

    verify = commands.add_parser(
        "verify", help="verify a token and say exactly why it fails", allow_abbrev=False
    )
    verify.add_argument("token", help="the token, or - to read it from standard input")
    verify.add_argument("--issuer", help="expected iss")
    verify.add_argument(
        "--audience", action="append", default=[], help="accepted aud (repeat for several)"
    )
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-url", help="JWKS URL, issuer URL or JWKS file")
    keys.add_argument("--public-key", metavar="PEM", help="PEM public key file")
    verify.add_argument(
        "--leeway",
        type=float,
        # JWTIssuer's default, so a token called valid here is one the middleware accepts.
        default=float(DEFAULT_LEEWAY),
        help=f"clock skew allowed ({DEFAULT_LEEWAY} s, as JWTIssuer)",
    )
    verify.set_defaults(handler=cmd_verify)

    add_audit_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(_unrecognized(unknown))
    if getattr(args, "audience", None) is None and args.command == "mint":
        args.audience = ["gateway"]
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, out or sys.stdout)
    except CommandError as exc:
        print(f"asgi-identity {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


_OPTION = re.compile(r"--?[A-Za-z][A-Za-z0-9-]{0,40}")


def _unrecognized(arguments: list[str]) -> str:
    # argparse would print them all: `audit-verify --key SECRET` must not show the secret.
    names = [
        name
        for name in (argument.split("=", 1)[0] for argument in arguments)
        if _OPTION.fullmatch(name)
    ]
    hidden = len(arguments) - len(names)
    shown = " ".join([*names, f"({hidden} more not shown)"] if hidden else names)
    return f"unrecognized arguments: {shown}"
