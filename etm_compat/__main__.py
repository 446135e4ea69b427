"""``python -m etm_compat`` runs the command line."""

from __future__ import annotations

from etm_compat.cli.main import run

if __name__ == "__main__":
    run()
