"""Write ``.etm`` archives: stored, aligned, deterministic, streaming, atomic.

Layout (docs/FORMAT.md): ``metadata.json`` first, then the main program, the other programs
(format 2), the tokenizer, its configs, the processor configs (format 2) and the weight files
sorted by name (the order and the version come from :mod:`etm_compat.archive.plan`); every
member STORED; each member's data aligned through a
zipalign-style extra field in its local header (16 KiB for ``.pte``/``.ptd``, 64 bytes for the
rest); DOS time 1980-01-01 00:00, unix mode 0644, no comment, no host data; ZIP64 records only
for sizes or offsets that do not fit 32 bits.

Because a sha256 hex digest has a fixed length, the metadata is first written with placeholder
digests; the members are then streamed once (CRC32 and sha256 in the same pass, the hash in a
worker thread, each chunk copied in the kernel right after it is read), and finally the real
metadata is written into the same slot and the local headers' CRCs are patched. All of it goes
to a temp file in the destination folder that replaces the destination only once complete and
fsynced.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from etm_compat.archive.metadata import SHA256_PLACEHOLDER, serialize_metadata, validate_metadata
from etm_compat.archive.names import Role
from etm_compat.archive.plan import MemberSpec, fill_metadata, order_specs
from etm_compat.archive.programs import duplicate_weights
from etm_compat.archive.zipfmt import (
    DIGEST_CHUNK,
    central_entry,
    crc32,
    digest_range,
    end_records,
    local_header,
    pread_into,
    pwrite_all,
)
from etm_compat.constants import ETM_ALIGN_DEFAULT, ETM_ALIGN_MAPPED, MEMBER_METADATA
from etm_compat.errors import EtmError, MetadataError, OutputError, UnreadableError, UsageError
from etm_compat.fileio import check_output, hashed_content, output_error

#: Bytes per read while streaming a member (constant memory whatever the member size).
CHUNK_BYTES = DIGEST_CHUNK


@dataclass(frozen=True)
class WrittenMember:
    name: str
    role: Role
    offset: int  # of the data, from the start of the archive
    size: int
    crc32: int
    sha256: str


@dataclass(frozen=True)
class ArchiveWriteResult:
    """What :func:`write_archive` wrote: the path, total size, members and the final metadata."""

    path: Path
    size: int
    members: tuple[WrittenMember, ...]
    metadata: dict[str, Any] = field(repr=False)


@dataclass
class _Slot:
    name: str
    role: Role
    source: Path | None
    size: int
    header_offset: int
    local_header: bytes
    data_offset: int
    crc32: int = 0
    sha256: str = SHA256_PLACEHOLDER


def _alignment(name: str) -> int:
    return ETM_ALIGN_MAPPED if name.endswith((".pte", ".ptd")) else ETM_ALIGN_DEFAULT


#: What copy_file_range answers where it cannot be used at all.
_NO_KERNEL_COPY = frozenset({errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})


class _ChunkCopier:
    """Copies each chunk that :func:`digest_range` has just read to the archive, in the reading
    thread: inside the kernel (``copy_file_range``: no trip through user space, and a reflink
    where the file system shares blocks) from the source's same range, or, where the kernel
    cannot copy (another OS, a file system that refuses it), by writing the chunk just read."""

    def __init__(self, src_fd: int, dst_fd: int, dst_start: int) -> None:
        self.src_fd, self.dst_fd, self.dst_start = src_fd, dst_fd, dst_start
        self.done = 0
        self.kernel = hasattr(os, "copy_file_range")

    def __call__(self, chunk: memoryview) -> None:
        size = len(chunk)
        if self.kernel:
            try:
                copied = 0
                while copied < size:
                    n = os.copy_file_range(
                        self.src_fd, self.dst_fd, size - copied,
                        self.done + copied, self.dst_start + self.done + copied,
                    )
                    if n == 0:
                        raise OSError(errno.EIO, "copy_file_range stopped early")
                    copied += n
            except OSError as exc:
                if self.done or exc.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = False  # refused from the start: write what was read instead
            else:
                self.done += size
                return
        pwrite_all(self.dst_fd, chunk, self.dst_start + self.done)
        self.done += size


def _stream(
    src: BinaryIO, dst: BinaryIO, expected: int, pool: ThreadPoolExecutor
) -> tuple[int, str]:
    """Copy ``expected`` bytes of ``src`` to ``dst``'s position; return (crc32, sha256 hex) of
    what was read.

    Two threads, so that on two cores neither waits on a third: a worker thread feeds sha256
    (:func:`~etm_compat.archive.zipfmt.digest_range`) while this one reads the next chunk into a
    reused buffer, computes its CRC-32 (ISA-L's, :data:`~etm_compat.archive.zipfmt.crc32`) and
    copies the same range to the archive (:class:`_ChunkCopier`). All of it releases the GIL, and
    this thread's share (a read, a CRC, a kernel copy) takes less than hashing the chunk, so the
    cost is about sha256's alone. The bytes copied are read right after the bytes hashed. A file
    this process read and hashed whole, and that is unchanged since
    (:func:`~etm_compat.fileio.hashed_content`), is written from those bytes, with their digest.
    """
    dst.flush()
    start = dst.tell()
    known = hashed_content(src.fileno())
    if known is not None and len(known[0]) == expected:
        # Read and hashed whole already (a tokenizer, when it was described): those very bytes
        # are stored, with their digest, instead of reading and hashing the file again.
        data, sha = known
        pwrite_all(dst.fileno(), memoryview(data), start)
        dst.seek(start + expected)
        return crc32(data), sha
    copier = _ChunkCopier(src.fileno(), dst.fileno(), start)
    crc, sha, total = digest_range(src.fileno(), 0, expected, pool, sink=copier)
    if total == expected and pread_into(src.fileno(), memoryview(bytearray(1)), expected):
        total += 1  # it grew: at least one byte more than measured
    if total != expected:
        raise UnreadableError(
            f"changed while being packed ({expected} bytes expected, "
            f"{'more' if total > expected else total} read)",
            path=getattr(src, "name", None),
            hint="pack again once it is stable",
        )
    dst.seek(start + expected)
    return crc, sha


def write_archive(
    dest: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    members: Sequence[MemberSpec],
    overwrite: bool = False,
    fsync: bool = True,
) -> ArchiveWriteResult:
    """Pack ``members`` and ``metadata`` into the ``.etm`` archive ``dest``, atomically.

    The archive appears under its final name only once complete (temp file + rename), so a
    crashed process never leaves half an archive. With ``fsync`` (the default) the data and the
    folder entry also reach the disk before this returns, so the archive survives a power loss
    too; ``fsync=False`` skips that, as ``cp`` and ``zip`` do, which is much faster for large
    programs (the kernel writes the data back later).

    The writer fills ``metadata["members"]`` (name, size, sha256, role) and
    ``metadata["weights"]`` (member, keys) itself; the caller's mapping is not modified. Members
    that use a version-2 feature (several programs, weight roles, processors; or a
    ``metadata["modalities"]`` section) make a version-2 archive: the writer then also fills
    ``programs`` and the weights roles and raises ``format_version`` and ``min_reader_version``
    to 2 (:func:`~etm_compat.archive.plan.required_version`). Raises :class:`OutputError` if
    ``dest`` exists and ``overwrite`` is false; :class:`UsageError` for bad member specs, and for
    two weights members with the same bytes in a version-2 archive (store a shared file once).

    >>> write_archive("out/model.etm", metadata=meta,   # doctest: +SKIP
    ...     members=[MemberSpec("model.pte", Path("legacy/model.pte"), "program")])
    """
    dest = Path(dest)
    ordered = order_specs(members)
    check_output(dest, force=overwrite, sources=[spec.source for spec in ordered])
    if not dest.parent.is_dir():
        raise OutputError("destination folder does not exist", path=dest.parent)
    meta: dict[str, Any] = copy.deepcopy(dict(metadata))
    sizes: dict[str, int] = {}
    for spec in ordered:
        try:
            sizes[spec.name] = os.stat(spec.source).st_size
        except OSError as exc:
            raise UnreadableError(f"cannot read: {exc.strerror}", path=spec.source) from None
    fill_metadata(meta, ordered, sizes, SHA256_PLACEHOLDER)
    sources = meta.get("provenance", {}).get("sources", [])
    for spec in ordered:
        if spec.provenance is not None:
            if not 0 <= spec.provenance < len(sources):
                raise UsageError(f"member {spec.name!r}: no provenance source #{spec.provenance}")
            sources[spec.provenance]["sha256"] = SHA256_PLACEHOLDER
    problems = validate_metadata(meta)
    if problems:
        raise MetadataError(
            "metadata to pack is invalid: " + "; ".join(problems),
            path=dest,
            hint="this is a bug in the caller building the metadata",
        )
    placeholder = serialize_metadata(meta)

    slots: list[_Slot] = []
    pos = 0
    entries: list[tuple[str, Role | None, Path | None, int]] = [
        (MEMBER_METADATA, None, None, len(placeholder))
    ]
    entries += [(s.name, s.role, s.source, sizes[s.name]) for s in ordered]
    for name, role, source, size in entries:
        header = local_header(name.encode("ascii"), size, 0, pos, _alignment(name))
        slot = _Slot(name, role or "program", source, size, pos, header, pos + len(header))
        slots.append(slot)
        pos = slot.data_offset + size

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise output_error(exc, dest.parent, "the archive here") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as out, ThreadPoolExecutor(max_workers=1) as pool:
            out.write(slots[0].local_header + placeholder)
            for slot in slots[1:]:
                out.write(slot.local_header)
                assert slot.source is not None
                try:
                    src = open(slot.source, "rb")  # noqa: SIM115 - closed right below
                except OSError as exc:
                    raise UnreadableError(
                        f"cannot read: {exc.strerror}", path=slot.source
                    ) from None
                with src:
                    slot.crc32, slot.sha256 = _stream(src, out, slot.size, pool)
            by_name = {spec.name: spec for spec in ordered}
            for entry, slot in zip(meta["members"], slots[1:], strict=True):
                entry["sha256"] = slot.sha256
                index = by_name[slot.name].provenance
                if index is not None:
                    sources[index]["sha256"] = slot.sha256
            twice = duplicate_weights(meta) if meta["min_reader_version"] >= 2 else []
            if twice:
                raise UsageError("cannot pack these members: " + "; ".join(twice), path=dest)
            final = serialize_metadata(meta)
            if len(final) != len(placeholder):  # pragma: no cover - sha256 hex has a fixed length
                raise AssertionError("metadata changed length")
            slots[0].crc32 = crc32(final)
            slots[0].sha256 = hashlib.sha256(final).hexdigest()
            cd_offset = out.tell()
            central = b"".join(
                central_entry(slot.name.encode("ascii"), slot.size, slot.crc32, slot.header_offset)
                for slot in slots
            )
            out.write(central + end_records(len(slots), cd_offset, len(central)))
            total = out.tell()
            out.seek(slots[0].data_offset)
            out.write(final)
            for slot in slots:
                out.seek(slot.header_offset + 14)
                out.write(struct.pack("<I", slot.crc32))
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, EtmError):  # full disk, read-only...
            raise output_error(exc, dest, "the archive") from None
        raise
    if fsync:
        _fsync_dir(dest.parent)
    written = tuple(
        WrittenMember(s.name, s.role, s.data_offset, s.size, s.crc32, s.sha256) for s in slots[1:]
    )
    return ArchiveWriteResult(dest, total, written, meta)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a directory, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["CHUNK_BYTES", "ArchiveWriteResult", "WrittenMember", "write_archive"]
