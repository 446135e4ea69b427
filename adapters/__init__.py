"""Readers of legacy multi-file deployment layouts (installed as ``etm_compat.adapters``).

Each module reads one layout behind the :class:`etm_compat.legacy.deployment.Adapter` protocol. The
order of :func:`default_adapters` matters: the most specific layout is tried first.
"""

from __future__ import annotations

from etm_compat.legacy.deployment import Adapter

from .executorch_example import ExecutorchExampleAdapter
from .export_llm import ExportLlmAdapter
from .hf_style import HfStyleAdapter


def default_adapters() -> list[Adapter]:
    """The built-in adapters, most specific first."""
    return [ExportLlmAdapter(), HfStyleAdapter(), ExecutorchExampleAdapter()]


__all__ = [
    "ExecutorchExampleAdapter",
    "ExportLlmAdapter",
    "HfStyleAdapter",
    "default_adapters",
]
