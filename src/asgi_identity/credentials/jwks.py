"""Verification keys: parsed once from a PEM or a JWKS, fetched and cached from a URL or discovery."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from asgi_identity import telemetry

logger = logging.getLogger("asgi_identity.jwks")

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final[Mapping[str, str]] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}
#: Every algorithm a token may be signed with: asymmetric only, so a public key can never be
#: used as an HMAC secret and `none` never passes.
ASYMMETRIC_ALGORITHMS: Final = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}
MIN_RSA_BITS: Final = 2048
#: pyjwt's algorithm objects (its JOSE implementations), one per allowed algorithm name.
JOSE_ALGORITHMS: Final[Mapping[str, Algorithm]] = MappingProxyType(
    {name: alg for name, alg in get_default_algorithms().items() if name in ASYMMETRIC_ALGORITHMS}
)
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})
_READ_CHUNK: Final = 65536

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key and the algorithms it may verify (decided by the key, never by a token)."""

    kid: str | None
    algorithms: frozenset[str]
    key: PublicKey
    #: Per algorithm, pyjwt's algorithm object and the key as its `prepare_key` returned it: done
    #: once when the key set loads, not once per token.
    verifiers: Mapping[str, tuple[Algorithm, Any]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        verifiers: dict[str, tuple[Algorithm, Any]] = {}
        for name in self.algorithms:
            algorithm = JOSE_ALGORITHMS.get(name)
            if algorithm is None:
                raise ValueError(f"alg {name!r} is not an asymmetric algorithm")
            try:
                verifiers[name] = (algorithm, algorithm.prepare_key(self.key))
            except (PyJWTError, TypeError, ValueError) as exc:
                raise ValueError(f"the key cannot verify {name}: {exc}") from None
        object.__setattr__(self, "verifiers", MappingProxyType(verifiers))


class KeySetUnavailable(Exception):
    """No key set was ever loaded and the provider cannot be reached now."""


def _is_loopback(host: str) -> bool:
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
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise ValueError(
        f"{what} must be an https:// URL (plain http is allowed only for loopback hosts): {url!r}"
    )


def _log_url(url: str) -> str:
    # A query string may carry a signature or an access key: keep it out of the logs.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def algorithms_for(key: PublicKey) -> frozenset[str]:
    """The algorithms a key's type (and curve) can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})"
            )
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"EC curve {key.curve.name} is not supported")
        return frozenset({algorithm})
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"})
    raise ValueError(f"{type(key).__name__} cannot verify JWT signatures")


def _pinned(key: PublicKey, declared: str | None, allowed: frozenset[str]) -> frozenset[str]:
    algorithms = algorithms_for(key)
    if declared is not None:
        if declared not in algorithms:
            raise ValueError(f"alg {declared!r} does not fit a {type(key).__name__}")
        algorithms = frozenset({declared})
    algorithms &= allowed
    if not algorithms:
        raise ValueError("none of the issuer's allowed algorithms fits this key")
    return algorithms


def key_from_pem(pem: str, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> VerificationKey:
    """A public key (or a certificate's key) in PEM; its type decides the algorithms."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY" in data:
        raise ValueError("public_key must be a public key, not a private key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            public: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"public_key is not a PEM public key or certificate: {exc}") from None
    return VerificationKey(None, _pinned(public, None, allowed), public)


def key_from_jwk(jwk: Any, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> VerificationKey:
    """One signing key of a JWKS; ValueError saying why it is unusable."""
    if not isinstance(jwk, Mapping):
        raise ValueError("a key must be a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"key {kid!r} is not a signing key (use={jwk.get('use')!r})")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError(f"key {kid!r} is not for verification (key_ops)")
    if "d" in jwk:
        raise ValueError(f"key {kid!r} holds private key material: publish only public keys")
    declared = jwk.get("alg")
    if declared is not None and not isinstance(declared, str):
        # A list or object is unhashable: refuse it before the set lookup below.
        raise ValueError(f"key {kid!r} has an alg that is not a string")
    if declared is not None and declared not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"key {kid!r} has alg {declared!r}, which is not an asymmetric algorithm")
    kty = jwk.get("kty")
    family = (
        {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(kty) if isinstance(kty, str) else None
    )
    if family is None:
        raise ValueError(f"key {kid!r} has an unsupported kty {kty!r}")
    try:
        public = JOSE_ALGORITHMS[family].from_jwk(dict(jwk))
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"key {kid!r} cannot be loaded: {exc}") from None
    return VerificationKey(kid, _pinned(public, declared, allowed), public)


def keys_from_jwks(
    document: Any, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS, *, strict: bool
) -> tuple[VerificationKey, ...]:
    """The usable keys of a JWKS document; `strict` raises on any bad key instead of skipping it."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS must be a JSON object with a "keys" list')
    keys: list[VerificationKey] = []
    for jwk in document["keys"]:
        try:
            keys.append(key_from_jwk(jwk, allowed))
        except Exception as exc:
            # A key set may come from the network: whatever one key does wrong, even in a way
            # key_from_jwk did not foresee, is that key's problem, not the whole set's.
            if not isinstance(exc, ValueError):
                exc = ValueError(f"a key cannot be loaded ({type(exc).__name__})")
            if strict:
                raise ValueError(f"jwks: {exc}") from None
            # One odd key (an encryption key, a new algorithm) must not take the others down.
            logger.info("asgi_identity: skipping a JWKS key: %s", exc)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return tuple(keys)


class KeySet:
    """Keys of one issuer, found by `kid` and algorithm."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._set(tuple(keys))

    def _set(self, keys: tuple[VerificationKey, ...]) -> None:
        self._all = keys
        self._by_kid = {key.kid: key for key in keys if key.kid is not None}
        self._without_kid = tuple(key for key in keys if key.kid is None)

    @property
    def loaded(self) -> bool:
        return bool(self._all)

    def _find(self, kid: str | None, algorithm: str) -> VerificationKey | None:
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is not None:
                return key
            candidates: tuple[VerificationKey, ...] = self._without_kid
        else:
            candidates = self._all
        # A token without a kid (or a key without one, as a PEM is) matches only when exactly
        # one key can verify its algorithm: never try several keys in turn.
        fitting = [key for key in candidates if algorithm in key.algorithms]
        if len(fitting) == 1:
            return fitting[0]
        # The only key there is: returned so that a foreign algorithm is reported as such.
        return candidates[0] if len(candidates) == 1 else None

    async def find(self, kid: str | None, algorithm: str) -> VerificationKey | None:
        return self._find(kid, algorithm)

    async def startup(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _FetchError(Exception):
    pass


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
    opener = _LOOPBACK_OPENER if _is_loopback(host) else _OPENER
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked by check_url()
        url, headers={"Accept": "application/json", "User-Agent": "asgi-identity"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _FetchError(f"body of {length} bytes is over the {max_bytes} byte cap")
            body = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _FetchError(f"no complete answer within {timeout:g}s")
                # read1: one receive per call, so a server trickling bytes meets the deadline
                # check between receives instead of holding the thread until `n` bytes arrive.
                chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise _FetchError(f"body is over the {max_bytes} byte cap")
            if length is not None and length.isdigit() and len(body) < int(length):
                # read1 reports a body cut short as its end, where read() raised IncompleteRead.
                raise _FetchError("sent a malformed HTTP response (body shorter than announced)")
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        if 300 <= exc.code < 400:
            raise _FetchError(
                f"answered with a redirect ({exc.code}), which is not followed"
            ) from None
        raise _FetchError(f"answered with HTTP {exc.code}") from None
    except http.client.HTTPException as exc:
        # A garbage status line, a truncated chunked body: the type says enough, and the
        # exception's text would repeat whatever the server sent.
        raise _FetchError(f"sent a malformed HTTP response ({type(exc).__name__})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise _FetchError(f"no complete answer within {timeout:g}s") from None
        raise _FetchError(f"cannot be reached ({reason})") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _FetchError("did not answer with JSON") from None


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
                raise KeySetUnavailable(self.retry_after())
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
            raise _FetchError(f"no complete answer within {self.timeout:g}s") from None

    async def _jwks_location(self) -> str:
        if self._jwks_url is not None:
            return self._jwks_url
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get(url)
        if not isinstance(document, Mapping):
            raise _FetchError("discovery document is not a JSON object")
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the very issuer
        # it was fetched for, or its keys belong to someone else.
        if document.get("issuer") != self._issuer:
            raise _FetchError("discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _FetchError("discovery document has no jwks_uri")
        try:
            check_url(jwks_uri, "jwks_uri")
        except ValueError as exc:
            raise _FetchError(str(exc)) from None
        self._jwks_url = jwks_uri
        return jwks_uri

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        url = self._jwks_url or self._issuer or ""
        with telemetry.jwks_fetch_span(self._issuer, self._jwks_url):
            try:
                url = await self._jwks_location()
                keys = keys_from_jwks(await self._get(url), self._allowed, strict=False)
            except (_FetchError, ValueError) as exc:
                self.last_error = str(exc)
                telemetry.record_jwks_fetch("error", self._issuer, error=str(exc))
                logger.warning(
                    "asgi_identity: the key set at %s %s; %s",
                    _log_url(url),
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
                    _log_url(url),
                    type(exc).__name__,
                    "keeping the last good keys" if self._all else "no keys loaded yet",
                )
                return
            telemetry.record_jwks_fetch("ok", self._issuer)
        self._set(keys)
        self.last_error = None
        self._fetched_at = time.monotonic()

    async def startup(self) -> None:
        if not self._all:
            await self._join_refresh()

    async def aclose(self) -> None:
        task = self._running_task()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
