"""`python -m examples.mcp` runs as MCP.md gives it: a demo with printed tokens, driven here by
the official client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from _mcp_support import free_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).parents[2]


@pytest.fixture
def demo() -> Iterator[tuple[str, dict[str, str]]]:
    """The example with no configuration, as a user runs it; its base URL and printed tokens."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MCP_TOOL_LIMIT": "50/minute"}
    env.pop("MCP_ISSUER", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.mcp"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        tokens: dict[str, str] = {}
        while len(tokens) < 3:
            line = process.stdout.readline()
            assert line, "the example exited before printing its tokens"
            if " token: " in line:
                label, token = line.strip().split(" token: ")
                tokens[label] = token
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the example did not start listening"
                time.sleep(0.05)
        yield base, tokens
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


async def test_the_demo_prints_tokens_and_serves_the_tools(
    demo: tuple[str, dict[str, str]],
) -> None:
    base, tokens = demo
    async with httpx.AsyncClient(base_url=base) as plain:
        metadata = await plain.get("/.well-known/oauth-protected-resource/mcp")
    assert metadata.json()["resource"] == f"{base}/mcp"
    headers = {"authorization": f"Bearer {tokens['agent']}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("whoami", {})
    assert result.structured_content == {"user": "viewer", "roles": ["viewer"],
                                         "actor": ["agent-1"]}  # fmt: skip
