"""RequestView: the request as every layer reads it, computed once by the outermost layer.

The layers must never disagree about what a request is (DESIGN.md, "One reading of the
request"): one canonical path, one exact method, one pass over the headers, one body reader.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import parse_qsl

from asgi_identity._http.body import (
    DEFAULT_MAX_BODY,
    NO_BODY,
    BodyError,
    BodyFields,
    BufferedBody,
    parse_json,
)
from asgi_identity._http.responder import Responder
from asgi_identity._http.target import (
    PathPolicy,
    TargetRefused,
    check_method,
    check_path,
    raw_path_for,
)
from asgi_identity.types import Receive, Scope

SCOPE_KEY: Final = "asgi_identity.view"

# A conversation id is safe in a header, a log line, a metric label and a URL path segment.
_SAFE_ID: Final = re.compile(rb"[A-Za-z0-9._:-]+")
MAX_CONVERSATION_ID_LENGTH: Final = 1024


def well_formed_conversation_id(value: bytes, max_length: int = MAX_CONVERSATION_ID_LENGTH) -> bool:
    return len(value) <= max_length and _SAFE_ID.fullmatch(value) is not None


# Headers every layer may ask about, picked out in the one pass (names as ASGI servers send them).
_PREFLIGHT = b"access-control-request-method"
_CONTENT_LENGTH = b"content-length"


class RequestView:
    """One request as the layers see it. Build it with `RequestView.of(scope)`."""

    __slots__ = (
        "_body",
        "_fields",
        "_headers_read",
        "_responder",
        "content_length",
        "conversation_header",
        "conversation_ids",
        "method",
        "path",
        "preflight",
        "scope",
    )

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.path: str = scope.get("path", "")
        self.method: str = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        self._body: BufferedBody | None = None
        self._fields: BodyFields | BodyError | None = None
        self._responder: Responder | None = None
        self._headers_read = False
        self.preflight = False
        self.content_length: int | None = None
        #: The conversation header's name and values, once IdentityMiddleware has read them.
        self.conversation_header: bytes | None = None
        self.conversation_ids: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, scope: Scope, path_policy: PathPolicy = "refuse") -> RequestView:
        """The request's view: the one an outer layer made, or a new one (TargetRefused when
        the path or method cannot be given one meaning)."""
        view: RequestView | None = scope.get(SCOPE_KEY)
        if view is not None and view.scope is scope:
            return view
        view = cls(scope)
        if view.method != "WEBSOCKET":
            check_method(view.method)
        canonical = check_path(
            view.path, scope.get("raw_path"), path_policy, scope.get("root_path") or ""
        )
        if canonical is not None:
            # Rewritten for every later layer and the app alike: they must route what was judged.
            scope["path"] = view.path = canonical
            scope["raw_path"] = raw_path_for(canonical)
        scope[SCOPE_KEY] = view
        return view

    def headers_read(self, content_length: bytes | None, preflight: bool) -> None:
        """What the outermost layer's one pass over the headers found (no second pass)."""
        self._headers_read = True
        self.preflight = preflight
        self.content_length = _length(content_length)

    def read_headers(self) -> None:
        """Pick out the headers every layer may ask about, in one pass (done once)."""
        if self._headers_read:
            return
        self._headers_read = True
        for name, value in self.scope["headers"]:
            if name == _PREFLIGHT:
                self.preflight = True
            elif name == _CONTENT_LENGTH:
                self.content_length = _length(value)

    @property
    def conversation_id(self) -> str | None:
        """The request's one well-formed conversation id, as IdentityMiddleware read it."""
        ids = self.conversation_ids
        if len(ids) == 1 and well_formed_conversation_id(ids[0]):
            return ids[0].decode("ascii")
        return None

    @property
    def model(self) -> str | None:
        """The `model` the body (a WebSocket's query) names, once a layer has read it."""
        fields = self.read_fields
        return fields.model if fields is not None else None

    @property
    def responder(self) -> Responder:
        responder = self._responder
        if responder is None:
            responder = self._responder = Responder()
        return responder

    async def fields(self, receive: Receive, limit: int = DEFAULT_MAX_BODY) -> tuple[Any, Receive]:
        """(the body's BodyFields, or a BodyError to refuse with; the receive to pass on).

        Read at most once for the whole stack; the receive replays the body chunk for chunk.
        """
        if self._fields is not None and (
            not isinstance(self._fields, BodyError) or not self._fields.too_large
        ):
            return self._fields, receive
        if self.scope["type"] != "http":
            # A WebSocket has no body to read before it is accepted: what it asks for is in its
            # query (OpenAI's Realtime API: `/v1/realtime?model=...`).
            if self._fields is None:
                self._fields = _query_fields(self.scope.get("query_string", b""))
            return self._fields, receive
        self.read_headers()
        declared = self.content_length
        if declared is not None and declared > limit:
            # Refused without reading a byte: the declared length is what the client promised.
            return _too_large(limit), receive
        buffered = self._body
        if buffered is None:
            buffered = self._body = BufferedBody(receive)
            receive = buffered.receive
        body = await buffered.read(limit)
        if body is None:
            if buffered.size > limit:
                self._fields = _too_large(limit)
            else:  # the client went away before the body was whole: nothing to judge
                self._fields = BodyError("The request body was not received whole.")
        elif not body:
            self._fields = NO_BODY
        else:
            try:
                self._fields = BodyFields(parse_json(body))
            except BodyError as error:
                self._fields = error
        return self._fields, receive

    @property
    def body_fields(self) -> BodyFields | BodyError | None:
        """What `fields()` read, or None when no layer has read the body."""
        return self._fields

    async def body(self) -> bytes | None:
        """The body a layer read whole, or None (not read, too large, cut short)."""
        buffered = self._body
        if buffered is None or not isinstance(self._fields, BodyFields):
            return None
        return await buffered.read(buffered.size)  # whole already: reads nothing more

    def replace_body(self, body: bytes) -> None:
        """Forward `body` to the app instead of the one read, its `content-length` to match.

        Only a layer that read the whole body and has not called the app yet may do this.
        """
        assert self._body is not None
        self._body.replace(body)
        length = str(len(body)).encode()
        self.scope["headers"] = [
            (name, length if name.lower() == _CONTENT_LENGTH else value)
            for name, value in self.scope["headers"]
        ]
        if self.content_length is not None:
            self.content_length = len(body)

    @property
    def read_fields(self) -> BodyFields | None:
        """The body's fields when a layer has read them (never reads the body itself)."""
        return self._fields if isinstance(self._fields, BodyFields) else None

    @property
    def body_size(self) -> int:
        """Bytes of body read so far (0 when no layer read it)."""
        return 0 if self._body is None else self._body.size


def _length(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _query_fields(query: bytes) -> BodyFields | BodyError:
    models = [value for name, value in parse_qsl(query.decode("latin-1")) if name == "model"]
    if len(models) > 1:
        return BodyError("The request names its model more than once.")
    return BodyFields({"model": models[0]}) if models else NO_BODY


def _too_large(limit: int) -> BodyError:
    return BodyError(
        f"The request body is larger than the {limit} bytes this gateway reads.", too_large=True
    )


__all__ = ["SCOPE_KEY", "RequestView", "TargetRefused"]
