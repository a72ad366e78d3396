"""A tiny deterministic chat model and the OpenAI chat-completions shapes it answers in.

`echo-1` answers the last user message with its words in reverse order; it counts one token per
word. It needs no network, so the demo and the tests run anywhere. The gateway also serves it
under a premium name (`echo-4o`) that its route policy keeps for the pro tier.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class BadRequest(ValueError):
    """A request the model cannot answer; the handler turns it into a 400 in the OpenAI shape."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "code": "invalid_request",
                "param": self.param,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]
    stream: bool = False
    max_tokens: int | None = None
    raw: Mapping[str, Any] | None = None


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # The content-parts form: [{"type": "text", "text": "..."}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return " ".join(parts)  # type: ignore[arg-type]
    if content is None:
        return ""
    raise BadRequest(f"messages[{index}].content must be a string or text parts", "messages")


def parse_chat_request(body: Any, default_model: str) -> ChatRequest:
    """Validate a chat-completions request body, saying exactly what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    parsed: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{index}].role must be one of {sorted(ROLES)}", "messages")
        parsed.append((role, _text(message.get("content"), index)))
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    return ChatRequest(model, tuple(parsed), stream, max_tokens, body)


def _count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Completion:
    id: str
    model: str
    created: int
    words: tuple[str, ...]
    prompt_tokens: int
    finish_reason: str

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def usage(self) -> dict[str, int]:
        completion = len(self.words)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def complete(request: ChatRequest) -> Completion:
    """The built-in model's answer: the last user message's words, reversed."""
    last_user = next((text for role, text in reversed(request.messages) if role == "user"), "")
    words = tuple(reversed(last_user.split())) or ("(nothing", "to", "echo)")
    finish = "stop"
    if request.max_tokens is not None and len(words) > request.max_tokens:
        words, finish = words[: request.max_tokens], "length"
    return Completion(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        model=request.model,
        created=int(time.time()),
        words=words,
        prompt_tokens=sum(_count(text) for _, text in request.messages),
        finish_reason=finish,
    )


def completion_body(completion: Completion) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage,
    }


def _event(data: Mapping[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def completion_events(completion: Completion) -> Iterator[bytes]:
    """Server-sent events as OpenAI streams them; the last chunk carries `usage`, then [DONE]."""
    base = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _event({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for index, word in enumerate(completion.words):
        yield chunk({"content": word if index == 0 else " " + word})
    yield chunk({}, completion.finish_reason)
    # Usage comes in a chunk of its own with no choices, as with stream_options.include_usage;
    # UserRateLimit settles the user's token quota from it.
    yield _event({**base, "choices": [], "usage": completion.usage})
    yield _event("[DONE]")


def models_body(names: Sequence[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "asgi-identity-example"}
            for name in names
        ],
    }
