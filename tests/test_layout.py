"""The package's layout holds: every module imports alone, telemetry and audit stay apart, and
no module grows past a screenful or two (DESIGN.md, "The layout")."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "asgi_identity"
MAX_LINES = 300


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# `python -m asgi_identity` runs the CLI: importing it is running it.
MODULES = [module_name(path) for path in source_files() if path.name != "__main__.py"]

# Each module is imported first into an interpreter holding no asgi_identity module: the
# package's modules are dropped from sys.modules before each import, so an import cycle or an
# error shows as it would in a fresh `python -c "import X"`, while third-party imports are paid
# once per batch (an interpreter per module takes about three times as long).
_IMPORT_EACH = textwrap.dedent(
    """
    import importlib, sys, traceback

    failed = 0
    for name in sys.argv[1:]:
        for loaded in [m for m in sys.modules if m.partition(".")[0] == "asgi_identity"]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except BaseException:
            failed += 1
            print(f"--- import {name} failed:", traceback.format_exc(), sep="\\n")
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_alone() -> None:
    batches = [MODULES[start::4] for start in range(4)]
    running = [
        subprocess.Popen(
            [sys.executable, "-c", _IMPORT_EACH, *batch],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for batch in batches
    ]
    failures = []
    for process in running:
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(output)
    assert not failures, "\n".join(failures)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, at the top or lazily; a
    `from a import b` counts as importing both a and a.b (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def imports_of(path: Path, target: str) -> list[str]:
    names = imported_modules(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    return sorted(name for name in names if name == target or name.startswith(f"{target}."))


@pytest.mark.parametrize(
    ("folder", "forbidden", "except_for"),
    [
        # events.py is the one place a decision reaches both.
        ("telemetry", "asgi_identity.audit", {"events.py"}),
        ("audit", "asgi_identity.telemetry", set()),
    ],
)
def test_telemetry_and_audit_do_not_import_each_other(
    folder: str, forbidden: str, except_for: set[str]
) -> None:
    offenders = {
        path.relative_to(PACKAGE).as_posix(): imports_of(path, forbidden)
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        if path.name not in except_for
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_privacy_settings_belong_to_neither_telemetry_nor_audit() -> None:
    path = PACKAGE / "_privacy.py"
    assert imports_of(path, "asgi_identity.telemetry") == []
    assert imports_of(path, "asgi_identity.audit") == []


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("from asgi_identity import audit", "asgi_identity.telemetry._spans", False),
        ("def late():\n    from .. import audit\n", "asgi_identity.telemetry._spans", False),
        ("from ..audit._file import AuditFile", "asgi_identity.telemetry._spans", False),
        ("from .. import audit", "asgi_identity.telemetry", True),
        ("import asgi_identity.audit._config", "asgi_identity.telemetry.names", False),
    ],
)
def test_the_import_check_sees_lazy_and_relative_imports(
    source: str, module: str, is_package: bool
) -> None:
    found = imported_modules(source, module, is_package=is_package)
    assert any(name.startswith("asgi_identity.audit") for name in found)


def test_no_module_is_longer_than_300_lines() -> None:
    too_long = {}
    for path in source_files():
        name = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long[name] = lines
    assert too_long == {}


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        (
            "asgi_identity.tokens",
            "asgi_identity.credentials.tokens",
            ["JWTIssuer", "TokenVerifier"],
        ),
        ("asgi_identity.claims", "asgi_identity.credentials.claims", ["ClaimMap", "PRESETS"]),
        ("asgi_identity.apikeys", "asgi_identity.credentials.apikeys", ["APIKey", "hash_api_key"]),
        ("asgi_identity.usage", "asgi_identity.quotas.usage", ["TokenUsage", "usage_from_json"]),
        (
            "asgi_identity.fastapi",
            "asgi_identity.integrations.fastapi",
            ["CurrentIdentity", "require_roles", "install_error_handler"],
        ),
    ],
)
def test_the_0_1_import_paths_still_give_the_same_objects(
    old: str, new: str, names: list[str]
) -> None:
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), name
