"""`asgi-identity jwks`: fetch a key set as the middleware does and say what is in it."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Mapping
from typing import Any, TextIO

from asgi_identity.cli._common import EXIT_OK, EXIT_UNAVAILABLE, CommandError, read_text
from asgi_identity.credentials._fetch import FetchError
from asgi_identity.credentials._issuer import DEFAULT_FETCH_TIMEOUT, DEFAULT_JWKS_MAX_BYTES
from asgi_identity.credentials.jwks import (
    ASYMMETRIC_ALGORITHMS,
    MIN_RSA_BITS,
    check_url,
    fetch_json,
)

_DISCOVERY = "/.well-known/openid-configuration"


class _Unreachable(CommandError):
    """The server sent nothing: following discovery from it would only fail again."""


def _check(url: str) -> None:
    # The middleware's rule: https, or plain http to a loopback host.
    try:
        check_url(url, "a key set or issuer URL")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _get(url: str) -> Any:
    """The JSON at `url`, fetched with the middleware's rules, bounds and defaults."""
    _check(url)
    try:
        return fetch_json(url, DEFAULT_FETCH_TIMEOUT, DEFAULT_JWKS_MAX_BYTES)
    except FetchError as exc:
        if not exc.reached:
            raise _Unreachable(f"cannot fetch {url}: {exc}", EXIT_UNAVAILABLE) from None
        if exc.status is not None:
            raise CommandError(f"{url} answered HTTP {exc.status}", EXIT_UNAVAILABLE) from None
        raise CommandError(f"{url} {exc}", EXIT_UNAVAILABLE) from None


def _key_set_or_discovery(url: str) -> tuple[str, Any]:
    document = _get(url)
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        return url, document
    jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(jwks_uri, str):
        raise CommandError(
            f"{url} is neither a key set (no 'keys') nor a discovery document (no 'jwks_uri')",
            EXIT_UNAVAILABLE,
        )
    return jwks_uri, _get(jwks_uri)


def _jwks_from_url(url: str) -> tuple[str, Any]:
    """A JWKS URL, a discovery document URL, or an issuer URL whose discovery is then followed."""
    _check(url)
    try:
        return _key_set_or_discovery(url)
    except _Unreachable:
        raise
    except CommandError as exc:
        # An issuer URL itself answers anything (404, 401, a login page): its discovery document
        # is the way in.
        if url.endswith(_DISCOVERY):
            raise
        first = exc
    try:
        return _key_set_or_discovery(url.rstrip("/") + _DISCOVERY)
    except CommandError as exc:
        raise CommandError(f"{first}; and as an issuer: {exc}", exc.exit_code) from None


def load_jwks(source: str) -> tuple[str, dict[str, Any]]:
    """A key set from a JWKS URL, an issuer (OIDC discovery is followed) or a file; (url, jwks)."""
    if source.startswith(("http://", "https://")):
        source, document = _jwks_from_url(source)
    else:
        try:
            document = json.loads(read_text(source))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{source} is not JSON: {exc.msg}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise CommandError(f"{source} is not a JWKS (an object with a 'keys' list)")
    return source, document


def _modulus_bits(jwk: Mapping[str, Any]) -> int:
    data = jwk["n"]
    return int.from_bytes(
        base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), "big"
    ).bit_length()


def _describe_jwk(jwk: Mapping[str, Any]) -> str:
    kty = jwk.get("kty")
    if kty == "RSA" and isinstance(jwk.get("n"), str):
        try:
            return f"{_modulus_bits(jwk)} bits"
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
            if _modulus_bits(jwk) < MIN_RSA_BITS:
                warnings.append(f"RSA key shorter than {MIN_RSA_BITS} bits")
        except ValueError:
            warnings.append("RSA modulus is not base64url")
    alg = jwk.get("alg")
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        warnings.append(f"alg {alg} is not an allowed asymmetric algorithm")
    if jwk.get("use") not in (None, "sig"):
        warnings.append(f"use is {jwk.get('use')!r}, not 'sig'")
    return warnings


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
