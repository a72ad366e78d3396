"""What every enforcing layer shares: its mode, excluded paths, CORS preflight, and how it refuses."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

from asgi_identity._http.target import PATH_POLICIES, PathPolicy, TargetRefused
from asgi_identity._http.view import SCOPE_KEY, RequestView
from asgi_identity.errors import ErrorRenderer, IdentityError, send_error
from asgi_identity.telemetry import events
from asgi_identity.types import Receive, Scope, Send

Mode = Literal["enforce", "observe"]
MODES: frozenset[str] = frozenset({"enforce", "observe"})

logger = logging.getLogger("asgi_identity")


class LayerPolicy:
    """Options common to EnforceIdentity, DomainAllowlist, UserRateLimit and RoutePolicy.

    `exclude_paths` are exact paths, or prefixes when they end with `/` (e.g. `/health`,
    `/static/`). CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) passes unless
    `allow_preflight` is False.
    """

    __slots__ = (
        "_exact",
        "_excludes",
        "_prefixes",
        "allow_preflight",
        "layer",
        "mode",
        "path_policy",
        "renderer",
    )

    def __init__(
        self,
        layer: str,
        *,
        mode: str = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
        path_policy: str = "refuse",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"{layer}: mode must be 'enforce' or 'observe', not {mode!r}")
        if isinstance(exclude_paths, str):
            raise TypeError(f"{layer}: exclude_paths must be a list of paths, not a string")
        paths = list(exclude_paths)
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"{layer}: excluded path {path!r} must start with '/'")
        if path_policy not in PATH_POLICIES:
            raise ValueError(
                f"{layer}: path_policy must be 'refuse' or 'normalize', not {path_policy!r}"
            )
        self.path_policy: PathPolicy = "normalize" if path_policy == "normalize" else "refuse"
        self.layer = layer
        self.mode: Mode = "observe" if mode == "observe" else "enforce"
        self.renderer = renderer
        self.allow_preflight = allow_preflight
        self._exact = frozenset(p for p in paths if not p.endswith("/"))
        self._prefixes = tuple(p for p in paths if p.endswith("/"))
        self._excludes = bool(paths)

    async def view(self, scope: Scope, receive: Receive, send: Send) -> RequestView | None:
        """The request's one view (made by the outermost layer, or here); None when this layer
        refused the request because its path or method cannot be given one meaning."""
        try:
            return RequestView.of(scope, self.path_policy)
        except TargetRefused as refused:
            error = IdentityError("invalid_request", str(refused), detail="non-canonical target")
            if await self.refuse(error, scope, receive, send):
                return None
            # Observe mode: the request goes on as sent; every later layer reads it the same way.
            view = scope[SCOPE_KEY] = RequestView(scope)
            return view

    def skips(self, view: RequestView) -> bool:
        """True when this request is not this layer's business (excluded path or CORS preflight)."""
        # Every request asks every layer: without excluded paths only the method is looked at.
        if self._excludes:
            path = view.path
            if path in self._exact or (self._prefixes and path.startswith(self._prefixes)):
                return True
        if self.allow_preflight and view.method == "OPTIONS":
            view.read_headers()
            return view.preflight
        return False

    async def refuse(
        self, error: IdentityError, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Refuse with `error`; True when the response was sent, False in observe mode (go on)."""
        if self.mode == "observe":
            events.observed(scope, self.layer, error)
            logger.info(
                "%s would refuse %s %s: %s",
                self.layer,
                scope.get("method", "WS"),
                scope.get("path", ""),
                error.code,
            )
            return False
        events.refused(scope, self.layer, error)
        await send_error(error, scope, receive, send, self.renderer)
        return True
