"""ConversationTagger: which conversation a request belongs to, checked, kept and echoed."""

from __future__ import annotations

import re
from collections.abc import Iterable

from asgi_identity._http.headers import DuplicateHeader, single_header
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity, set_identity
from asgi_identity.middleware._layer import LayerPolicy
from asgi_identity.telemetry import events
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

# Safe in a header, a log line, a metric label and a URL path segment, without escaping.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
MAX_CONVERSATION_ID_LENGTH = 1024
# Identities tagged lately, by (identity, conversation id); emptied when full.
_TAGGED_CACHE_SIZE = 4096
_ECHO_AT = frozenset({"http.response.start", "websocket.accept"})


class ConversationTagger:
    """Read the conversation id header, refuse a malformed one, put it on the identity, echo it.

    A malformed id (too long, characters outside `A-Z a-z 0-9 . _ : -`, empty, two headers) is a
    400 `invalid_conversation_id`; it is never replaced by a generated one.
    """

    __slots__ = (
        "_duplicate",
        "_header",
        "_malformed",
        "_missing",
        "_tagged",
        "app",
        "echo",
        "max_length",
        "policy",
        "required",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "x-conversation-id",
        required: bool = False,
        max_length: int = 128,
        echo: bool = True,
        mode: str = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
    ) -> None:
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise ValueError(f"ConversationTagger: {header!r} is not a valid header name")
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not 1 <= max_length <= MAX_CONVERSATION_ID_LENGTH
        ):
            raise ValueError(
                f"ConversationTagger: max_length must be an integer from 1 to "
                f"{MAX_CONVERSATION_ID_LENGTH}, not {max_length!r}"
            )
        self.app = app
        self._header = header.lower().encode("ascii")
        self.required = bool(required)
        self.max_length = max_length
        self.echo = bool(echo)
        self.policy = LayerPolicy(
            "ConversationTagger",
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
        )
        name = header.lower()
        self._missing = IdentityError("invalid_conversation_id", f"The {name} header is required.")
        self._duplicate = IdentityError(
            "invalid_conversation_id", f"The {name} header must appear only once."
        )
        self._malformed = IdentityError(
            "invalid_conversation_id",
            f"The {name} header must be 1 to {max_length} characters from A-Z, a-z, 0-9, "
            "'.', '_', ':' and '-'.",
        )
        self._tagged: dict[tuple[int, bytes], tuple[Identity, Identity]] = {}

    def _tag(self, identity: Identity, value: bytes) -> Identity:
        # A conversation's turns come with the same identity object (the verifier's cache) and
        # the same id: the tagged copy is made once and shared (identities are immutable).
        key = (id(identity), value)
        hit = self._tagged.get(key)
        # The entry holds the identity itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is identity:
            return hit[1]
        tagged = identity.replace(conversation_id=value.decode("ascii"))
        if len(self._tagged) >= _TAGGED_CACHE_SIZE:
            self._tagged.clear()
        self._tagged[key] = (identity, tagged)
        return tagged

    def _read(self, scope: Scope) -> bytes | IdentityError | None:
        try:
            value = single_header(scope, self._header)
        except DuplicateHeader:
            return self._duplicate
        if value is None:
            return self._missing if self.required else None
        if len(value) > self.max_length or not _SAFE_ID.fullmatch(value):
            return self._malformed
        return value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.policy.skips(scope):
            await self.app(scope, receive, send)
            return
        identity = require_identity(scope, "ConversationTagger")
        value = self._read(scope)
        if isinstance(value, IdentityError):
            if await self.policy.refuse(value, scope, receive, send):
                return
            value = None
        if value is not None:
            set_identity(scope, self._tag(identity, value))
            events.conversation(scope, value.decode("ascii"))
            if self.echo:
                send = _with_echo(send, (self._header, value))
        await self.app(scope, receive, send)


def _with_echo(send: Send, header: tuple[bytes, bytes]) -> Send:
    # Only the message that starts the response (or accepts the WebSocket) carries headers, so
    # streamed bodies and frames pass untouched.
    name = header[0]

    async def send_with_id(message: Message) -> None:
        if message["type"] in _ECHO_AT:
            headers = message.get("headers", ())
            # An app that sets the header itself keeps its own value. A new list: the app's may
            # be one it sends again (a Response object reused across requests).
            for key, _ in headers:
                if key.lower() == name:
                    break
            else:
                message["headers"] = [*headers, header]
        await send(message)

    return send_with_id
