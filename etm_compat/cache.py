"""A content-addressed cache of archives materialized as loose files, for path-only runners.

``TextLLMRunner`` and old application code take file *paths*. :func:`materialize` gives them the
loose layout of an ``.etm`` archive, extracted once and reused by every later call and process.

* **Key**: the sha256 of the archive's ``metadata.json`` bytes. metadata.json lists every
  member's sha256, so the key pins every byte of the entry; two archives with the same content
  share one entry wherever they live.
* **Where**: ``$ETM_CACHE_DIR``, else ``$XDG_CACHE_HOME/etm-compat``, else
  ``~/.cache/etm-compat``. One folder per key; files are named as ``etm-compat unpack`` names them
  (``weights/x.ptd`` becomes ``x.ptd``), so an HF ``tokenizer.json`` sits beside its
  ``tokenizer_config.json`` as the runner requires.
* **Concurrency**: an entry is built in a private temp folder inside the cache, each file
  checksummed (CRC-32) while it is written and compared with the archive, a ``.complete``
  marker written last, then
  the folder is renamed into place in one step. A process that loses the rename to another uses
  the winner's entry. No reader ever sees a partial entry or file.
* **Damage**: a hit is checked cheaply on every use (each file's size and mtime against the
  stat signature recorded in ``.complete``), or fully (sha256) with ``verify=True``. A damaged
  entry is moved aside and rebuilt.

Files are not fsync'ed (a plain copy is not either); after a power loss ``verify=True`` or
``etm-compat cache prune --all`` clears any doubt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from etm_compat.archive_read import EtmArchive
from etm_compat.constants import MEMBER_METADATA
from etm_compat.errors import IntegrityError, OutputError, UsageError
from etm_compat.fileio import sha256_file

log = logging.getLogger(__name__)

MARKER: Final = ".complete"
_TMP_PREFIX: Final = ".tmp-"
_TRASH_PREFIX: Final = ".trash-"
_CHUNK: Final = 8 * 1024 * 1024
#: A temp folder older than this is a build that died; ``prune`` removes it.
_STALE_TMP_SECONDS: Final = 3600.0
_KEY_LEN: Final = 64

Status = Literal["built", "reused", "raced", "repaired"]


@dataclass(frozen=True)
class Materialized:
    """One cache entry on disk: ``files`` maps archive member names to their real paths."""

    key: str
    folder: Path
    files: dict[str, Path]
    #: What this call did: built it, reused a good entry, lost the build race, or replaced damage.
    status: Status


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry, as ``etm-compat cache list`` shows it."""

    key: str
    folder: Path
    size: int
    created: float
    last_used: float
    archive: str


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[CacheEntry, ...]
    freed: int
    #: Temp folders of dead builds and leftovers of earlier removals that were cleaned up.
    leftovers: int


def cache_dir() -> Path:
    """The cache root: ``$ETM_CACHE_DIR``, ``$XDG_CACHE_HOME/etm-compat`` or ``~/.cache/etm-compat``."""
    explicit = os.environ.get("ETM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "etm-compat"


def archive_key(archive: EtmArchive) -> str:
    """The content key of an archive: sha256 of its metadata.json bytes."""
    view = archive.member_view(MEMBER_METADATA)
    try:
        return hashlib.sha256(view).hexdigest()
    finally:
        view.release()


def _file_name(member: str) -> str:
    # Member names were validated by the reader: a flat name or weights/<name>.ptd.
    return member.rsplit("/", 1)[-1]


def _signature(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}




def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / MARKER, "rb") as fh:
            data = json.loads(fh.read(1024 * 1024))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def _check_entry(folder: Path, archive: EtmArchive, *, verify: bool) -> dict[str, Path] | None:
    """The entry's files if it is complete and intact for ``archive``; None otherwise."""
    marker = _read_marker(folder)
    if marker is None:
        return None
    recorded: dict[str, Any] = marker["files"]
    files: dict[str, Path] = {}
    for entry in archive.metadata["members"]:
        name = entry["name"]
        info = recorded.get(name)
        path = folder / _file_name(name)
        if not isinstance(info, dict):
            return None
        try:
            sig = _signature(path)
        except OSError:
            return None
        if sig["size"] != entry["size"] or sig != {
            "size": info.get("size"),
            "mtime_ns": info.get("mtime_ns"),
        }:
            log.warning("%s: cache entry file changed on disk (size or mtime)", path)
            return None
        if verify and sha256_file(path) != entry["sha256"]:
            log.warning("%s: cache entry file fails its sha256 check", path)
            return None
        files[name] = path
    return files


def _crc_range(path: Path, offset: int, size: int) -> int:
    """CRC-32 of ``size`` bytes at ``offset``, read into one reused buffer (no page faults of a
    mapping, no allocation per chunk); zlib drops the GIL on big buffers."""
    crc = 0
    buf = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        done = 0
        while done < size:
            n = fh.readinto(view[: min(len(buf), size - done)])
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            done += n
    return crc


def _copy_member(archive: EtmArchive, name: str, dest: Path, pool: ThreadPoolExecutor) -> int:
    """Copy one member to ``dest`` in the kernel while a thread checksums the same source bytes.

    The copy (``copy_file_range`` from the archive file, or writes from its mapping where that
    is unavailable) and the CRC-32 of those bytes run at the same time on two cores. CRC-32 (the
    zip's own check, recorded in the central directory) is what catches a damaged archive here:
    it runs at several GB/s where sha256 runs at about one, and metadata.json's sha256 values are
    not signed, so against accidental damage they promise no more than the CRC does. The full
    sha256 comparison is one ``verify=True`` away.
    """
    offset, size = archive.member_range(name)
    view = archive.member_view(name)
    try:
        digest = pool.submit(_crc_range, Path(archive.path), offset, size)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with open(archive.path, "rb") as src:
                done = 0
                if hasattr(os, "copy_file_range"):
                    with contextlib.suppress(OSError):  # EXDEV, ENOSYS...: write it ourselves
                        while done < size:
                            n = os.copy_file_range(src.fileno(), fd, size - done, offset + done)
                            if n == 0:
                                break
                            done += n
                while done < size:  # fallback, or a file system that refused copy_file_range
                    done += os.write(fd, view[done : min(size, done + _CHUNK)])
        finally:
            os.close(fd)
        return digest.result()
    finally:
        view.release()


def build_entry(archive: EtmArchive, root: Path, key: str, *, verify: bool = False) -> Path:
    """Build a complete entry for ``archive`` in a new temp folder under ``root``; return it.

    Every file is checked against metadata.json's sha256 before the marker is written; on any
    failure the temp folder is removed and the error raised.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key[:16]}-", dir=root))
    try:
        files: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=1) as pool:
            for entry in archive.metadata["members"]:
                name = entry["name"]
                path = tmp / _file_name(name)
                crc = _copy_member(archive, name, path, pool)
                expected = archive.members[name].crc32
                if crc != expected:
                    raise IntegrityError(
                        f"member {name!r}: CRC-32 is {crc:08x}, the archive says {expected:08x}",
                        path=archive.path,
                        hint="the archive is corrupt; repack it from the original files",
                    )
                if verify and (digest := sha256_file(path)) != entry["sha256"]:
                    raise IntegrityError(
                        f"member {name!r}: sha256 is {digest}, metadata.json says {entry['sha256']}",
                        path=archive.path,
                        hint="the archive is corrupt; repack it from the original files",
                    )
                files[name] = {**_signature(path), "sha256": entry["sha256"]}
        meta_view = archive.member_view(MEMBER_METADATA)
        try:
            (tmp / MEMBER_METADATA).write_bytes(meta_view)
        finally:
            meta_view.release()
        marker = {"key": key, "archive": str(archive.path), "created": time.time(), "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _discard(folder: Path) -> None:
    """Remove an entry: first rename it aside (one atomic step), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):  # another process removed it first
        os.rename(folder, trash / "entry")
    shutil.rmtree(trash, ignore_errors=True)


def publish(tmp: Path, final: Path) -> bool:
    """Rename a built temp folder into place; False (and ``tmp`` removed) if one is already there."""
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"cannot create cache entry: {exc.strerror}", path=final) from None
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def materialize(
    archive: EtmArchive, *, verify: bool = False, root: str | os.PathLike[str] | None = None
) -> Materialized:
    """The archive's members as real files in the cache (built on first use).

    >>> with open_archive("model.etm") as etm:               # doctest: +SKIP
    ...     materialize(etm).files["model.pte"]
    PosixPath('/home/me/.cache/etm-compat/3f5c.../model.pte')
    """
    base = Path(root) if root is not None else cache_dir()
    key = archive_key(archive)
    final = base / key
    status: Status = "built"
    for _ in range(3):
        if final.exists():
            files = _check_entry(final, archive, verify=verify)
            if files is not None:
                _touch(final)
                return Materialized(key, final, files, "reused" if status == "built" else status)
            log.warning("%s: damaged cache entry; rebuilding it", final)
            _discard(final)
            status = "repaired"
        tmp = build_entry(archive, base, key, verify=verify)
        if publish(tmp, final):
            files = {m["name"]: final / _file_name(m["name"]) for m in archive.metadata["members"]}
            return Materialized(key, final, files, status)
        status = "raced"  # another process published first: use theirs (checked on the next turn)
    raise OutputError(
        "the cache entry keeps changing under us (another process keeps replacing it)",
        path=final,
        hint="set ETM_CACHE_DIR to a private folder",
    )


def _touch(folder: Path) -> None:
    # A read-only cache still serves; only LRU pruning gets less precise.
    with contextlib.suppress(OSError):
        os.utime(folder / MARKER)


def _entries(root: Path) -> Iterator[CacheEntry]:
    try:
        children = sorted(root.iterdir())
    except FileNotFoundError:
        return
    for folder in children:
        if len(folder.name) != _KEY_LEN or not folder.is_dir():
            continue
        marker = _read_marker(folder)
        if marker is None:
            continue
        try:
            last_used = (folder / MARKER).stat().st_mtime
        except OSError:
            continue
        size = sum(int(f.get("size", 0)) for f in marker["files"].values() if isinstance(f, dict))
        yield CacheEntry(
            key=folder.name,
            folder=folder,
            size=size,
            created=float(marker.get("created", last_used)),
            last_used=last_used,
            archive=str(marker.get("archive", "")),
        )


def list_entries(root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every complete entry of the cache, least recently used first."""
    base = Path(root) if root is not None else cache_dir()
    return sorted(_entries(base), key=lambda e: e.last_used)


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
            "nothing to prune by", hint="pass --all, --older-than DAYS or --max-size SIZE"
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
        _discard(entry.folder)
    leftovers = 0
    if base.is_dir():
        for child in base.iterdir():
            stale = child.name.startswith(_TMP_PREFIX) and (
                remove_all or clock - child.stat().st_mtime > _STALE_TMP_SECONDS
            )
            if child.name.startswith(_TRASH_PREFIX) or stale:
                shutil.rmtree(child, ignore_errors=True)
                leftovers += 1
    return PruneResult(tuple(doomed), sum(e.size for e in doomed), leftovers)


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
    if value < 0:
        raise UsageError(f"negative size: {text!r}")
    return int(value * units[unit])


__all__ = [
    "MARKER",
    "CacheEntry",
    "Materialized",
    "PruneResult",
    "archive_key",
    "build_entry",
    "cache_dir",
    "list_entries",
    "materialize",
    "parse_size",
    "prune",
    "publish",
]
