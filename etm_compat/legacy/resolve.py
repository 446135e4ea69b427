"""The one deployment a path names: a folder with one program, or a ``.pte`` and its siblings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from etm_compat.errors import InputError, UnreadableError, UsageError
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.legacy.files import TOKENIZER_CONFIG_ROLES, named_tokenizer
from etm_compat.legacy.scan import deployments_in_folder


def resolve_source(
    source: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    ptds: Sequence[str | os.PathLike[str]] = (),
) -> Deployment:
    """The one deployment ``source`` names: a folder with one program, or a ``.pte`` file.

    Explicit ``tokenizer``/``ptds`` replace what the adapters found beside the program. The
    tokenizer may be a file, an HF tokenizer folder (tokenizer.json with tokenizer_config.json
    and special_tokens_map.json, which then come along), or a Hugging Face hub-cache folder
    (``models--org--name``, or one of its snapshots).

    >>> from etm_compat.adapters import default_adapters
    >>> resolve_source("fixtures/legacy/et_example", default_adapters()).layout
    'executorch_example'
    """
    path = Path(source)
    if not path.exists():
        raise UnreadableError("no such file or folder", path=path)
    folder = path if path.is_dir() else path.parent
    found, skipped = deployments_in_folder(folder, adapters)
    if tokenizer is not None:
        # A named tokenizer makes programs the adapters skipped for want of one usable.
        found += [d for d in _read_all(folder, adapters) if d.tokenizer is None and d.program not in {f.program for f in found}]
    unpackable = [s for s in skipped if s.path.suffix == ".pte"]
    if not found and unpackable and tokenizer is None:
        raise InputError(unpackable[0].reason, path=unpackable[0].path, hint="pass {tokenizer}")
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
        named, configs = named_tokenizer(Path(tokenizer))
        merged = dict(chosen.configs)
        if Path(tokenizer).is_dir():  # a tokenizer folder brings its own tokenizer configs
            merged = {r: p for r, p in merged.items() if r not in TOKENIZER_CONFIG_ROLES} | configs
        note = f"tokenizer named by the caller: {tokenizer}"
        chosen = replace(chosen, tokenizer=named, configs=merged, notes=(*chosen.notes, note), problem=None)
    if ptds:
        chosen = replace(chosen, weights=tuple(Path(p) for p in ptds))
    if chosen.tokenizer is None:
        raise InputError("no tokenizer file found beside the program", path=chosen.program, hint="pass {tokenizer}")
    return chosen


def _read_all(folder: Path, adapters: Sequence[Adapter]) -> list[Deployment]:
    """Every program the first adapter that recognises ``folder`` finds, tokenizer or not."""
    for adapter in adapters:
        if adapter.detect(folder):
            return list(adapter.read(folder))
    return []


__all__ = ["resolve_source"]
