from __future__ import annotations

from typing import Any

import pytest

from asgi_identity.credentials.claims import MAX_ACTOR_DEPTH, PRESETS, ClaimMap
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Actor, Identity

ISSUER = "https://idp.test"


def identity(claims: dict[str, Any], claim_map: ClaimMap | str = "default") -> Identity:
    mapping = PRESETS[claim_map] if isinstance(claim_map, str) else claim_map
    return mapping.to_identity(claims, ISSUER)


def refused(claims: dict[str, Any], claim_map: ClaimMap | str = "default") -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        identity(claims, claim_map)
    assert caught.value.code == "invalid_token"
    assert caught.value.message == "The access token carries malformed claims."
    return caught.value


def test_default_mapping_reads_the_standard_claims() -> None:
    got = identity(
        {
            "sub": "u-1",
            "email": "Alice@Acme.COM",
            "email_verified": True,
            "name": "Alice",
            "roles": ["admin", "dev"],
            "scope": "read  write",
            "azp": "web",
        }
    )
    assert got == Identity(
        source="jwt",
        user_id="u-1",
        email="alice@acme.com",
        email_verified=True,
        domain="acme.com",
        name="Alice",
        roles=frozenset({"admin", "dev"}),
        scopes=frozenset({"read", "write"}),
        client_id="web",
        issuer=ISSUER,
    )
    assert got.has_user


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "a b"}, {"a", "b"}),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
        ({"scope": ""}, set()),
        ({"scope": None}, set()),
        ({}, set()),
    ],
)
def test_scopes_are_a_space_separated_string_or_a_list(
    claims: dict[str, Any], scopes: set[str]
) -> None:
    assert identity(claims).scopes == scopes


def test_a_role_given_as_a_string_is_one_role() -> None:
    assert identity({"roles": "Billing Admin"}).roles == {"Billing Admin"}


def test_dotted_paths_reach_into_nested_objects() -> None:
    mapping = ClaimMap(roles=("realm_access.roles", "resource_access.gateway.roles"))
    got = identity(
        {
            "realm_access": {"roles": ["user"]},
            "resource_access": {"gateway": {"roles": ["chat"]}, "other": {"roles": ["x"]}},
        },
        mapping,
    )
    assert got.roles == {"user", "chat"}
    assert identity({}, mapping).roles == frozenset()
    assert identity({"resource_access": {}}, mapping).roles == frozenset()


def test_a_claim_whose_name_has_dots_is_read_as_is() -> None:
    mapping = PRESETS["auth0"].replace(roles="https://acme.com/roles")
    assert identity({"https://acme.com/roles": ["admin"]}, mapping).roles == {"admin"}


def test_single_valued_fields_take_the_first_claim_present() -> None:
    mapping = ClaimMap(user_id=("oid", "sub"))
    assert identity({"sub": "s", "oid": "o"}, mapping).user_id == "o"
    assert identity({"sub": "s"}, mapping).user_id == "s"


def test_numeric_ids_become_strings_but_booleans_do_not() -> None:
    mapping = ClaimMap(tenant="org")
    assert identity({"org": 42}, mapping).tenant == "42"
    refused({"org": True}, mapping)


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("true", True), ("false", False)]
)
def test_email_verified_as_boolean_or_string(value: Any, expected: bool) -> None:
    assert identity({"email_verified": value}).email_verified is expected


@pytest.mark.parametrize(
    "claims",
    [
        {"email": {"address": "a@acme.com"}},
        {"email": "not an address"},
        {"email": "Alice <alice@acme.com>"},
        # Short as sent, over 254 characters once its domain is punycode.
        {"email": "a" * 64 + "@" + ".".join(["bücherbücherbücher"] * 8) + ".com"},
        {"name": ["a", "b"]},
        {"roles": {"admin": True}},
        {"roles": ["admin", 7]},
        {"scope": 12},
        {"email_verified": "yes"},
        {"act": "agent"},
        {"act": {"iss": "https://idp.test"}},
        {"act": {"sub": 5}},
        {"azp": {"id": "web"}},
    ],
)
def test_wrong_typed_claims_are_refused(claims: dict[str, Any]) -> None:
    error = refused(claims)
    assert error.detail


def test_a_path_through_a_non_object_is_refused() -> None:
    mapping = ClaimMap(roles="realm_access.roles")
    assert "realm_access" in (refused({"realm_access": "admin"}, mapping).detail or "")


def test_actor_chain_is_kept() -> None:
    act = {
        "sub": "agent",
        "iss": "https://agents.test",
        "act": {"client_id": "orchestrator", "act": {"sub": "scheduler"}},
    }
    got = identity({"sub": "alice", "act": act})
    assert got.actor == Actor(
        subject="agent",
        issuer="https://agents.test",
        actor=Actor(
            subject="orchestrator", client_id="orchestrator", actor=Actor(subject="scheduler")
        ),
    )
    assert got.actor is not None
    assert got.actor.chain == ("agent", "orchestrator", "scheduler")
    assert got.user_id == "alice"


def test_an_absurdly_deep_actor_chain_is_refused() -> None:
    act: dict[str, Any] = {"sub": "last"}
    for n in range(MAX_ACTOR_DEPTH):
        act = {"sub": f"agent-{n}", "act": act}
    refused({"act": act})


def test_claims_are_frozen_deeply() -> None:
    got = identity({"realm_access": {"roles": ["a"]}, "list": [{"x": 1}]})
    assert got.claims["realm_access"]["roles"] == ("a",)
    with pytest.raises(TypeError):
        got.claims["list"][0]["x"] = 2


def test_bad_paths_are_refused_at_construction() -> None:
    for bad in ("", ".roles", "roles.", 7):
        with pytest.raises(ValueError, match=r"ClaimMap\.roles"):
            ClaimMap(roles=bad)  # type: ignore[arg-type]


# --- one realistic token per provider preset --------------------------------------------------

PROVIDER_TOKENS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "auth0": (
        {
            "sub": "auth0|123",
            "email": "a@acme.com",
            "email_verified": True,
            "org_id": "org_abc",
            "scope": "openid chat:write",
            "permissions": ["models:gpt-4o"],
            "azp": "spa-client",
        },
        {
            "user_id": "auth0|123",
            "tenant": "org_abc",
            "scopes": {"openid", "chat:write", "models:gpt-4o"},
            "client_id": "spa-client",
        },
    ),
    "okta": (
        {
            "sub": "alice@acme.com",
            "uid": "00u1abcd",
            "cid": "0oa1client",
            "scp": ["openid", "chat"],
            "groups": ["Everyone", "Engineering"],
        },
        {
            "user_id": "00u1abcd",
            "client_id": "0oa1client",
            "scopes": {"openid", "chat"},
            "roles": {"Everyone", "Engineering"},
        },
    ),
    "entra": (
        {
            "sub": "pairwise-sub",
            "oid": "11111111-2222",
            "tid": "tenant-guid",
            "upn": "Alice@Contoso.com",
            "scp": "Chat.Read Chat.Write",
            "roles": ["Gateway.Admin"],
            "azp": "client-guid",
            "xms_edov": True,
        },
        {
            "user_id": "11111111-2222",
            "tenant": "tenant-guid",
            "email": "alice@contoso.com",
            "email_verified": True,
            "scopes": {"Chat.Read", "Chat.Write"},
            "roles": {"Gateway.Admin"},
            "client_id": "client-guid",
        },
    ),
    "keycloak": (
        {
            "sub": "kc-1",
            "email": "a@acme.com",
            "email_verified": False,
            "realm_access": {"roles": ["offline_access", "gateway-user"]},
            "scope": "openid profile",
            "azp": "gateway",
        },
        {
            "user_id": "kc-1",
            "email_verified": False,
            "roles": {"offline_access", "gateway-user"},
            "scopes": {"openid", "profile"},
            "client_id": "gateway",
        },
    ),
    "google": (
        {
            "sub": "1057",
            "email": "a@acme.com",
            "email_verified": True,
            "hd": "acme.com",
            "azp": "123.apps.googleusercontent.com",
            "name": "Alice",
        },
        {"user_id": "1057", "tenant": "acme.com", "name": "Alice", "scopes": frozenset()},
    ),
    "dex": (
        {"sub": "CgVhbGljZRIEbGRhcA", "email": "a@acme.com", "groups": ["eng"], "azp": "gw"},
        {"user_id": "CgVhbGljZRIEbGRhcA", "roles": {"eng"}, "client_id": "gw"},
    ),
    "cognito": (
        {
            "sub": "c0a1",
            "client_id": "app-client",
            "scope": "gateway/chat",
            "cognito:groups": ["premium"],
            "email_verified": "true",
        },
        {
            "user_id": "c0a1",
            "client_id": "app-client",
            "scopes": {"gateway/chat"},
            "roles": {"premium"},
            "email_verified": True,
        },
    ),
}


def test_every_preset_has_a_realistic_token() -> None:
    assert set(PRESETS) == {"default", *PROVIDER_TOKENS}


@pytest.mark.parametrize("provider", sorted(PROVIDER_TOKENS))
def test_provider_presets(provider: str) -> None:
    claims, expected = PROVIDER_TOKENS[provider]
    got = identity(claims, provider)
    for field, value in expected.items():
        assert getattr(got, field) == value, field


def test_an_address_seen_before_gives_the_same_normalized_email() -> None:
    first = identity({"sub": "u-1", "email": "Alice@Acme.COM"})
    second = identity({"sub": "u-1", "email": "Alice@Acme.COM"})
    assert (
        (first.email, first.domain)
        == (second.email, second.domain)
        == (
            "alice@acme.com",
            "acme.com",
        )
    )


def test_a_malformed_address_is_refused_every_time() -> None:
    for _ in range(2):
        error = refused({"sub": "u-1", "email": "alice@@acme.com"})
        assert error.detail is not None
        assert error.detail.startswith("claim email:")


@pytest.mark.parametrize(
    ("depth", "leaf", "accepted"),
    [
        (32, "x", True),
        (33, "x", False),
        (32, [], True),
        (32, {}, True),
        (32, [1], False),
        (33, [], False),
    ],
)
def test_claims_nested_up_to_the_limit_are_kept_read_only(
    depth: int, leaf: Any, accepted: bool
) -> None:
    # `depth` objects wrap the leaf: the leaf sits `depth` levels below the claims themselves.
    nested: Any = leaf
    for _ in range(depth - 1):
        nested = {"n": nested}
    claims = {"sub": "u-1", "deep": nested}
    if not accepted:
        refused(claims)
        return
    node: Any = identity(claims).claims["deep"]
    for _ in range(depth - 1):
        with pytest.raises(TypeError):
            node["x"] = 1
        node = node["n"]
    assert node == (() if leaf == [] else leaf if not isinstance(leaf, dict) else {})
