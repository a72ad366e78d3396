"""The token estimate: what a request may use, from the fields the request view read once."""

from __future__ import annotations

from asgi_identity._http.body import MAX_OUTPUT_CAP, BodyError, BodyFields
from asgi_identity.errors import IdentityError
from asgi_identity.quotas.usage import MAX_TOKENS

#: An estimate the storage could not count with (a declared length of 10**20 bytes): a 400 here,
#: never a reply the storage rejects.
TOO_MANY_TOKENS = IdentityError(
    "invalid_request",
    f"This request would reserve more than {MAX_TOKENS} tokens; no quota can count that many.",
)


def check_estimate_options(default_max_tokens: int, max_body: int) -> None:
    if (
        not isinstance(default_max_tokens, int)
        or isinstance(default_max_tokens, bool)
        or not 0 <= default_max_tokens <= MAX_OUTPUT_CAP
    ):
        raise ValueError(
            f"UserRateLimit: default_max_tokens must be an integer from 0 to {MAX_OUTPUT_CAP}"
        )
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ValueError("UserRateLimit: max_body must be a positive number of bytes")


def token_estimate(
    fields: BodyFields | BodyError, size: int, default_max_tokens: int
) -> int | IdentityError | None:
    """The tokens to reserve: None for no LLM call, an IdentityError (400) for a body that
    cannot be given one meaning. `size` is the body's size as far as it is known."""
    if isinstance(fields, BodyError):
        if not fields.too_large:
            return IdentityError("invalid_request", str(fields))
        # Too large to read is not "not an LLM call": padding a prompt past max_body must not
        # make it free. Reserve the default and settle from the response as usual.
        return _bounded(default_max_tokens + size // 4)
    if fields.problem is not None:
        return IdentityError("invalid_request", fields.problem)
    if not fields.is_object:
        return None  # no body, or not an object: not an LLM call
    # Everything that may be generated: the output cap for each of n (or best_of) completions,
    # plus the input at about four bytes a token.
    cap = default_max_tokens if fields.output_cap is None else fields.output_cap
    return _bounded(cap * max(fields.n or 1, fields.best_of or 1) + size // 4)


def _bounded(estimate: int) -> int | IdentityError:
    # The body's own numbers are bounded where it is parsed; the size comes from Content-Length.
    return estimate if estimate <= MAX_TOKENS else TOO_MANY_TOKENS
