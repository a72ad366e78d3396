"""What one configuration counts: per-user counters with a bound on the users they hold."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from opentelemetry.metrics import MeterProvider

from asgi_identity.identity import Identity
from asgi_identity.telemetry._instruments import (
    Cell,
    Tally,
    global_meter_provider_set,
    instruments_for,
    metrics_globals,
)
from asgi_identity.telemetry.names import (
    ATTR_CLIENT_ID,
    ATTR_ERROR_TYPE,
    ATTR_GROUP,
    ATTR_LAYER,
    ATTR_MODE,
    ATTR_OUTCOME,
    ATTR_SOURCE,
    ATTR_TOKEN_TYPE,
    OVERFLOW,
)

_RATE_LIMIT_CODES: Final = frozenset({"rate_limited", "token_quota_exceeded"})
# Usage is reported per user, group and client; past this many the cache starts afresh rather
# than tracking recency.
_MAX_TOKEN_CELLS: Final = 4096


class DistinctValues:
    """Admits the first `limit` distinct values; later new ones become OVERFLOW.

    A value already admitted costs one set lookup and no lock; the lock is only taken to admit.
    """

    __slots__ = ("_limit", "_lock", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OVERFLOW
            self._seen.add(value)
            return value

    def __len__(self) -> int:
        return len(self._seen)


class Instrument:
    """One counter and the bounded user (and client) values it has seen under this config."""

    __slots__ = ("clients", "tally", "users")

    def __init__(self, tally: Tally, max_users: int) -> None:
        self.tally = tally
        self.users = DistinctValues(max_users)
        self.clients = DistinctValues(max_users)


class Counters:
    """The per-request counters of one configuration, and the attribute cells users map to."""

    __slots__ = (
        "_enabled",
        "_live",
        "auth_duration",
        "hash_user",
        "jwks_fetches",
        "rate_limit_hits",
        "rejections",
        "requests",
        "token_cells",
        "tokens",
        "user_attribute",
    )

    def __init__(
        self,
        provider: MeterProvider | None,
        *,
        enabled: bool,
        max_users: int,
        hash_user: Callable[[str], str] | None,
        user_attribute: str,
    ) -> None:
        self._enabled = enabled
        # Given an explicit provider, it is live; the global one is checked until an SDK appears.
        self._live = enabled and provider is not None
        self.hash_user = hash_user
        self.user_attribute = user_attribute
        instruments = instruments_for(provider)
        self.requests = Instrument(instruments.requests, max_users)
        self.rejections = Instrument(instruments.rejections, max_users)
        self.rate_limit_hits = Instrument(instruments.rate_limit_hits, max_users)
        self.tokens = Instrument(instruments.tokens, max_users)
        self.auth_duration = instruments.auth_duration
        self.jwks_fetches = instruments.jwks_fetches
        self.token_cells: dict[tuple[str | None, str | None, str | None], tuple[Cell, Cell]] = {}

    def metrics_on(self) -> bool:
        if self._live:
            return True
        if not self._enabled:
            return False
        if not global_meter_provider_set():
            return False
        # A provider can be set only once, so once live always live.
        self._live = True
        return True

    def metrics_off(self) -> bool:
        """metrics_on() negated, with the common answers in two attribute reads."""
        if self._live:
            return False
        if metrics_globals._METER_PROVIDER is None:  # no SDK set yet
            return True
        return not self.metrics_on()

    def user_value(self, identity: Identity | None) -> str | None:
        if identity is None or identity.user_id is None:
            return None
        if self.hash_user is not None:
            return self.hash_user(identity.user_id)
        return identity.user_id

    def user_attributes(
        self, instrument: Instrument, identity: Identity | None, attributes: dict[str, str]
    ) -> dict[str, str]:
        user = self.user_value(identity)
        if user is not None:
            attributes[self.user_attribute] = instrument.users.admit(user)
        return attributes

    def request_cell(self, identity: Identity) -> Cell:
        requests = self.requests
        attributes = {ATTR_OUTCOME: "authenticated", ATTR_SOURCE: identity.source}
        if identity.group is not None:
            attributes[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            attributes[ATTR_CLIENT_ID] = requests.clients.admit(identity.client_id)
        return requests.tally.cell(self.user_attributes(requests, identity, attributes))

    def count_refusal(self, identity: Identity | None, layer: str, code: str, mode: str) -> None:
        rejections = self.rejections
        attributes = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
        rejections.tally.add(
            rejections.tally.cell(self.user_attributes(rejections, identity, attributes)), 1
        )
        if code in _RATE_LIMIT_CODES:
            hits = self.rate_limit_hits
            attributes = {ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
            if identity is not None and identity.group is not None:
                attributes[ATTR_GROUP] = identity.group
            hits.tally.add(hits.tally.cell(self.user_attributes(hits, identity, attributes)), 1)
        if identity is None and mode == "enforce":
            # Refused before an identity existed: IdentityMiddleware itself said no.
            requests = self.requests.tally
            requests.add(requests.cell({ATTR_OUTCOME: "rejected", ATTR_ERROR_TYPE: code}), 1)

    def count_llm_tokens(self, identity: Identity, input_tokens: int, output_tokens: int) -> None:
        cell_in, cell_out = self._token_cells_of(identity)
        tally = self.tokens.tally
        # A counter only goes up: a negative count from a confused upstream is not subtracted.
        if input_tokens > 0:
            tally.add(cell_in, input_tokens)
        if output_tokens > 0:
            tally.add(cell_out, output_tokens)

    def _token_cells_of(self, identity: Identity) -> tuple[Cell, Cell]:
        # Keyed by value, not by object: usage reported by the app comes with the identity
        # ConversationTagger made for this one request.
        key = (identity.user_id, identity.group, identity.client_id)
        cells = self.token_cells.get(key)
        if cells is not None:
            return cells
        tokens = self.tokens
        base: dict[str, str] = {}
        if identity.group is not None:
            base[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            base[ATTR_CLIENT_ID] = tokens.clients.admit(identity.client_id)
        self.user_attributes(tokens, identity, base)
        cells = (
            tokens.tally.cell({**base, ATTR_TOKEN_TYPE: "input"}),
            tokens.tally.cell({**base, ATTR_TOKEN_TYPE: "output"}),
        )
        if len(self.token_cells) >= _MAX_TOKEN_CELLS:
            self.token_cells.clear()
        self.token_cells[key] = cells
        return cells
