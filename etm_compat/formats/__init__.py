"""Readers of the untrusted files a deployment is made of: ``.pte``, ``.ptd``, configs, tokenizers.

Each reader is bounded, reads only what it needs, imports no runtime, and returns frozen records.
The names below resolve on first use (PEP 562): importing one reader (``etm_compat.formats.pte``)
loads only that reader, not every format's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etm_compat.lazy import lazy_exports

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "PtdInfo": "etm_compat.formats.ptd",
    "read_ptd": "etm_compat.formats.ptd",
    "PteInfo": "etm_compat.formats.pte",
    "read_pte": "etm_compat.formats.pte",
    "TokenizerInfo": "etm_compat.formats.tokenizer.model",
    "read_tokenizer": "etm_compat.formats.tokenizer.detect",
}

if TYPE_CHECKING:
    from etm_compat.formats.ptd import PtdInfo, read_ptd
    from etm_compat.formats.pte import PteInfo, read_pte
    from etm_compat.formats.tokenizer.detect import read_tokenizer
    from etm_compat.formats.tokenizer.model import TokenizerInfo


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["PtdInfo", "PteInfo", "TokenizerInfo", "read_ptd", "read_pte", "read_tokenizer"]
