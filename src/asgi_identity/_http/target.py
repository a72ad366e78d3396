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
# of a segment for another, and a double-encoded dot or separator becomes one for an upstream
# that decodes again; no rewrite makes them agree, so both path policies refuse them.
_ENCODED_SEPARATOR = re.compile(rb"%(?:2f|5c|25(?:2e|2f|5c))", re.IGNORECASE)
# Characters no reader agrees on: a backslash (a separator to some servers), NUL, a fragment
# (never part of a request target: h11 keeps it, httptools drops it) and `;` path parameters
# (servlet-style upstreams strip them, so `/admin;x` and `/x/..;/admin` reach `/admin`).
_AMBIGUOUS_CHARS = ("\\", "\x00", "#", ";")
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


def canonical_under(root: str, path: str) -> str | None:
    """`path` canonical relative to the mount point `root` (ASGI's root_path), or None when a
    `..` would climb above it."""
    if not root or not path.startswith(root) or path[len(root) : len(root) + 1] not in ("/", ""):
        return canonical_path(path)  # above `/` there is nothing: RFC 3986 stops there
    prefix, rest = root, path[len(root) :] or "/"
    depth = 0
    for segment in rest.split("/")[1:]:
        if segment == "..":
            depth -= 1
            if depth < 0:
                return None
        elif segment and segment != ".":
            depth += 1
    return prefix + canonical_path(rest)


def _needs_work(path: str) -> bool:
    # The usual path has no dot-segment, no empty segment, nothing ambiguous: a few C scans.
    return (
        "/." in path or "//" in path or "\\" in path or "\x00" in path or "#" in path or ";" in path
    )


def check_path(
    path: str, raw_path: bytes | None, policy: PathPolicy, root_path: str = ""
) -> str | None:
    """None when `path` is canonical; the rewritten path under "normalize"; TargetRefused else.

    `path` is ASGI's decoded path (unreserved characters are already decoded by the server);
    `raw_path` is the target as sent, where an encoded separator can still be seen. A rewrite
    never climbs above `root_path`, the point the app is mounted at.
    """
    if raw_path is not None and b"%" in raw_path and _ENCODED_SEPARATOR.search(raw_path):
        raise TargetRefused("The request path contains an encoded '/' or '\\'.")
    if not path.startswith("/") and path:
        raise TargetRefused("The request path must start with '/'.")
    if not _needs_work(path):
        return None
    if any(c in path for c in _AMBIGUOUS_CHARS):
        raise TargetRefused(
            "The request path contains a character servers read differently "
            "(a backslash, NUL, '#' or ';')."
        )
    canonical = canonical_path(path)
    if canonical == path:
        return None  # e.g. /.well-known/: a segment that starts with a dot is not a dot-segment
    if policy == "refuse":
        raise TargetRefused(
            "The request path is not canonical (it has '.' or '..' segments or repeated "
            "slashes); send the path without them."
        )
    rewritten = canonical_under(root_path, path)
    if rewritten is None:
        raise TargetRefused("The request path climbs above the root it is served under.")
    return rewritten


def raw_path_for(path: str) -> bytes:
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def check_method(method: str) -> None:
    """A standard method in another case is refused: routers and upstreams read it differently."""
    if method not in STANDARD_METHODS and method.upper() in STANDARD_METHODS:
        raise TargetRefused(f"The request method must be spelled {method.upper()}.")
