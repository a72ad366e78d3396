"""Header types and limits shared by every layer."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

#: Longest single header value any layer will look at; longer values are refused, not truncated.
MAX_HEADER_VALUE = 8192
