"""Fetching a key set or discovery document: https only, no redirects, bounded in time and size.

The middleware's RemoteKeySet and the `asgi-identity` command both fetch with `fetch_json`.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlsplit

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})
_READ_CHUNK: Final = 65536


class FetchError(Exception):
    """Why a document could not be fetched, in words fit for a log line (never the body)."""

    def __init__(self, reason: str, *, status: int | None = None, reached: bool = True) -> None:
        super().__init__(reason)
        #: The HTTP status of an answer that was not a success, for callers that word it.
        self.status = status
        #: False when the server could not be reached at all, or sent nothing in time.
        self.reached = reached


class IssuerMismatch(FetchError):
    """The discovery document names another issuer: a configuration error, not an outage."""

    def __init__(self, named: Any) -> None:
        super().__init__("discovery document names a different issuer")
        # Only a string is shown (shortened): the document comes from the network.
        self.named = named[:200] if isinstance(named, str) else f"a {type(named).__name__}"


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """https, or plain http to a loopback host (development); ValueError otherwise."""
    if not isinstance(url, str):
        raise ValueError(f"{what} must be a URL string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ValueError(
        f"{what} must be an https:// URL (plain http is allowed only for loopback hosts): "
        f"{log_url(url)!r}"
    )


def log_url(url: str) -> str:
    # A query string may carry a signature or an access key, and the user part a password:
    # keep them out of logs and errors.
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # A key set is read from exactly the configured place; a redirect could point anywhere.
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
# Environment proxies are right for a real IdP and wrong for a development server on loopback.
_LOOPBACK_OPENER = urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


def fetch_json(url: str, timeout: float, max_bytes: int) -> Any:
    """GET `url` as JSON within `timeout` seconds in all and `max_bytes` of body (blocking)."""
    deadline = time.monotonic() + timeout
    host = urlsplit(url).hostname or ""
    opener = _LOOPBACK_OPENER if is_loopback(host) else _OPENER
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked by check_url()
        url, headers={"Accept": "application/json", "User-Agent": "asgi-identity"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"body of {length} bytes is over the {max_bytes} byte cap")
            body = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FetchError(f"no complete answer within {timeout:g}s")
                # read1: one receive per call, so a server trickling bytes meets the deadline
                # check between receives instead of holding the thread until `n` bytes arrive.
                chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"body is over the {max_bytes} byte cap")
            if length is not None and length.isdigit() and len(body) < int(length):
                # read1 reports a body cut short as its end, where read() raised IncompleteRead.
                raise FetchError("sent a malformed HTTP response (body shorter than announced)")
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        if 300 <= exc.code < 400:
            raise FetchError(
                f"answered with a redirect ({exc.code}), which is not followed", status=exc.code
            ) from None
        raise FetchError(f"answered with HTTP {exc.code}", status=exc.code) from None
    except http.client.HTTPException as exc:
        # A garbage status line, a truncated chunked body: the type says enough, and the
        # exception's text would repeat whatever the server sent.
        raise FetchError(f"sent a malformed HTTP response ({type(exc).__name__})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no complete answer within {timeout:g}s", reached=False) from None
        raise FetchError(f"cannot be reached ({reason})", reached=False) from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError("did not answer with JSON") from None
