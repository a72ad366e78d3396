"""Token reservations: what a request set aside up front, and the meter that settles it afterwards.

Token budgets are fixed-window counters driven directly on the `limits` storage: settling means
adding a (possibly negative) correction to a counter, which only a plain counter can take. The
counting is in `_memory.py` and `_aio.py`.
"""

from __future__ import annotations

from asgi_identity.identity import Identity
from asgi_identity.quotas._windows import Window
from asgi_identity.quotas.usage import MAX_TOKENS, TokenUsage, UsageReader, reader_for
from asgi_identity.telemetry import events
from asgi_identity.types import Message, Scope

#: Where a metered request keeps its reservation, for `report_usage(request)`.
_RESERVATION_KEY = "asgi_identity.token_reservation"


class Reservation:
    """Tokens set aside up front for one request, settled against its real usage afterwards."""

    __slots__ = (
        "estimate",
        "identity",
        "keys",
        "reported",
        "resets",
        "settled",
        "windows",
    )

    def __init__(
        self,
        identity: Identity,
        windows: tuple[Window, ...],
        keys: tuple[str, ...],
    ) -> None:
        self.identity = identity
        self.windows = windows
        self.keys = keys  # the counter of each window (Planner.token_key)
        self.estimate = 0
        # When each window the reservation was made in ends: a refund after that is dropped.
        self.resets: list[float] = []
        self.reported: TokenUsage | None = None
        self.settled = False

    def attach(self, scope: Scope) -> None:
        scope["state"][_RESERVATION_KEY] = self

    @staticmethod
    def pending(scope: Scope) -> Reservation | None:
        """The reservation of the request `scope` belongs to, while it is still open."""
        reservation = (scope.get("state") or {}).get(_RESERVATION_KEY)
        if isinstance(reservation, Reservation) and not reservation.settled:
            return reservation
        return None

    def report(self, used: TokenUsage) -> None:
        """Usage the app counted itself, replacing the response's; reports add up (an agent
        making several LLM calls in one request reports each)."""
        earlier = self.reported
        if earlier is not None:
            # Bounded like every count: the sum is stored, and a counter has 64 bits.
            used = TokenUsage(
                min(MAX_TOKENS, earlier.input_tokens + used.input_tokens),
                min(MAX_TOKENS, earlier.output_tokens + used.output_tokens),
            )
        self.reported = used


class UsageMeter:
    """Watches the response through the request's responder: reads its usage as it passes,
    reports it before the last chunk goes out, and decides what to charge."""

    __slots__ = ("_found", "_reader", "_reservation", "_scope", "reported", "status")

    def __init__(self, reservation: Reservation, scope: Scope) -> None:
        self._reservation = reservation
        self._scope = scope
        self._reader: UsageReader | None = None
        self._found: TokenUsage | None = None
        self.status = 0
        self.reported = False  # the usage is on the span and the metrics already

    def watch(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            reader = self._reader
            if reader is not None:
                # Read as it passes: the chunk goes out right after, unchanged.
                reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                # Before the last chunk is forwarded: the server span of the ASGI
                # instrumentation (which ends with the response) still records.
                self.report()
        elif kind == "http.response.start":
            self.status = status = message["status"]
            if status < 400:
                content_type = None
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        content_type = value
                self._reader = reader_for(content_type)

    def found(self) -> TokenUsage | None:
        """The usage the app reported, or else the one the response carried."""
        found = self._reservation.reported
        if found is None:
            found = self._found
            if found is None and self._reader is not None:
                # Read once the response is whole; a report that comes later still wins.
                found = self._found = self._reader.result()
        return found

    def report(self) -> None:
        if self.reported:
            return
        found = self.found()
        if found is not None:
            self.reported = True
            identity = self._reservation.identity
            events.llm_tokens(identity, found.input_tokens, found.output_tokens, scope=self._scope)

    def outcome(self) -> int:
        """The tokens to charge."""
        reservation, reader = self._reservation, self._reader
        if reservation.reported is not None:
            return reservation.reported.total_tokens
        if not self.status or self.status >= 400:
            return 0  # refused or failed upstream: nothing was generated
        found = None if reader is None else reader.result()
        if found is not None and reader is not None and reader.final:
            return found.total_tokens
        # No final usage: none in the response, or a stream cut before its last event (a
        # client that hangs up, an upstream that fails). What may have been generated is the
        # reservation; a count announced on the way, or the events that reached the client (a
        # token each at least), are charged when they are more.
        announced = 0 if found is None else found.total_tokens
        delivered = 0 if reader is None else reader.delivered
        return max(reservation.estimate, announced, delivered)
