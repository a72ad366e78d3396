"""What is wrong with a storage URI, said at start-up with the fix and without its password.

limits' own messages repeat the URI as given (`unknown storage scheme : redis://:pw@host`), and a
`redis://` URI (limits' synchronous storage) or a missing client library deserve the fix by name.
"""

from __future__ import annotations


def redact_uri(uri: str) -> str:
    """`uri` with its password (and any secret-looking query value) replaced by `***`."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "***" if "@" in uri else uri
    location, qsep, query = rest.partition("?")
    if "@" in location:
        userinfo, _, hosts = location.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        location = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    if qsep:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            secret = any(
                word in name.lower() for word in ("pass", "secret", "token", "key", "auth")
            )
            pairs.append(f"{name}=***" if eq and secret else pair)
        query = "&".join(pairs)
    return f"{scheme}://{location}{qsep}{query}"


def storage_error(uri: str, exc: Exception | None) -> str:
    """What is wrong with a storage URI, and the fix, without its password."""
    shown = redact_uri(uri)
    scheme = uri.partition("://")[0].lower()
    reason = "" if exc is None else str(exc)
    if not scheme.startswith("async+") and "unknown storage scheme" not in reason:
        return (
            f"UserRateLimit: storage {shown!r} names limits' synchronous storage; it needs an "
            f"async storage: 'async+{scheme}://...' (for Redis: 'async+redis://host:6379')"
        )
    if "unknown storage scheme" in reason:
        return (
            f"UserRateLimit: storage {shown!r} has an unknown scheme; use 'async+memory://', "
            "'async+redis://host:6379' (or another of limits' async+ storages), or pass a "
            "limits.aio.storage.Storage"
        )
    if "prerequisite" in reason and scheme.startswith("async+"):
        # limits names the client library it misses; the user installs an extra.
        if "redis" in scheme:
            fix = "pip install 'asgi-identity[redis]'"
        else:
            fix = f"pip install 'limits[async-{scheme.removeprefix('async+').split('+')[0]}]'"
        return (
            f"UserRateLimit: storage {shown!r} needs a client library that is not installed: {fix}"
        )
    # limits' own messages may repeat the URI: never with its password.
    password = uri.partition("://")[2].partition("?")[0].rpartition("@")[0].partition(":")[2]
    reason = reason.replace(uri, shown)
    if password:
        reason = reason.replace(password, "***")
    return f"UserRateLimit: storage {shown!r}: {reason}"
