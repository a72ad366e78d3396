"""The self-contained demo: a local issuer, API keys, users of each kind, and the curl commands.

Nothing here reaches the network: the signing key is generated at start-up and the gateway
publishes its key set itself, at /.well-known/jwks.json.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from asgi_identity import APIKey, generate_api_key
from asgi_identity.testing import LocalIssuer

from .settings import Settings

DEMO_LIFETIME = 12 * 3600  # the printed tokens stay valid for a working day
FREE_TIER_LIMIT = "3/minute"
PREMIUM_MODEL = "echo-4o"


@dataclass(frozen=True)
class DemoCommand:
    title: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: dict[str, Any] | None
    expect_status: int
    expect_code: str | None = None
    note: str = ""
    stream: bool = False

    def curl(self, base_url: str) -> str:
        lines = [f"curl -s{'N' if self.stream else ''} {shlex.quote(base_url + self.path)}"]
        if self.method != ("POST" if self.body is not None else "GET"):
            lines[0] += f" -X {self.method}"
        lines += [f"  -H {shlex.quote(f'{name}: {value}')}" for name, value in self.headers]
        if self.body is not None:
            lines.append("  -H 'Content-Type: application/json'")
            lines.append(f"  -d {shlex.quote(json.dumps(self.body))}")
        return " \\\n".join(lines)

    @property
    def expectation(self) -> str:
        code = f", error code {self.expect_code}" if self.expect_code else ""
        note = f" ({self.note})" if self.note else ""
        return f"expect: HTTP {self.expect_status}{code}{note}"


@dataclass
class Demo:
    base_url: str
    settings: Settings
    issuer: LocalIssuer
    # The address the server binds when it is not the one in base_url (HOST=0.0.0.0).
    listen: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    commands: list[DemoCommand] = field(default_factory=list)

    def banner(self) -> str:
        out = [f"asgi-identity demo gateway on {self.base_url}"]
        if self.listen is not None:
            out.append(
                f"  listening on {self.listen} (every interface); the requests below use loopback"
            )
        out += [
            f"  issuer    {self.settings.issuer} (key set at {self.settings.jwks_url})",
            f"  domains   {', '.join(self.settings.allowed_domains)} only",
            "  tiers     free 3 requests/minute, pro 600/minute, enterprise unlimited",
            f"  models    {self.settings.model} for every tier, "
            f"{self.settings.premium_model} for the pro tier only (RoutePolicy)",
            f"  limits    {self.settings.rate_limit_storage} (in memory)",
            f"  inspect   asgi-identity jwks {self.settings.jwks_url}",
            "",
            "Paste any of these in another terminal:",
        ]
        for number, command in enumerate(self.commands, 1):
            out += ["", f"# {number}. {command.title}", f"#    {command.expectation}"]
            out.append(command.curl(self.base_url))
        out += ["", "Press Ctrl+C to stop.", ""]
        return "\n".join(out)


def build_demo(host: str = "127.0.0.1", port: int = 8000, *, listen: str | None = None) -> Demo:
    base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    issuer = LocalIssuer(
        issuer=base_url, audience="gateway", algorithm="ES256", lifetime=DEMO_LIFETIME
    )
    web_key, web_digest = generate_api_key()
    support_key, support_digest = generate_api_key()
    api_keys = (
        # A web app's key: it names the client, a person must come with it (EnforceIdentity).
        APIKey(id="web-app", sha256=web_digest, tenant="acme"),
        # A trusted backend that asserts its user in X-User-Email instead of forwarding a token.
        APIKey(
            id="support-bot",
            sha256=support_digest,
            tenant="acme",
            header_identity=True,
            allowed_domains=["acme.com"],
        ),
    )
    settings = Settings(
        issuer=base_url,
        jwks_url=f"{base_url}/.well-known/jwks.json",
        audience="gateway",
        allowed_domains=("acme.com",),
        api_keys=api_keys,
        tier_limits={"free": FREE_TIER_LIMIT, "pro": "600/minute", "enterprise": None},
        premium_model=PREMIUM_MODEL,
        premium_tiers=("pro",),
        published_jwks=issuer.jwks,
    )
    demo = Demo(
        base_url,
        settings,
        issuer,
        listen,
        keys={"web-app": web_key, "support-bot": support_key},
    )

    def user(sub: str, email: str, tier: str, name: str) -> str:
        token = issuer.mint(
            sub=sub, email=email, email_verified=True, name=name, tier=tier, org="acme"
        )
        demo.tokens[sub] = token
        return token

    alice = user("alice", "alice@acme.com", "pro", "Alice Martin")
    bob = user("bob", "bob@acme.com", "free", "Bob Chen")
    mallory = user("mallory", "mallory@evil.test", "pro", "Mallory")

    def chat(text: str, *, stream: bool = False, model: str = settings.model) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
        }
        if stream:
            body["stream"] = True
        return body

    demo.commands = [
        DemoCommand(
            "alice@acme.com (tier pro) asks for a completion",
            "POST",
            "/v1/chat/completions",
            (("Authorization", f"Bearer {alice}"),),
            chat("hello identity aware gateway"),
            200,
            note="a chat.completion with usage; RateLimit headers show the pro tier",
        ),
        DemoCommand(
            "the same, streamed as server-sent events, in a conversation",
            "POST",
            "/v1/chat/completions",
            (("Authorization", f"Bearer {alice}"), ("X-Conversation-Id", "conv-42")),
            chat("stream these words back", stream=True),
            200,
            note="chunks, then a last chunk carrying usage, then [DONE]",
            stream=True,
        ),
        DemoCommand(
            "alice sees who the gateway thinks she is, and her usage",
            "GET",
            "/v1/me",
            (("Authorization", f"Bearer {alice}"),),
            None,
            200,
            note="user_id alice, group pro, tokens used so far",
        ),
        DemoCommand(
            "bob@acme.com is on the free tier: 3 requests a minute",
            "POST",
            "/v1/chat/completions",
            (("Authorization", f"Bearer {bob}"),),
            chat("am I rate limited"),
            200,
            note="run it 4 times within a minute: the 4th answers 429 rate_limited",
        ),
        DemoCommand(
            f"bob (tier free) asks for {PREMIUM_MODEL}, the model the route policy keeps for pro",
            "POST",
            "/v1/chat/completions",
            (("Authorization", f"Bearer {bob}"),),
            chat("may I use the premium model", model=PREMIUM_MODEL),
            403,
            "policy_denied",
            note="refused before the rate limit, so it costs bob no quota; with alice's token: 200",
        ),
        DemoCommand(
            "mallory@evil.test holds a valid token, from a domain that is not allowed",
            "POST",
            "/v1/chat/completions",
            (("Authorization", f"Bearer {mallory}"),),
            chat("let me in"),
            403,
            "domain_not_allowed",
        ),
        DemoCommand(
            "the web app's API key alone, with no person behind it",
            "POST",
            "/v1/chat/completions",
            (("X-API-Key", web_key),),
            chat("who am I"),
            403,
            "identity_required",
        ),
        DemoCommand(
            "the web app's API key with alice's token: the key names the app, the token the person",
            "POST",
            "/v1/chat/completions",
            (("X-API-Key", web_key), ("Authorization", f"Bearer {alice}")),
            chat("app and person together"),
            200,
        ),
        DemoCommand(
            "a trusted support bot asserts its user by email (header identity on for its key)",
            "GET",
            "/v1/me",
            (("X-API-Key", support_key), ("X-User-Email", "carol@acme.com")),
            None,
            200,
            note="source header, email carol@acme.com, client support-bot",
        ),
        DemoCommand(
            "no credential at all",
            "GET",
            "/v1/models",
            (),
            None,
            401,
            "missing_credentials",
        ),
    ]
    return demo
