"""Readers of legacy multi-file deployment layouts (installed as ``etm_compat.adapters``)."""

from __future__ import annotations
