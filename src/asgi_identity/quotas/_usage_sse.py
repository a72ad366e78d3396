"""Reads `usage` from a server-sent-event stream fed chunk by chunk (see asgi_identity.quotas.usage)."""

from __future__ import annotations

from asgi_identity.quotas._usage_counts import TokenUsage, _counts, _loads, _usage_object

#: Longest server-sent event kept; longer events are skipped (a usage event is a few hundred bytes).
DEFAULT_MAX_EVENT = 64 * 1024


class SSEUsageReader:
    """Reads `usage` from a server-sent-event stream fed chunk by chunk.

    Only the unfinished line and the current event's data are kept (each bounded by `max_event`).
    Counts seen in several events are merged, latest first: Anthropic sends input tokens in
    `message_start` and the output count in `message_delta`; OpenAI sends usage in the last chunk
    (chat, with `stream_options.include_usage`) or in `response.completed`. `final` says whether
    the latest usage seen is the stream's last word, not a count announced on the way (Anthropic's
    `message_start`, a chunk still carrying choices).
    """

    __slots__ = ("_data", "_input", "_line", "_max", "_output", "_skipping", "delivered", "final")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._line = bytearray()
        self._data = bytearray()
        self._skipping = False  # inside an over-long line or event, dropped until it ends
        self._input: int | None = None
        self._output: int | None = None
        self.final = False
        #: Events that reached the client: each carries at least one token of output, so a stream
        #: cut before its usage is charged no less than this.
        self.delivered = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._append(chunk[start:])
                return
            self._append(chunk[start:newline])
            self._end_line()
            start = newline + 1

    def _append(self, part: bytes) -> None:
        if self._skipping or not part:
            return
        if len(self._line) + len(part) > self._max:
            self._line.clear()
            self._skipping = True
            return
        self._line += part

    def _end_line(self) -> None:
        if self._skipping:
            # The over-long line ends here; its event's data is lost, which is only a problem for
            # a usage event, and those are small.
            self._skipping = False
            self._data.clear()
            self._line.clear()
            return
        line = bytes(self._line).rstrip(b"\r")
        self._line.clear()
        if not line:
            self._dispatch()
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            if len(self._data) + len(value) + 1 > self._max:
                self._data.clear()
                return
            if self._data:
                self._data += b"\n"
            self._data += value

    def _dispatch(self) -> None:
        data = bytes(self._data)
        self._data.clear()
        if data and data != b"[DONE]":
            self.delivered += 1
        if b'"usage"' not in data:
            return
        document = _loads(data)
        input_tokens, output_tokens = _counts(_usage_object(document))
        if input_tokens is None and output_tokens is None:
            return
        if input_tokens is not None:
            self._input = input_tokens
        if output_tokens is not None:
            self._output = output_tokens
        # Anthropic's `message_start` announces the input and a placeholder output; an OpenAI
        # chunk that still carries choices reports a running count (continuous usage stats).
        self.final = document.get("type") != "message_start" and not document.get("choices")

    def result(self) -> TokenUsage | None:
        """Usage seen so far, including an event the stream ended without a blank line after."""
        if self._line and not self._skipping:
            self._end_line()
        if self._data:
            self._dispatch()
        if self._input is None and self._output is None:
            return None
        return TokenUsage(self._input or 0, self._output or 0)
