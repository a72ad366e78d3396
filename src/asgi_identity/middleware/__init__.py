"""The middlewares, one module each; import them from here or from `asgi_identity`."""

from .conversation import ConversationTagger
from .domains import DomainAllowlist
from .enforce import EnforceIdentity
from .identity import IdentityMiddleware
from .policy import RoutePolicy
from .ratelimit import UserRateLimit

__all__ = [
    "ConversationTagger",
    "DomainAllowlist",
    "EnforceIdentity",
    "IdentityMiddleware",
    "RoutePolicy",
    "UserRateLimit",
]
