"""`asgi-identity keygen`, `hash` and `mint`: API keys and development tokens."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from asgi_identity.cli._common import EXIT_OK, CommandError, read_text, write_file
from asgi_identity.credentials.apikeys import generate_api_key, hash_api_key
from asgi_identity.credentials.jwks import ASYMMETRIC_ALGORITHMS, EC_ALGORITHMS


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    key, digest = generate_api_key()
    if args.json:
        record: dict[str, Any] = {"id": args.id, "sha256": digest}
        if args.tenant:
            record["tenant"] = args.tenant
        if args.group:
            record["group"] = args.group
        print(json.dumps({"key": key, "record": record}, indent=2), file=out)
        return EXIT_OK
    print(f"key:    {key}", file=out)
    print(f"sha256: {digest}", file=out)
    print(
        "Give the key to the client once; store only the digest, e.g. "
        f'APIKey(id="{args.id}", sha256="{digest}")',
        file=out,
    )
    return EXIT_OK


def cmd_hash(args: argparse.Namespace, out: TextIO) -> int:
    # The key comes from stdin so it never lands in shell history or the process list.
    key = sys.stdin.read().rstrip("\r\n")
    if not key:
        raise CommandError('no key on standard input (try: printf %s "$KEY" | asgi-identity hash)')
    if "\n" in key:
        raise CommandError("standard input holds more than one line; pass one key")
    print(hash_api_key(key), file=out)
    return EXIT_OK


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: a stable `kid` for a key that has none."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = required.get(str(jwk.get("kty")), ())
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def algorithm_for_key(key: Any) -> str:
    """The algorithm a key signs with by default (RSA: RS256, EC: by curve, Ed25519: EdDSA)."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        try:
            return EC_ALGORITHMS[key.curve.name]
        except KeyError:
            raise CommandError(f"EC curve {key.curve.name} is not supported for JWTs") from None
    if isinstance(
        key,
        (
            ed25519.Ed25519PrivateKey,
            ed25519.Ed25519PublicKey,
            ed448.Ed448PrivateKey,
            ed448.Ed448PublicKey,
        ),
    ):
        return "EdDSA"
    raise CommandError(f"unsupported key type {type(key).__name__}")


def _check_algorithm_fits(algorithm: str, key: Any) -> None:
    family = algorithm_for_key(key)
    if algorithm == family:
        return
    if family == "RS256" and algorithm[:2] in ("RS", "PS"):
        return
    raise CommandError(f"algorithm {algorithm} does not fit this key (it signs with {family})")


def _check_asymmetric(algorithm: str) -> None:
    # Only what the middleware accepts: a token signed with `none` or an HMAC secret must never
    # be minted here when it would fail in production.
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        raise CommandError(f"--alg must be one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}")


def _load_private_key(path: str) -> Any:
    data = read_text(path).encode()
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"{path} is not an unencrypted PEM private key ({exc})") from None


def _public_jwk(public_key: Any, algorithm: str) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        text = RSAAlgorithm.to_jwk(public_key)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        text = ECAlgorithm.to_jwk(public_key)
    else:
        text = OKPAlgorithm.to_jwk(public_key)
    jwk: dict[str, Any] = json.loads(text)
    jwk.update({"kid": jwk_thumbprint(jwk), "alg": algorithm, "use": "sig"})
    return jwk


def _parse_claim(item: str) -> tuple[str, Any]:
    name, sep, raw = item.partition("=")
    if not sep or not name:
        raise CommandError(f"--claim {item!r} must look like name=value")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word is a string: --claim group=pro
    return name, value


def cmd_mint(args: argparse.Namespace, out: TextIO) -> int:
    if args.key and args.key_out:
        raise CommandError("--key-out saves a generated key; it cannot be used with --key")
    if args.key:
        private_key = _load_private_key(args.key)
        algorithm = args.alg or algorithm_for_key(private_key)
    else:
        algorithm = args.alg or "ES256"
        _check_asymmetric(algorithm)
        from asgi_identity.testing import generate_private_key

        private_key = generate_private_key(algorithm)
        if args.key_out:
            pem = private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_file(args.key_out, pem, private=True)
        else:
            print(
                "note: signed with a key generated for this token only; "
                "keep it with --key-out or publish it with --jwks-out",
                file=sys.stderr,
            )
    _check_asymmetric(algorithm)
    _check_algorithm_fits(algorithm, private_key)
    jwk = _public_jwk(private_key.public_key(), algorithm)
    kid = args.kid or jwk["kid"]
    jwk["kid"] = kid
    if args.jwks_out:
        write_file(args.jwks_out, (json.dumps({"keys": [jwk]}, indent=2) + "\n").encode())

    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": args.issuer,
        "aud": args.audience[0] if len(args.audience) == 1 else args.audience,
        "sub": args.sub,
        "iat": now,
        "nbf": now,
        "exp": now + args.lifetime,
    }
    if args.email:
        claims["email"] = args.email
        claims["email_verified"] = True
    claims.update(_parse_claim(item) for item in args.claim)
    token = jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid})
    print(token, file=out)
    return EXIT_OK
