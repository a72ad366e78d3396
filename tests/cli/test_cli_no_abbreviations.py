"""No option of `asgi-identity` is taken by a prefix, and what an unknown option carried is never
printed (issue 13, item 14): `verify --jwks SECRET` must not become `--jwks-url SECRET`."""

from __future__ import annotations

import io

import pytest

from asgi_identity.cli import main

SECRET = "s3cr3t-value-never-shown"


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "a.b.c", "--public-key", "k.pem", "--jwks", SECRET],
        ["verify", "a.b.c", "--public-key", "k.pem", f"--jwks={SECRET}"],
        ["mint", "--key-o", SECRET],
        ["keygen", "--ten", SECRET],
        ["jwks", "https://idp.test", "--js", SECRET],
        ["audit-verify", "audit.log", "--key", SECRET],
        ["--vers", SECRET],
    ],
    ids=["verify", "verify-equals", "mint", "keygen", "jwks", "audit-verify", "top-level"],
)
def test_an_abbreviated_option_is_refused_without_echoing_its_value(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        main(argv, out)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out + out.getvalue()
