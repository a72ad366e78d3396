"""The JWS compact form taken apart: strict base64url segments, a JSON header and payload.

Why here and not in `jwt.decode()`: pyjwt checks each base64url segment one character at a time in
a Python generator (a few hundred steps per token, more time than the RSA signature itself) and
the verifier needs the header and payload anyway, which made every segment decoded and parsed
twice. Here each segment is decoded once, as strictly as pyjwt does (same alphabet, same padding
rules, canonical encoding only), and pyjwt's own algorithm objects still verify the signature
(see `VerificationKey.verifiers`); the claim rules pyjwt applied are in `_claim_rules`.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from typing import Any, Final

from asgi_identity.errors import IdentityError

# JWS compact form (three base64url segments) or JWE (five); every JOSE header is a JSON object,
# and base64url of "{" starts with "e".
_COMPACT: Final = re.compile(r"e[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2}(?:(?:\.[A-Za-z0-9_-]*){2})?")

MALFORMED: Final = "The access token is malformed."


def looks_like_jwt(value: str) -> bool:
    """A JWS (three base64url segments) or JWE (five) in compact form, as opposed to an API key."""
    return _COMPACT.fullmatch(value) is not None


def invalid(message: str, detail: str) -> IdentityError:
    return IdentityError("invalid_token", message, detail=detail)


def summary(value: Any) -> str:
    # Details go to logs: bounded and repr-escaped, so a hostile claim cannot forge log lines.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float (`exp` of 400 digits) is no time at all
        return False


_BASE64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_SIXBITS: Final = {
    char: value
    for value, char in enumerate(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
}
# A segment of 4n+2 characters ends in one that carries 2 bits of data and 4 unused; of 4n+3,
# 4 bits and 2 unused.
_UNUSED_BITS: Final = (0, 0, 0x0F, 0x03)


def segment_bytes(segment: bytes, what: str) -> bytes:
    """One base64url segment, decoded; only the one canonical spelling of its bytes is accepted."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    remainder = len(stripped) % 4
    # Padding is optional in JWS (some issuers send it): at most two, and only to a full quantum.
    if (
        (padding and (padding > 2 or len(segment) % 4))
        or remainder == 1
        or not _BASE64URL.fullmatch(stripped)
    ):
        raise invalid(MALFORMED, f"{what} is not base64url")
    # Unused bits that are not zero give other spellings of the same bytes: one token, one
    # spelling, or the verified-token cache could be fed endless variants of a captured token.
    # (The same verdict as pyjwt's decode-and-re-encode comparison, without encoding again.)
    if remainder and _SIXBITS[stripped[-1]] & _UNUSED_BITS[remainder]:
        raise invalid(MALFORMED, f"{what} is not canonical base64url")
    try:
        return binascii.a2b_base64(stripped.translate(_TO_STANDARD) + b"=" * (-remainder % 4))
    except binascii.Error:
        raise invalid(MALFORMED, f"{what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        # RFC 7519 section 7.2: the JSON is UTF-8 (json.loads on bytes would also guess UTF-16/32).
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise invalid(MALFORMED, f"{what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise invalid(MALFORMED, f"{what} is not a JSON object")
    # UTF-8 cannot hold a surrogate, so only a `\uD800`-style escape makes one. A lone one is no
    # text at all: every later layer that encodes the claim (a forwarded header, a log line, the
    # audit file) would fail on it, so the token is refused here. Escaped surrogate pairs (an emoji
    # as `\ud83d\ude00`) are valid; the full check runs only when such an escape is present.
    if (b"\\ud" in data or b"\\uD" in data) and not _is_text(value):
        raise invalid(MALFORMED, f"{what} holds a lone surrogate, which is not text")
    # JSON only lets a NUL in as an escape; C strings, logs and header parsers end at it, so a
    # claim holding one would read differently downstream (DESIGN: a 401, never a fall-back).
    if b"\\u0000" in data:
        raise invalid(MALFORMED, f"{what} holds a NUL character, which is not text")
    return value


def _is_text(value: dict[str, Any]) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


# JOSE headers already checked, by their segment: an issuer's tokens all share one header
# (`alg`, `kid`, `typ`), so a new token decodes and parses only its payload. Only headers that
# passed (and short) are kept, and the memo is emptied when full: forged ones cannot grow it.
HEADERS: dict[bytes, dict[str, Any]] = {}
_HEADERS_SIZE: Final = 256
_HEADER_MAX_KEPT: Final = 512


def _header(segment: bytes) -> dict[str, Any]:
    header = _json_object(segment_bytes(segment, "header"), "header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise invalid(MALFORMED, f"kid={summary(kid)} is not a string")
    if "crit" in header:
        # No JWS extension is understood here, so any critical one must be refused.
        raise invalid(
            "The access token uses an unsupported critical extension.",
            f"crit={summary(header['crit'])}",
        )
    if header.get("b64", True) is False:
        # RFC 7797 unencoded payloads must be listed in `crit`, which is refused above.
        raise invalid(MALFORMED, "b64=false without crit")
    if len(segment) <= _HEADER_MAX_KEPT:
        if len(HEADERS) >= _HEADERS_SIZE:
            HEADERS.clear()
        HEADERS[segment] = header
    return header


def parse_jws(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, payload, signing input, signature) of a compact JWS; IdentityError if malformed."""
    if not token.isascii():
        raise invalid(MALFORMED, "token has non-ASCII characters")
    if token.startswith("{"):
        raise invalid(MALFORMED, "JWS JSON serialization is not accepted")
    dots = token.count(".")
    if dots == 4:
        raise invalid("Encrypted tokens (JWE) are not accepted.", "token has five segments (JWE)")
    if dots != 2:
        raise invalid(MALFORMED, f"token has {dots + 1} segments, not 3")
    raw = token.encode("ascii")
    header_segment, payload_segment, signature_segment = raw.split(b".")
    header = HEADERS.get(header_segment)
    if header is None:
        header = _header(header_segment)
    payload = _json_object(segment_bytes(payload_segment, "payload"), "payload")
    signature = segment_bytes(signature_segment, "signature")
    signing_input = raw[: len(header_segment) + 1 + len(payload_segment)]
    return header, payload, signing_input, signature
