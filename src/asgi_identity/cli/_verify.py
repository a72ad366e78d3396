"""`asgi-identity verify`: check a token with the middleware's code and defaults, and say why it
fails.

The token is parsed, its key chosen and its signature checked by the same code as TokenVerifier's,
and its claims pass the same rule functions; where the verifier stops at the first failing claim
rule, this lists every one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization

from asgi_identity.cli._common import EXIT_INVALID, EXIT_OK, CommandError, read_text
from asgi_identity.cli._jwks import load_jwks
from asgi_identity.credentials._claim_rules import ClaimRules, every_failure
from asgi_identity.credentials._jws import is_number, parse_jws
from asgi_identity.credentials.jwks import (
    ASYMMETRIC_ALGORITHMS,
    KeySet,
    key_from_pem,
    keys_from_jwks,
)
from asgi_identity.credentials.tokens import DEFAULT_MAX_TOKEN_BYTES
from asgi_identity.errors import IdentityError


def _token(raw: str) -> str:
    token = (sys.stdin.read() if raw == "-" else raw).strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    parts = token.count(".") + 1
    if parts != 3:
        raise CommandError(
            f"invalid: a JWT has 3 dot-separated parts, this has {parts}"
            + (" (an encrypted JWE is not supported)" if parts == 5 else ""),
            EXIT_INVALID,
        )
    if len(token) > DEFAULT_MAX_TOKEN_BYTES:
        raise CommandError(
            f"invalid: the token has {len(token)} characters, over the middleware's "
            f"max_token_bytes={DEFAULT_MAX_TOKEN_BYTES}",
            EXIT_INVALID,
        )
    return token


def _public_pem(path: str) -> str:
    data = read_text(path).encode()
    try:
        public: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            # A private key file works too: its public half is what verification needs.
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise CommandError(f"{path} is not a PEM public key") from None
    pem: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def _key_set(args: argparse.Namespace) -> KeySet:
    """The keys as JWTIssuer(public_key=...) or a fetched key set would hold them."""
    try:
        if args.public_key:
            return KeySet([key_from_pem(_public_pem(args.public_key))])
        _, document = load_jwks(args.jwks_url)
        # Like a fetched key set (RemoteKeySet): an odd key is skipped, not fatal.
        return KeySet(keys_from_jwks(document, strict=False))
    except ValueError as exc:
        raise CommandError(f"invalid: {exc}", EXIT_INVALID) from None


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    token = _token(args.token)
    try:
        header, claims, signing_input, signature = parse_jws(token)
    except IdentityError as exc:
        raise CommandError(f"invalid: {exc.detail or exc.message}", EXIT_INVALID) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise CommandError(
            f"invalid: alg {alg!r} is refused; only "
            f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))} are accepted",
            EXIT_INVALID,
        )
    keys = _key_set(args)
    kid = header.get("kid")
    key = asyncio.run(keys.find(kid, alg))
    if key is None:
        if kid is None:
            raise CommandError(
                f"invalid: the token names no kid and no single key of the set fits {alg}, "
                "so the key is ambiguous",
                EXIT_INVALID,
            )
        raise CommandError(
            f"invalid: no key with kid {kid!r} for {alg} in the key set (its kids: "
            f"{', '.join(keys.kids) or 'none'}); the issuer may have rotated its keys or the "
            "token comes from another issuer",
            EXIT_INVALID,
        )
    verifier = key.verifiers.get(alg)
    if verifier is None:
        raise CommandError(
            f"invalid: the token says alg {alg} but key {key.kid or '-'} verifies "
            f"{', '.join(sorted(key.algorithms))}",
            EXIT_INVALID,
        )
    algorithm, prepared = verifier
    if not algorithm.verify(signing_input, prepared, signature):
        raise CommandError(
            "invalid: the signature does not match the key (wrong key, or the token was altered)",
            EXIT_INVALID,
        )
    if not is_number(args.leeway) or args.leeway < 0:
        raise CommandError("--leeway must be a number of seconds >= 0")
    rules = ClaimRules(
        issuer=args.issuer, audience=tuple(args.audience) or None, leeway=args.leeway
    )
    failures = every_failure(rules, claims, time.time())
    if failures:
        for failure in failures:
            print(f"invalid: {failure.explanation}", file=sys.stderr)
        return EXIT_INVALID
    print(f"valid: signature ({alg}, kid {header.get('kid', '-')}) and claims check out", file=out)
    print(json.dumps(claims, indent=2, sort_keys=True), file=out)
    return EXIT_OK
