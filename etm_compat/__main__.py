"""``python -m etm_compat`` runs the command line."""

from __future__ import annotations

import sys

from etm_compat.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
