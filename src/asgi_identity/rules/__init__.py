"""RoutePolicy's rule language and its compiled index."""

from asgi_identity.rules._compiled_rule import CompiledRule
from asgi_identity.rules._file import PolicyDocument, PolicyFileError, load_policy_file
from asgi_identity.rules._index import CompiledPolicy
from asgi_identity.rules._rule import DEFAULT_RULE_ID, Effect, Rule

__all__ = [
    "DEFAULT_RULE_ID",
    "CompiledPolicy",
    "CompiledRule",
    "Effect",
    "PolicyDocument",
    "PolicyFileError",
    "Rule",
    "load_policy_file",
]
