"""The runner's generation settings from a deployment's metadata: ``max_new_tokens`` and an
ExecuTorch ``GenerationConfig`` (what :class:`etm_compat.Bundle` hands to a runner)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from etm_compat.errors import RuntimeUnavailableError, UsageError

#: The ``GenerationConfig`` fields :func:`generation_config` accepts as overrides.
GENERATION_FIELDS: Final = frozenset(
    {"echo", "max_new_tokens", "warming", "seq_len", "temperature", "num_bos", "num_eos"}
)


def max_new_tokens(metadata: Mapping[str, Any], occupied: int = 0) -> int:
    """How many tokens may still be generated after ``occupied`` positions are used.

    The context budget (``max_context_len``, else ``max_seq_len``) minus ``occupied``, capped
    by the metadata's own ``max_new_tokens`` default when there is one; -1 when unknown.

    >>> max_new_tokens({"generation": {"max_seq_len": 128, "max_new_tokens": 100}}, occupied=40)
    88
    """
    gen = metadata.get("generation") or {}
    context = gen.get("max_context_len") or gen.get("max_seq_len")
    default = gen.get("max_new_tokens")
    if not context:
        return int(default) if default else -1
    budget = max(int(context) - occupied, 0)
    return min(budget, int(default)) if default else budget


def generation_config(metadata: Mapping[str, Any], *, occupied: int = 0, **overrides: Any) -> Any:
    """An ``executorch.extension.llm.runner.GenerationConfig`` filled from ``metadata``;
    ``overrides`` set any of :data:`GENERATION_FIELDS`."""
    unknown = set(overrides) - GENERATION_FIELDS
    if unknown:
        raise UsageError(
            f"unknown GenerationConfig field(s): {', '.join(sorted(unknown))}",
            hint=f"fields are {', '.join(sorted(GENERATION_FIELDS))}",
        )
    try:
        # Lazy: importing executorch loads torch (seconds); only this function needs it.
        from executorch.extension.llm.runner import GenerationConfig
    except (ImportError, RuntimeError) as exc:
        raise RuntimeUnavailableError(
            f"the ExecuTorch LLM runner cannot be imported ({exc})",
            hint="pip install 'etm-compat[runtime]' (torch + executorch)",
        ) from None
    gen = metadata.get("generation") or {}
    config = GenerationConfig()
    config.num_bos = int(gen.get("num_bos") or 0)
    config.num_eos = int(gen.get("num_eos") or 0)
    if gen.get("temperature") is not None:
        config.temperature = float(gen["temperature"])
    if gen.get("max_seq_len"):
        config.seq_len = int(gen["max_seq_len"])
    config.max_new_tokens = max_new_tokens(metadata, occupied)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


__all__ = ["GENERATION_FIELDS", "generation_config", "max_new_tokens"]
