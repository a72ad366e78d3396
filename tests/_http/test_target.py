"""The canonical path and the exact method: truth tables for _http.target."""

from __future__ import annotations

import pytest

from asgi_identity._http.target import (
    TargetRefused,
    canonical_path,
    check_method,
    check_path,
    raw_path_for,
)


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/", "/"),
        ("/v1/chat", "/v1/chat"),
        ("/v1/chat/", "/v1/chat/"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../etc", "/etc"),
        ("/a//b", "/a/b"),
        ("//a", "/a"),
        ("/a/b//", "/a/b/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a/.../c", "/a/.../c"),
    ],
)
def test_canonical_path_removes_dot_segments_and_merges_slashes(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical


@pytest.mark.parametrize(
    ("path", "raw", "refuse", "normalize"),
    [
        ("/v1/chat", b"/v1/chat", None, None),
        ("/v1/chat", b"/v1/%63hat", None, None),  # unreserved characters decoded by the server
        ("/.well-known/jwks.json", b"/.well-known/jwks.json", None, None),
        ("/static/../admin", b"/static/../admin", "refused", "/admin"),
        ("/static/../admin", b"/static/%2e%2e/admin", "refused", "/admin"),
        ("/v1/./chat", b"/v1/%2E/chat", "refused", "/v1/chat"),
        ("/v1//chat", b"/v1//chat", "refused", "/v1/chat"),
        ("/v1/chat", b"/v1%2fchat", "refused", "refused"),
        ("/v1\\chat", b"/v1%5Cchat", "refused", "refused"),
        ("/v1\\chat", b"/v1\\chat", "refused", "refused"),
        ("/v1\x00", b"/v1%00", "refused", "refused"),
        ("v1/chat", b"v1/chat", "refused", "refused"),
        ("/v1/chat", None, None, None),  # a server that gives no raw_path
    ],
)
def test_check_path_under_each_policy(
    path: str, raw: bytes | None, refuse: str | None, normalize: str | None
) -> None:
    for policy, expected in (("refuse", refuse), ("normalize", normalize)):
        if expected == "refused":
            with pytest.raises(TargetRefused):
                check_path(path, raw, policy)  # type: ignore[arg-type]
        else:
            assert check_path(path, raw, policy) == expected  # type: ignore[arg-type]


def test_a_rewritten_path_is_percent_encoded_for_raw_path() -> None:
    assert raw_path_for("/a b/ü") == b"/a%20b/%C3%BC"
    assert raw_path_for("/v1/chat:stream") == b"/v1/chat:stream"


@pytest.mark.parametrize(
    ("method", "refused"),
    [
        ("GET", False),
        ("POST", False),
        ("PURGE", False),
        ("purge", False),  # not a standard method: compared exactly, as sent
        ("post", True),
        ("Post", True),
        ("gEt", True),
        ("options", True),
        ("patch", True),
    ],
)
def test_a_standard_method_in_another_case_is_refused(method: str, refused: bool) -> None:
    if refused:
        with pytest.raises(TargetRefused, match=method.upper()):
            check_method(method)
    else:
        check_method(method)
