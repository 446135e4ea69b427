"""Hugging Face style folders: the program beside tokenizer_config / generation_config / config.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etm_compat.legacy.deployment import Deployment
from etm_compat.legacy.files import find_configs, list_files

from ._common import has_program, read_folder

#: Any of these beside a program makes the folder HF-style.
HF_ROLES = ("tokenizer_config", "generation_config", "config", "chat_template")


class HfStyleAdapter:
    """A folder holding ``*.pte`` and HF configuration files."""

    name = "hf_style"

    def detect(self, folder: Path) -> bool:
        if not has_program(folder):
            return False
        configs, _ = find_configs(list_files(folder))
        return any(role in configs for role in HF_ROLES)

    def read(self, folder: Path, root: Path | None = None) -> Sequence[Deployment]:
        return read_folder(folder, self.name, root=root)
