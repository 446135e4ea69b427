"""The cache folder itself: what a complete entry looks like on disk, and the administration
``etm-compat cache list`` and ``etm-compat cache prune`` run on it.

Where the folder is, and the small JSON records kept there (runner checks), is
:mod:`etm_compat.cachedir`; building and reusing materialized archives is
:mod:`etm_compat.compat.cache`. Listing and pruning take both kinds of entries.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from etm_compat.cachedir import (
    RECORD_KINDS,
    RECORD_SUFFIX,
    TMP_PREFIX,
    cache_dir,
    record_files,
    record_folder,
)
from etm_compat.errors import EtmError, OutputError, UnreadableError, UsageError
from etm_compat.fileio import open_regular

MARKER: Final = ".complete"
_TRASH_PREFIX: Final = ".trash-"
#: A temp folder older than this is a build that died; ``prune`` removes it.
_STALE_TMP_SECONDS: Final = 3600.0
_KEY_LEN: Final = 64


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry, as ``etm-compat cache list`` shows it.

    ``kind`` is ``"archive"`` (a materialized archive: ``folder`` is its folder) or a record kind
    such as ``"runner-checks"`` (``folder`` is then the record's file, ``archive`` says what it is
    about).
    """

    key: str
    folder: Path
    size: int
    created: float
    last_used: float
    archive: str
    kind: str = "archive"


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[CacheEntry, ...]
    freed: int
    #: Temp folders of dead builds and leftovers of earlier removals that were cleaned up.
    leftovers: int


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a marker may hold")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        with open_regular(folder / MARKER) as fh:  # a FIFO or device is refused, never read
            data = json.loads(fh.read(1024 * 1024), parse_constant=_no_constant)
    except (EtmError, OSError, ValueError, RecursionError):  # a damaged marker: the entry is not complete
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def discard_entry(folder: Path) -> None:
    """Remove an entry (a folder, or a record's file): first rename it aside (one atomic step),
    then delete it."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=folder.parent))
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            os.rename(folder, trash / "entry")
    except OSError as exc:
        raise OutputError(f"cannot remove a cache entry: {exc.strerror or exc}", path=folder) from None
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftover(child: Path) -> None:
    """Delete a dead build's temp folder or a removal's trash; a stray symlink or file is unlinked."""
    if child.is_symlink() or not child.is_dir():
        with contextlib.suppress(OSError):
            child.unlink()
    else:
        shutil.rmtree(child, ignore_errors=True)


def _children(root: Path) -> list[Path]:
    """The cache folder's children; none when it does not exist yet."""
    try:
        return sorted(root.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise UsageError(
            "the cache folder is not a folder",
            path=root,
            hint="point ETM_CACHE_DIR at a folder, or unset it",
        ) from None
    except OSError as exc:
        raise UnreadableError(f"cannot read the cache folder: {exc.strerror or exc}", path=root) from None


def _entries(root: Path) -> Iterator[CacheEntry]:
    for folder in _children(root):
        if len(folder.name) != _KEY_LEN or folder.is_symlink() or not folder.is_dir():
            continue
        marker = read_marker(folder)
        if marker is None:
            continue
        try:
            last_used = (folder / MARKER).stat().st_mtime
            size = sum(int(f.get("size", 0)) for f in marker["files"].values() if isinstance(f, dict))
            created = float(marker.get("created", last_used))
        except (OSError, TypeError, ValueError, OverflowError):  # a damaged marker: skip the entry
            continue
        yield CacheEntry(
            key=folder.name,
            folder=folder,
            size=size,
            created=created,
            last_used=last_used,
            archive=str(marker.get("archive", "")),
        )


def _record_entries(root: Path) -> Iterator[CacheEntry]:
    """The records (runner checks...): small JSON files, described by what they are about."""
    for kind in RECORD_KINDS:
        for path in record_files(kind, root):
            try:
                st = path.lstat()
            except OSError:  # removed meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            yield CacheEntry(
                key=path.name[: -len(RECORD_SUFFIX)],
                folder=path,
                size=st.st_size,
                created=st.st_mtime,
                last_used=st.st_mtime,
                archive=f"({kind})",
                kind=kind,
            )


def list_entries(root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every complete entry of the cache (materialized archives and records), least recently
    used first."""
    base = Path(root) if root is not None else cache_dir()
    return sorted([*_entries(base), *_record_entries(base)], key=lambda e: e.last_used)


def prune(
    *,
    remove_all: bool = False,
    older_than_days: float | None = None,
    max_size: int | None = None,
    root: str | os.PathLike[str] | None = None,
    now: float | None = None,
) -> PruneResult:
    """Remove entries: all, those unused for ``older_than_days``, then least recently used ones
    until the cache holds at most ``max_size`` bytes. Dead builds' temp folders go too.

    >>> prune(older_than_days=30).freed                       # doctest: +SKIP
    1073741824
    """
    if not remove_all and older_than_days is None and max_size is None:
        raise UsageError(
            "nothing to prune by", hint="pass {all}, {older_than} or {max_size}"
        )
    base = Path(root) if root is not None else cache_dir()
    clock = time.time() if now is None else now
    entries = list_entries(base)
    doomed: list[CacheEntry] = []
    kept: list[CacheEntry] = []
    for entry in entries:
        old = older_than_days is not None and clock - entry.last_used > older_than_days * 86400
        (doomed if remove_all or old else kept).append(entry)
    if max_size is not None:
        total = sum(e.size for e in kept)
        while kept and total > max_size:
            victim = kept.pop(0)  # least recently used first
            doomed.append(victim)
            total -= victim.size
    for entry in doomed:
        discard_entry(entry.folder)
    leftovers = 0
    children = _children(base)
    for kind in RECORD_KINDS:
        children += _record_children(record_folder(kind, base))
    for child in children:
        try:
            age = clock - child.lstat().st_mtime  # lstat: a dangling symlink has an age too
        except FileNotFoundError:  # removed meanwhile
            continue
        stale = child.name.startswith(TMP_PREFIX) and (remove_all or age > _STALE_TMP_SECONDS)
        if child.name.startswith(_TRASH_PREFIX) or stale:
            _remove_leftover(child)
            leftovers += 1
    return PruneResult(tuple(doomed), sum(e.size for e in doomed), leftovers)


def _record_children(folder: Path) -> list[Path]:
    """A record folder's children (its records, temp files of writes, trash); none if it is not
    a folder."""
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"1000"`` -> bytes (binary multiples).

    >>> parse_size("2G")
    2147483648
    """
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in units and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)].strip()
    try:
        value = float(number)
    except ValueError:
        raise UsageError(
            f"not a size: {text!r}", hint="write it like 500M, 2G or 1048576"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"not a size: {text!r}", hint="give a finite size of 0 or more, like 500M or 2G")
    size = value * units[unit]
    if not math.isfinite(size):
        raise UsageError(f"not a size: {text!r}", hint="give a finite size of 0 or more, like 500M or 2G")
    return int(size)


__all__ = [
    "MARKER",
    "TMP_PREFIX",
    "CacheEntry",
    "PruneResult",
    "cache_dir",
    "discard_entry",
    "list_entries",
    "parse_size",
    "prune",
    "read_marker",
]
