"""The one deployment a path names: a folder with one program, or a ``.pte`` and its siblings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from etm_compat.errors import InputError, UnreadableError, UsageError
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.legacy.scan import deployments_in_folder


def resolve_source(
    source: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    ptds: Sequence[str | os.PathLike[str]] = (),
) -> Deployment:
    """The one deployment ``source`` names: a folder with one program, or a ``.pte`` file.

    Explicit ``tokenizer``/``ptds`` replace what the adapters found beside the program.

    >>> from etm_compat.adapters import default_adapters
    >>> resolve_source("fixtures/legacy/et_example", default_adapters()).layout
    'executorch_example'
    """
    path = Path(source)
    if not path.exists():
        raise UnreadableError("no such file or folder", path=path)
    folder = path if path.is_dir() else path.parent
    found, skipped = deployments_in_folder(folder, adapters)
    if not found and skipped and tokenizer is None:
        raise InputError(skipped[0].reason, path=skipped[0].path, hint="pass {tokenizer}")
    if path.is_dir():
        if len(found) > 1:
            names = ", ".join(d.program.name for d in found)
            raise UsageError(
                f"folder holds several programs ({names})",
                path=path,
                hint="name one .pte as SOURCE, or use `etm-compat upgrade` for all of them",
            )
        if not found:
            raise InputError("no ExecuTorch program (.pte with the ET12 identifier) in this folder", path=path)
        chosen = found[0]
    else:
        matches = [d for d in found if d.program.resolve() == path.resolve()]
        chosen = matches[0] if matches else Deployment(root=folder, program=path, layout="file")
    if tokenizer is not None:
        chosen = replace(chosen, tokenizer=Path(tokenizer))
    if ptds:
        chosen = replace(chosen, weights=tuple(Path(p) for p in ptds))
    if chosen.tokenizer is None:
        raise InputError("no tokenizer file found beside the program", path=chosen.program, hint="pass {tokenizer}")
    return chosen


__all__ = ["resolve_source"]
