"""`ensure_stream_usage`: an OpenAI-style streaming request is asked for its usage.

OpenAI's chat and legacy completions only end a stream with a usage chunk when the request says
`"stream_options": {"include_usage": true}`. Without it, a stream is charged its whole
reservation; with it, what it used. The client asked for a stream and will see that last chunk
(`"choices": []` with `usage`), as it would had it asked itself.
"""

from __future__ import annotations

import json
from typing import Final

from asgi_identity._http.body import BodyFields, parse_json
from asgi_identity._http.view import RequestView

#: The APIs that take `stream_options.include_usage` (Anthropic's and the Responses API refuse
#: an unknown field, and always report their usage).
OPENAI_STREAM_PATHS: Final = ("/chat/completions", "/completions")
_ASK: Final = b'"stream_options":{"include_usage":true},'


async def ask_for_usage(view: RequestView) -> None:
    """Rewrite the body the app gets so that its stream ends with its usage, when it is an
    OpenAI-style stream that does not ask already (a client that says `false` is left alone)."""
    fields = view.body_fields
    if (
        not isinstance(fields, BodyFields)
        or not fields.stream
        or fields.include_usage
        or not view.path.endswith(OPENAI_STREAM_PATHS)
    ):
        return
    body = await view.body()
    if body is None:
        return
    asked = with_usage_requested(body)
    if asked is not None:
        view.replace_body(asked)
        fields.include_usage = True


def with_usage_requested(body: bytes) -> bytes | None:
    """`body` asking for its usage, or None when it must stay as it is."""
    document = parse_json(body)  # it parsed once already: the same rules, the same object
    if "stream_options" not in document:
        # Every other byte kept: the field goes first, right after the opening brace.
        start = body.index(b"{") + 1
        return body[:start] + _ASK + body[start:]
    options = document["stream_options"]
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is not None:
        return None  # the client's own answer, or a value the upstream will refuse anyway
    document["stream_options"] = {**options, "include_usage": True}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
