"""Token reservations: what a request set aside up front, and the meter that settles it afterwards.

Token budgets are fixed-window counters driven directly on the `limits` storage: settling means
adding a (possibly negative) correction to a counter, which only a plain counter can take. The
counting is in `_memory.py` and `_aio.py`.
"""

from __future__ import annotations

from asgi_identity.identity import Identity
from asgi_identity.quotas._windows import Window
from asgi_identity.quotas.usage import TokenUsage, UsageReader, reader_for
from asgi_identity.types import Message, Scope, Send

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
            used = TokenUsage(
                earlier.input_tokens + used.input_tokens,
                earlier.output_tokens + used.output_tokens,
            )
        self.reported = used


class UsageMeter:
    """Wraps `send` to read the response's usage as it passes, and decides what to charge."""

    __slots__ = ("_extra", "_reader", "_send", "status")

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._extra = extra
        self._reader: UsageReader | None = None
        self.status = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            reader = self._reader
            if reader is not None:
                # Read as it passes: the chunk goes out right after, unchanged.
                reader.feed(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = status = message["status"]
            headers = message.get("headers", ())
            if status < 400:
                content_type = None
                for name, value in headers:
                    if name.lower() == b"content-type":
                        content_type = value
                self._reader = reader_for(content_type)
            if self._extra:
                message["headers"] = [*headers, *self._extra]
        await self._send(message)

    def outcome(self, reservation: Reservation) -> tuple[int, TokenUsage | None]:
        """(tokens to charge, the usage seen or reported, if any)."""
        found = reservation.reported
        if found is None and self._reader is not None:
            found = self._reader.result()
        if found is not None:
            return found.total_tokens, found
        if self.status and self.status < 400:
            return reservation.estimate, None  # no usage in the response: keep the estimate
        return 0, None  # refused or failed upstream: nothing was generated
