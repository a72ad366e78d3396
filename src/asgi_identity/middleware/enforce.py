"""EnforceIdentity: a request must carry a person, not only an app key."""

from __future__ import annotations

from collections.abc import Iterable

from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import require_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend

IDENTITY_REQUIRED_MESSAGE = "This API key requires identity context."
PERSON_REQUIRED_MESSAGE = (
    "This request must be made on behalf of a person; a client's own token (client "
    "credentials) is not enough."
)
MISSING_CREDENTIALS_MESSAGE = (
    "No credentials: send a bearer token in the Authorization header or an API key."
)


class EnforceIdentity:
    """Refuse requests that name no person: 403 for a bare API key, 401 for no credentials.

    `required` is the global setting; an API key's own `enforce_identity` (True or False) wins
    for requests made with that key. With `require_person` (the default), a token that names
    only a client (client credentials, `Identity.is_person` false) is no person either.
    """

    __slots__ = (
        "_identity_required",
        "_missing_credentials",
        "_person_required",
        "app",
        "policy",
        "require_person",
        "required",
    )

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        required: bool = True,
        require_person: bool = True,
        mode: Mode = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
    ) -> None:
        if not isinstance(required, bool):
            raise TypeError(f"EnforceIdentity: required must be True or False, not {required!r}")
        if not isinstance(require_person, bool):
            raise TypeError(
                f"EnforceIdentity: require_person must be True or False, not {require_person!r}"
            )
        self.app = app
        self.required = required
        self.require_person = require_person
        self.policy = LayerPolicy(
            "EnforceIdentity",
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
        )
        # Built once: the messages are fixed, and a rejection should cost no more than a pass.
        self._identity_required = IdentityError(
            "identity_required",
            IDENTITY_REQUIRED_MESSAGE,
            detail="API key without a person (no JWT, no trusted identity header)",
        )
        self._missing_credentials = IdentityError(
            "missing_credentials",
            MISSING_CREDENTIALS_MESSAGE,
            detail="anonymous request where identity is required",
        )
        self._person_required = IdentityError(
            "identity_required",
            PERSON_REQUIRED_MESSAGE,
            detail="token of a client (client credentials), no person",
        )

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
        identity = require_identity(scope, "EnforceIdentity")
        if not identity.is_person and (identity.has_user is False or self.require_person):
            key = identity.api_key
            required = self.required
            if key is not None and key.enforce_identity is not None:
                required = key.enforce_identity
            if required:
                if identity.source == "anonymous":
                    error = self._missing_credentials
                elif identity.has_user:
                    error = self._person_required
                else:
                    error = self._identity_required
                if await self.policy.refuse(error, scope, receive, send):
                    return
        await self.app(scope, receive, send)
