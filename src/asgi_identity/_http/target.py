"""The request target every layer and the app agree on: one canonical path, one exact method."""

from __future__ import annotations

import re
from typing import Final, Literal
from urllib.parse import quote

PathPolicy = Literal["refuse", "normalize"]
PATH_POLICIES: Final = frozenset({"refuse", "normalize"})

STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

# In the raw target, an encoded `/` or `\` would become a separator for one reader and stay part
# of a segment for another; no rewrite makes them agree, so both path policies refuse them.
_ENCODED_SEPARATOR = re.compile(rb"%(?:2f|5c)", re.IGNORECASE)
# Bytes that stay as they are in a rewritten raw path: RFC 3986 pchar minus the percent sign.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class TargetRefused(ValueError):
    """The path cannot be given one meaning (or may not be rewritten): a 400."""


def canonical_path(path: str) -> str:
    """`path` with RFC 3986 dot-segments removed and repeated slashes merged."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:-1]:
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    last = segments[-1] if len(segments) > 1 else ""
    if last == "..":
        if out:
            out.pop()
        last = ""
    elif last == ".":
        last = ""
    return "/" + "/".join([*out, last]) if out else "/" + last


def _needs_work(path: str) -> bool:
    # The usual path has no dot-segment, no empty segment and no backslash: three C scans.
    return "/." in path or "//" in path or "\\" in path or "\x00" in path


def check_path(path: str, raw_path: bytes | None, policy: PathPolicy) -> str | None:
    """None when `path` is canonical; the rewritten path under "normalize"; TargetRefused else.

    `path` is ASGI's decoded path (unreserved characters are already decoded by the server);
    `raw_path` is the target as sent, where an encoded separator can still be seen.
    """
    if raw_path is not None and b"%" in raw_path and _ENCODED_SEPARATOR.search(raw_path):
        raise TargetRefused("The request path contains an encoded '/' or '\\'.")
    if not path.startswith("/") and path:
        raise TargetRefused("The request path must start with '/'.")
    if not _needs_work(path):
        return None
    if "\\" in path or "\x00" in path:
        raise TargetRefused("The request path contains a backslash or a NUL byte.")
    canonical = canonical_path(path)
    if canonical == path:
        return None  # e.g. /.well-known/: a segment that starts with a dot is not a dot-segment
    if policy == "refuse":
        raise TargetRefused(
            "The request path is not canonical (it has '.' or '..' segments or repeated "
            "slashes); send the path without them."
        )
    return canonical


def raw_path_for(path: str) -> bytes:
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def check_method(method: str) -> None:
    """A standard method in another case is refused: routers and upstreams read it differently."""
    if method not in STANDARD_METHODS and method.upper() in STANDARD_METHODS:
        raise TargetRefused(f"The request method must be spelled {method.upper()}.")
