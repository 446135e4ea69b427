"""Finding every deployment (and every ``.etm`` archive) under a root, through the adapters.

The one tree walk of etm-compat: it never follows directory symlinks (so symlink loops cannot
trap it), skips hidden folders and files, is bounded in depth and folder count, and reports
unreadable folders instead of failing on them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etm_compat.constants import ETM_SUFFIX
from etm_compat.errors import InputError, UnreadableError
from etm_compat.legacy.deployment import Adapter, Deployment, Skipped

MAX_DEPTH = 32
NO_TOKENIZER = "no tokenizer file found beside the program"
MAX_FOLDERS = 200_000


@dataclass(frozen=True)
class ScanResult:
    """The deployments under a root, what was skipped and why, and the archives found."""

    root: Path
    deployments: tuple[Deployment, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    archives: tuple[Path, ...] = field(default=())


def walk_folders(root: Path, skipped: list[Skipped], archives: list[Path] | None = None) -> Iterator[Path]:
    """Folders under root (root included), depth-first, sorted, without following symlinks.

    Folders not descended into are appended to ``skipped`` with the reason; ``*.etm`` files seen
    on the way are appended to ``archives`` (when given), in walk order.
    """
    stack: list[tuple[Path, int]] = [(root, 0)]
    seen = 0
    while stack:
        folder, depth = stack.pop()
        seen += 1
        if seen > MAX_FOLDERS:
            skipped.append(Skipped(folder, f"scan stopped: more than {MAX_FOLDERS} folders"))
            return
        yield folder
        if depth >= MAX_DEPTH:
            skipped.append(Skipped(folder, f"not descended: deeper than {MAX_DEPTH} levels"))
            continue
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            skipped.append(Skipped(folder, f"unreadable folder: {exc.strerror}"))
            continue
        if archives is not None:
            archives.extend(
                Path(e.path) for e in sorted(entries, key=lambda e: e.name)
                if e.name.endswith(ETM_SUFFIX) and not e.is_dir()
            )
        children = sorted((Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)), reverse=True)
        stack.extend((child, depth + 1) for child in children)


def deployments_in_folder(
    folder: Path, adapters: Iterable[Adapter], root: Path | None = None
) -> tuple[list[Deployment], list[Skipped]]:
    """Deployments of one folder: the first adapter that recognises it reads it.

    Programs that cannot be packed as found (no tokenizer, an ambiguous pairing) and files that
    are never packed (checkpoints, notebooks) come back as skipped, each with its reason.
    """
    for adapter in adapters:
        try:
            if not adapter.detect(folder):
                continue
            found = list(adapter.read(folder, root))
        except InputError as exc:
            return [], [Skipped(folder, exc.message)]
        good = [d for d in found if d.tokenizer is not None]
        bad = [Skipped(d.program, d.problem or NO_TOKENIZER) for d in found if d.tokenizer is None]
        ignored = {path: why for d in found for path, why in d.left_out}
        return good, bad + [Skipped(path, why, ignored=True) for path, why in sorted(ignored.items())]
    return [], []


def scan(root: str | os.PathLike[str], adapters: Sequence[Adapter]) -> ScanResult:
    """Every deployment under ``root`` (a folder), one per program, in a stable order.

    >>> from etm_compat.adapters import default_adapters
    >>> result = scan("fixtures/legacy", default_adapters())  # doctest: +SKIP
    """
    base = Path(root)
    if not base.exists():
        raise UnreadableError("no such folder", path=base)
    if not base.is_dir():
        raise InputError("not a folder", path=base, hint="give a folder to scan")
    deployments: list[Deployment] = []
    skipped: list[Skipped] = []
    archives: list[Path] = []
    for folder in walk_folders(base, skipped, archives):
        found, bad = deployments_in_folder(folder, adapters, base)
        deployments.extend(found)
        skipped.extend(bad)
    return ScanResult(base, tuple(deployments), tuple(skipped), tuple(archives))
