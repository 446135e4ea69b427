"""Readers of the untrusted files a deployment is made of: ``.pte``, ``.ptd``, configs, tokenizers.

Each reader is bounded, reads only what it needs, imports no runtime, and returns frozen records.
"""

from __future__ import annotations

from etm_compat.formats.ptd import PtdInfo, read_ptd
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.model import TokenizerInfo

__all__ = ["PtdInfo", "PteInfo", "TokenizerInfo", "read_ptd", "read_pte", "read_tokenizer"]
