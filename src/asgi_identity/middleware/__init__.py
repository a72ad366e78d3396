"""The middlewares, one module each; import them from here or from `asgi_identity`."""

from asgi_identity.middleware.conversation import ConversationTagger
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.middleware.enforce import EnforceIdentity
from asgi_identity.middleware.identity import IdentityMiddleware
from asgi_identity.middleware.policy import RoutePolicy
from asgi_identity.middleware.ratelimit import UserRateLimit

__all__ = [
    "ConversationTagger",
    "DomainAllowlist",
    "EnforceIdentity",
    "IdentityMiddleware",
    "RoutePolicy",
    "UserRateLimit",
]
