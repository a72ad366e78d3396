"""RoutePolicy: may this identity send this request, on this route, to this model?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from asgi_identity._http.body import DEFAULT_MAX_BODY, NO_BODY, BodyError, BodyFields
from asgi_identity._http.target import canonical_path
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.rules import (
    DEFAULT_RULE_ID,
    CompiledPolicy,
    CompiledRule,
    Effect,
    PolicyFileError,
    Rule,
    load_policy_file,
)
from asgi_identity.telemetry import events
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend

__all__ = ["PolicyDecision", "PolicyFileError", "RoutePolicy", "Rule"]

LAYER: Final = "RoutePolicy"
# What a body that cannot be read counts as in observe mode: no model at all.
NO_MODEL: Final = NO_BODY


class PolicyDecision(NamedTuple):
    rule_id: str
    allowed: bool
    version: str | None


class RoutePolicy:
    """Allow or refuse each request by ordered rules over the identity, the route and the model.

    The first rule whose conditions all hold decides; when none does, `default` decides.
    """

    __slots__ = (
        "_allow_details",
        "_default_allow",
        "_default_error",
        "_detail",
        "_errors",
        "_step_up",
        "_too_large",
        "app",
        "default",
        "max_body",
        "policy",
        "rules",
        "version",
    )

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        rules: Sequence[Rule] | None = None,
        rules_file: str | Path | None = None,
        default: Effect | None = None,
        version: str | None = None,
        mode: Mode = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        renderer: ErrorRenderer | None = None,
    ) -> None:
        if (rules is None) == (rules_file is None):
            raise TypeError(f"{LAYER}: pass exactly one of rules=[...] or rules_file='...'")
        file_version: str | None = None
        file_default: str | None = None
        if rules_file is not None:
            document = load_policy_file(rules_file)
            rule_list: Sequence[Rule] = document.rules
            file_version, file_default = document.version, document.default
        else:
            if isinstance(rules, (str, bytes, Rule)) or not isinstance(rules, Sequence):
                raise TypeError(f"{LAYER}: rules must be a list of Rule objects")
            rule_list = rules
        # Explicit keyword arguments override what the file says.
        chosen_default = default if default is not None else (file_default or "deny")
        if chosen_default not in ("allow", "deny"):
            raise ValueError(f"{LAYER}: default must be 'allow' or 'deny', not {chosen_default!r}")
        if version is not None and not isinstance(version, str):
            raise TypeError(f"{LAYER}: version must be a string")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
            raise ValueError(f"{LAYER}: max_body must be a positive number of bytes")

        self.app = app
        self.rules = CompiledPolicy(rule_list)
        self.default = chosen_default
        self.version = version if version is not None else file_version
        self.max_body = max_body
        self.policy = LayerPolicy(
            LAYER,
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
        )
        # Refusals are built once per rule: they depend only on the rule, never on the request,
        # so no part of the request (a secret in a header, the prompt) can leak into them.
        suffix = f", policy version {self.version}" if self.version else ""
        self._errors = {
            rule.id: IdentityError(
                "policy_denied",
                _denial_message(rule.id, rule.message),
                detail=f"rule {rule.id}{suffix}",
            )
            for rule in self.rules.rules
            if rule.effect == "deny"
        }
        # Refusals reach the audit through LayerPolicy.refuse(); allowed requests are recorded
        # here, with the rule and version that let them through.
        self._allow_details = {
            rule.id: f"rule {rule.id}{suffix}"
            for rule in self.rules.rules
            if rule.effect == "allow"
        }
        self._default_allow = f"no rule matched, default allow{suffix}"
        self._default_error = IdentityError(
            "policy_denied",
            _denial_message(DEFAULT_RULE_ID, "No route policy rule allows this request."),
            detail=f"no rule matched, default deny{suffix}",
        )
        self._too_large = IdentityError(
            "request_too_large",
            f"The request body is larger than the {max_body} bytes the route policy can inspect.",
            detail=f"body over max_body={max_body} on a route with model rules{suffix}",
        )

        self._detail = f"unreadable body on a route with model rules{suffix}"
        self._step_up = {
            rule.id: step_up_error(rule.id, rule.step_up, rule.message, suffix)
            for rule in self.rules.rules
            if rule.step_up
        }

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
        identity = require_identity(scope, LAYER)
        decided: CompiledRule | None = None
        fields: BodyFields | None = None
        for rule in self.rules.matching(identity, view.method, view.path):
            if rule.needs_body:
                if fields is None:
                    read, receive = await view.fields(receive, self.max_body)
                    if isinstance(read, BodyError):
                        # Fail closed: a body that cannot be read is never "no model". In
                        # observe mode the model is unknown, so no model rule matches.
                        if await self.policy.refuse(self._body_error(read), scope, receive, send):
                            return
                        read = NO_MODEL
                    elif read.problem is not None:
                        error = IdentityError("invalid_request", read.problem, detail=self._detail)
                        if await self.policy.refuse(error, scope, receive, send):
                            return
                        read = NO_MODEL
                    fields = read
                if not rule.matches_message(fields):
                    continue
            if rule.step_up:
                # A requirement, not a grant: with every scope it names, the next rules decide.
                if identity.scopes.issuperset(rule.step_up):
                    continue
                if await self.policy.refuse(self._step_up[rule.id], scope, receive, send):
                    return
                continue
            decided = rule
            break

        if decided is None:
            allowed = self.default == "allow"
            error = self._default_error
        else:
            allowed = decided.effect == "allow"
            error = self._errors.get(decided.id, self._default_error)
        if allowed:
            detail = self._default_allow if decided is None else self._allow_details[decided.id]
            events.allowed(scope, LAYER, identity, detail=detail)
        elif await self.policy.refuse(error, scope, receive, send):
            return
        await self.app(scope, receive, send)

    def _body_error(self, error: BodyError) -> IdentityError:
        if error.too_large:
            return self._too_large
        return IdentityError("invalid_request", str(error), detail=self._detail)

    def decide(
        self,
        identity: Identity,
        method: str,
        path: str,
        model: str | None = None,
        *,
        mcp_method: str | None = None,
        name: str | None = None,
        uri: str | None = None,
    ) -> PolicyDecision:
        """What the policy decides for a request, without sending one (for tests and tooling).

        The path is judged in its canonical form, as a request's would be after
        `path_policy="normalize"`; the method exactly as given. `mcp_method`, `name` and `uri`
        are the JSON-RPC message's (`tools/call` and the tool's name).
        """
        fields = BodyFields(
            {"model": model, "method": mcp_method, "params": {"name": name, "uri": uri}}
        )
        for rule in self.rules.matching(identity, method, canonical_path(path)):
            if not rule.matches_message(fields):
                continue
            if rule.step_up:
                if identity.scopes.issuperset(rule.step_up):
                    continue
                return PolicyDecision(rule.id, False, self.version)
            return PolicyDecision(rule.id, rule.effect == "allow", self.version)
        return PolicyDecision(DEFAULT_RULE_ID, self.default == "allow", self.version)


def step_up_error(
    rule_id: str, scopes: Sequence[str], message: str | None, suffix: str
) -> IdentityError:
    """403 `insufficient_scope` naming every scope the request needs, in one challenge (RFC 6750
    §3.1): a client re-authorizes with them and retries."""
    needed = " ".join(scopes)
    text = message or f"This request needs the scope(s) {needed}."
    return IdentityError(
        "insufficient_scope",
        f"{text} (rule '{rule_id}')",
        headers=[("www-authenticate", f'Bearer error="insufficient_scope", scope="{needed}"')],
        detail=f"rule {rule_id} needs {needed}{suffix}",
    )


def _denial_message(rule_id: str, message: str | None) -> str:
    text = message or "This request is not allowed by the route policy."
    return f"{text} (rule '{rule_id}')"
