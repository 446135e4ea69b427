"""Inference: evidence from a deployment's files -> family, template, bos/eos, stop set, lengths.

The names below resolve on first use (PEP 562): :mod:`etm_compat.infer.runner` (what the runner
takes, read by ``inspect``) loads without the inference and its template machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Inference": "etm_compat.infer.inference",
    "infer": "etm_compat.infer.inference",
}

if TYPE_CHECKING:
    from etm_compat.infer.inference import Inference, infer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'etm_compat.infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["Inference", "infer"]
