"""Pure-ASGI middlewares that make any ASGI app its own identity-aware AI gateway."""

# Set before the imports below: telemetry reads it while the package is still importing.
__version__ = "0.2.0.dev0"

from asgi_identity.audit import configure_audit, shutdown_audit, verify_audit
from asgi_identity.credentials.apikeys import (
    APIKey,
    APIKeyStore,
    StaticAPIKeyStore,
    generate_api_key,
    hash_api_key,
)
from asgi_identity.credentials.claims import PRESETS, ClaimMap
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier
from asgi_identity.errors import ErrorRenderer, IdentityError, MiddlewareOrderError
from asgi_identity.identity import Actor, Identity, IdentitySource, get_identity
from asgi_identity.middleware.conversation import ConversationTagger
from asgi_identity.middleware.domains import DomainAllowlist
from asgi_identity.middleware.enforce import EnforceIdentity
from asgi_identity.middleware.identity import IdentityMiddleware
from asgi_identity.middleware.policy import PolicyDecision, PolicyFileError, RoutePolicy, Rule
from asgi_identity.middleware.ratelimit import (
    RateLimitUnavailable,
    UserRateLimit,
    WindowUsage,
    get_rate_limiter,
)
from asgi_identity.quotas.usage import TokenUsage
from asgi_identity.stack import identity_stack, stack_layers
from asgi_identity.telemetry import configure_telemetry
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "PRESETS",
    "APIKey",
    "APIKeyStore",
    "ASGIApp",
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
    "Message",
    "MiddlewareOrderError",
    "PolicyDecision",
    "PolicyFileError",
    "RateLimitUnavailable",
    "Receive",
    "RoutePolicy",
    "Rule",
    "Scope",
    "Send",
    "StaticAPIKeyStore",
    "TokenUsage",
    "TokenVerifier",
    "UserRateLimit",
    "WindowUsage",
    "configure_audit",
    "configure_telemetry",
    "generate_api_key",
    "get_identity",
    "get_rate_limiter",
    "hash_api_key",
    "identity_stack",
    "shutdown_audit",
    "stack_layers",
    "verify_audit",
]
