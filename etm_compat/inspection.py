"""``inspect``: say what a file or folder is, by content, in a JSON-ready dict.

Nothing here imports torch or executorch: inspecting pays only for the bytes it reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etm_compat.constants import MEMBER_METADATA
from etm_compat.legacy.deployment import Adapter
from etm_compat.errors import EtmError, InputError, UnreadableError
from etm_compat.fileio import open_regular
from etm_compat.formats.ptd import is_ptd_file, read_ptd
from etm_compat.formats.pte import is_pte_file, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer, sniff_tokenizer_format

ZIP_MAGIC = b"PK\x03\x04"
#: Suffixes for which a sniffing failure is reported as the tokenizer reader's own error.
TOKENIZER_SUFFIXES = (".model", ".json", ".bin", ".tiktoken", ".spm")


def _is_zip(path: Path) -> bool:
    try:
        with open_regular(path) as fh:
            return fh.read(4) == ZIP_MAGIC
    except (OSError, UnreadableError):
        return False


def inspect_archive(path: Path) -> dict[str, Any]:
    from etm_compat.archive import open_archive

    with open_archive(path) as archive:
        members = [
            {"name": m.name, "offset": m.offset, "size": m.size, "crc32": m.crc32}
            for m in archive.members.values()
        ]
        return {"kind": "etm", "path": str(path), "metadata": archive.metadata, "members": members}


def inspect_folder(folder: Path, adapters: Sequence[Adapter]) -> dict[str, Any]:
    """Every deployment under ``folder``: its files, what the readers say, and the inference."""
    from etm_compat.packing import describe
    from etm_compat.legacy.scan import scan

    result = scan(folder, adapters)
    deployments = []
    for dep in result.deployments:
        entry: dict[str, Any] = {"name": os.path.relpath(dep.program, folder), **dep.to_json()}
        try:
            view = describe(dep)
        except EtmError as exc:
            entry["error"] = str(exc)
        else:
            entry["pte"] = view.pte.to_json()
            entry["tokenizer_info"] = view.tokenizer.to_json()
            entry["weights_info"] = [w.to_json() for w in view.weights]
            entry["inference"] = view.inference.to_json()
            entry["findings"] = [f.to_json() for f in view.findings]
        deployments.append(entry)
    return {
        "kind": "folder",
        "path": str(folder),
        "deployments": deployments,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped],
    }


def inspect_path(path: str | os.PathLike[str], adapters: Sequence[Adapter]) -> dict[str, Any]:
    """Describe a ``.pte``, ``.ptd``, tokenizer file, ``.etm`` archive or folder, by content.

    >>> inspect_path("fixtures/programs/constants_all.pte", [])["kind"]  # doctest: +SKIP
    'pte'
    """
    p = Path(path)
    if not p.exists():
        raise UnreadableError("no such file or folder", path=p)
    if p.is_dir():
        return inspect_folder(p, adapters)
    if not p.is_file():  # opening a FIFO blocks until a writer appears: refuse, never hang
        raise UnreadableError("not a regular file (a FIFO, socket or device)", path=p)
    if not os.access(p, os.R_OK):
        raise UnreadableError("permission denied", path=p)
    if is_pte_file(p):
        return {"path": str(p), **read_pte(p).to_json()}
    if is_ptd_file(p):
        return {"path": str(p), **read_ptd(p).to_json()}
    if _is_zip(p):
        return inspect_archive(p)
    try:
        sniff_tokenizer_format(p)
    except InputError as tokenizer_error:
        if p.suffix in TOKENIZER_SUFFIXES or "tokenizer" in p.name.lower():
            raise tokenizer_error from None
        if p.suffix in (".pte", ".ptd", ".etm"):
            # Let the format's own reader say precisely what is wrong.
            if p.suffix == ".pte":
                read_pte(p)
            elif p.suffix == ".ptd":
                read_ptd(p)
            else:
                inspect_archive(p)
        raise InputError(
            "not a .pte, .ptd, .etm archive or tokenizer file (unrecognised content)",
            path=p,
            hint=f"inspect takes a program, weights, tokenizer, {MEMBER_METADATA}-bearing archive or a folder",
        ) from None
    return {"path": str(p), **read_tokenizer(p).to_json()}
