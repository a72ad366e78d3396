"""JWT verification: issuers, their keys, the claim rules and a cache of verified tokens."""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final

from asgi_identity import telemetry
from asgi_identity.credentials.claims import ClaimMap, resolve_claim_map
from asgi_identity.credentials.jwks import (
    ASYMMETRIC_ALGORITHMS,
    KeySet,
    KeySetUnavailable,
    RemoteKeySet,
    check_url,
    key_from_pem,
    keys_from_jwks,
)
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity

logger = logging.getLogger("asgi_identity.tokens")

# JWS compact form (three base64url segments) or JWE (five); every JOSE header is a JSON object,
# and base64url of "{" starts with "e".
_COMPACT: Final = re.compile(r"e[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2}(?:(?:\.[A-Za-z0-9_-]*){2})?")


def looks_like_jwt(value: str) -> bool:
    """A JWS (three base64url segments) or JWE (five) in compact form, as opposed to an API key."""
    return _COMPACT.fullmatch(value) is not None


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float (`exp` of 400 digits) is no time at all
        return False


@dataclass(frozen=True)
class JWTIssuer:
    """One trusted token issuer: where its keys are, and what its tokens must say."""

    issuer: str
    audience: str | Sequence[str] | None
    jwks_url: str | None = None
    discovery: bool = False
    public_key: str | None = None
    jwks: Mapping[str, Any] | None = None
    authorized_parties: Sequence[str] | None = None
    claims: str | ClaimMap = "default"
    leeway: float = 60
    required_typ: str | None = None
    max_lifetime: float | None = None
    algorithms: Sequence[str] | None = None
    jwks_ttl: float = 300
    jwks_refresh_cooldown: float = 10
    jwks_fetch_timeout: float = 5
    jwks_max_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        name = f"JWTIssuer({self.issuer!r})"
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("JWTIssuer: issuer must be a non-empty string (the exact `iss`)")
        object.__setattr__(self, "audience", self._audience(name))
        sources = [
            option
            for option, present in (
                ("jwks_url", self.jwks_url is not None),
                ("discovery", self.discovery),
                ("public_key", self.public_key is not None),
                ("jwks", self.jwks is not None),
            )
            if present
        ]
        if len(sources) != 1:
            raise ValueError(
                f"{name}: give exactly one key source (jwks_url, discovery=True, public_key or "
                f"jwks), not {', '.join(sources) or 'none'}"
            )
        if self.jwks_url is not None:
            check_url(self.jwks_url, f"{name}: jwks_url")
        if self.discovery:
            check_url(self.issuer, f"{name}: with discovery=True, issuer")
        if self.authorized_parties is not None:
            parties = self._strings(self.authorized_parties, "authorized_parties", name)
            object.__setattr__(self, "authorized_parties", parties)
        resolve_claim_map(self.claims)
        if not _is_number(self.leeway) or self.leeway < 0:
            raise ValueError(f"{name}: leeway must be a number of seconds >= 0")
        if self.required_typ is not None and (
            not isinstance(self.required_typ, str) or not self.required_typ
        ):
            raise ValueError(f"{name}: required_typ must be a non-empty string such as 'at+jwt'")
        if self.max_lifetime is not None and (
            not _is_number(self.max_lifetime) or self.max_lifetime <= 0
        ):
            raise ValueError(f"{name}: max_lifetime must be a number of seconds > 0")
        if self.algorithms is not None:
            algorithms = self._strings(self.algorithms, "algorithms", name)
            refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
            if refused:
                raise ValueError(
                    f"{name}: algorithms {refused} are not allowed; only asymmetric ones are: "
                    f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
                )
            object.__setattr__(self, "algorithms", algorithms)
        for option in ("jwks_ttl", "jwks_refresh_cooldown", "jwks_fetch_timeout"):
            value = getattr(self, option)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"{name}: {option} must be a number of seconds > 0")
        if not isinstance(self.jwks_max_bytes, int) or self.jwks_max_bytes < 1024:
            raise ValueError(f"{name}: jwks_max_bytes must be an int of at least 1024")

    def _audience(self, name: str) -> str | tuple[str, ...] | None:
        audience = self.audience
        if audience is None:
            # Cognito access tokens carry no `aud`; they are bound by `client_id` instead.
            if not self.authorized_parties:
                raise ValueError(
                    f"{name}: audience=None is allowed only with authorized_parties, so every "
                    "token is still bound to a client"
                )
            return None
        if isinstance(audience, str):
            if not audience:
                raise ValueError(f"{name}: audience must not be empty")
            return audience
        return self._strings(audience, "audience", name)

    @staticmethod
    def _strings(values: Any, option: str, name: str) -> tuple[str, ...]:
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ValueError(f"{name}: {option} must be a list of strings")
        if not values or not all(isinstance(value, str) and value for value in values):
            raise ValueError(f"{name}: {option} must be a non-empty list of non-empty strings")
        return tuple(values)

    @property
    def allowed_algorithms(self) -> frozenset[str]:
        return frozenset(self.algorithms) if self.algorithms else ASYMMETRIC_ALGORITHMS


def _typ(value: str) -> str:
    # RFC 7515 section 4.1.9: "application/" may be omitted, and media types ignore case.
    value = value.lower()
    return value[len("application/") :] if value.startswith("application/") else value


class _Issuer:
    """One JWTIssuer, compiled: its keys, claim map and the claims its tokens must carry."""

    __slots__ = (
        "algorithms",
        "audience",
        "claim_map",
        "config",
        "keys",
        "parties",
        "required",
        "typ",
    )

    def __init__(self, config: JWTIssuer, keys: KeySet) -> None:
        self.config = config
        # Once here, not a new frozenset per verification.
        self.algorithms = config.allowed_algorithms
        self.keys = keys
        self.claim_map = resolve_claim_map(config.claims)
        self.parties = frozenset(config.authorized_parties) if config.authorized_parties else None
        self.typ = _typ(config.required_typ) if config.required_typ else None
        audience = config.audience
        self.audience: tuple[str, ...] | None = (
            (audience,)
            if isinstance(audience, str)
            else None
            if audience is None
            else tuple(audience)
        )
        self.required: tuple[str, ...] = (
            ("exp", "iss") if config.max_lifetime is None else ("exp", "iss", "iat")
        )


def _invalid(message: str, detail: str) -> IdentityError:
    return IdentityError("invalid_token", message, detail=detail)


_MALFORMED = "The access token is malformed."


def _summary(value: Any) -> str:
    # Details go to logs: bounded and repr-escaped, so a hostile claim cannot forge log lines.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Why the compact form is taken apart here and not by `jwt.decode()`: pyjwt checks each base64url
# segment one character at a time in a Python generator (a few hundred steps per token, more time
# than the RSA signature itself) and the routing above needs the header and payload anyway, which
# made every segment decoded and parsed twice. Here each segment is decoded once, as strictly as
# pyjwt does (same alphabet, same padding rules, canonical encoding only), and pyjwt's own
# algorithm objects still verify the signature (see `VerificationKey.verifiers`); the claim rules
# pyjwt applied are applied by `_check_claims` in the same order.
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


def _segment(segment: bytes, what: str) -> bytes:
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
        raise _invalid(_MALFORMED, f"{what} is not base64url")
    # Unused bits that are not zero give other spellings of the same bytes: one token, one
    # spelling, or the verified-token cache could be fed endless variants of a captured token.
    # (The same verdict as pyjwt's decode-and-re-encode comparison, without encoding again.)
    if remainder and _SIXBITS[stripped[-1]] & _UNUSED_BITS[remainder]:
        raise _invalid(_MALFORMED, f"{what} is not canonical base64url")
    try:
        return binascii.a2b_base64(stripped.translate(_TO_STANDARD) + b"=" * (-remainder % 4))
    except binascii.Error:
        raise _invalid(_MALFORMED, f"{what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        # RFC 7519 section 7.2: the JSON is UTF-8 (json.loads on bytes would also guess UTF-16/32).
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _invalid(_MALFORMED, f"{what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise _invalid(_MALFORMED, f"{what} is not a JSON object")
    return value


# JOSE headers already checked, by their segment: an issuer's tokens all share one header
# (`alg`, `kid`, `typ`), so a new token decodes and parses only its payload. Only headers that
# passed (and short) are kept, and the memo is emptied when full: forged ones cannot grow it.
_HEADERS: dict[bytes, dict[str, Any]] = {}
_HEADERS_SIZE: Final = 256
_HEADER_MAX_KEPT: Final = 512


def _header(segment: bytes) -> dict[str, Any]:
    header = _json_object(_segment(segment, "header"), "header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid(_MALFORMED, f"kid={_summary(kid)} is not a string")
    if "crit" in header:
        # No JWS extension is understood here, so any critical one must be refused.
        raise _invalid(
            "The access token uses an unsupported critical extension.",
            f"crit={_summary(header['crit'])}",
        )
    if header.get("b64", True) is False:
        # RFC 7797 unencoded payloads must be listed in `crit`, which is refused above.
        raise _invalid(_MALFORMED, "b64=false without crit")
    if len(segment) <= _HEADER_MAX_KEPT:
        if len(_HEADERS) >= _HEADERS_SIZE:
            _HEADERS.clear()
        _HEADERS[segment] = header
    return header


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, payload, signing input, signature) of a compact JWS; IdentityError if malformed."""
    if not token.isascii():
        raise _invalid(_MALFORMED, "token has non-ASCII characters")
    if token.startswith("{"):
        raise _invalid(_MALFORMED, "JWS JSON serialization is not accepted")
    dots = token.count(".")
    if dots == 4:
        raise _invalid("Encrypted tokens (JWE) are not accepted.", "token has five segments (JWE)")
    if dots != 2:
        raise _invalid(_MALFORMED, f"token has {dots + 1} segments, not 3")
    raw = token.encode("ascii")
    header_segment, payload_segment, signature_segment = raw.split(b".")
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _header(header_segment)
    payload = _json_object(_segment(payload_segment, "payload"), "payload")
    signature = _segment(signature_segment, "signature")
    signing_input = raw[: len(header_segment) + 1 + len(payload_segment)]
    return header, payload, signing_input, signature


def _check_claims(issuer: _Issuer, payload: dict[str, Any]) -> None:
    """The claim rules (the ones pyjwt's decode applied, in its order), on a verified payload."""
    for name in issuer.required:
        if payload.get(name) is None:
            raise _invalid("The access token lacks a required claim.", f"missing {name}")
    # RFC 7519 makes every NumericDate a JSON number: "0" as a string, true or NaN is none.
    for name in ("exp", "nbf", "iat"):
        if name in payload and not _is_number(payload[name]):
            raise _invalid(_MALFORMED, f"{name}={_summary(payload[name])} is not a number")
    config = issuer.config
    now = time.time()
    leeway = config.leeway
    # Whole seconds, as pyjwt compares them.
    if "iat" in payload and int(payload["iat"]) > now + leeway:
        raise _invalid("The access token is not valid yet.", "iat is in the future")
    if "nbf" in payload and int(payload["nbf"]) > now + leeway:
        raise _invalid("The access token is not valid yet.", "nbf is in the future")
    if int(payload["exp"]) <= now - leeway:
        raise _invalid("The access token has expired.", "exp is past")
    iss = payload["iss"]
    if iss != config.issuer:
        raise _invalid("The access token's issuer is not accepted.", f"iss={_summary(iss)}")
    if issuer.audience is not None:
        aud = payload.get("aud")
        if not aud:
            raise _invalid("The access token lacks a required claim.", "missing aud")
        claimed = [aud] if isinstance(aud, str) else aud
        if not isinstance(claimed, list) or not all(isinstance(item, str) for item in claimed):
            raise _invalid(
                "The access token is not meant for this service.",
                f"aud={_summary(aud)} is not a string or a list of strings",
            )
        if all(expected not in claimed for expected in issuer.audience):
            raise _invalid(
                "The access token is not meant for this service.", f"aud={_summary(aud)}"
            )
    for name in ("sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            raise _invalid("The access token is invalid.", f"{name} is not a string")


class TokenVerifier:
    """Verifies bearer JWTs against configured issuers and caches the identities it built."""

    def __init__(
        self,
        issuers: Sequence[JWTIssuer],
        *,
        cache_size: int = 10_000,
        max_token_bytes: int = 8192,
    ) -> None:
        if isinstance(issuers, JWTIssuer):
            issuers = [issuers]
        if not issuers or not all(isinstance(issuer, JWTIssuer) for issuer in issuers):
            raise ValueError("TokenVerifier needs a non-empty list of JWTIssuer")
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError("cache_size must be an int >= 0 (0 turns the cache off)")
        if not isinstance(max_token_bytes, int) or max_token_bytes < 256:
            raise ValueError("max_token_bytes must be an int of at least 256")
        self.cache_size = cache_size
        self.max_token_bytes = max_token_bytes
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._issuers: dict[str, _Issuer] = {}
        # Issuers that publish the same JWKS URL (one Entra ID key set serves every tenant)
        # share one cache and one fetch.
        remote: dict[tuple[Any, ...], RemoteKeySet] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} is configured twice")
            self._issuers[config.issuer] = _Issuer(config, self._key_set(config, remote))
        self._only = next(iter(self._issuers.values())) if len(self._issuers) == 1 else None
        self.key_sets: tuple[KeySet, ...] = tuple(
            dict.fromkeys(issuer.keys for issuer in self._issuers.values())
        )

    @staticmethod
    def _key_set(config: JWTIssuer, remote: dict[tuple[Any, ...], RemoteKeySet]) -> KeySet:
        name = f"JWTIssuer({config.issuer!r})"
        allowed = config.allowed_algorithms
        try:
            if config.public_key is not None:
                return KeySet([key_from_pem(config.public_key, allowed)])
            if config.jwks is not None:
                return KeySet(keys_from_jwks(config.jwks, allowed, strict=True))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        timing = (
            allowed,
            config.jwks_ttl,
            config.jwks_refresh_cooldown,
            config.jwks_fetch_timeout,
            config.jwks_max_bytes,
        )
        where = ("url", config.jwks_url) if config.jwks_url else ("discovery", config.issuer)
        shared = remote.get(where + timing)
        if shared is None:
            shared = RemoteKeySet(
                jwks_url=config.jwks_url,
                discovery_issuer=None if config.jwks_url else config.issuer,
                allowed=allowed,
                ttl=config.jwks_ttl,
                cooldown=config.jwks_refresh_cooldown,
                timeout=config.jwks_fetch_timeout,
                max_bytes=config.jwks_max_bytes,
            )
            remote[where + timing] = shared
        return shared

    async def startup(self) -> None:
        """Fetch every remote key set now (lifespan start-up); a provider that is down is logged."""
        results = await asyncio.gather(
            *(keys.startup() for keys in self.key_sets), return_exceptions=True
        )
        for keys, result in zip(self.key_sets, results, strict=True):
            if isinstance(result, BaseException) or not keys.loaded:
                source = keys.source if isinstance(keys, RemoteKeySet) else "static keys"
                logger.warning(
                    "asgi_identity: no keys loaded from %s at start-up; tokens of that issuer "
                    "get 503 until the provider answers",
                    source,
                )

    async def aclose(self) -> None:
        for keys in self.key_sets:
            await keys.aclose()
        self._cache.clear()

    def cached(self, token: str) -> Identity | None:
        """The identity of a token verified before and not expired, else None (a dict lookup)."""
        entry = self._cache.get(token)
        if entry is None or time.time() >= entry[1]:
            return None
        self._cache.move_to_end(token)
        return entry[0]

    async def verify(self, token: str) -> Identity:
        """The Identity of a valid token; IdentityError (invalid_token, or 503) otherwise."""
        if len(token) > self.max_token_bytes:
            raise _invalid(
                "The access token is too large.",
                f"token of {len(token)} characters, over max_token_bytes={self.max_token_bytes}",
            )
        entry = self._cache.get(token)
        if entry is not None:
            if time.time() < entry[1]:
                self._cache.move_to_end(token)
                return entry[0]
            self._cache.pop(token, None)
        # Only a token not seen before gets a span and a duration: a cache hit stays a lookup.
        started = perf_counter()
        outcome = "invalid"
        try:
            with telemetry.verify_span():
                identity = await self._verify_new(token)
            outcome = "verified"
            return identity
        finally:
            telemetry.record_auth_duration(perf_counter() - started, outcome)

    async def _verify_new(self, token: str) -> Identity:
        header, payload, signing_input, signature = _parse(token)
        issuer = self._only or self._issuer_of(payload)
        config = issuer.config
        alg = header.get("alg")
        # A list or object as `alg` is unhashable: refuse it before any set lookup.
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise _invalid(
                "The access token's signing algorithm is not accepted.", f"alg={_summary(alg)}"
            )
        if issuer.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or _typ(typ) != issuer.typ:
                raise _invalid(
                    "The access token has the wrong type.",
                    f"typ={_summary(typ)}, expected {config.required_typ!r}",
                )
        kid = header.get("kid")
        try:
            key = await issuer.keys.find(kid, alg)
        except KeySetUnavailable as exc:
            retry_after = exc.args[0] if exc.args else 1
            raise IdentityError(
                "identity_provider_unavailable",
                "The identity provider cannot be reached to verify the token; try again shortly.",
                headers=[("Retry-After", str(retry_after))],
                detail=f"no key set loaded for {config.issuer}",
            ) from None
        if key is None:
            raise _invalid(
                "The access token's signing key is not known.",
                f"kid={_summary(kid)} alg={alg} not in the key set of {config.issuer}",
            )
        verifier = key.verifiers.get(alg)
        if verifier is None:
            raise _invalid(
                "The access token's signing algorithm does not match its key.",
                f"alg={alg} but key {kid!r} verifies {sorted(key.algorithms)}",
            )
        # pyjwt's own algorithm object checks the signature, with the key it prepared when the
        # key set loaded; the algorithm comes from the key's pinned list, never from the token.
        algorithm, prepared = verifier
        if not algorithm.verify(signing_input, prepared, signature):
            raise _invalid(
                "The access token's signature is not valid.", f"signature, kid={_summary(kid)}"
            )
        _check_claims(issuer, payload)
        return self._accept(issuer, payload, token)

    def _issuer_of(self, payload: dict[str, Any]) -> _Issuer:
        # Routing only: the chosen issuer's own `iss` is checked exactly once the signature holds.
        iss = payload.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _invalid(
                "The access token's issuer is not accepted.", f"iss={_summary(iss)} not configured"
            )
        return issuer

    def _accept(self, issuer: _Issuer, payload: dict[str, Any], token: str) -> Identity:
        config = issuer.config
        exp = payload["exp"]
        if config.max_lifetime is not None:
            iat = payload["iat"]
            if not _is_number(iat) or exp - iat > config.max_lifetime:
                raise _invalid(
                    "The access token's lifetime is too long.",
                    f"exp - iat = {_summary(exp - iat if _is_number(iat) else iat)}s over "
                    f"max_lifetime={config.max_lifetime:g}",
                )
        if issuer.parties is not None:
            client_id = issuer.claim_map.client_id_of(payload)
            if client_id not in issuer.parties:
                raise _invalid(
                    "The access token was issued to a client that is not allowed.",
                    f"client {_summary(client_id)} not in authorized_parties",
                )
        identity = issuer.claim_map.to_identity(payload, config.issuer)
        if self.cache_size:
            cache = self._cache
            cache[token] = (identity, float(exp) + config.leeway)
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        return identity
