"""etm-compat: migrate ExecuTorch LLM deployments from loose files to single ``.etm`` archives.

The public verbs and types are re-exported here; everything else is importable but not advertised.
Verbs that share their module's name live in that module: ``etm_compat.packing.pack``,
``etm_compat.verification.verify``, ``etm_compat.legacy.scan.scan``, ``etm_compat.infer.inference.infer`` (a package
attribute named like a submodule would be replaced by the submodule once it is imported).
Names are resolved lazily (PEP 562) so that ``import etm_compat.shim`` stays light: importing the
package itself loads nothing but the error hierarchy.

>>> import etm_compat
>>> info = etm_compat.read_pte("fixtures/programs/constants_all.pte")  # doctest: +SKIP
>>> with etm_compat.open_archive("model.etm") as archive:  # doctest: +SKIP
...     archive.metadata["generation"]["stop_token_ids"]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from etm_compat.errors import EtmError

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # readers (one module per format)
    "read_pte": "etm_compat.formats.pte",
    "PteInfo": "etm_compat.formats.pte",
    "read_ptd": "etm_compat.formats.ptd",
    "PtdInfo": "etm_compat.formats.ptd",
    "read_tokenizer": "etm_compat.formats.tokenizer.detect",
    "TokenizerInfo": "etm_compat.formats.tokenizer.detect",
    # the archive
    "open_archive": "etm_compat.archive",
    "write_archive": "etm_compat.archive",
    "verify_archive": "etm_compat.archive.read",
    "EtmArchive": "etm_compat.archive",
    # legacy deployments -> archives
    "Deployment": "etm_compat.legacy.deployment",
    "inspect_path": "etm_compat.inspection",
    "Inference": "etm_compat.infer.inference",
    "resolve_source": "etm_compat.packing",
    "describe": "etm_compat.packing",
    # prompts
    "render_chat": "etm_compat.prompt.chat",
    "get_family": "etm_compat.prompt.families",
    # findings
    "Finding": "etm_compat.findings",
    # the loader and the compatibility shim
    "load": "etm_compat.compat.loader",
    "Bundle": "etm_compat.compat.loader",
}

if TYPE_CHECKING:
    from etm_compat.archive import EtmArchive, open_archive, write_archive
    from etm_compat.archive.read import verify_archive
    from etm_compat.prompt.chat import render_chat
    from etm_compat.legacy.deployment import Deployment
    from etm_compat.prompt.families import get_family
    from etm_compat.findings import Finding
    from etm_compat.infer.inference import Inference
    from etm_compat.inspection import inspect_path
    from etm_compat.compat.loader import Bundle, load
    from etm_compat.packing import describe, resolve_source
    from etm_compat.formats.ptd import PtdInfo, read_ptd
    from etm_compat.formats.pte import PteInfo, read_pte
    from etm_compat.formats.tokenizer.detect import TokenizerInfo, read_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'etm_compat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Bundle",
    "Deployment",
    "EtmArchive",
    "EtmError",
    "Finding",
    "Inference",
    "PtdInfo",
    "PteInfo",
    "TokenizerInfo",
    "__version__",
    "describe",
    "get_family",
    "inspect_path",
    "load",
    "open_archive",
    "read_ptd",
    "read_pte",
    "read_tokenizer",
    "render_chat",
    "resolve_source",
    "verify_archive",
    "write_archive",
]
