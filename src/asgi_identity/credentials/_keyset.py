"""A key set: an issuer's verification keys, found by `kid`, told when a refresh removes some.

RemoteKeySet (in `jwks`) fetches and refreshes one; this is what both have in common.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives import serialization

from asgi_identity.credentials._keys import VerificationKey


class KeySetUnavailable(Exception):
    """No key set was ever loaded and the provider cannot be reached now.

    `args[0]` is the Retry-After in seconds; `configuration` says why: True when the provider
    answers but what it says does not fit the configuration (an administrator must act).
    """

    def __init__(self, retry_after: int, *, configuration: bool = False) -> None:
        super().__init__(retry_after)
        self.configuration = configuration


def _fingerprint(key: VerificationKey) -> tuple[Any, ...]:
    public = key.key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (key.kid, key.algorithms, public)


#: Told which keys left a key set, so that what they verified can be forgotten.
KeysRemoved = Callable[[tuple[VerificationKey, ...]], None]


class KeySet:
    """Keys of one issuer, found by `kid` and algorithm."""

    #: How long a copy of the keys is trusted before it is fetched again (static keys: forever).
    ttl: float = math.inf

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._all: tuple[VerificationKey, ...] = ()
        self._listeners: list[KeysRemoved] = []
        self._set(tuple(keys))

    def on_keys_removed(self, listener: KeysRemoved) -> None:
        """Call `listener` with the keys a refresh removed (TokenVerifier drops their tokens)."""
        self._listeners.append(listener)

    def holds(self, key: VerificationKey) -> bool:
        """Whether `key` (this very object) is one of the keys held now."""
        return any(held is key for held in self._all)

    def _set(self, keys: tuple[VerificationKey, ...]) -> None:
        old = self._all
        removed: tuple[VerificationKey, ...] = ()
        if old:
            # A key that is still published stays the same object, so what it verified stays
            # cached; a key that left (or whose material changed under the same kid) is gone.
            kept = {_fingerprint(key): key for key in old}
            keys = tuple(kept.pop(_fingerprint(key), key) for key in keys)
            removed = tuple(kept.values())
        self._all = keys
        self._by_kid = {key.kid: key for key in keys if key.kid is not None}
        self._without_kid = tuple(key for key in keys if key.kid is None)
        if removed:
            for listener in self._listeners:
                listener(removed)

    @property
    def loaded(self) -> bool:
        return bool(self._all)

    @property
    def kids(self) -> tuple[str, ...]:
        """The `kid`s of the keys held, for messages that say what is there."""
        return tuple(self._by_kid)

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
