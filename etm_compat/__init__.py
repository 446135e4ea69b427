"""etm-compat: migrate ExecuTorch LLM deployments from loose files to single ``.etm`` archives.

The public verbs and types are re-exported here; everything else is importable but not advertised.
"""

from __future__ import annotations

from etm_compat.errors import EtmError

__version__ = "0.1.0"

__all__ = [
    "EtmError",
    "__version__",
]
