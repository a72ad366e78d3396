"""ConversationTagger: which conversation a request belongs to, checked, kept and echoed."""

from __future__ import annotations

import re
from collections.abc import Iterable

from asgi_identity._http.view import (
    MAX_CONVERSATION_ID_LENGTH,
    RequestView,
    well_formed_conversation_id,
)
from asgi_identity._memo import Memo
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity, set_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.telemetry import events
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Identities tagged lately, by (identity, conversation id): at most 4096 and about 1 MiB (ids are
# up to MAX_CONVERSATION_ID_LENGTH bytes; 4096 of the longest held 9 MiB); emptied when full.
_TAGGED = 4096
_TAGGED_BUDGET = 1 << 20


class ConversationTags:
    """Identities with their conversation id, made once per (identity, id) and shared.

    A conversation's turns come with the same identity object (the verifier's cache) and the
    same id; identities are immutable, so the tagged copy can be reused. Emptied when full.
    """

    __slots__ = ("_tagged",)

    def __init__(self) -> None:
        self._tagged: Memo[tuple[int, bytes], tuple[Identity, Identity]] = Memo(
            entries=_TAGGED, largest=2 * MAX_CONVERSATION_ID_LENGTH + 256, budget=_TAGGED_BUDGET
        )

    def tag(self, identity: Identity, values: tuple[bytes, ...]) -> Identity:
        """`identity` with the request's one well-formed conversation id, if it has one."""
        if len(values) != 1:
            return identity  # ConversationTagger, if present, says what is wrong with it
        value = values[0]
        key = (id(identity), value)
        hit = self._tagged.get(key)
        # The entry holds the identity itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is identity:
            return hit[1]
        if not well_formed_conversation_id(value):
            return identity
        tagged = identity.replace(conversation_id=value.decode("ascii"))
        # The id twice (the key, the tagged identity's copy) and the identity itself.
        self._tagged.put(key, (identity, tagged), 2 * len(value) + 256)
        return tagged


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
        "_tags",
        "app",
        "echo",
        "max_length",
        "policy",
        "required",
    )

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        header: str = "x-conversation-id",
        required: bool = False,
        max_length: int = 128,
        echo: bool = True,
        mode: Mode = "enforce",
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
        self._tags = ConversationTags()

    def _read(self, view: RequestView, tagged: str | None) -> bytes | IdentityError | None:
        if view.conversation_header == self._header:
            values = view.conversation_ids  # read in IdentityMiddleware's one pass
        else:
            # IdentityMiddleware reads another header (or none): a pass of our own.
            headers: list[tuple[bytes, bytes]] = view.scope["headers"]
            values = tuple(v for k, v in headers if k.lower() == self._header)
        if len(values) > 1:
            return self._duplicate
        if not values:
            return self._missing if self.required else None
        value = values[0]
        if tagged is not None and len(value) <= self.max_length and tagged.encode() == value:
            return value  # IdentityMiddleware checked its characters already
        if not well_formed_conversation_id(value, self.max_length):
            return self._malformed
        return value

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        view = await self.policy.view(scope, receive, send)
        if view is None:
            return
        if self.policy.skips(view):
            await self.app(scope, receive, send)
            return
        identity = require_identity(scope, "ConversationTagger")
        value = self._read(view, identity.conversation_id)
        if isinstance(value, IdentityError):
            if await self.policy.refuse(value, scope, receive, send):
                return
            value = None
        if value is not None:
            if identity.conversation_id is None:
                # IdentityMiddleware reads another header: tagged here, later than the records
                # of the outer layers (docs/conversations.md says to configure both alike).
                set_identity(scope, self._tags.tag(identity, (value,)))
            events.conversation(scope, value.decode("ascii"))
            if self.echo:
                responder = view.responder
                send = responder.wrap(send)
                responder.headers.append((self._header, value))
        await self.app(scope, receive, send)
