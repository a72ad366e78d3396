"""Every OpenTelemetry name the package uses: attributes, events, spans, metrics, baggage keys."""

from __future__ import annotations

from typing import Final

#: The instrumentation scope of the package's tracer and meter.
INSTRUMENTATION_SCOPE: Final = "asgi_identity"

ATTR_USER_ID: Final = "user.id"
ATTR_ENDUSER_ID: Final = "enduser.id"
ATTR_USER_ROLES: Final = "user.roles"
ATTR_USER_EMAIL: Final = "user.email"
ATTR_USER_HASH: Final = "user.hash"
ATTR_SOURCE: Final = "asgi_identity.source"
ATTR_TENANT: Final = "asgi_identity.tenant"
ATTR_GROUP: Final = "asgi_identity.group"
ATTR_CLIENT_ID: Final = "asgi_identity.client_id"
ATTR_API_KEY_ID: Final = "asgi_identity.api_key.id"
ATTR_ISSUER: Final = "asgi_identity.issuer"
ATTR_ACTOR: Final = "asgi_identity.actor.id"
ATTR_ACTOR_CHAIN: Final = "asgi_identity.actor.chain"
ATTR_CONVERSATION: Final = "gen_ai.conversation.id"
ATTR_DECISION: Final = "asgi_identity.decision"
ATTR_DECISION_LAYER: Final = "asgi_identity.decision.layer"
ATTR_LAYER: Final = "asgi_identity.layer"
ATTR_MODE: Final = "asgi_identity.mode"
ATTR_OUTCOME: Final = "asgi_identity.outcome"
ATTR_DETAIL: Final = "asgi_identity.detail"
ATTR_ERROR_TYPE: Final = "error.type"
ATTR_TOKEN_TYPE: Final = "gen_ai.token.type"  # noqa: S105 - an attribute name
ATTR_USAGE_INPUT: Final = "gen_ai.usage.input_tokens"
ATTR_USAGE_OUTPUT: Final = "gen_ai.usage.output_tokens"
ATTR_URL: Final = "url.full"

EVENT_REJECTED: Final = "asgi_identity.rejected"
EVENT_OBSERVED: Final = "asgi_identity.would_reject"

SPAN_JWKS_FETCH: Final = "asgi_identity.jwks.fetch"
SPAN_VERIFY: Final = "asgi_identity.verify_token"

METRIC_REQUESTS: Final = "asgi_identity.requests"
METRIC_REJECTIONS: Final = "asgi_identity.rejections"
METRIC_RATE_LIMIT_HITS: Final = "asgi_identity.rate_limit.hits"
METRIC_AUTH_DURATION: Final = "asgi_identity.auth.duration"
METRIC_TOKENS: Final = "asgi_identity.tokens"
METRIC_JWKS_FETCHES: Final = "asgi_identity.jwks.fetches"

#: The value a user attribute takes once an instrument has seen `max_users` distinct users.
OVERFLOW: Final = "__overflow__"

#: Baggage keys that would name a person: never taken from a client, set only when enabled.
BAGGAGE_KEYS: Final = (
    ATTR_USER_ID,
    ATTR_ENDUSER_ID,
    ATTR_USER_HASH,
    ATTR_USER_EMAIL,
    ATTR_USER_ROLES,
    ATTR_TENANT,
    ATTR_GROUP,
    ATTR_CLIENT_ID,
)
