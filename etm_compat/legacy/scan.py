"""Finding every deployment (and every ``.etm`` archive) under a root, through the adapters.

The one tree walk of etm-compat: it never follows directory symlinks (so symlink loops cannot
trap it), skips hidden folders and files, is bounded in depth and folder count, and reports
unreadable folders instead of failing on them.

Reading the folders is the expensive part (program heads, tokenizer sniffing); the walk itself is
one ``scandir`` per folder. :func:`scan` can therefore read folders on an executor, in batches,
and reuse what an earlier scan read (:class:`ScanMemo`) for every folder whose stamp, and the
stamps of the folders its reading listed, are unchanged (:class:`~etm_compat.legacy.files.FolderStamp`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from etm_compat.constants import ETM_SUFFIX
from etm_compat.errors import InputError, UnreadableError
from etm_compat.fileio import settled_before
from etm_compat.legacy.deployment import (
    Adapter,
    Deployment,
    Skipped,
    deployment_from_record,
    deployment_record,
)
from etm_compat.legacy.files import (
    FolderStamp,
    folder_stamp,
    list_files,
    recording_listings,
    stamp_entries,
)

MAX_DEPTH = 32
NO_TOKENIZER = "no tokenizer file found beside the program"
MAX_FOLDERS = 200_000
#: Folders read per executor call: big enough that a call is worth sending, small enough that
#: the workers finish together.
MAX_BATCH: Final = 64


@dataclass(frozen=True)
class FolderRead:
    """What reading one folder gave, and the stamp of every folder the reading listed."""

    folder: Path
    deployments: tuple[Deployment, ...]
    skipped: tuple[Skipped, ...]
    depends: Mapping[Path, FolderStamp] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanMemo:
    """Folder reads of an earlier scan of ``root``, as JSON records keyed by relative folder.

    Untrusted (it is read back from a file): a record is used only when every folder it
    depends on has the stamp it recorded, and every path in it names an entry of one of them.
    """

    root: Path
    folders: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.folders)


@dataclass(frozen=True)
class ScanResult:
    """The deployments under a root, what was skipped and why, and the archives found.

    ``memo`` remembers this scan's folder reads for the next one; ``reads`` and ``reused``
    count the folders read now and the folders taken from the previous memo.
    """

    root: Path
    deployments: tuple[Deployment, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    archives: tuple[Path, ...] = field(default=())
    memo: ScanMemo | None = None
    reads: int = 0
    reused: int = 0


def _walk(
    root: Path, skipped: list[Skipped], archives: list[Path] | None
) -> Iterator[tuple[Path, list[os.DirEntry[str]]]]:
    """Folders under root with all their entries (hidden ones included), depth-first, sorted.

    What is not descended into is appended to ``skipped`` after its folder was yielded.
    """
    stack: list[tuple[Path, int]] = [(root, 0)]
    seen = 0
    while stack:
        folder, depth = stack.pop()
        seen += 1
        if seen > MAX_FOLDERS:
            skipped.append(Skipped(folder, f"scan stopped: more than {MAX_FOLDERS} folders"))
            return
        try:
            with os.scandir(folder) as it:
                everything: list[os.DirEntry[str]] | None = list(it)
        except OSError as exc:
            everything, error = None, exc.strerror
        yield folder, everything or []
        if everything is None:
            skipped.append(Skipped(folder, f"unreadable folder: {error}"))
            continue
        if depth >= MAX_DEPTH:
            skipped.append(Skipped(folder, f"not descended: deeper than {MAX_DEPTH} levels"))
            continue
        entries = [e for e in everything if not e.name.startswith(".")]
        if archives is not None:
            archives.extend(
                Path(e.path) for e in sorted(entries, key=lambda e: e.name)
                if e.name.endswith(ETM_SUFFIX) and not e.is_dir()
            )
        children = sorted((Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)), reverse=True)
        stack.extend((child, depth + 1) for child in children)


def walk_folders(root: Path, skipped: list[Skipped], archives: list[Path] | None = None) -> Iterator[Path]:
    """Folders under root (root included), depth-first, sorted, without following symlinks.

    Folders not descended into are appended to ``skipped`` with the reason; ``*.etm`` files seen
    on the way are appended to ``archives`` (when given), in walk order.
    """
    for folder, _ in _walk(root, skipped, archives):
        yield folder


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
        except InputError as exc:  # a file of the folder cannot be read
            return [], [Skipped(folder, exc.message, unreadable=True, hint=exc.hint or "")]
        good = [d for d in found if d.tokenizer is not None]
        bad = [Skipped(d.program, d.problem or NO_TOKENIZER) for d in found if d.tokenizer is None]
        ignored = {path: why for d in found for path, why in d.left_out}
        return good, bad + [Skipped(path, why, ignored=True) for path, why in sorted(ignored.items())]
    return [], []


def read_folder(folder: Path, adapters: Sequence[Adapter], root: Path | None = None) -> FolderRead:
    """:func:`deployments_in_folder`, with the stamps of the folders it listed (``folder``
    first, stamped before anything in it is read)."""
    with recording_listings() as listed:
        with contextlib.suppress(InputError):  # the adapters meet it too, and report it
            list_files(folder)
        found, bad = deployments_in_folder(folder, adapters, root)
    return FolderRead(folder, tuple(found), tuple(bad), dict(listed))


def read_folders(folders: Sequence[Path], adapters: Sequence[Adapter], root: Path) -> list[FolderRead]:
    """:func:`read_folder` for each of ``folders``: one executor call (top level, plain data)."""
    return [read_folder(folder, adapters, root) for folder in folders]


# --- remembering folder reads ---------------------------------------------------------------------


def relative_below(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str | None:
    """``path`` relative to ``root`` ("." for root itself) when it lies plainly below it (no
    ".", ".." or empty parts on the way), else None.

    By spelling, not ``os.path.relpath``, which normalises both paths first and costs more than
    the rest of a re-run's scan of a folder; the walk builds every path by joining names to root.
    """
    text, top = os.fspath(path), os.fspath(root)
    if text == top:
        return "."
    prefix = top if top.endswith(os.sep) else top + os.sep
    if not text.startswith(prefix):
        return None
    rel = text[len(prefix) :]
    parts = rel.split(os.sep)
    return None if "" in parts or "." in parts or ".." in parts else rel



def _record(read: FolderRead, root: Path, newest_allowed: int) -> dict[str, Any] | None:
    """The memo record of ``read``, or None when it must not be reused (racy, or outside root)."""
    deps: dict[str, str] = {}
    for folder, stamp in read.depends.items():
        where = relative_below(folder, root)
        if where is None or stamp.newest_mtime_ns >= newest_allowed:
            return None
        deps[where] = stamp.digest
    if relative_below(read.folder, root) not in deps:
        return None

    def rel(path: Path) -> str:
        spelled = relative_below(path, root)
        if spelled is None:
            raise ValueError(path)
        return spelled

    try:
        return {
            "deps": deps,
            "deployments": [deployment_record(d, rel) for d in read.deployments],
            "skipped": [[rel(s.path), s.reason, s.ignored, s.unreadable, s.hint] for s in read.skipped],
        }
    except ValueError:
        return None


def _reuse(
    record: Any, folder: Path, root: Path, stamp_of: Mapping[str, FolderStamp | None]
) -> FolderRead | None:
    """The read a memo record describes, when every folder it depends on is unchanged."""
    try:
        deps: dict[str, FolderStamp] = {}
        for rel, digest in dict(record["deps"]).items():
            now = stamp_of[rel]
            if now is None or now.digest != digest:
                return None
            deps[rel] = now

        def path(value: Any) -> Path:
            # Only the folders the record depends on, and entries they hold now.
            if not isinstance(value, str):
                raise TypeError("path")
            if value in deps:
                return root if value == "." else root / value
            parent, _, name = value.rpartition(os.sep)
            if deps.get(parent or ".") is None or name not in deps[parent or "."].names:
                raise ValueError("path")
            return root / value

        deployments = tuple(deployment_from_record(d, path) for d in record["deployments"])
        skipped = tuple(
            Skipped(path(p), why, ignored, unreadable, hint)
            for p, why, ignored, unreadable, hint in record["skipped"]
            if isinstance(why, str) and isinstance(ignored, bool) and isinstance(unreadable, bool) and isinstance(hint, str)
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if any(d.root != folder for d in deployments):
        return None
    return FolderRead(folder, deployments, skipped, {root / r if r != "." else root: s for r, s in deps.items()})


class _Stamps(Mapping[str, "FolderStamp | None"]):
    """Current stamps of folders by path relative to root, taken once each (None: unlistable)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.known: dict[str, FolderStamp | None] = {}

    def __getitem__(self, rel: str) -> FolderStamp | None:
        if rel not in self.known:
            if not isinstance(rel, str) or rel.startswith("..") or os.path.isabs(rel):
                raise ValueError(rel)
            try:
                self.known[rel] = folder_stamp(self.root if rel == "." else self.root / rel)
            except OSError:
                self.known[rel] = None
        return self.known[rel]

    def __iter__(self) -> Iterator[str]:
        return iter(self.known)

    def __len__(self) -> int:
        return len(self.known)


def _read_all(
    folders: Sequence[Path],
    adapters: Sequence[Adapter],
    root: Path,
    executor: concurrent.futures.Executor | None,
) -> list[FolderRead]:
    """Read ``folders``, in order: in this process, or in batches on ``executor``."""
    if executor is None or len(folders) < 2:
        return read_folders(folders, adapters, root)
    size = max(1, min(MAX_BATCH, len(folders) // 16))
    batches = [folders[i : i + size] for i in range(0, len(folders), size)]
    futures = [executor.submit(read_folders, batch, adapters, root) for batch in batches]
    return [read for future in futures for read in future.result()]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (reference counting still frees everything): a scan
    or a plan builds hundreds of thousands of small objects that all stay alive, and each full
    collection would walk all of them again (a cost that grows with the tree: quadratic). Pool
    workers turn it back on (:class:`etm_compat.bulk.executor.LazyProcessPool`)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@paused_gc()
def scan(
    root: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    memo: ScanMemo | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> ScanResult:
    """Every deployment under ``root`` (a folder), one per program, in a stable order.

    Folders are read in batches on ``executor`` when one is given; folders that ``memo`` (an
    earlier scan's :attr:`ScanResult.memo`) read and that are unchanged are not read again.

    >>> from etm_compat.adapters import default_adapters
    >>> result = scan("fixtures/legacy", default_adapters())  # doctest: +SKIP
    """
    base = Path(root)
    if not base.exists():
        raise UnreadableError("no such folder", path=base)
    if not base.is_dir():
        raise InputError("not a folder", path=base, hint="give a folder to scan")
    newest_allowed = settled_before()
    walk_skips: list[Skipped] = []
    archives: list[Path] = []
    stamps = _Stamps(base)
    if memo is not None and memo.root != base:
        memo = None
    reads: dict[Path, FolderRead] = {}
    order: list[tuple[Path, int]] = []  # each folder, and how many walk skips came before it
    for folder, entries in _walk(base, walk_skips, archives):
        order.append((folder, len(walk_skips)))
        rel = relative_below(folder, base) or "."
        if memo is None or rel not in memo.folders:
            continue
        if rel not in stamps.known:
            stamps.known[rel] = stamp_entries(entries)
        again = _reuse(memo.folders[rel], folder, base, stamps)
        if again is not None:
            reads[folder] = again
    reused = set(reads)
    todo = [folder for folder, _ in order if folder not in reads]
    reads.update((read.folder, read) for read in _read_all(todo, adapters, base, executor))
    deployments: list[Deployment] = []
    skipped: list[Skipped] = []
    records: dict[str, Any] = {}
    marks = [mark for _, mark in order[1:]] + [len(walk_skips)]
    skipped.extend(walk_skips[: order[0][1]] if order else walk_skips)
    for (folder, mark), end in zip(order, marks, strict=True):
        read = reads[folder]
        deployments.extend(read.deployments)
        skipped.extend(read.skipped)
        skipped.extend(walk_skips[mark:end])  # what the walk did not descend into, after its read
        rel = relative_below(folder, base) or "."
        if folder in reused and memo is not None:
            records[rel] = memo.folders[rel]  # checked above, and still true
        elif (record := _record(read, base, newest_allowed)) is not None:
            records[rel] = record
    return ScanResult(
        base,
        tuple(deployments),
        tuple(skipped),
        tuple(archives),
        ScanMemo(base, records),
        reads=len(todo),
        reused=len(reused),
    )


__all__ = [
    "FolderRead",
    "ScanMemo",
    "ScanResult",
    "deployments_in_folder",
    "paused_gc",
    "read_folder",
    "read_folders",
    "relative_below",
    "scan",
    "walk_folders",
]
