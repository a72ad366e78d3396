"""Pure-ASGI middlewares that make any ASGI app its own identity-aware AI gateway."""

# Set before the imports below: telemetry reads it while the package is still importing.
__version__ = "0.1.0"

from .apikeys import APIKey, APIKeyStore, StaticAPIKeyStore, generate_api_key, hash_api_key
from .claims import PRESETS, ClaimMap
from .errors import ErrorRenderer, IdentityError, MiddlewareOrderError
from .identity import Actor, Identity, IdentitySource, get_identity
from .middleware.conversation import ConversationTagger
from .middleware.domains import DomainAllowlist
from .middleware.enforce import EnforceIdentity
from .middleware.identity import IdentityMiddleware
from .middleware.policy import PolicyDecision, PolicyFileError, RoutePolicy, Rule
from .middleware.ratelimit import (
    RateLimitUnavailable,
    UserRateLimit,
    WindowUsage,
    get_rate_limiter,
)
from .stack import identity_stack, stack_layers
from .tokens import JWTIssuer, TokenVerifier
from .usage import TokenUsage

__all__ = [
    "PRESETS",
    "APIKey",
    "APIKeyStore",
    "Actor",
    "ClaimMap",
    "ConversationTagger",
    "DomainAllowlist",
    "EnforceIdentity",
    "ErrorRenderer",
    "Identity",
    "IdentityError",
    "IdentityMiddleware",
    "IdentitySource",
    "JWTIssuer",
    "MiddlewareOrderError",
    "PolicyDecision",
    "PolicyFileError",
    "RateLimitUnavailable",
    "RoutePolicy",
    "Rule",
    "StaticAPIKeyStore",
    "TokenUsage",
    "TokenVerifier",
    "UserRateLimit",
    "WindowUsage",
    "generate_api_key",
    "get_identity",
    "get_rate_limiter",
    "hash_api_key",
    "identity_stack",
    "stack_layers",
]
