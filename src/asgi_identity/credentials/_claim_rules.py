"""The claim rules of a verified token: one function and one error per rule, after pyjwt's
`_validate_claims`.

An issuer's rules are chosen once (`ClaimRules.sequence`, a tuple of `(rule, claim)` pairs) so a
verification only runs the ones that apply, with no allocation. The verifier stops at the first
rule that fails; `every_failure` runs them all, for the `asgi-identity verify` command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from asgi_identity.credentials._jws import MALFORMED, is_number, summary
from asgi_identity.credentials.claims import ClaimMap
from asgi_identity.errors import IdentityError


class ClaimError(IdentityError):
    """A claim rule a token fails: 401 `invalid_token`, and a sentence for the command line."""

    __slots__ = ("claim", "explanation")

    def __init__(self, message: str, detail: str, *, claim: str, explanation: str) -> None:
        super().__init__("invalid_token", message, detail=detail)
        self.claim = claim
        # Built only when a rule fails, so a passing token pays nothing for the wording.
        self.explanation = explanation


#: A rule judges one claim (its second argument) at time `now`; ClaimError when it fails. A
#: rule treats its claim being absent as "not mine to judge", except `_present` and `_audience`.
Rule: TypeAlias = Callable[["ClaimRules", Mapping[str, Any], str, float], None]

_NOT_VALID_YET: Final = "The access token is not valid yet."
_WRONG_AUDIENCE: Final = "The access token is not meant for this service."


def _ago(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _present(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    if claims.get(name) is None:
        raise ClaimError(
            "The access token lacks a required claim.",
            f"missing {name}",
            claim=name,
            explanation=f"the token has no {name} claim"
            + (" (an expiry is required)" if name == "exp" else ""),
        )


def _numeric_date(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    # RFC 7519 makes every NumericDate a JSON number: "0" as a string, true or NaN is none.
    if name in claims and not is_number(claims[name]):
        value = claims[name]
        raise ClaimError(
            MALFORMED,
            f"{name}={summary(value)} is not a number",
            claim=name,
            explanation=f"{name} is not a number: {value!r}",
        )


def _not_in_future(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    # `iat` and `nbf`; whole seconds, as pyjwt compares them.
    value = claims.get(name)
    if value is not None and int(value) > now + rules.leeway:
        what = "was issued" if name == "iat" else "is not valid before"
        raise ClaimError(
            _NOT_VALID_YET,
            f"{name} is in the future",
            claim=name,
            explanation=f"the token {what} {_ago(value - now)} in the future ({name}={int(value)})",
        )


def _not_expired(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    exp = claims.get(name)
    if exp is not None and int(exp) <= now - rules.leeway:
        raise ClaimError(
            "The access token has expired.",
            "exp is past",
            claim=name,
            explanation=f"the token expired {_ago(now - exp)} ago (exp={int(exp)})",
        )


def _issuer(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    iss = claims.get(name)
    if iss is not None and iss != rules.issuer:
        raise ClaimError(
            "The access token's issuer is not accepted.",
            f"iss={summary(iss)}",
            claim=name,
            explanation=f"iss is {iss!r}, expected {rules.issuer!r}",
        )


def _audience(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    expected = rules.audience
    assert expected is not None  # the rule is chosen only with an audience
    aud = claims.get(name)
    if not aud:
        raise ClaimError(
            "The access token lacks a required claim.",
            "missing aud",
            claim=name,
            explanation=f"the token has no aud claim, expected one of {list(expected)}",
        )
    claimed = [aud] if isinstance(aud, str) else aud
    if not isinstance(claimed, list) or not all(isinstance(item, str) for item in claimed):
        raise ClaimError(
            _WRONG_AUDIENCE,
            f"aud={summary(aud)} is not a string or a list of strings",
            claim=name,
            explanation=f"aud is {aud!r}, not a string or a list of strings",
        )
    if all(audience not in claimed for audience in expected):
        raise ClaimError(
            _WRONG_AUDIENCE,
            f"aud={summary(aud)}",
            claim=name,
            explanation=f"aud is {aud!r}, expected one of {list(expected)}",
        )


def _string(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    # `sub` and `jti`: identifiers compared as text everywhere after this.
    if name in claims and not isinstance(claims[name], str):
        raise ClaimError(
            "The access token is invalid.",
            f"{name} is not a string",
            claim=name,
            explanation=f"{name} is not a string: {claims[name]!r}",
        )


def _lifetime(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    exp = claims.get("exp")
    iat = claims.get(name)
    maximum = rules.max_lifetime
    assert maximum is not None  # the rule is chosen only with a max_lifetime
    if exp is not None and iat is not None and exp - iat > maximum:
        raise ClaimError(
            "The access token's lifetime is too long.",
            f"exp - iat = {summary(exp - iat)}s over max_lifetime={maximum:g}",
            claim=name,
            explanation=f"the token lives {_ago(exp - iat)}, over max_lifetime={maximum:g}s",
        )


def _authorized_party(rules: ClaimRules, claims: Mapping[str, Any], name: str, now: float) -> None:
    assert rules.parties is not None  # the rule is chosen only with authorized_parties
    client_id = rules.claim_map.client_id_of(claims)
    if client_id not in rules.parties:
        raise ClaimError(
            "The access token was issued to a client that is not allowed.",
            f"client {summary(client_id)} not in authorized_parties",
            claim=name,
            explanation=f"the client {client_id!r} is not one of {sorted(rules.parties)}",
        )


class ClaimRules:
    """The rules one issuer's tokens must pass, in the order they are checked.

    `issuer` and `audience` None leave that claim unchecked: the middleware always sets `issuer`
    (JWTIssuer requires it), the command line only when asked.
    """

    __slots__ = ("audience", "claim_map", "issuer", "leeway", "max_lifetime", "parties", "sequence")

    def __init__(
        self,
        *,
        issuer: str | None,
        audience: tuple[str, ...] | None,
        leeway: float,
        max_lifetime: float | None = None,
        parties: frozenset[str] | None = None,
        claim_map: ClaimMap | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.parties = parties
        self.claim_map = claim_map or ClaimMap()
        required = ("exp",) + (("iss",) if issuer is not None else ())
        if max_lifetime is not None:
            required += ("iat",)
        # The order of 0.1 (pyjwt's, then this package's own rules): which rule a token breaking
        # several is refused for stays the same.
        sequence: list[tuple[Rule, str]] = [(_present, name) for name in required]
        sequence += [(_numeric_date, name) for name in ("exp", "nbf", "iat")]
        sequence += [(_not_in_future, "iat"), (_not_in_future, "nbf"), (_not_expired, "exp")]
        if issuer is not None:
            sequence.append((_issuer, "iss"))
        if audience is not None:
            sequence.append((_audience, "aud"))
        sequence += [(_string, "sub"), (_string, "jti")]
        if max_lifetime is not None:
            sequence.append((_lifetime, "iat"))
        if parties is not None:
            sequence.append((_authorized_party, "azp"))
        self.sequence: tuple[tuple[Rule, str], ...] = tuple(sequence)


def every_failure(rules: ClaimRules, claims: Mapping[str, Any], now: float) -> list[ClaimError]:
    """Every rule `claims` fail, in order (empty when they pass).

    A claim a rule found wrong is left out for the rules after it, so a missing or malformed `exp`
    is reported once, not again as "expired".
    """
    remaining = dict(claims)
    failures: list[ClaimError] = []
    for rule, name in rules.sequence:
        try:
            rule(rules, remaining, name, now)
        except ClaimError as error:
            failures.append(error)
            remaining.pop(error.claim, None)
    return failures
