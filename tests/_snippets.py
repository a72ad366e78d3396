"""The code blocks of the README and the docs, so tests can run them as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S
)


def code_blocks(page: str, lang: str = "python", *, section: str | None = None) -> list[str]:
    """The ```lang blocks of `page` (a path from the repository root), dedented (the tabs of the
    docs indent theirs); only those under the `## section` heading when given."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else len(text)]
    return [
        textwrap.dedent(match["body"]) for match in _FENCE.finditer(text) if match["lang"] == lang
    ]
