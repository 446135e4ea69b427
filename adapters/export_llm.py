"""export_llm outputs: the program beside the LlmConfig yaml it was exported with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etm_compat.legacy.deployment import ConfigRole, Deployment
from etm_compat.legacy.files import list_files

from ._common import find_export_config, has_program, read_folder


class ExportLlmAdapter:
    """A folder holding ``*.pte`` and an export_llm config yaml (``base.model_class`` ...)."""

    name = "export_llm"

    def detect(self, folder: Path) -> bool:
        return has_program(folder) and find_export_config(list_files(folder)) is not None

    def read(self, folder: Path, root: Path | None = None) -> Sequence[Deployment]:
        config = find_export_config(list_files(folder))
        extra: dict[ConfigRole, Path] | None = {"export_config": config} if config is not None else None
        return read_folder(folder, self.name, root=root, extra_configs=extra)
