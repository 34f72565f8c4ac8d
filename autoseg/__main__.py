"""Entry point for ``python -m autoseg``."""

from __future__ import annotations

import sys

from autoseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
