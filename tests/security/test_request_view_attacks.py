"""Red team: the request view (`asgi_identity._http`) attacked through the whole stack.

Anything about raw targets, methods and headers goes over a raw socket to real uvicorn with both
of its HTTP parsers (h11, httptools), since httpx would normalize what is sent. Every refusal must
be a clean 4xx (the package's JSON error, or uvicorn's own 400 before the stack runs), never a
500, a hang or an echoed credential; every request that passes must reach the app with exactly
what the layers judged.

Tests marked `xfail(strict=True)` pin a FINDING: they assert the safe behaviour, fail today, and
turn into an error (XPASS) once the finding is fixed so the mark can be removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from asgi_identity import Rule
from asgi_identity._http.body import DEFAULT_MAX_BODY, BodyError
from asgi_identity._http.target import PathPolicy
from asgi_identity.types import ASGIApp

from ._wire import (
    KEY,
    PARSERS,
    Recorder,
    Wire,
    asgi,
    connection,
    exchange,
    gateway,
    read_response,
    request,
    served,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Recorder, str]]:
    """(base URL, the app's recorder, the parser): the whole stack under real uvicorn."""
    recorder = Recorder()
    with served(gateway(recorder), str(request.param)) as base:
        yield base, recorder, str(request.param)


def refused_cleanly(reply: Wire, status: int = 400, code: str | None = "invalid_request") -> None:
    """A 4xx from the stack (JSON, the documented code) or from uvicorn before the stack ran."""
    assert reply.status == status, reply.raw[:400]
    if reply.from_stack:
        error = json.loads(reply.body)["error"]
        assert set(error) == {"message", "type", "code"}
        if code is not None:
            assert error["code"] == code, reply.body
    else:  # uvicorn's own "Invalid HTTP request received." never reaches the stack
        assert status == 400, reply.raw[:400]
        assert b"Invalid HTTP request" in reply.body, reply.raw[:400]
    assert KEY.encode() not in reply.raw


# -- paths ---------------------------------------------------------------------------------------

# raw target -> what the stack must do: "deny" (403 by rule no-admin), "refuse" (400), or the
# exact path the app must receive (and the layers must have judged).
PATHS: dict[str, str] = {
    "/admin": "deny",
    "/%61dmin": "deny",  # unreserved, decoded by the server: one reading
    "/admin/": "deny",
    "/admin?x=/health": "deny",
    "/admin/.;/": "refuse",  # `;` path parameters: servlet-style upstreams read `.;` as `.`
    "/%2e%2e/admin": "refuse",
    "/x/%2E%2E/admin": "refuse",
    "/x/%2e./admin": "refuse",
    "/x/.%2E/admin": "refuse",
    "/v1/chat/%2e": "refuse",
    "/health/../admin": "refuse",
    "/health/%2e%2e/admin": "refuse",
    "/health;/../admin": "refuse",
    "/health%3F/../admin": "refuse",
    "/public/../admin": "refuse",
    "//admin": "refuse",
    "/v1//chat": "refuse",
    "/x/..%2fadmin": "refuse",
    "/x%2Fadmin": "refuse",
    "/x%5cadmin": "refuse",
    "/x%5Cadmin": "refuse",
    "/admin%00": "refuse",
    "/%00/admin": "refuse",
    "*": "refuse",
    "admin": "refuse",
    # Passed as they are: no router or server here reads them as /admin.
    "/ADMIN": "/ADMIN",
    "/admin.": "/admin.",
    "/admin%20": "/admin ",
    "/admin%09": "/admin\t",
    "/.well-known/openid-configuration": "/.well-known/openid-configuration",
    "/%c0%ae%c0%ae/admin": "/\ufffd\ufffd\ufffd\ufffd/admin",  # overlong UTF-8 is not a dot
    "/%252e%252e/admin": "FINDING",
}


@pytest.mark.parametrize("target", [t for t, v in PATHS.items() if v != "FINDING"])
def test_raw_target_has_one_reading(server: tuple[str, Recorder, str], target: str) -> None:
    base, recorder, _ = server
    expected = PATHS[target]
    before = len(recorder.seen)
    reply = exchange(base, request("GET", target))
    if expected == "deny":
        refused_cleanly(reply, 403, "policy_denied")
    elif expected == "refuse":
        refused_cleanly(reply)
    else:
        assert reply.status == 200, reply.raw[:400]
        seen = recorder.seen[-1]
        assert seen.path == seen.judged == expected
    if expected in ("deny", "refuse"):
        assert len(recorder.seen) == before, "the app ran for a refused target"


def test_absolute_form_target_is_judged_as_its_path(server: tuple[str, Recorder, str]) -> None:
    """`GET http://host/admin`: h11 keeps the whole URL as the path (refused: no leading `/`);
    httptools takes its path (denied by the rule). Never reaches the app as /admin."""
    base, recorder, parser = server
    before = len(recorder.seen)
    reply = exchange(base, request("GET", "http://gateway/admin"))
    if parser == "h11":
        refused_cleanly(reply)
    else:
        refused_cleanly(reply, 403, "policy_denied")
    assert len(recorder.seen) == before


def _proxy_to(upstream: str) -> Starlette:
    """A gateway app that forwards the request target to an upstream, as LLM proxies do."""

    async def forward(request: Request) -> Response:
        target = request.scope["raw_path"].decode("latin-1")
        async with httpx.AsyncClient() as client:
            answer = await client.get(upstream + target)
        return Response(answer.content, answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward)])


def _upstream() -> Starlette:
    """What sits behind the gateway: a servlet-style router (matrix parameters and `..;`
    removed, as Tomcat and Spring do; then routed) and fragment-blind URL building (httpx)."""

    async def route(request: Request) -> JSONResponse:
        path = request.scope["path"]
        segments = [segment.split(";")[0] for segment in path.split("/")]
        routed: list[str] = []
        for segment in segments:
            if segment == "..":
                if routed:
                    routed.pop()
            elif segment:
                routed.append(segment)
        return JSONResponse({"routed": "/" + "/".join(routed)})

    return Starlette(routes=[Route("/{path:path}", route)])


@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("target", ["/admin;x=1", "/x/..;/admin", "/admin;/"])
def test_path_parameters_cannot_reach_a_denied_route_upstream(http: str, target: str) -> None:
    """A servlet upstream (Tomcat, Jetty, Spring) drops `;params` and reads `..;` as `..`: the
    gateway judged `/admin;x=1` (no rule matches) but the upstream serves /admin."""
    with served(_upstream(), "h11") as upstream:
        stack = gateway(_proxy_to(upstream))
        with served(stack, http) as base:
            reply = exchange(base, request("GET", target))
    if reply.status == 200:
        assert json.loads(reply.body)["routed"] != "/admin", f"{target} reached /admin upstream"
    refused_cleanly(reply)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_fragment_in_request_target_cannot_reach_a_denied_route(http: str) -> None:
    """`GET /admin#x`: h11 keeps `#x` in scope["path"], so no rule for /admin matches; any
    forwarder that builds a URL from the path (httpx, requests, urllib) drops the fragment and
    asks the upstream for /admin. httptools strips the fragment and the rule applies."""
    with served(_upstream(), "h11") as upstream, served(gateway(_proxy_to(upstream)), http) as base:
        reply = exchange(base, request("GET", "/admin#x"))
    assert reply.status in (400, 403), reply.raw[:400]


def test_double_encoded_dot_segments_are_refused(server: tuple[str, Recorder, str]) -> None:
    """`/%252e%252e/admin` is judged as `/%2e%2e/admin`; a gateway that forwards
    `scope["path"]` (Starlette's `request.url.path`) re-sends `%2e%2e`, which nginx and many
    upstreams decode and remove as a dot-segment. Same for `%252f` (a separator after two
    decodings), which `path_policy` refuses only in its single-encoded form."""
    base, recorder, _ = server
    before = len(recorder.seen)
    refused_cleanly(exchange(base, request("GET", "/%252e%252e/admin")))
    refused_cleanly(exchange(base, request("GET", "/x/..%252fadmin")))
    assert len(recorder.seen) == before


# -- methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Get", "gET", "head", "post", "Post", "pOST"])
def test_standard_method_in_another_case_is_refused(
    server: tuple[str, Recorder, str], method: str
) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    refused_cleanly(exchange(base, request(method, "/secret")))  # uvicorn or the stack: 400
    assert len(recorder.seen) == before


def test_head_is_judged_as_get(server: tuple[str, Recorder, str]) -> None:
    """A rule on GET covers HEAD: Starlette answers HEAD with the GET handler."""
    base, recorder, _ = server
    before = len(recorder.seen)
    reply = exchange(base, request("HEAD", "/secret"), head=True)
    assert reply.status == 403
    assert len(recorder.seen) == before


@pytest.mark.parametrize(
    "data",
    [
        b"GET /secret HTTP/1.0\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
        b"GET  /secret HTTP/1.1\r\nHost: g\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
        b"GET\t/secret HTTP/1.1\r\nHost: g\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
        b"GET /secret\tHTTP/1.1\r\nHost: g\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
        b"GET /secret HTTP/1.1 \r\nHost: g\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n",
        b"GET /secret\r\n\r\n",  # HTTP/0.9
        b"GET /sec\rret HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /secret HTTP/1.1\nHost: g\nX-API-Key: " + KEY.encode() + b"\n\n",  # bare LF
    ],
    ids=["http10", "two-spaces", "tab-after-method", "tab-in-line", "trailing-space",
         "http09", "cr-in-target", "bare-lf"],
)  # fmt: skip
def test_odd_request_lines_never_reach_a_denied_route(
    server: tuple[str, Recorder, str], data: bytes
) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    reply = exchange(base, data)
    assert reply.status in (400, 401, 403), reply.raw[:300]
    if reply.from_stack:
        assert json.loads(reply.body)["error"]["code"] in (
            "policy_denied",
            "invalid_request",
            "missing_credentials",
        )
    assert len(recorder.seen) == before


def test_non_standard_method_is_compared_exactly(server: tuple[str, Recorder, str]) -> None:
    base, recorder, _ = server
    reply = exchange(base, request("PURGE", "/admin"))
    refused_cleanly(reply, 403, "policy_denied")  # the path rule has no method condition
    reply = exchange(base, request("PURGE", "/secret"))
    assert reply.status == 200
    assert recorder.seen[-1].method == "PURGE"


# -- WebSocket -----------------------------------------------------------------------------------

UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


def _upgrade(target: str) -> bytes:
    data = request("GET", target, UPGRADE)
    return data.replace(b"Connection: close\r\n", b"")


def test_websocket_upgrade_to_a_denied_path_is_refused(server: tuple[str, Recorder, str]) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    reply = exchange(base, _upgrade("/admin/ws"))
    refused_cleanly(reply, 403, "policy_denied")
    reply = exchange(base, _upgrade("/x/../admin/ws"))
    refused_cleanly(reply)
    reply = exchange(base, _upgrade("/x/%2e%2e/admin/ws"))
    refused_cleanly(reply)
    assert len(recorder.seen) == before
    reply = exchange(base, _upgrade("/v1/ws"))
    assert reply.status == 101
    assert recorder.seen[-1].kind == "websocket"


def test_websocket_upgrade_without_credentials_is_refused(
    server: tuple[str, Recorder, str],
) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    data = request("GET", "/v1/ws", UPGRADE, authenticated=False)
    reply = exchange(base, data.replace(b"Connection: close\r\n", b""))
    refused_cleanly(reply, 401, "missing_credentials")
    assert reply.header(b"www-authenticate") is not None
    assert len(recorder.seen) == before


def test_get_rule_does_not_cover_the_websocket_handshake(
    server: tuple[str, Recorder, str],
) -> None:
    """Documented (route-policy.md: `WEBSOCKET` matches WebSocket connections), noted here: a
    deny rule with `methods=["GET"]` does not cover a WebSocket handshake, which is a GET on the
    wire. Rules meant for every kind of request on a path must leave `methods` empty."""
    base, recorder, _ = server
    reply = exchange(base, _upgrade("/secret"))
    assert reply.status == 101
    assert recorder.seen[-1].kind == "websocket"
    assert recorder.seen[-1].path == "/secret"


async def test_realtime_websocket_cannot_reach_a_denied_model() -> None:
    """OpenAI's Realtime API is a WebSocket whose model is in the query string
    (`/v1/realtime?model=gpt-4o-realtime-preview`). Model rules are never evaluated for
    WebSocket connections, so a deny rule for `gpt-4o*` lets it through. DESIGN.md: a model a
    layer needs but cannot read is refused, never treated as "no model"."""
    recorder = Recorder()
    reply = await asgi(
        gateway(recorder),
        kind="websocket",
        path="/v1/realtime",
        query=b"model=gpt-4o-realtime-preview",
    )
    assert reply.status == 403, reply.messages
    assert not recorder.seen


# -- headers -------------------------------------------------------------------------------------


def test_obs_fold_credential(server: tuple[str, Recorder, str]) -> None:
    """A folded X-API-Key: h11 unfolds it (the key is read whole), httptools refuses it."""
    base, recorder, parser = server
    data = (
        b"GET /v1/models HTTP/1.1\r\nHost: g\r\nConnection: close\r\nX-API-Key:\r\n "
        + KEY.encode()
        + b"\r\n\r\n"
    )
    reply = exchange(base, data)
    if parser == "h11":
        assert reply.status == 200
        identity = recorder.seen[-1].identity
        assert identity is not None
        assert identity.client_id == "redteam"
    else:
        refused_cleanly(reply)
    # A fold that appends to a valid key makes it another (invalid) key, never the valid one.
    folded = request("GET", "/v1/models").replace(KEY.encode(), KEY.encode() + b"\r\n extra")
    reply = exchange(base, folded)
    if parser == "h11":
        refused_cleanly(reply, 401, "invalid_api_key")
    else:
        refused_cleanly(reply)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([("Content-Length", "18"), ("Content-Length", "5")], b'{"model":"gpt-4o"}'),
        ([("Content-Length", "18, 18")], b'{"model":"gpt-4o"}'),
        ([("Content-Length", "+18")], b'{"model":"gpt-4o"}'),
        ([("Content-Length", "1_8")], b'{"model":"gpt-4o"}'),
        ([("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
         b'12\r\n{"model":"gpt-4o"}\r\n0\r\n\r\n'),
        ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")],
         b'12\r\n{"model":"gpt-4o"}\r\n0\r\n\r\n'),
        ([("Transfer-Encoding", "xchunked")], b'12\r\n{"model":"gpt-4o"}\r\n0\r\n\r\n'),
        ([("Transfer-Encoding", " chunked")], b'12\r\n{"model":"gpt-4o"}\r\n0\r\n\r\n'),
    ],
    ids=["two-lengths", "length-list", "plus-length", "underscore-length", "te-and-cl",
         "two-te", "xchunked", "te-leading-space"],
)  # fmt: skip
def test_framing_tricks_never_pass_a_denied_model(
    server: tuple[str, Recorder, str], headers: list[tuple[str, str]], body: bytes
) -> None:
    """Whatever framing the server accepts, the stack judges the body the app would read."""
    base, recorder, _ = server
    before = len(recorder.seen)
    reply = exchange(
        base, request("POST", "/v1/chat/completions", headers, body, content_length=False)
    )
    assert reply.status in (400, 403), reply.raw[:300]
    if reply.from_stack:
        assert reply.code in ("policy_denied", "invalid_request")
    assert len(recorder.seen) == before


def test_underscore_twins_of_identity_headers_never_reach_the_app(
    server: tuple[str, Recorder, str],
) -> None:
    base, recorder, _ = server
    twins = [
        ("X_API_Key", "sk-attacker"),
        ("X_User_Email", "victim@acme.com"),
        ("x_user_roles", "admin"),
        ("X-User_Id", "victim"),
        ("X_Conversation_Id", "c-1"),
        ("Authorization_", "Bearer x"),
    ]
    reply = exchange(base, request("GET", "/v1/models", twins))
    assert reply.status == 200, reply.raw[:300]
    seen = recorder.seen[-1]
    names = {name.lower().replace(b"_", b"-") for name, _ in seen.headers}
    assert b"x-user-email" not in names
    assert b"x-user-roles" not in names
    assert not any(b"_" in name and name.lower().startswith(b"x") for name, _ in seen.headers[:-1]
                   if name.lower().replace(b"_", b"-") in (b"x-api-key", b"x-conversation-id"))  # fmt: skip
    assert seen.header(b"x-user-id") == []  # an API key names no person
    assert seen.identity is not None
    assert seen.identity.client_id == "redteam"
    # The twin alone is never read as a credential.
    reply = exchange(base, request("GET", "/v1/models", [("X_API_Key", KEY)], authenticated=False))
    refused_cleanly(reply, 401, "missing_credentials")


def test_huge_and_many_headers(server: tuple[str, Recorder, str]) -> None:
    base, _recorder, _ = server
    reply = exchange(base, request("GET", "/v1/models", [("X-Big", "a" * 100_000)]))
    assert reply.status in (200, 400, 431)  # the server's limit, or through
    big_key = "sk-" + "b" * 100_000
    reply = exchange(
        base, request("GET", "/v1/models", [("X-API-Key", big_key)], authenticated=False)
    )
    assert reply.status in (400, 401, 431)
    assert b"bbbbbbbbbbbbbbbb" not in reply.raw  # never echoed
    many = [(f"X-H{i}", "v") for i in range(5000)]
    reply = exchange(base, request("GET", "/v1/models", many))
    assert reply.status in (200, 400, 431)


# -- bodies over the wire ------------------------------------------------------------------------


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_chunks_split_inside_a_utf8_sequence(server: tuple[str, Recorder, str]) -> None:
    base, recorder, _ = server
    te = [("Transfer-Encoding", "chunked")]
    denied = '{"model":"gpt-4o-é","messages":[]}'.encode()
    cut = denied.index(b"\xc3") + 1  # between the two bytes of é
    data = request(
        "POST",
        "/v1/chat/completions",
        te,
        _chunked(denied[:cut], denied[cut:]),
        content_length=False,
    )
    reply = exchange(base, data)
    refused_cleanly(reply, 403, "policy_denied")
    allowed = '{"model":"mini-é","prompt":"日本語"}'.encode()
    parts = [allowed[i : i + 1] for i in range(len(allowed))]  # one byte per chunk
    reply = exchange(
        base, request("POST", "/v1/chat/completions", te, _chunked(*parts), content_length=False)
    )
    assert reply.status == 200
    assert recorder.seen[-1].body == allowed
    # Chunk extensions and trailers do not change the body.
    body = b"12;ext=1\r\n" + b'{"model":"gpt-4o"}' + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    reply = exchange(base, request("POST", "/v1/chat/completions", te, body, content_length=False))
    assert reply.status in (400, 403)


def test_declared_length_over_max_body_is_refused_without_reading(
    server: tuple[str, Recorder, str],
) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    headers = [("Content-Length", str(DEFAULT_MAX_BODY + 1)), ("Expect", "100-continue")]
    with connection(base) as sock:
        sock.sendall(request("POST", "/v1/chat/completions", headers))
        reply = read_response(sock)  # no body sent at all: the stack must not wait for it
    refused_cleanly(reply, 413, "request_too_large")
    assert not reply.raw.startswith(b"HTTP/1.1 100")
    assert len(recorder.seen) == before


def test_expect_continue_body_is_judged(server: tuple[str, Recorder, str]) -> None:
    base, _recorder, _ = server
    body = b'{"model":"gpt-4o"}'
    headers = [("Content-Length", str(len(body))), ("Expect", "100-continue")]
    with connection(base) as sock:
        sock.sendall(request("POST", "/v1/chat/completions", headers))
        sock.settimeout(5)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        reply = read_response(sock)
    refused_cleanly(reply, 403, "policy_denied")


def test_oversized_body_sent_slowly_is_refused_promptly(
    server: tuple[str, Recorder, str],
) -> None:
    """A chunked body growing past max_body, 64 KiB every 20 ms: a 413 as soon as the limit
    is crossed, not after the client finishes (or never)."""
    base, recorder, _ = server
    before = len(recorder.seen)
    stop = threading.Event()
    head = request("POST", "/v1/chat/completions", [("Transfer-Encoding", "chunked")])
    piece = b'{"model":"mini","p":"' + b"a" * (64 * 1024) + b'"}'
    with connection(base) as sock:
        sock.sendall(head)

        def trickle() -> None:
            try:
                for _ in range(64):  # 4 MiB in all, if nobody answers
                    if stop.is_set():
                        return
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    time.sleep(0.02)
            except OSError:
                return  # the server closed: expected once it answered

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            reply = read_response(sock)
        finally:
            stop.set()
            sender.join(5)
        elapsed = time.monotonic() - started
    refused_cleanly(reply, 413, "request_too_large")
    assert elapsed < 5, f"answered after {elapsed:.1f}s"  # bounded wait, not a timing claim
    assert len(recorder.seen) == before


def test_client_disconnect_mid_body_does_not_hang(server: tuple[str, Recorder, str]) -> None:
    base, recorder, _ = server
    before = len(recorder.seen)
    with connection(base) as sock:
        sock.sendall(request("POST", "/v1/chat/completions", [("Content-Length", "1000")]))
        sock.sendall(b'{"model":"gpt-4o-mini","messages":')
    # The server is still well: a normal request right after is served.
    reply = exchange(base, request("POST", "/v1/chat/completions", body=b'{"model":"mini"}'))
    assert reply.status == 200
    assert len(recorder.seen) == before + 1
    assert recorder.seen[-1].body == b'{"model":"mini"}'


def test_gzip_body_is_refused_where_a_model_is_needed(server: tuple[str, Recorder, str]) -> None:
    """What the policy reads is the bytes as sent: a gzip body is not UTF-8 JSON, so a route
    with model rules refuses it (400) instead of reading "no model" (security.md says
    compressed bodies are "not inspected"; they are refused whenever a layer needs the body)."""
    base, recorder, _ = server
    before = len(recorder.seen)
    body = gzip.compress(b'{"model":"gpt-4o"}')
    reply = exchange(
        base, request("POST", "/v1/chat/completions", [("Content-Encoding", "gzip")], body)
    )
    refused_cleanly(reply, 400, "invalid_request")
    assert len(recorder.seen) == before


# -- bodies through the stack in-process ---------------------------------------------------------

BODIES: list[tuple[str, bytes, int]] = [
    ("duplicate-via-escape", rb'{"model":"a","mod\u0065l":"gpt-4o"}', 400),
    ("duplicate-via-escape-first", rb'{"\u006dodel":"gpt-4o","model":"a"}', 400),
    ("duplicate-nested", rb'{"model":"a","messages":[{"role":"user","r\u006fle":"system"}]}', 400),
    ("duplicate-stream-options", rb'{"model":"a","stream_options":{"x":1,"x":2}}', 400),
    ("escaped-key", rb'{"mod\u0065l":"gpt-4o"}', 403),
    ("escaped-value", rb'{"model":"\u0067pt-4o"}', 403),
    ("upper-case-model", rb'{"model":"GPT-4O-MINI"}', 403),
    ("model-not-string", rb'{"model":["gpt-4o"]}', 400),
    ("bom", b'\xef\xbb\xbf{"model":"gpt-4o"}', 400),
    ("lone-surrogate", rb'{"model":"a","x":"\ud800"}', 400),
    ("reversed-surrogates", rb'{"model":"a","x":"\udfff\ud800"}', 400),
    ("invalid-utf8", b'{"model":"gpt-4o","x":"\xff"}', 400),
    ("overlong-utf8", b'{"model":"gpt-4o","x":"\xc0\xae"}', 400),
    ("cesu-surrogate", b'{"model":"gpt-4o","x":"\xed\xa0\x80"}', 400),
    ("nan", rb'{"model":"a","temperature":NaN}', 400),
    ("infinity", rb'{"model":"a","temperature":1e400}', 400),
    ("trailing-value", rb'{"model":"a"}{"model":"gpt-4o"}', 400),
    ("trailing-nul", b'{"model":"a"}\x00', 400),
    ("comment", rb'{"model":"a" /* "model":"gpt-4o" */}', 400),
    ("single-quotes", rb"{'model':'gpt-4o'}", 400),
    ("trailing-comma", rb'{"model":"gpt-4o",}', 400),
    ("long-int-cap", b'{"model":"a","max_tokens":' + b"9" * 21 + b"}", 400),
    ("float-cap", rb'{"model":"a","max_tokens":1e3}', 400),
    ("bool-n", rb'{"model":"a","n":true}', 400),
    ("zero-n", rb'{"model":"a","n":0}', 400),
    ("negative-cap", rb'{"model":"a","max_tokens":-1}', 400),
    ("depth-64", b'{"model":"a","x":' + b"[" * 63 + b"]" * 63 + b"}", 200),
    ("depth-65", b'{"model":"a","x":' + b"[" * 64 + b"]" * 64 + b"}", 400),
    ("depth-100000", b"[" * 100_000 + b"]" * 100_000, 400),
    ("not-an-object", rb'["gpt-4o"]', 200),
    ("empty", b"", 200),
    ("whitespace-model-key", rb'{"model ":"gpt-4o","model":"mini"}', 200),
    ("form-encoded", b"model=gpt-4o&messages=x", 400),
    (
        "multipart",
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n--b--\r\n',
        400,
    ),
]


@pytest.mark.parametrize(
    ("body", "status"), [(b, s) for _, b, s in BODIES], ids=[i for i, _, _ in BODIES]
)
async def test_body_has_one_reading(body: bytes, status: int) -> None:
    recorder = Recorder()
    reply = await asgi(gateway(recorder), chunks=[body])
    assert reply.status == status, reply.body
    if status == 200:
        assert recorder.seen[-1].body == body
    else:
        assert not recorder.seen
        error = reply.json["error"]
        assert error["code"] == ("policy_denied" if status == 403 else "invalid_request")


async def test_absurd_output_cap_is_a_400() -> None:
    """99999999999999999999 (> 2**64) as a cap and as `n` would reach 10**40 before the ledger
    sees it. DESIGN.md, Limits: an absurd `max_tokens` or `n` is a 400 before anything reaches
    storage."""
    recorder = Recorder()
    body = b'{"model":"a","max_tokens":99999999999999999999,"n":99999999999999999999}'
    reply = await asgi(gateway(recorder), chunks=[body])
    assert (reply.status, reply.code) == (400, "invalid_request"), reply.body


async def test_chunking_never_changes_the_reading() -> None:
    """Every split of a denied body is denied; every split of an allowed one reaches the app
    message for message."""
    rng = random.Random(7)
    denied = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "é" * 50}]})
    allowed = denied.replace("gpt-4o", "mini").encode()
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(allowed)), rng.randint(1, 12)))
        parts = [allowed[a:b] for a, b in zip([0, *cuts], [*cuts, len(allowed)], strict=True)]
        recorder = Recorder()
        reply = await asgi(gateway(recorder), chunks=parts)
        assert reply.status == 200
        assert recorder.seen[-1].body == allowed
        reply = await asgi(
            gateway(Recorder()), chunks=[denied.encode()[: cuts[0]], denied.encode()[cuts[0] :]]
        )
        assert reply.status == 403


async def test_disconnect_mid_body_is_refused_not_judged() -> None:
    recorder = Recorder()
    reply = await asgi(gateway(recorder), chunks=[b'{"model":'], disconnect=True)
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert not recorder.seen


async def test_oversized_body_in_many_small_chunks() -> None:
    recorder = Recorder()
    chunk = b" " * 4096
    chunks = [b'{"model":"mini",', *([chunk] * (DEFAULT_MAX_BODY // 4096 + 2)), b'"x":1}']
    reply = await asgi(gateway(recorder), chunks=chunks)
    assert (reply.status, reply.code) == (413, "request_too_large")
    assert not recorder.seen


async def test_large_strings_pass_byte_for_byte() -> None:
    recorder = Recorder()
    body = json.dumps({"model": "mini", "prompt": "ü" * 400_000}, ensure_ascii=False).encode()
    parts = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    reply = await asgi(gateway(recorder), chunks=parts)
    assert reply.status == 200
    assert recorder.seen[-1].body == body


# -- parse cost ----------------------------------------------------------------------------------


def _best_of(runs: int, work: Any, data: bytes) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        with contextlib.suppress(BodyError):
            work(data)
        best = min(best, time.perf_counter() - started)
    return best


# -- root_path and Mount -------------------------------------------------------------------------


async def _admin(request: Request) -> JSONResponse:
    return JSONResponse({"handler": "admin", "path": request.scope["path"]})


def _mounted(policy: PathPolicy) -> tuple[Starlette, list[str]]:
    """The stack inside `Mount("/api", ...)`, rules written with the mount prefix as
    route-policy.md says ("including any mount prefix")."""
    handled: list[str] = []

    async def admin(request: Request) -> JSONResponse:
        handled.append(request.scope["path"])
        return JSONResponse({"handler": "admin"})

    inner = Starlette(routes=[Route("/admin", admin), Route("/other", admin)])
    rules = [Rule(id="no-admin", effect="deny", paths=["/api/admin"])]
    stack = gateway(inner, rules=rules, path_policy=policy)
    return Starlette(routes=[Mount("/api", app=stack)]), handled


@pytest.mark.parametrize("target", ["/api/admin", "/api//admin", "/api/./admin", "/api/x/../admin"])
async def test_mount_prefix_rule_holds_under_refuse(target: str) -> None:
    app, handled = _mounted("refuse")
    reply = await asgi(app, method="GET", path=target)
    assert reply.status in (400, 403)
    assert not handled


@pytest.mark.parametrize("target", ["/api/../admin", "/api/x/../../admin"])
async def test_normalize_cannot_climb_out_of_the_mount(target: str) -> None:
    """With path_policy="normalize" under a Mount (or uvicorn --root-path), `/api/../admin` is
    rewritten to `/admin`: outside root_path, so no `/api/...` rule matches it, while Starlette's
    router (get_route_path: a path not under root_path is routed as is) serves /admin."""
    app, handled = _mounted("normalize")
    reply = await asgi(app, method="GET", path=target)
    assert reply.status in (400, 403), reply.body
    assert not handled


@pytest.mark.parametrize("http", PARSERS)
def test_normalize_cannot_climb_out_of_uvicorn_root_path(http: str) -> None:
    handled: list[str] = []

    async def admin(request: Request) -> JSONResponse:
        handled.append(request.scope["path"])
        return JSONResponse({"handler": "admin"})

    inner = Starlette(routes=[Route("/admin", admin)])
    rules = [Rule(id="no-admin", effect="deny", paths=["/api/admin"])]
    app = gateway(inner, rules=rules, path_policy="normalize")
    with served(app, http, root_path="/api") as base:
        assert exchange(base, request("GET", "/admin")).status == 403  # the rule holds...
        reply = exchange(base, request("GET", "/../admin"))  # ...until the path climbs out
    assert reply.status in (400, 403), reply.raw[:300]
    assert not handled


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_requests_each_see_their_own_body(server: tuple[str, Recorder, str]) -> None:
    base, _recorder, _ = server
    rng = random.Random(11)
    bodies = [
        json.dumps(
            {
                "model": f"mini-{i}",
                "n": 1,
                "pad": "".join(rng.choices("abcé日", k=rng.randint(0, 60_000))),
            }
        ).encode()
        for i in range(100)
    ]

    async def one(client: httpx.AsyncClient, body: bytes, chunked: bool) -> dict[str, Any]:
        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]
                await asyncio.sleep(0)

        content: Any = stream() if chunked else body
        answer = await client.post(
            "/v1/chat/completions", content=content, headers={"x-api-key": KEY}
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def all_of_them() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, b, i % 2 == 0) for i, b in enumerate(bodies)))

    results = asyncio.run(all_of_them())
    for body, result in zip(bodies, results, strict=True):
        assert result["sha256"] == hashlib.sha256(body).hexdigest()
        assert result["length"] == len(body)


# -- the official openai client through a gateway ------------------------------------------------


def _fake_openai() -> Starlette:
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        base = {"id": "chatcmpl-1", "created": 1, "model": body["model"]}
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "hello world"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        async def events() -> AsyncIterator[bytes]:
            for word in ("hello", " world"):
                delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
                chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            yield b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _forwarding_gateway(upstream: str) -> ASGIApp:
    """An LLM gateway app: the stack in front, the request relayed to the upstream as it came."""

    async def relay(request: Request) -> Response:
        body = await request.body()
        streaming = json.loads(body).get("stream") is True

        async def chunks() -> AsyncIterator[bytes]:
            async with httpx.AsyncClient() as client:
                url = upstream + request.scope["raw_path"].decode("latin-1")
                headers = {"content-type": "application/json"}
                async with client.stream("POST", url, content=body, headers=headers) as answer:
                    async for chunk in answer.aiter_raw():
                        yield chunk

        media = "text/event-stream" if streaming else "application/json"
        return StreamingResponse(chunks(), media_type=media)

    app = Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])])
    return gateway(app)


def test_official_openai_client_through_the_stack() -> None:
    import openai  # the official client, a dev dependency: never skipped

    with served(_fake_openai(), "h11") as upstream:
        for parser in PARSERS:
            with served(_forwarding_gateway(upstream), parser) as base:
                client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
                messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi ü"}]
                answer = client.chat.completions.create(model="gpt-4.1-mini", messages=messages)
                assert answer.choices[0].message.content == "hello world"
                assert answer.usage is not None
                assert answer.usage.total_tokens == 7
                stream = client.chat.completions.create(
                    model="gpt-4.1-mini",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                words = [c.choices[0].delta.content or "" for c in stream if c.choices]
                assert "".join(words) == "hello world"
                with pytest.raises(openai.PermissionDeniedError) as denied:
                    client.chat.completions.create(model="gpt-4o", messages=messages)
                assert denied.value.status_code == 403
                body: Any = denied.value.body
                assert body["code"] == "policy_denied"
                assert KEY not in str(body)
                client.close()
