"""How a person is shown outside the audit file; read by telemetry and audit, owned by neither.

`configure_telemetry()` sets it: spans, metrics, baggage and audit log records then all show a
user the same way (the HMAC-chained audit file always keeps the full record).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from functools import lru_cache


class Privacy:
    __slots__ = ("hash_user", "record_email")

    def __init__(self, pseudonymize_key: bytes | None = None, *, record_email: bool = False):
        self.record_email = record_email
        #: The user id's pseudonym, or None when users are shown by their id.
        self.hash_user: Callable[[str], str] | None = (
            None if pseudonymize_key is None else _hasher(pseudonymize_key)
        )


def _hasher(key: bytes) -> Callable[[str], str]:
    def pseudonym(user_id: str) -> str:
        return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    # A few thousand users cover the ones in use; each HMAC costs about a microsecond. A user id
    # longer than 256 characters is hashed every time: remembered, it would hold its length.
    remembered = lru_cache(maxsize=4096)(pseudonym)

    def hash_user(user_id: str) -> str:
        return remembered(user_id) if len(user_id) <= 256 else pseudonym(user_id)

    return hash_user


#: The settings in force; replaced whole, so read it as `_privacy.current` at each use.
current = Privacy()


def set_current(privacy: Privacy) -> None:
    global current
    current = privacy
