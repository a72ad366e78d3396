"""The `asgi-identity` command: API keys, development tokens, key sets, token checks, audit files.

Exit codes (also in docs/cli.md): 0 success, 1 the token or audit file failed verification,
2 bad usage or input, 3 keys or files could not be read (network, file system).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from asgi_identity import __version__
from asgi_identity.credentials.apikeys import generate_api_key, hash_api_key

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# Only asymmetric algorithms, as in the middleware: a token signed with `none` or an HMAC secret
# must never look valid here when it would fail in production.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_CURVE_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_MAX_FETCH_BYTES = 1 << 20
_FETCH_TIMEOUT = 10.0


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------- keys


def _b64url_uint(data: str) -> int:
    padded = data + "=" * (-len(data) % 4)
    return int.from_bytes(base64.urlsafe_b64decode(padded), "big")


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
            return _CURVE_ALGORITHM[key.curve.name]
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


def _read_text(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    except UnicodeDecodeError:
        # PEM and JWKS are text; a DER key or another binary file lands here.
        raise CommandError(f"{path} is not a text file (PEM or JSON expected)") from None


def _write_file(path: str, data: bytes, *, private: bool = False) -> None:
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


def _load_private_key(path: str) -> Any:
    data = _read_text(path).encode()
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"{path} is not an unencrypted PEM private key ({exc})") from None


def _load_public_key(path: str) -> Any:
    data = _read_text(path).encode()
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        pass
    try:
        # A private key file works too: its public half is what verification needs.
        return serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        raise CommandError(f"{path} is not a PEM public key") from None


def _public_jwk(public_key: Any, algorithm: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(_jwk_json(public_key))
    jwk.update({"kid": jwk_thumbprint(jwk), "alg": algorithm, "use": "sig"})
    return jwk


def _jwk_json(public_key: Any) -> str:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public_key)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public_key)
    return OKPAlgorithm.to_jwk(public_key)


def _describe_jwk(jwk: Mapping[str, Any]) -> str:
    kty = jwk.get("kty")
    if kty == "RSA" and isinstance(jwk.get("n"), str):
        try:
            return f"{_b64url_uint(jwk['n']).bit_length()} bits"
        except ValueError:
            return "unreadable modulus"
    if kty in ("EC", "OKP"):
        return str(jwk.get("crv", "no curve"))
    if kty == "oct":
        return "symmetric"
    return "-"


def _jwk_warnings(jwk: Mapping[str, Any]) -> list[str]:
    warnings: list[str] = []
    kty = jwk.get("kty")
    if not jwk.get("kid"):
        warnings.append("no kid: tokens cannot name this key")
    if kty == "oct":
        warnings.append("symmetric key in a public key set: never accepted")
    if kty == "RSA" and isinstance(jwk.get("n"), str):
        try:
            if _b64url_uint(jwk["n"]).bit_length() < 2048:
                warnings.append("RSA key shorter than 2048 bits")
        except ValueError:
            warnings.append("RSA modulus is not base64url")
    alg = jwk.get("alg")
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        warnings.append(f"alg {alg} is not an allowed asymmetric algorithm")
    if jwk.get("use") not in (None, "sig"):
        warnings.append(f"use is {jwk.get('use')!r}, not 'sig'")
    return warnings


# ------------------------------------------------------------------------------------ fetching


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Like the middleware, never follow a redirect for key material.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_json(url: str) -> Any:
    """GET `url` as JSON: http(s) only, no redirects, bounded in time and size."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise CommandError(f"{url} is not an http(s) URL")
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with opener.open(request, timeout=_FETCH_TIMEOUT) as response:
            body = response.read(_MAX_FETCH_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{url} answered HTTP {exc.code}", EXIT_UNAVAILABLE) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(f"cannot fetch {url}: {reason}", EXIT_UNAVAILABLE) from None
    if len(body) > _MAX_FETCH_BYTES:
        raise CommandError(f"{url} sent more than {_MAX_FETCH_BYTES} bytes", EXIT_UNAVAILABLE)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CommandError(f"{url} did not answer with JSON", EXIT_UNAVAILABLE) from None


def _key_set_or_discovery(url: str) -> tuple[str, Any]:
    document = fetch_json(url)
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        return url, document
    jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(jwks_uri, str):
        raise CommandError(
            f"{url} is neither a key set (no 'keys') nor a discovery document (no 'jwks_uri')",
            EXIT_UNAVAILABLE,
        )
    return jwks_uri, fetch_json(jwks_uri)


def _jwks_from_url(url: str) -> tuple[str, Any]:
    """A JWKS URL, a discovery document URL, or an issuer URL whose discovery is then followed."""
    try:
        return _key_set_or_discovery(url)
    except CommandError as exc:
        # An issuer URL itself answers anything (404, 401, a login page): its discovery document
        # is the way in. A server that cannot be reached at all is not tried twice.
        if url.endswith("/.well-known/openid-configuration") or str(exc).startswith("cannot fetch"):
            raise
        first = exc
    discovery = url.rstrip("/") + "/.well-known/openid-configuration"
    try:
        return _key_set_or_discovery(discovery)
    except CommandError as exc:
        raise CommandError(f"{first}; and as an issuer: {exc}", exc.exit_code) from None


def load_jwks(source: str) -> tuple[str, dict[str, Any]]:
    """A key set from a JWKS URL, an issuer (OIDC discovery is followed) or a file; (url, jwks)."""
    if source.startswith(("http://", "https://")):
        source, document = _jwks_from_url(source)
    else:
        try:
            document = json.loads(_read_text(source))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{source} is not JSON: {exc.msg}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise CommandError(f"{source} is not a JWKS (an object with a 'keys' list)")
    return source, document


# ------------------------------------------------------------------------------------ commands


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


def _parse_claim(item: str) -> tuple[str, Any]:
    name, sep, raw = item.partition("=")
    if not sep or not name:
        raise CommandError(f"--claim {item!r} must look like name=value")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word is a string: --claim group=pro
    return name, value


def _check_asymmetric(algorithm: str) -> None:
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        raise CommandError(f"--alg must be one of {', '.join(ASYMMETRIC_ALGORITHMS)}")


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
            _write_file(args.key_out, pem, private=True)
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
        _write_file(args.jwks_out, (json.dumps({"keys": [jwk]}, indent=2) + "\n").encode())

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


def cmd_jwks(args: argparse.Namespace, out: TextIO) -> int:
    url, jwks = load_jwks(args.source)
    keys = [key for key in jwks["keys"] if isinstance(key, dict)]
    if args.json:
        print(json.dumps(jwks, indent=2), file=out)
        return EXIT_OK
    print(f"{url}: {len(keys)} key(s)", file=out)
    rows = [
        (
            str(key.get("kid", "-")),
            str(key.get("kty", "-")),
            str(key.get("alg", "-")),
            str(key.get("use", "-")),
            _describe_jwk(key),
        )
        for key in keys
    ]
    header = ("kid", "kty", "alg", "use", "size")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    kids = [str(key["kid"]) for key in keys if key.get("kid")]
    problems = [
        f"kid {kid}: appears more than once" for kid in sorted(set(kids)) if kids.count(kid) > 1
    ]
    problems += [f"kid {key.get('kid', '-')}: {w}" for key in keys for w in _jwk_warnings(key)]
    for problem in problems:
        print(f"warning: {problem}", file=out)
    return EXIT_OK


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise CommandError(
            f"invalid: the {what} is not base64url-encoded JSON", EXIT_INVALID
        ) from None
    if not isinstance(value, dict):
        raise CommandError(f"invalid: the {what} is not a JSON object", EXIT_INVALID)
    return value


def _verification_key(args: argparse.Namespace, header: Mapping[str, Any]) -> Any:
    alg = header.get("alg")
    if args.public_key:
        key = _load_public_key(args.public_key)
        try:
            _check_algorithm_fits(str(alg), key)
        except CommandError as exc:
            raise CommandError(f"invalid: {exc}", EXIT_INVALID) from None
        return key
    _, jwks = load_jwks(args.jwks_url)
    kid = header.get("kid")
    candidates = [k for k in jwks["keys"] if isinstance(k, dict) and k.get("kty") != "oct"]
    if kid is not None:
        matching = [k for k in candidates if k.get("kid") == kid]
        if not matching:
            known = ", ".join(str(k.get("kid")) for k in candidates) or "none"
            raise CommandError(
                f"invalid: no key with kid {kid!r} in the key set (its kids: {known}); "
                "the issuer may have rotated its keys or the token comes from another issuer",
                EXIT_INVALID,
            )
        candidates = matching
    elif len(candidates) != 1:
        raise CommandError(
            "invalid: the token names no kid and the key set holds "
            f"{len(candidates)} keys, so the key is ambiguous",
            EXIT_INVALID,
        )
    jwk = candidates[0]
    if jwk.get("alg") not in (None, alg):
        raise CommandError(
            f"invalid: the token says alg {alg} but key {jwk.get('kid')!r} is for {jwk['alg']}",
            EXIT_INVALID,
        )
    try:
        return jwt.PyJWK.from_dict(jwk, algorithm=str(alg)).key
    except jwt.PyJWTError as exc:
        raise CommandError(
            f"invalid: key {jwk.get('kid')!r} is unusable: {exc}", EXIT_INVALID
        ) from None


def _ago(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def claim_problems(
    claims: Mapping[str, Any],
    *,
    issuer: str | None,
    audiences: Sequence[str],
    leeway: float,
    now: float,
) -> list[str]:
    """Every reason the claims fail, in words (empty when they pass)."""
    problems: list[str] = []
    exp = claims.get("exp")
    if exp is None:
        problems.append("the token has no exp claim (an expiry is required)")
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        problems.append(f"exp is not a number: {exp!r}")
    elif exp + leeway <= now:
        problems.append(f"the token expired {_ago(now - exp)} ago (exp={int(exp)})")
    for name, what in (("nbf", "is not valid before"), ("iat", "was issued")):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{name} is not a number: {value!r}")
        elif value - leeway > now:
            problems.append(
                f"the token {what} {_ago(value - now)} in the future ({name}={int(value)})"
            )
    if issuer is not None and claims.get("iss") != issuer:
        problems.append(f"iss is {claims.get('iss')!r}, expected {issuer!r}")
    if audiences:
        aud = claims.get("aud")
        token_audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if aud is None:
            problems.append(f"the token has no aud claim, expected one of {list(audiences)}")
        elif not set(map(str, token_audiences)) & set(audiences):
            problems.append(f"aud is {aud!r}, expected one of {list(audiences)}")
    return problems


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    raw: str = args.token
    if raw == "-":
        raw = sys.stdin.read()
    token = raw.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    segments = token.split(".")
    if len(segments) != 3:
        raise CommandError(
            f"invalid: a JWT has 3 dot-separated parts, this has {len(segments)}"
            + (" (an encrypted JWE is not supported)" if len(segments) == 5 else ""),
            EXIT_INVALID,
        )
    header = _decode_segment(segments[0], "header")
    claims = _decode_segment(segments[1], "payload")
    alg = header.get("alg")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise CommandError(
            f"invalid: alg {alg!r} is refused; only {', '.join(ASYMMETRIC_ALGORITHMS)} are accepted",
            EXIT_INVALID,
        )
    key = _verification_key(args, header)
    try:
        jwt.decode(
            token,
            key,
            algorithms=[str(alg)],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise CommandError(
            "invalid: the signature does not match the key (wrong key, or the token was altered)",
            EXIT_INVALID,
        ) from None
    except jwt.PyJWTError as exc:
        raise CommandError(f"invalid: {exc}", EXIT_INVALID) from None
    problems = claim_problems(
        claims, issuer=args.issuer, audiences=args.audience, leeway=args.leeway, now=time.time()
    )
    if problems:
        for problem in problems:
            print(f"invalid: {problem}", file=sys.stderr)
        return EXIT_INVALID
    print(f"valid: signature ({alg}, kid {header.get('kid', '-')}) and claims check out", file=out)
    print(json.dumps(claims, indent=2, sort_keys=True), file=out)
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    from asgi_identity.audit import verify_audit_file

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


# ------------------------------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asgi-identity",
        description="API keys, development tokens, key sets and audit files for asgi-identity.",
        epilog="Exit codes: 0 ok, 1 verification failed, 2 bad usage or input, "
        "3 keys or files could not be read.",
    )
    parser.add_argument("--version", action="version", version=f"asgi-identity {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="make a new API key and print its SHA-256 digest")
    keygen.add_argument("--id", default="my-app", help="the record id shown in the snippet")
    keygen.add_argument("--tenant", help="tenant for the JSON record")
    keygen.add_argument("--group", help="group (tier) for the JSON record")
    keygen.add_argument("--json", action="store_true", help="print the key and a record as JSON")
    keygen.set_defaults(handler=cmd_keygen)

    hash_ = commands.add_parser("hash", help="print the digest of a key read from standard input")
    hash_.set_defaults(handler=cmd_hash)

    mint = commands.add_parser("mint", help="sign a development token")
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

    jwks = commands.add_parser("jwks", help="fetch and inspect an issuer's key set")
    jwks.add_argument("source", help="JWKS URL, issuer URL (discovery is followed) or file")
    jwks.add_argument("--json", action="store_true", help="print the key set itself")
    jwks.set_defaults(handler=cmd_jwks)

    verify = commands.add_parser("verify", help="verify a token and say exactly why it fails")
    verify.add_argument("token", help="the token, or - to read it from standard input")
    verify.add_argument("--issuer", help="expected iss")
    verify.add_argument(
        "--audience", action="append", default=[], help="accepted aud (repeat for several)"
    )
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-url", help="JWKS URL, issuer URL or JWKS file")
    keys.add_argument("--public-key", metavar="PEM", help="PEM public key file")
    verify.add_argument("--leeway", type=float, default=30.0, help="clock skew allowed (30 s)")
    verify.set_defaults(handler=cmd_verify)

    audit = commands.add_parser("audit-verify", help="check a tamper-evident audit file")
    audit.add_argument("file")
    audit.add_argument(
        "--key-env", required=True, metavar="VAR", help="environment variable holding the key"
    )
    audit.add_argument(
        "--last-mac",
        help="the last record's mac, kept elsewhere: detects records cut from the end",
    )
    audit.set_defaults(handler=cmd_audit_verify)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
