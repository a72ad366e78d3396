"""Which principal each MCP session belongs to: bounded, in memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from asgi_identity.identity import Identity

#: (source, issuer, kind of subject, subject): who a session belongs to. Never the token's bytes,
#: so a refreshed token (new bytes, same person) keeps its session; a client named like a user
#: is not that user.
Principal = tuple[str, str | None, str, str | None]

DEFAULT_MAX_SESSIONS: Final = 100_000


def principal_of(identity: Identity) -> Principal:
    if identity.user_id is not None:
        return (identity.source, identity.issuer, "user", identity.user_id)
    return (identity.source, identity.issuer, "client", identity.client_id)


class SessionBindings:
    """Session id → principal, the least recently used forgotten first past `max_sessions`."""

    __slots__ = ("_owners", "max_sessions")

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError("MCPGuard: max_sessions must be a positive number")
        self.max_sessions = max_sessions
        self._owners: OrderedDict[bytes, Principal] = OrderedDict()

    def owner(self, session_id: bytes) -> Principal | None:
        owner = self._owners.get(session_id)
        if owner is not None:
            self._owners.move_to_end(session_id)
        return owner

    def bind(self, session_id: bytes, principal: Principal) -> None:
        # A session id the app hands out twice keeps its first owner.
        if self._owners.setdefault(session_id, principal) is principal:
            while len(self._owners) > self.max_sessions:
                self._owners.popitem(last=False)

    def forget(self, session_id: bytes) -> None:
        self._owners.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._owners)
