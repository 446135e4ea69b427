"""``inspect``: say what a file or folder is, by content, as a typed record.

Nothing here imports torch or executorch: inspecting pays only for the bytes it reads. Every
result has ``to_json()``, the form ``etm-compat inspect --json`` prints. A program also shows its
constant methods in one normalized view (``dialects``); a folder's deployments also show what the
ExecuTorch 1.x runner will actually use (``runner``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from etm_compat.constants import MEMBER_METADATA, PTD_IDENTIFIER, PTE_IDENTIFIER, TOKENIZER_SUFFIXES
from etm_compat.errors import EtmError, InputError, UnreadableError
from etm_compat.fileio import read_ahead
from etm_compat.formats.flatfile import file_identifier

if TYPE_CHECKING:
    from etm_compat.formats.ptd import PtdInfo
    from etm_compat.formats.pte import PteInfo
    from etm_compat.formats.tokenizer.model import TokenizerInfo
    from etm_compat.legacy.deployment import Adapter, Deployment, Skipped
    from etm_compat.view import DeploymentView

#: The largest tokenizer read ahead of its readers' imports (real ones reach ~35 MB; a larger file
#: named like one is read by the reader alone, so that a misnamed big file costs no extra read).
READ_AHEAD_MAX_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class FileInspection:
    """A program, weights or tokenizer file, and what its reader says (for a program, also the
    normalized view of its constant methods: ``dialects``)."""

    path: Path
    info: PteInfo | PtdInfo | TokenizerInfo

    def to_json(self) -> dict[str, Any]:
        out = {"path": str(self.path), **self.info.to_json()}
        if out.get("kind") == "pte":
            # Lazy: only a program has constant methods to normalize (a tokenizer never loads
            # the program readers).
            from etm_compat.formats.dialects import read_dialects
            from etm_compat.formats.pte import PteInfo

            if isinstance(self.info, PteInfo):
                out["dialects"] = read_dialects(self.info.constant_methods).to_json()
        return out


@dataclass(frozen=True)
class ArchiveInspection:
    """An ``.etm`` archive: its metadata and where each member lies."""

    path: Path
    metadata: dict[str, Any]
    members: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "etm", "path": str(self.path), "metadata": self.metadata, "members": list(self.members)}


@dataclass(frozen=True)
class DeploymentInspection:
    """One deployment of a folder: its files, and what describing it gave (or why it failed)."""

    name: str
    deployment: Deployment
    view: DeploymentView | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, **self.deployment.to_json()}
        if self.view is None:
            entry["error"] = self.error
            return entry
        entry["pte"] = self.view.pte.to_json()
        entry["tokenizer_info"] = self.view.tokenizer.to_json()
        entry["weights_info"] = [w.to_json() for w in self.view.weights]
        entry["inference"] = self.view.inference.to_json()
        entry["dialects"] = self.view.dialects.to_json()
        entry["runner"] = self.view.runner.to_json()
        entry["findings"] = [f.to_json() for f in self.view.findings]
        return entry


@dataclass(frozen=True)
class FolderInspection:
    """Every deployment under a folder, and what was skipped and why."""

    path: Path
    deployments: tuple[DeploymentInspection, ...]
    skipped: tuple[Skipped, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "path": str(self.path),
            "deployments": [d.to_json() for d in self.deployments],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


Inspection = FileInspection | ArchiveInspection | FolderInspection


def inspect_archive(path: Path) -> ArchiveInspection:
    """Open an archive (structure and metadata checked, not member hashes) and describe it."""
    # Lazy: only an archive needs the archive reader (a program or a tokenizer never does).
    from etm_compat.archive.read import open_archive

    with open_archive(path) as archive:
        members = tuple(
            {"name": m.name, "offset": m.offset, "size": m.size, "crc32": m.crc32}
            for m in archive.members.values()
        )
        return ArchiveInspection(path, archive.metadata, members)


def inspect_folder(folder: Path, adapters: Sequence[Adapter]) -> FolderInspection:
    """Every deployment under ``folder``: its files, what the readers say, and the inference."""
    # Lazy: scanning and describing deployments (inference, checks, templates) is a folder's
    # work; inspecting one file never loads it.
    from etm_compat.legacy.scan import scan
    from etm_compat.view import describe

    result = scan(folder, adapters)
    deployments = []
    for dep in result.deployments:
        name = os.path.relpath(dep.program, folder)
        try:
            deployments.append(DeploymentInspection(name, dep, describe(dep)))
        except EtmError as exc:
            deployments.append(DeploymentInspection(name, dep, None, str(exc)))
    return FolderInspection(folder, tuple(deployments), result.skipped)


def inspect(path: str | os.PathLike[str], adapters: Sequence[Adapter]) -> Inspection:
    """Describe a ``.pte``, ``.ptd``, tokenizer file, ``.etm`` archive or folder, by content.

    >>> inspect("fixtures/programs/constants_all.pte", []).to_json()["kind"]
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
    # Each reader loads only for what its format's identifier, or the readers before it, tell:
    # inspecting a .pte stays as light as reading its head, and a tokenizer loads neither the
    # program nor the weights reader.
    identifier = file_identifier(p)
    if identifier == PTE_IDENTIFIER:
        # Lazy: only a program needs the program reader.
        from etm_compat.formats.pte import read_pte

        return FileInspection(p, read_pte(p))
    if identifier == PTD_IDENTIFIER:
        # Lazy: only weights need the weights reader.
        from etm_compat.formats.ptd import read_ptd

        return FileInspection(p, read_ptd(p))
    # Lazy: only what is neither a program nor weights may be an archive.
    from etm_compat.archive.names import is_archive

    if is_archive(p):
        return inspect_archive(p)
    with tokenizers_read_ahead([p]):
        return _tokenizer_inspection(p)


def _named_like_a_tokenizer(p: Path) -> bool:
    return p.suffix in TOKENIZER_SUFFIXES or "tokenizer" in p.name.lower()


@contextlib.contextmanager
def tokenizers_read_ahead(places: Iterable[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Inside, the tokenizer files among ``places`` are read in the background
    (:func:`~etm_compat.fileio.read_ahead`), for their reader to take: each file named like a
    tokenizer, and the files so named in each folder given, in name order, while they fit in
    :data:`READ_AHEAD_MAX_BYTES` together. A tokenizer is read whole, and its bytes then arrive
    while its readers load (the imports are a fifth of a 9 MB tokenizer.json's inspect)."""
    files: list[Path] = []
    for place in places:
        if place is None:
            continue
        path = Path(place)
        if path.is_dir():
            with contextlib.suppress(OSError):
                files += sorted(child for child in path.iterdir() if _named_like_a_tokenizer(child))
        elif _named_like_a_tokenizer(path):
            files.append(path)
    left = READ_AHEAD_MAX_BYTES
    with contextlib.ExitStack() as reading:
        for path in files:
            left -= reading.enter_context(read_ahead(path, left))
        yield


def _tokenizer_inspection(p: Path) -> FileInspection:
    """``p`` as a tokenizer, or the error of the reader that best says what it is not."""
    # Lazy: as above, the tokenizer readers load only for what is not a program, weights or archive.
    from etm_compat.formats.tokenizer.detect import read_tokenizer, sniff_tokenizer_format

    try:
        sniff_tokenizer_format(p)
    except InputError as tokenizer_error:
        if _named_like_a_tokenizer(p):
            raise tokenizer_error from None
        if p.suffix == ".pte":
            # Lazy: only to let the format's own reader say precisely what is wrong.
            from etm_compat.formats.pte import read_pte

            read_pte(p)
        elif p.suffix == ".ptd":
            # Lazy: as above.
            from etm_compat.formats.ptd import read_ptd

            read_ptd(p)
        raise InputError(
            "not a .pte, .ptd, .etm archive or tokenizer file (unrecognised content)",
            path=p,
            hint=f"inspect takes a program, weights, tokenizer, {MEMBER_METADATA}-bearing archive or a folder",
        ) from None
    return FileInspection(p, read_tokenizer(p))


__all__ = [
    "ArchiveInspection",
    "DeploymentInspection",
    "FileInspection",
    "FolderInspection",
    "Inspection",
    "inspect",
    "inspect_archive",
    "inspect_folder",
    "tokenizers_read_ahead",
]
