"""The Litestar gateway with the same self-contained demo set-up as `make demo`."""

from __future__ import annotations

import sys

from ..fastapi.__main__ import main
from .app import create_app

if __name__ == "__main__":
    sys.exit(main(create_app))
