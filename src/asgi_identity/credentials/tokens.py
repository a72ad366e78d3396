"""JWT verification: the verifier of configured issuers and its cache of verified tokens."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Final

from asgi_identity import telemetry
from asgi_identity.credentials._issuer import CompiledIssuer, JWTIssuer, media_type
from asgi_identity.credentials._jws import invalid, looks_like_jwt, parse_jws, summary
from asgi_identity.credentials.jwks import (
    KeySet,
    KeySetUnavailable,
    RemoteKeySet,
    VerificationKey,
    key_from_pem,
    keys_from_jwks,
)
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity

__all__ = ["JWTIssuer", "TokenVerifier", "looks_like_jwt"]

logger = logging.getLogger("asgi_identity.tokens")

# Shared with `asgi-identity verify`, like the JWTIssuer defaults.
DEFAULT_MAX_TOKEN_BYTES: Final = 8192


#: About the bytes the verified-token cache may hold, whatever the number of entries.
CACHE_BUDGET = 16 * 1024 * 1024


class TokenVerifier:
    """Verifies bearer JWTs against configured issuers and caches the identities it built."""

    def __init__(
        self,
        issuers: Sequence[JWTIssuer],
        *,
        cache_size: int = 10_000,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
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
        # token -> (its identity, when the entry expires, the key that verified it)
        self._cache: OrderedDict[str, tuple[Identity, float, VerificationKey]] = OrderedDict()
        # About the bytes the entries hold (a token and the identity made of its claims, each
        # about the token's size): bounded in bytes as well as in entries.
        self._cache_bytes = 0
        self._issuers: dict[str, CompiledIssuer] = {}
        # Issuers that publish the same JWKS URL (one Entra ID key set serves every tenant)
        # share one cache and one fetch.
        remote: dict[tuple[Any, ...], RemoteKeySet] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} is configured twice")
            self._issuers[config.issuer] = CompiledIssuer(config, self._key_set(config, remote))
        self._only = next(iter(self._issuers.values())) if len(self._issuers) == 1 else None
        self.key_sets: tuple[KeySet, ...] = tuple(
            dict.fromkeys(issuer.keys for issuer in self._issuers.values())
        )
        for keys in self.key_sets:
            keys.on_keys_removed(self._forget_tokens_of)

    def _forget_tokens_of(self, removed: tuple[VerificationKey, ...]) -> None:
        # A token verified with a key its issuer no longer publishes is verified again (and
        # refused) on its next use, not served from the cache until its own `exp`.
        gone = {id(key) for key in removed}
        for token in [token for token, entry in self._cache.items() if id(entry[2]) in gone]:
            self._uncache(token)

    def _uncache(self, token: str) -> None:
        if self._cache.pop(token, None) is not None:
            self._cache_bytes -= 2 * len(token)

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
                if isinstance(keys, RemoteKeySet) and keys.configuration_error is not None:
                    continue  # already logged as the configuration error it is
                logger.warning(
                    "asgi_identity: no keys loaded from %s at start-up; tokens of that issuer "
                    "get 503 until the provider answers",
                    source,
                )

    async def aclose(self) -> None:
        for keys in self.key_sets:
            await keys.aclose()
        self._cache.clear()
        self._cache_bytes = 0

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
            raise invalid(
                "The access token is too large.",
                f"token of {len(token)} characters, over max_token_bytes={self.max_token_bytes}",
            )
        entry = self._cache.get(token)
        if entry is not None:
            if time.time() < entry[1]:
                self._cache.move_to_end(token)
                return entry[0]
            self._uncache(token)
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
        header, payload, signing_input, signature = parse_jws(token)
        issuer = self._only or self._issuer_of(payload)
        config = issuer.config
        alg = header.get("alg")
        # A list or object as `alg` is unhashable: refuse it before any set lookup.
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise invalid(
                "The access token's signing algorithm is not accepted.", f"alg={summary(alg)}"
            )
        if issuer.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or media_type(typ) != issuer.typ:
                raise invalid(
                    "The access token has the wrong type.",
                    f"typ={summary(typ)}, expected {config.required_typ!r}",
                )
        kid = header.get("kid")
        try:
            key = await issuer.keys.find(kid, alg)
        except KeySetUnavailable as exc:
            retry_after = exc.args[0] if exc.args else 1
            if exc.configuration:
                raise IdentityError(
                    "identity_provider_unavailable",
                    "Tokens cannot be verified because of a configuration error on this server "
                    "(its identity provider settings); an administrator must correct them.",
                    headers=[("Retry-After", str(retry_after))],
                    detail=f"configuration error for {config.issuer}: the discovery document "
                    "names a different issuer",
                ) from None
            raise IdentityError(
                "identity_provider_unavailable",
                "The identity provider cannot be reached to verify the token; try again shortly.",
                headers=[("Retry-After", str(retry_after))],
                detail=f"no key set loaded for {config.issuer}",
            ) from None
        if key is None:
            raise invalid(
                "The access token's signing key is not known.",
                f"kid={summary(kid)} alg={alg} not in the key set of {config.issuer}",
            )
        verifier = key.verifiers.get(alg)
        if verifier is None:
            raise invalid(
                "The access token's signing algorithm does not match its key.",
                f"alg={alg} but key {kid!r} verifies {sorted(key.algorithms)}",
            )
        # pyjwt's own algorithm object checks the signature, with the key it prepared when the
        # key set loaded; the algorithm comes from the key's pinned list, never from the token.
        algorithm, prepared = verifier
        if not algorithm.verify(signing_input, prepared, signature):
            raise invalid(
                "The access token's signature is not valid.", f"signature, kid={summary(kid)}"
            )
        # The issuer's claim rules, chosen once; the first that fails refuses the token.
        rules = issuer.rules
        now = time.time()
        for rule, claim in rules.sequence:
            rule(rules, payload, claim, now)
        identity = issuer.claim_map.to_identity(payload, config.issuer)
        # Cached until the token expires, and never longer than its key set is trusted
        # without a fresh copy; never when a refresh removed the key meanwhile.
        if self.cache_size and issuer.keys.holds(key):
            cache = self._cache
            until = min(float(payload["exp"]) + config.leeway, now + issuer.keys.ttl)
            self._uncache(token)
            cache[token] = (identity, until, key)
            self._cache_bytes += 2 * len(token)
            while len(cache) > self.cache_size or self._cache_bytes > CACHE_BUDGET:
                self._uncache(next(iter(cache)))
        return identity

    def _issuer_of(self, payload: dict[str, Any]) -> CompiledIssuer:
        # Routing only: the chosen issuer's own `iss` is checked exactly once the signature holds.
        iss = payload.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise invalid(
                "The access token's issuer is not accepted.", f"iss={summary(iss)} not configured"
            )
        return issuer
