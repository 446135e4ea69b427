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
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from etm_compat.archive.metadata import tokenizer_member
from etm_compat.archive.read import EtmArchive
from etm_compat.compat.cache_admin import (
    MARKER,
    TMP_PREFIX,
    cache_dir,
    discard_entry,
    read_marker,
)
from etm_compat.constants import MEMBER_METADATA, MEMBER_PROGRAM
from etm_compat.errors import IntegrityError, OutputError, UsageError
from etm_compat.fileio import sha256_file

log = logging.getLogger(__name__)

_CHUNK: Final = 8 * 1024 * 1024

Status = Literal["built", "reused", "raced", "repaired"]


@dataclass(frozen=True)
class Materialized:
    """One cache entry on disk: ``files`` maps archive member names to their real paths."""

    key: str
    folder: Path
    files: dict[str, Path]
    #: What this call did: built it, reused a good entry, lost the build race, or replaced damage.
    status: Status


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


def _check_entry(folder: Path, archive: EtmArchive, *, verify: bool) -> dict[str, Path] | None:
    """The entry's files if it is complete and intact for ``archive``; None otherwise."""
    marker = read_marker(folder)
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
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:16]}-", dir=root))
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
            discard_entry(final)
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


@dataclass(frozen=True)
class LegacyPaths:
    """Real files of a deployment, for code that only takes paths.

    ``folder`` holds them all (for HF tokenizers, ``tokenizer.json`` beside
    ``tokenizer_config.json``).
    """

    program: Path
    tokenizer: Path
    weights: tuple[Path, ...]
    folder: Path
    #: Every program by name (``model`` is :attr:`program`), and the data files each loads, in
    #: load order (a format-2 archive's preprocessors, encoders, LoRA siblings).
    programs: Mapping[str, Path] = field(default_factory=dict)
    data: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)


def legacy_paths_of(
    archive: EtmArchive, *, verify: bool = False, root: str | os.PathLike[str] | None = None
) -> LegacyPaths:
    """The archive's program, tokenizer and weights as real files (materialized once)."""
    entry = materialize(archive, verify=verify, root=root)
    meta = archive.metadata
    member = tokenizer_member(meta)
    if member is None:
        raise UsageError("the archive holds no tokenizer", path=archive.path)
    weights = tuple(entry.files[m["name"]] for m in meta["members"] if m["role"] == "weights")
    layout = archive.layout
    programs = {p.name: entry.files[p.member] for p in layout.programs}
    data = {p.name: tuple(entry.files[d] for d in p.data) for p in layout.programs}
    return LegacyPaths(entry.files[MEMBER_PROGRAM], entry.files[member], weights, entry.folder, programs, data)


def _touch(folder: Path) -> None:
    # A read-only cache still serves; only LRU pruning gets less precise.
    with contextlib.suppress(OSError):
        os.utime(folder / MARKER)


__all__ = [
    "LegacyPaths",
    "Materialized",
    "archive_key",
    "build_entry",
    "legacy_paths_of",
    "materialize",
    "publish",
]
