"""Checked by `make types` (mypy --strict over tests/), never run: the public API as Litestar and
Quart users write it, whose frameworks type ASGI scopes and messages as their own TypedDicts.
No cast; the one ignore is mypy's rule against assigning to any method."""

from __future__ import annotations

from litestar import Litestar
from litestar.middleware import DefineMiddleware
from quart import Quart

from asgi_identity import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
    JWTIssuer,
    RoutePolicy,
    Rule,
    identity_stack,
    stack_layers,
)
from asgi_identity.testing import with_identity

ISSUER = JWTIssuer(issuer="https://login.acme.com/", audience="gateway", discovery=True)


def litestar_with_each_layer() -> Litestar:
    return Litestar(
        route_handlers=[],
        middleware=[
            DefineMiddleware(IdentityMiddleware, issuers=[ISSUER], path_policy="normalize"),
            DefineMiddleware(EnforceIdentity, mode="observe"),
            DefineMiddleware(DomainAllowlist, domains=["acme.com"]),
            DefineMiddleware(RoutePolicy, rules=[Rule(id="r", models=["gpt-4o*"])], default="deny"),
            DefineMiddleware(ConversationTagger),
        ],
    )


def litestar_from_stack_layers() -> Litestar:
    layers = stack_layers(identity={"issuers": [ISSUER]}, domains={"domains": ["acme.com"]})
    return Litestar(
        route_handlers=[],
        middleware=[DefineMiddleware(cls, **options) for cls, options in layers],
    )


def quart_wrapped_whole() -> IdentityMiddleware:
    return identity_stack(Quart(__name__), identity={"issuers": [ISSUER]}, path_policy="refuse")


def quart_keeps_its_object_outermost() -> Quart:
    app = Quart(__name__)
    app.asgi_app = identity_stack(app.asgi_app, identity={"issuers": [ISSUER]})  # type: ignore[method-assign]
    return app


def any_app_in_any_layer() -> list[object]:
    litestar = litestar_with_each_layer()
    return [
        identity_stack(litestar, identity={"issuers": [ISSUER]}),
        IdentityMiddleware(Quart(__name__), issuers=[ISSUER], mode="observe"),
        EnforceIdentity(litestar),
        with_identity(Quart(__name__), None),
    ]


def options_from_a_fixed_set_are_checked() -> list[object]:
    app = Quart(__name__)
    # Each ignore below is needed only while the option is a Literal: mypy --strict reports an
    # unused ignore, so a signature that widens back to `str` fails `make types`.
    return [
        IdentityMiddleware(app, issuers=[ISSUER], mode="enforcing"),  # type: ignore[arg-type]
        IdentityMiddleware(app, issuers=[ISSUER], path_policy="fix"),  # type: ignore[arg-type]
        EnforceIdentity(app, mode="warn"),  # type: ignore[arg-type]
        DomainAllowlist(app, domains=[], mode="off"),  # type: ignore[arg-type]
        ConversationTagger(app, mode="strict"),  # type: ignore[arg-type]
        RoutePolicy(app, rules=[], default="permit"),  # type: ignore[arg-type]
        identity_stack(app, identity={}, path_policy="repair"),  # type: ignore[arg-type]
    ]
