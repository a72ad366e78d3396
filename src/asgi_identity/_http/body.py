"""The one body reader: read at most once, bounded, replayed chunk for chunk, parsed by one parser.

Every layer that needs the body (RoutePolicy's model rules, UserRateLimit's token quota, MCP's
JSON-RPC fields) asks the request view, which reads it here once and keeps what the layers need.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Final

from asgi_identity.types import Message, Receive

#: Bodies larger than this are not parsed by any layer; they still reach the app whole.
DEFAULT_MAX_BODY: Final = 1024 * 1024
#: Deepest nesting of objects and arrays a body may have.
MAX_DEPTH: Final = 64
#: Longest integer (digits and sign) and float literal a body may hold: no parser disagreement
#: about precision, and nothing a 64-bit counter cannot store.
MAX_INT_CHARS: Final = 20
MAX_FLOAT_CHARS: Final = 40

OUTPUT_CAP_FIELDS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
#: The largest output cap and number of completions a request may ask for: far above what any
#: model offers, far below what a 64-bit counter holds once multiplied (absurd values are a 400
#: here, never a storage error later).
MAX_OUTPUT_CAP: Final = 100_000_000
MAX_COMPLETIONS: Final = 128
# Every top-level field a layer reads.
_FIELDS: Final = frozenset(
    {*OUTPUT_CAP_FIELDS, "model", "n", "best_of", "stream", "stream_options", "method"}
)


class BodyError(ValueError):
    """The body cannot be given one meaning (400) or is larger than a layer may read (413)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class _Pairs(list[tuple[str, Any]]):
    __slots__ = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Parsers disagree on which value wins (Python keeps the last, others the first): a
        # layer that judged one could be bypassed by an upstream that reads the other.
        raise BodyError("The request body repeats a key in one JSON object; send each key once.")
    return obj


def _int(text: str) -> int:
    if len(text) > MAX_INT_CHARS:
        raise BodyError("The request body holds an integer too large to count with.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_FLOAT_CHARS or value in (float("inf"), float("-inf")):
        raise BodyError("The request body holds a number too large to count with.")
    return value


def _constant(text: str) -> Any:
    raise BodyError(f"The request body is not JSON ({text} is not a JSON value).")


_decoder: Final = json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_constant
)
# A `\uD800`-`\uDFFF` escape: the only way a lone surrogate (text no UTF-8 encoder takes) gets in.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


# Strings first (a bracket inside one is not nesting), then every byte that is not a bracket.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1


# The parsed value is walked (cost per value) up to this many values; past that the text
# is scanned at C speed (cost per byte): a megabyte of `[{},{},...]` must not take a second.
_WALK_AT_MOST: Final = 10_000


def _depth(body: bytes, value: Any) -> int:
    """How deep the objects and arrays of a valid JSON text nest."""
    deepest, stack, budget = 0, [(value, 1)], _WALK_AT_MOST
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        budget -= len(item)
        if budget < 0:
            skeleton = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
            return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)
        if depth > deepest:
            deepest = depth
        stack.extend([(child, depth + 1) for child in item])
    return deepest


def parse_json(body: bytes) -> Any:
    """`body` as JSON under the one rule set, or BodyError: strict UTF-8 (no BOM, no lone
    surrogate), no repeated key in any object, bounded depth and number size, no NaN/Infinity."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise BodyError("The request body starts with a byte-order mark; send plain UTF-8 JSON.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("The request body is not valid UTF-8.") from None
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise BodyError(f"The request body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError as error:
        if isinstance(error, BodyError):
            raise
        raise BodyError("The request body is not valid JSON.") from None
    # Depth can only exceed the bound when there are that many brackets at all: a C count first.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _depth(body, value) > MAX_DEPTH:
        raise BodyError(f"The request body nests deeper than {MAX_DEPTH} levels.")
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError("The request body holds an unpaired UTF-16 surrogate.") from None
    return value


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


class BodyFields:
    """What the layers need from a request body, extracted once.

    `valid` is False when a field a layer may judge is present with the wrong type (a `model`
    that is not a string, a cap or `n` that is not an integer): such a body is refused by any
    layer that needs the field, never read as "no model".
    """

    __slots__ = (
        "best_of",
        "include_usage",
        "is_object",
        "model",
        "n",
        "output_cap",
        "problem",
        "rpc_id",
        "rpc_method",
        "rpc_name",
        "rpc_notification",
        "rpc_uri",
        "stream",
    )

    def __init__(self, document: Any = None) -> None:
        self.problem: str | None = None
        self.model: str | None = None
        self.output_cap: int | None = None
        self.n: int | None = None
        self.best_of: int | None = None
        self.stream = self.include_usage = False
        self.rpc_method: str | None = None
        self.rpc_id: str | int | None = None
        self.rpc_name: str | None = None
        self.rpc_uri: str | None = None
        self.rpc_notification = False  # a JSON-RPC message without an `id` member
        self.is_object = isinstance(document, dict)
        if not self.is_object:
            return
        doc: dict[str, Any] = document
        # Most bodies hold two or three of these fields: one C-level intersection finds them.
        present = _FIELDS.intersection(doc)
        if not present:
            return
        if "model" in present:
            model = doc["model"]
            if isinstance(model, str):
                self.model = model
            elif model is not None:
                self.problem = "The request body's model must be a string."
        if not present.isdisjoint(OUTPUT_CAP_FIELDS):
            counted = [_count(doc[name]) for name in OUTPUT_CAP_FIELDS if name in present]
            if any(c is None or not 0 <= c <= MAX_OUTPUT_CAP for c in counted):
                self.problem = (
                    f"The request body's output token cap must be an integer from 0 to "
                    f"{MAX_OUTPUT_CAP}."
                )
            # Several cap fields: the upstream may honour any of them, so the largest counts.
            self.output_cap = max((c for c in counted if c is not None), default=None)
        if "n" in present:
            self.n = self._multiplier(doc, "n")
        if "best_of" in present:
            self.best_of = self._multiplier(doc, "best_of")
        self.stream = doc.get("stream") is True
        options = doc.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        if "method" in present:
            self._rpc(doc)

    def _rpc(self, doc: dict[str, Any]) -> None:
        method, rpc_id = doc["method"], doc.get("id")
        self.rpc_method = method if isinstance(method, str) else None
        # JSON-RPC ids are strings or numbers; a boolean is neither (Python counts it an int).
        self.rpc_id = rpc_id if type(rpc_id) in (str, int) else None
        self.rpc_notification = "id" not in doc
        params = doc.get("params")
        if params is None:
            return
        name, uri = (params.get("name"), params.get("uri")) if isinstance(params, dict) else (0, 0)
        if not isinstance(params, dict) or (name is not None and not isinstance(name, str)):
            # A tool rule must never read "no tool" where the app may read one: fail closed.
            self.problem = "The JSON-RPC params must be an object and its name a string."
        elif uri is not None and not isinstance(uri, str):
            self.problem = "The JSON-RPC params' uri must be a string."
        self.rpc_name = name if isinstance(name, str) else None
        self.rpc_uri = uri if isinstance(uri, str) else None

    def _multiplier(self, doc: dict[str, Any], field: str) -> int | None:
        if field not in doc or doc[field] is None:
            return None
        value = _count(doc[field])
        if value is None or not 1 <= value <= MAX_COMPLETIONS:
            self.problem = (
                f"The request body's {field} must be an integer from 1 to {MAX_COMPLETIONS}."
            )
            return None
        return value


NO_BODY: Final = BodyFields()


class BufferedBody:
    """The messages of one request body as they came, replayed to the app by `receive`.

    Reading stops at a limit; a later reader with a higher limit goes on where the first stopped
    (the app has not consumed anything yet: every layer reads before calling the app).
    """

    __slots__ = ("_messages", "_next", "_upstream", "complete", "size")

    def __init__(self, upstream: Receive) -> None:
        self._upstream = upstream
        self._messages: list[Message] = []
        self._next = 0
        self.size = 0
        self.complete = False  # the last body message was read (or the client went away)

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it is larger than `limit` (or the client went away)."""
        messages = self._messages
        while not self.complete and self.size <= limit:
            message = await self._upstream()
            messages.append(message)
            if message["type"] != "http.request":
                self.complete = True  # a disconnect: there is no whole body to judge
                return None
            self.size += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        if self.size > limit or not self.complete:
            return None
        if messages and messages[-1]["type"] != "http.request":
            return None
        if len(messages) == 1:
            body: bytes = messages[0].get("body", b"")
            return body
        return b"".join(m.get("body", b"") for m in messages)

    def replace(self, body: bytes) -> None:
        """Replay `body` instead of what was read: a whole body the app has not read yet."""
        if not self.complete or self._next:
            raise RuntimeError("only a whole body nothing has consumed yet can be replaced")
        self._messages = [{"type": "http.request", "body": body, "more_body": False}]
        self.size = len(body)

    async def receive(self) -> Message:
        if self._next < len(self._messages):
            message = self._messages[self._next]
            self._next += 1
            return message
        return await self._upstream()
