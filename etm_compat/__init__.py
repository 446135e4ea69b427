"""etm-compat: migrate ExecuTorch LLM deployments from loose files to single ``.etm`` archives.

The verbs and the types they return; everything else is importable but not advertised. Names
resolve on first use (PEP 562), so ``import etm_compat.shim`` stays light: importing the package
itself loads only the error hierarchy.

>>> import etm_compat
>>> from etm_compat.adapters import default_adapters
>>> etm_compat.inspect("fixtures/programs/constants_all.pte", []).info.constant_methods["get_max_seq_len"]
128
>>> with etm_compat.load("fixtures/legacy/et_example") as bundle:  # doctest: +SKIP
...     bundle.render([{"role": "user", "content": "Hi"}], enable_thinking=False)
...     bundle.render_tokens([{"role": "user", "content": "Hi"}]).ids   # what the runner feeds
>>> [family.id for family in etm_compat.list_families()][:3]
['deepseek_v3', 'gemma', 'gemma2']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etm_compat.constants import VERSION
from etm_compat.errors import EtmError
from etm_compat.lazy import lazy_exports

__version__ = VERSION

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the verbs
    "pack": "etm_compat.packing",
    "unpack": "etm_compat.packing",
    "verify": "etm_compat.verification",
    "diagnose": "etm_compat.diagnosis",
    "upgrade": "etm_compat.bulk.upgrade",
    "inspect": "etm_compat.inspection",
    "render": "etm_compat.compat.loader",
    "load": "etm_compat.compat.loader",
    "list_families": "etm_compat.prompt.families.catalog",
    "show_family": "etm_compat.prompt.families.catalog",
    "describe": "etm_compat.view",
    # what they return
    "PackResult": "etm_compat.packing",
    "VerifyResult": "etm_compat.verification",
    "DiagnoseReport": "etm_compat.diagnosis",
    "UpgradeResult": "etm_compat.bulk.upgrade",
    "Inspection": "etm_compat.inspection",
    "Bundle": "etm_compat.compat.loader",
    "PromptTokens": "etm_compat.prompt.render",
    "FamilyEntry": "etm_compat.prompt.families.catalog",
    "FamilyDetail": "etm_compat.prompt.families.catalog",
    "DeploymentView": "etm_compat.view",
    "Finding": "etm_compat.findings",
    # the readers (one module per format) and the archive
    "read_pte": "etm_compat.formats.pte",
    "PteInfo": "etm_compat.formats.pte",
    "read_ptd": "etm_compat.formats.ptd",
    "PtdInfo": "etm_compat.formats.ptd",
    "read_tokenizer": "etm_compat.formats.tokenizer.detect",
    "TokenizerInfo": "etm_compat.formats.tokenizer.model",
    "open_archive": "etm_compat.archive.read",
    "EtmArchive": "etm_compat.archive.read",
    # legacy deployments
    "Deployment": "etm_compat.legacy.deployment",
    "resolve_source": "etm_compat.legacy.resolve",
}

if TYPE_CHECKING:
    from etm_compat.archive.read import EtmArchive, open_archive
    from etm_compat.bulk.upgrade import UpgradeResult, upgrade
    from etm_compat.compat.loader import Bundle, load, render
    from etm_compat.diagnosis import DiagnoseReport, diagnose
    from etm_compat.findings import Finding
    from etm_compat.formats.ptd import PtdInfo, read_ptd
    from etm_compat.formats.pte import PteInfo, read_pte
    from etm_compat.formats.tokenizer.detect import read_tokenizer
    from etm_compat.formats.tokenizer.model import TokenizerInfo
    from etm_compat.inspection import Inspection, inspect
    from etm_compat.legacy.deployment import Deployment
    from etm_compat.legacy.resolve import resolve_source
    from etm_compat.packing import PackResult, pack, unpack
    from etm_compat.prompt.families.catalog import (
        FamilyDetail,
        FamilyEntry,
        list_families,
        show_family,
    )
    from etm_compat.prompt.render import PromptTokens
    from etm_compat.verification import VerifyResult, verify
    from etm_compat.view import DeploymentView, describe


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Bundle",
    "Deployment",
    "DeploymentView",
    "DiagnoseReport",
    "EtmArchive",
    "EtmError",
    "FamilyDetail",
    "FamilyEntry",
    "Finding",
    "Inspection",
    "PackResult",
    "PromptTokens",
    "PtdInfo",
    "PteInfo",
    "TokenizerInfo",
    "UpgradeResult",
    "VerifyResult",
    "__version__",
    "describe",
    "diagnose",
    "inspect",
    "list_families",
    "load",
    "open_archive",
    "pack",
    "read_ptd",
    "read_pte",
    "read_tokenizer",
    "render",
    "resolve_source",
    "show_family",
    "unpack",
    "upgrade",
    "verify",
]
