"""Key sets: an issuer's verification keys, found by `kid`; fetched and cached from a URL or discovery.

The keys themselves are parsed in `_keys`, and documents fetched by `_fetch`; the names below are
this module's public interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from asgi_identity import telemetry
from asgi_identity.credentials._fetch import (
    FetchError,
    IssuerMismatch,
    check_url,
    fetch_json,
    log_url,
)
from asgi_identity.credentials._keys import (
    ASYMMETRIC_ALGORITHMS,
    EC_ALGORITHMS,
    JOSE_ALGORITHMS,
    MIN_RSA_BITS,
    RSA_ALGORITHMS,
    PublicKey,
    VerificationKey,
    algorithms_for,
    key_from_jwk,
    key_from_pem,
    keys_from_jwks,
)
from asgi_identity.credentials._keyset import KeySet, KeySetUnavailable, KeysRemoved

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "EC_ALGORITHMS",
    "JOSE_ALGORITHMS",
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "KeySet",
    "KeySetUnavailable",
    "KeysRemoved",
    "PublicKey",
    "RemoteKeySet",
    "VerificationKey",
    "algorithms_for",
    "check_url",
    "fetch_json",
    "key_from_jwk",
    "key_from_pem",
    "keys_from_jwks",
]

logger = logging.getLogger("asgi_identity.jwks")


class RemoteKeySet(KeySet):
    """A JWKS fetched from a URL (or found by OIDC discovery), cached and refreshed carefully.

    One fetch at a time however many requests wait for it; a fresh copy at most every `ttl`
    seconds, in the background; an unknown `kid` refetches at most once per `cooldown`; a failed
    fetch keeps the last good keys.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        discovery_issuer: str | None = None,
        allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS,
        ttl: float = 300.0,
        cooldown: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = 256 * 1024,
    ) -> None:
        super().__init__()
        if (jwks_url is None) == (discovery_issuer is None):
            raise ValueError("RemoteKeySet takes either jwks_url or discovery_issuer")
        if jwks_url is not None:
            check_url(jwks_url, "jwks_url")
        if discovery_issuer is not None:
            check_url(discovery_issuer, "issuer (for discovery)")
        self._jwks_url = jwks_url
        self._issuer = discovery_issuer
        self._allowed = allowed
        self.ttl = ttl
        self.cooldown = cooldown
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0
        self.last_error: str | None = None
        #: Why the provider's answer does not fit the configuration, while it does not.
        self.configuration_error: str | None = None

    @property
    def source(self) -> str:
        return self._jwks_url or f"{self._issuer} (discovery)"

    def _running_task(self) -> asyncio.Task[None] | None:
        task = self._task
        if task is None or task.done():
            return None
        # A task from another event loop (a test client's, a closed one) cannot be awaited here.
        if task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    def _start_refresh(self) -> asyncio.Task[None]:
        task = self._running_task()
        if task is None:
            self._attempted_at = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._task = task
        return task

    async def _join_refresh(self) -> None:
        # Shielded: a client that gives up must not cancel the fetch others are waiting for.
        await asyncio.shield(self._start_refresh())

    async def find(self, kid: str | None, algorithm: str) -> VerificationKey | None:
        now = time.monotonic()
        if not self._all:
            if self._running_task() is not None or now - self._attempted_at >= self.cooldown:
                await self._join_refresh()
            if not self._all:
                raise KeySetUnavailable(
                    self.retry_after(), configuration=self.configuration_error is not None
                )
        elif now - self._fetched_at >= self.ttl and now - self._attempted_at >= self.cooldown:
            # Stale keys keep serving while a fresh copy is fetched: no request waits for it.
            self._start_refresh()
        key = self._find(kid, algorithm)
        if (
            key is None
            and kid is not None
            and (self._running_task() is not None or now - self._attempted_at >= self.cooldown)
        ):
            # An unknown kid is how a key rotation shows up first.
            await self._join_refresh()
            key = self._find(kid, algorithm)
        return key

    def retry_after(self) -> int:
        """Whole seconds until the next fetch may be tried (at least 1)."""
        wait = self._attempted_at + self.cooldown - time.monotonic()
        return max(1, math.ceil(wait))

    async def _get(self, url: str) -> Any:
        self.fetches += 1
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(fetch_json, url, self.timeout, self.max_bytes), self.timeout
            )
        except asyncio.TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout:g}s") from None

    async def _jwks_location(self) -> str:
        if self._jwks_url is not None:
            return self._jwks_url
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get(url)
        if not isinstance(document, Mapping):
            raise FetchError("discovery document is not a JSON object")
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the very issuer
        # it was fetched for, or its keys belong to someone else.
        named = document.get("issuer")
        if named != self._issuer:
            raise IssuerMismatch(named)
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError("discovery document has no jwks_uri")
        try:
            check_url(jwks_uri, "jwks_uri")
        except ValueError as exc:
            raise FetchError(str(exc)) from None
        self._jwks_url = jwks_uri
        return jwks_uri

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        url = self._jwks_url or self._issuer or ""
        with telemetry.jwks_fetch_span(self._issuer, self._jwks_url):
            try:
                url = await self._jwks_location()
                keys = keys_from_jwks(await self._get(url), self._allowed, strict=False)
            except IssuerMismatch as exc:
                self._misconfigured(exc, url)
                return
            except (FetchError, ValueError) as exc:
                self.configuration_error = None
                self.last_error = str(exc)
                telemetry.record_jwks_fetch("error", self._issuer, error=str(exc))
                logger.warning(
                    "asgi_identity: the key set at %s %s; %s",
                    log_url(url),
                    exc,
                    "keeping the last good keys" if self._all else "no keys loaded yet",
                )
                return
            except Exception as exc:
                # A backstop for what the fetch and parse did not foresee: the request that
                # triggered the refresh must get the usual answer, and the last good keys stay.
                # Only the exception's type is logged: its text could carry what the server sent.
                self.last_error = f"unexpected {type(exc).__name__}"
                telemetry.record_jwks_fetch("error", self._issuer, error=self.last_error)
                logger.error(
                    "asgi_identity: refreshing the key set at %s failed unexpectedly (%s); %s",
                    log_url(url),
                    type(exc).__name__,
                    "keeping the last good keys" if self._all else "no keys loaded yet",
                )
                return
            telemetry.record_jwks_fetch("ok", self._issuer)
        self._set(keys)
        self.last_error = None
        self.configuration_error = None
        self._fetched_at = time.monotonic()

    def _misconfigured(self, exc: IssuerMismatch, url: str) -> None:
        error = (
            f"the discovery document at {log_url(url)} names the issuer {exc.named!r}, but "
            f"JWTIssuer is configured with issuer={self._issuer!r}"
        )
        self.last_error = str(exc)
        telemetry.record_jwks_fetch("error", self._issuer, error=self.last_error)
        # Logged once, not at every retry: it stays true until someone changes a configuration.
        if error != self.configuration_error:
            logger.error(
                "asgi_identity: configuration error: %s. OpenID Connect requires them to be "
                "identical, character for character (a trailing slash, localhost against "
                "127.0.0.1); set issuer= to the value the provider names. %s",
                error,
                "Keeping the last good keys." if self._all else "Tokens of this issuer get 503.",
            )
        self.configuration_error = error

    async def startup(self) -> None:
        if not self._all:
            await self._join_refresh()

    async def aclose(self) -> None:
        task = self._running_task()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
