"""Forwarding to a real OpenAI-compatible upstream, with the caller's identity attached."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from asgi_identity import Identity


def identity_headers(identity: Identity) -> dict[str, str]:
    """What the upstream learns about the caller: ids, never a credential.

    Roles are joined with commas; role names never contain one, so the list stays unambiguous.
    """
    values = {
        "x-user-id": identity.user_id,
        "x-user-email": identity.email,
        "x-user-tenant": identity.tenant,
        "x-user-group": identity.group,
        "x-user-roles": ",".join(sorted(identity.roles)) or None,
        "x-client-id": identity.client_id,
        "x-conversation-id": identity.conversation_id,
    }
    return {name: value for name, value in values.items() if value and value.isascii()}


class UpstreamError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


class Upstream:
    """One pooled httpx client per app; open it at start-up, close it at shutdown."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _body(body: Mapping[str, Any], identity: Identity) -> dict[str, Any]:
        forwarded = dict(body)
        # OpenAI's `user` field: a stable end-user id for the provider's abuse monitoring.
        if identity.subject:
            forwarded["user"] = identity.subject
        if forwarded.get("stream"):
            # Ask for the usage chunk, so the gateway can settle the user's token quota.
            options = dict(forwarded.get("stream_options") or {})
            options["include_usage"] = True
            forwarded["stream_options"] = options
        return forwarded

    @staticmethod
    def _error_body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return {"error": {"message": "upstream error", "type": "upstream_error"}}

    async def complete(self, body: Mapping[str, Any], identity: Identity) -> Any:
        response = await self._client.post(
            "chat/completions", json=self._body(body, identity), headers=identity_headers(identity)
        )
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, self._error_body(response))
        return response.json()

    async def stream(self, body: Mapping[str, Any], identity: Identity) -> AsyncIterator[bytes]:
        """The upstream's event stream, chunk by chunk; UpstreamError before the first byte."""
        request = self._client.build_request(
            "POST",
            "chat/completions",
            json=self._body(body, identity),
            headers=identity_headers(identity),
        )
        response = await self._client.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise UpstreamError(response.status_code, self._error_body(response))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return chunks()

    async def models(self) -> Any:
        response = await self._client.get("models")
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, self._error_body(response))
        return response.json()
