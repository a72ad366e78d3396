"""The values of credential headers: a bearer credential, a trusted email or group header."""

from __future__ import annotations

import re
from collections.abc import Sequence

from asgi_identity.credentials.email import EmailAddress, parse_email
from asgi_identity.errors import IdentityError

# RFC 6750 allows only visible ASCII in a bearer credential; a regex keeps the check cheap.
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


def bearer_value(raw: bytes, *, scheme_required: bool) -> str:
    """The credential in `Bearer <value>` (RFC 6750); IdentityError invalid_token when malformed."""
    value = raw.strip()
    scheme, sep, rest = value.partition(b" ")
    if sep and scheme.lower() == b"bearer":
        value = rest.strip()
    elif scheme_required:
        raise IdentityError(
            "invalid_token", "The Authorization header must be 'Bearer <credential>'."
        )
    if not _VISIBLE_ASCII.fullmatch(value):
        raise IdentityError("invalid_token", "The bearer credential is empty or malformed.")
    return value.decode("ascii")


def header_email(values: Sequence[bytes], header: str) -> EmailAddress | None:
    """The one address a trusted sender put in the email header, normalized; None if absent."""
    if not values:
        return None
    if len(values) > 1:
        raise IdentityError(
            "ambiguous_credentials", f"The request carries more than one {header} header."
        )
    try:
        return parse_email(values[0].decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        # parse_email says what is wrong without repeating the value.
        reason = "it is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise IdentityError(
            "invalid_request", f"The {header} header is not a plain email address: {reason}."
        ) from None


MAX_GROUP_LENGTH = 128


def header_group_value(values: Sequence[bytes]) -> str | None:
    """The one group a trusted sender put in the group header; None if absent."""
    if not values:
        return None
    if len(values) > 1:
        raise IdentityError(
            "ambiguous_credentials", "The request carries more than one group header."
        )
    try:
        group = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        group = ""
    if (
        not group
        or len(group) > MAX_GROUP_LENGTH
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in group)
    ):
        raise IdentityError("invalid_group", "The group header is empty or malformed.")
    return group
