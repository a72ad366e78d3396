"""API keys: stored as SHA-256 digests, each with its own identity policy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from asgi_identity.credentials.email import normalize_domain_pattern

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: Prefix of keys made by generate_api_key(); only a convention, any string works as a key.
KEY_PREFIX = "sk-ai-"


def hash_api_key(key: str) -> str:
    """The hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new random key and its digest: give the key to the client, store the digest."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


@dataclass(frozen=True, slots=True)
class APIKey:
    """One API key's record and its per-key policy.

    `enforce_identity` and `allowed_domains` left as None defer to the global EnforceIdentity and
    DomainAllowlist settings. `rate_limit` / `token_limit` override the tier's limits for requests
    made with this key.
    """

    id: str
    sha256: str = field(repr=False)
    tenant: str | None = None
    group: str | None = None
    name: str | None = None
    header_identity: bool = False
    enforce_identity: bool | None = None
    allowed_domains: Collection[str] | None = None
    rate_limit: str | None = None
    token_limit: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("APIKey.id must not be empty")
        digest = self.sha256.lower()
        if not _HEX64.fullmatch(digest):
            raise ValueError(
                f"APIKey {self.id!r}: sha256 must be the 64-character hex SHA-256 digest of the key "
                "(see asgi_identity.hash_api_key), never the key itself"
            )
        object.__setattr__(self, "sha256", digest)
        if self.allowed_domains is not None:
            if isinstance(self.allowed_domains, str):
                raise TypeError(f"APIKey {self.id!r}: allowed_domains must be a list of domains")
            domains = frozenset(normalize_domain_pattern(d) for d in self.allowed_domains)
            object.__setattr__(self, "allowed_domains", domains)


@runtime_checkable
class APIKeyStore(Protocol):
    """Where keys are looked up; back it with a database by implementing `lookup`."""

    async def lookup(self, sha256_digest: bytes) -> APIKey | None:
        """The record whose key hashes to `sha256_digest` (32 raw bytes), or None."""


class StaticAPIKeyStore:
    """Keys fixed at start-up, from code, a mapping, or an environment variable holding JSON."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Iterable[APIKey]) -> None:
        self._by_digest: dict[bytes, APIKey] = {}
        for key in keys:
            digest = bytes.fromhex(key.sha256)
            if digest in self._by_digest:
                raise ValueError(
                    f"API keys {self._by_digest[digest].id!r} and {key.id!r} share a digest"
                )
            self._by_digest[digest] = key
        ids = [key.id for key in self._by_digest.values()]
        if len(ids) != len(set(ids)):
            raise ValueError("API key ids must be unique")

    async def lookup(self, sha256_digest: bytes) -> APIKey | None:
        # Keyed by the SHA-256 of the presented key: a client cannot steer the digest toward a
        # stored one, so the lookup's timing tells it nothing (the dict's equality check suffices).
        return self._by_digest.get(sha256_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_mapping(cls, records: Iterable[Mapping[str, Any]]) -> StaticAPIKeyStore:
        return cls(APIKey(**dict(record)) for record in records)

    @classmethod
    def from_env(cls, variable: str = "ASGI_IDENTITY_API_KEYS") -> StaticAPIKeyStore:
        """Keys from a JSON list of records in environment variable `variable` (none if unset)."""
        raw = os.environ.get(variable)
        if not raw:
            return cls(())
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{variable} is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        if not isinstance(records, list):
            raise ValueError(f"{variable} must be a JSON list of API key records")
        return cls.from_mapping(records)
