"""Inference: evidence from a deployment's files -> family, template, bos/eos, stop set, lengths.

The names below resolve on first use (PEP 562): :mod:`etm_compat.infer.runner` (what the runner
takes, read by ``inspect``) loads without the inference and its template machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etm_compat.lazy import lazy_exports

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Inference": "etm_compat.infer.inference",
    "infer": "etm_compat.infer.inference",
}

if TYPE_CHECKING:
    from etm_compat.infer.inference import Inference, infer


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["Inference", "infer"]
