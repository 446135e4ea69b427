"""A content-addressed cache of archives materialized as loose files, for path-only runners.

``TextLLMRunner`` and old application code take file *paths*. :func:`materialize` gives them the
loose layout of an ``.etm`` archive, extracted once and reused by every later call and process.

* **Key**: the sha256 of the archive's ``metadata.json`` bytes *and* of every member's name,
  size and CRC-32 as the zip's central directory records them (:func:`archive_key`).
  metadata.json lists every member's sha256, and the entry's files are checked against those
  digests when it is built, so an entry holds exactly the bytes its key's metadata promises.
  Two archives whose metadata.json bytes are the same but whose members differ (one of them
  lies about its members) get different keys: neither is ever served the other's files.
* **Where**: ``$ETM_CACHE_DIR``, else ``$XDG_CACHE_HOME/etm-compat``, else
  ``~/.cache/etm-compat``. One folder per key; files are named as ``etm-compat unpack`` names them
  (``weights/x.ptd`` becomes ``x.ptd``), so an HF ``tokenizer.json`` sits beside its
  ``tokenizer_config.json`` as the runner requires.
* **Checked once, when built**: an entry is built in a private temp folder inside the cache;
  each member is copied from the archive's open file (its blocks shared by a reflink where the
  file system can, else copied in the kernel, else read and written; never through the
  archive's mapping), then the written file is read back once and its CRC-32 compared with the
  zip's and its sha256 with metadata.json's (every problem of every member is reported in one
  :class:`IntegrityError`, and nothing is left behind). A ``.complete`` marker is written last,
  then the folder is renamed into place in one step. A process that loses the rename to another
  uses the winner's entry. No reader ever sees a partial entry or file.
* **Damage**: a hit is checked cheaply on every use (each file's size and mtime against the
  stat signature recorded in ``.complete``), or fully with ``verify=True`` (the entry's files
  against metadata.json's sha256, and the archive's own members against them too). A damaged
  entry is moved aside and rebuilt.
* **Trust**: the cache folder is trusted like the code itself (docs/MIGRATION.md, "The cache's
  trust model"): whoever can write to it can change what every later hit serves, since a hit
  checks only sizes and mtimes. Keep it private to the user (the default is), and share one
  only among users who trust each other.

Files are not fsync'ed (a plain copy is not either); after a power loss ``verify=True`` or
``etm-compat cache prune --all`` clears any doubt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from etm_compat.archive.metadata import tokenizer_member
from etm_compat.archive.read import EtmArchive
from etm_compat.archive.zipfmt import digest_range, pread_into, pwrite_all
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
#: Prefix of every key's hashed input: a later key scheme cannot collide with this one.
_KEY_DOMAIN: Final = b"etm-compat cache key 2\0"
_HINT_CORRUPT: Final = "the archive is corrupt or was edited; repack it from the original files"
#: ioctl FICLONERANGE (linux/fs.h: _IOW(0x94, 13, struct file_clone_range)).
_FICLONERANGE: Final = 0x4020940D

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
    """The content key of an archive: sha256 of its metadata.json bytes, then of each member's
    name, size and CRC-32 from the central directory (in directory order).

    The metadata pins every member's sha256 (checked when the entry is built), the directory
    pins what this archive actually holds: two archives with the same metadata.json but other
    member bytes do not share an entry.
    """
    digest = hashlib.sha256(_KEY_DOMAIN)
    raw = _metadata_bytes(archive)
    digest.update(len(raw).to_bytes(8, "little"))
    digest.update(raw)
    for info in archive.members.values():
        name = info.name.encode("utf-8")
        digest.update(len(name).to_bytes(4, "little") + name)
        digest.update(info.size.to_bytes(8, "little") + info.crc32.to_bytes(4, "little"))
    return digest.hexdigest()


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


def _metadata_bytes(archive: EtmArchive) -> bytes:
    """metadata.json as read when the archive was opened (read again only for an archive object
    built without it); never through the mapping."""
    raw = archive.metadata_bytes
    return raw if raw is not None else archive.read_member(MEMBER_METADATA)


def _digests(path: Path, pool: ThreadPoolExecutor) -> tuple[int, str]:
    """CRC-32 and sha256 of a written file, read back once
    (:func:`~etm_compat.archive.zipfmt.digest_range`: the sha256 in ``pool``, the CRC here)."""
    with open(path, "rb", buffering=0) as fh:
        crc, sha, _ = digest_range(fh.fileno(), 0, os.fstat(fh.fileno()).st_size, pool)
    return crc, sha


def _reflink(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    """Share the member's whole blocks with the empty file ``dst_fd`` (``FICLONERANGE``: btrfs,
    XFS, bcachefs...): the bytes cloned, 0 where the file system cannot (ext4: EOPNOTSUPP;
    another file system: EXDEV) or the member does not start on a block. The caller copies the
    rest."""
    if sys.platform != "linux":
        return 0  # pragma: no cover - FICLONERANGE is Linux's
    block = os.fstat(src_fd).st_blksize or 4096
    length = size - size % block
    if offset % block or length == 0:
        return 0
    try:
        fcntl.ioctl(dst_fd, _FICLONERANGE, struct.pack("qQQQ", src_fd, offset, length, 0))
    except OSError as exc:
        log.debug("no reflink (%s): copying instead", exc.strerror)
        return 0
    return length


CopyMethod = Literal["reflink", "kernel copy", "read/write"]


def copy_member(archive: EtmArchive, name: str, dest: Path) -> tuple[CopyMethod, ...]:
    """Copy one member into the new file ``dest``; the ways its bytes went, in order.

    From the archive's own open file (the one validated at open), never through its mapping:
    whole blocks are shared where the file system can (reflink: no data written), the rest is
    copied in the kernel (``copy_file_range``), or with reads and writes where that is refused.
    An archive truncated meanwhile is an :class:`IntegrityError`, not a SIGBUS.
    """
    offset, size = archive.member_range(name)
    src = archive.fileno()
    used: list[CopyMethod] = []
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        done = _reflink(src, fd, offset, size)
        if done:
            used.append("reflink")
        if done < size and hasattr(os, "copy_file_range"):
            start = done
            with contextlib.suppress(OSError):  # EXDEV, ENOSYS...: write it ourselves
                while done < size:
                    n = os.copy_file_range(src, fd, size - done, offset + done, done)
                    if n == 0:
                        break  # the archive ended early: the reads below say so
                    done += n
            if done > start:
                used.append("kernel copy")
        if done < size:
            used.append("read/write")
            buf = memoryview(bytearray(min(size - done, _CHUNK)))
            while done < size:
                n = pread_into(src, buf[: min(len(buf), size - done)], offset + done)
                if n == 0:
                    raise archive.truncated_error(name, done)
                pwrite_all(fd, buf[:n], done)
                done += n
    finally:
        os.close(fd)
    return tuple(used)


def _served_problems(archive: EtmArchive, entry: Mapping[str, Any], path: Path, crc: int,
                     sha: str) -> list[str]:  # fmt: skip
    """How the file about to be served differs from what the archive promises for it."""
    name = entry["name"]
    found: list[str] = []
    expected = archive.members[name].crc32
    if crc != expected:
        found.append(f"member {name!r}: CRC-32 is {crc:08x}, the archive says {expected:08x}")
    if sha != entry["sha256"]:
        found.append(f"member {name!r}: sha256 is {sha}, metadata.json says {entry['sha256']}")
    if (size := path.stat().st_size) != entry["size"]:
        found.append(f"member {name!r}: {size} bytes, metadata.json says {entry['size']}")
    return found


def build_entry(archive: EtmArchive, root: Path, key: str) -> Path:
    """Build a complete entry for ``archive`` in a new temp folder under ``root``; return it.

    Each member is copied (:func:`copy_member`), then the written file is read back once: its
    CRC-32 is compared with the zip central directory's, its sha256 with metadata.json's and
    its size with metadata.json's. The marker (``.complete``, recording each file's size, mtime
    and sha256) is written only when every file passes; otherwise the temp folder is removed
    and one :class:`IntegrityError` lists every mismatch.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:16]}-", dir=root))
    try:
        files: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for entry in archive.metadata["members"]:
                name = entry["name"]
                path = tmp / _file_name(name)
                how = copy_member(archive, name, path)
                log.debug("%s: %s by %s", archive.path, name, " + ".join(how) or "nothing (empty)")
                crc, sha = _digests(path, pool)
                problems += _served_problems(archive, entry, path, crc, sha)
                files[name] = {**_signature(path), "sha256": sha}
        if problems:
            raise IntegrityError("; ".join(problems), path=archive.path, hint=_HINT_CORRUPT)
        (tmp / MEMBER_METADATA).write_bytes(_metadata_bytes(archive))
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
            if verify:  # a built entry was checked once; now the archive's own bytes too
                _verify_archive(archive)
            files = _check_entry(final, archive, verify=verify)
            if files is not None:
                _touch(final)
                return Materialized(key, final, files, "reused" if status == "built" else status)
            log.warning("%s: damaged cache entry; rebuilding it", final)
            discard_entry(final)
            status = "repaired"
        tmp = build_entry(archive, base, key)
        if publish(tmp, final):
            files = {m["name"]: final / _file_name(m["name"]) for m in archive.metadata["members"]}
            return Materialized(key, final, files, status)
        status = "raced"  # another process published first: use theirs (checked on the next turn)
    raise OutputError(
        "the cache entry keeps changing under us (another process keeps replacing it)",
        path=final,
        hint="set ETM_CACHE_DIR to a private folder",
    )


def find_entry(
    archive: EtmArchive, *, root: str | os.PathLike[str] | None = None
) -> Materialized | None:
    """The archive's complete entry if one was built already (checked as a hit is: each file's
    size and mtime), else None; never builds one, never raises for a missing or odd cache.

    >>> with open_archive("model.etm") as etm:               # doctest: +SKIP
    ...     entry = find_entry(etm)
    ...     entry.files["model.pte"] if entry else "not materialized"
    PosixPath('/home/me/.cache/etm-compat/3f5c.../model.pte')
    """
    try:
        final = (Path(root) if root is not None else cache_dir()) / archive_key(archive)
        files = _check_entry(final, archive, verify=False) if final.is_dir() else None
    except (OSError, RuntimeError):  # no home folder, a cache on a dead mount...
        return None
    if files is None:
        return None
    _touch(final)
    return Materialized(final.name, final, files, "reused")


def _verify_archive(archive: EtmArchive) -> None:
    """``verify=True``: the archive's own members against their CRC-32 and sha256, so that an
    archive whose bytes do not match its metadata is refused even when its key has an entry."""
    problems = archive.verify()
    if problems:
        raise IntegrityError("; ".join(map(str, problems)), path=archive.path, hint=_HINT_CORRUPT)


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
    "copy_member",
    "find_entry",
    "legacy_paths_of",
    "materialize",
    "publish",
]
