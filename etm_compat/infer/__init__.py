"""Inference: evidence from a deployment's files -> family, template, bos/eos, stop set, lengths."""

from __future__ import annotations

from etm_compat.infer.inference import Inference, infer

__all__ = ["Inference", "infer"]
