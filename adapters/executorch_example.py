"""ExecuTorch example folders: one or more programs and a tokenizer file, nothing else needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etm_compat.legacy.deployment import Deployment

from ._common import has_program, read_folder


class ExecutorchExampleAdapter:
    """The plain layout of the ExecuTorch examples: ``model.pte`` (+ ``.ptd``) + tokenizer."""

    name = "executorch_example"

    def detect(self, folder: Path) -> bool:
        return has_program(folder)

    def read(self, folder: Path, root: Path | None = None) -> Sequence[Deployment]:
        return read_folder(folder, self.name, root=root)
