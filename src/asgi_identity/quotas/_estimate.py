"""The token estimate's inputs: the output cap a request body asks for, and its declared size."""

from __future__ import annotations

import re
from typing import Any

from asgi_identity._http.body import JSONPairs, loads_pairs
from asgi_identity.types import Scope


def check_estimate_options(default_max_tokens: int, max_body: int) -> None:
    if (
        not isinstance(default_max_tokens, int)
        or isinstance(default_max_tokens, bool)
        or default_max_tokens < 0
    ):
        raise ValueError("UserRateLimit: default_max_tokens must be an integer >= 0")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ValueError("UserRateLimit: max_body must be a positive number of bytes")


#: Request fields that cap a completion's output, across the supported APIs.
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_OUTPUT_CAP_SET = frozenset(_OUTPUT_CAPS)

_OPENS_OBJECT = re.compile(rb"[ \t\n\r]*\{")
# Byte-order marks and the NUL bytes of UTF-16/32, all of which json.loads() accepts.
_OTHER_ENCODINGS = re.compile(rb"\xef\xbb\xbf|\xff\xfe|\xfe\xff|.?\x00", re.DOTALL)


def _valid_cap(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def body_output_cap(body: bytes) -> tuple[bool, int | None]:
    """(whether a request body is a JSON object, the output-token cap it asks for).

    Only a body that may name a cap is parsed; any other one opening with `{` is taken for an
    object without parsing it (metering a malformed body costs nothing: a refused or failed
    call is refunded). When the body repeats a cap field, parsers disagree on which value the
    upstream sees, so the largest one counts.
    """
    if _OPENS_OBJECT.match(body):
        if b"max_" not in body and b"\\u" not in body:
            return True, None
    elif not _OTHER_ENCODINGS.match(body):
        return False, None  # not an object in any encoding json.loads() reads
    # A body can only name a cap with the field's name spelled out, or spelled with \u escapes
    # (JSON's only other way to write those letters); any other one was answered above.
    parsed = loads_pairs(body)
    if not isinstance(parsed, JSONPairs):
        return parsed is None and _OPENS_OBJECT.match(body) is not None, None
    found: dict[str, list[Any]] = {}
    for key, value in parsed:
        if key in _OUTPUT_CAP_SET:
            found.setdefault(key, []).append(value)
    if any(len(values) > 1 for values in found.values()):
        valid = [v for values in found.values() for v in values if _valid_cap(v)]
        return True, max(valid, default=None)
    for field in _OUTPUT_CAPS:
        values = found.get(field)
        if values and _valid_cap(values[0]):
            return True, values[0]
    return True, None


def content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0
