"""Write ``.etm`` archives: stored, aligned, deterministic, streaming, atomic.

Layout (docs/FORMAT.md): ``metadata.json`` first, then the main program, the other programs
(format 2), the tokenizer, its configs, the processor configs (format 2) and the weight files
sorted by name (the order and the version come from :mod:`etm_compat.archive.plan`); every
member STORED; each member's data aligned through a
zipalign-style extra field in its local header (16 KiB for ``.pte``/``.ptd``, 64 bytes for the
rest); DOS time 1980-01-01 00:00, unix mode 0644, no comment, no host data; ZIP64 records only
for sizes or offsets that do not fit 32 bits.

Because a sha256 hex digest has a fixed length, the metadata's size is known from a copy with
placeholder digests, and so is every offset; the members are streamed once to theirs
(:mod:`etm_compat.archive.streaming`: CRC-32 and sha256 in the same pass), and then the local
headers with their CRCs, the real metadata and the central directory are written around them.
All of it goes to a temp file in the destination folder that replaces the destination only once
complete and fsynced. :class:`ArchiveDraft` starts the copy before the metadata exists
(``pack`` infers meanwhile); :func:`write_archive` is a draft given its metadata up front.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etm_compat.archive.metadata import SHA256_PLACEHOLDER, serialize_metadata, validate_metadata
from etm_compat.archive.names import Role
from etm_compat.archive.plan import MemberSpec, fill_metadata, order_specs
from etm_compat.archive.programs import duplicate_weights
from etm_compat.archive.streaming import (
    PENDING_SHA256,
    BackgroundStream,
    Digests,
    Placement,
    stream_members,
)
from etm_compat.archive.zipfmt import (
    DIGEST_CHUNK,
    central_entry,
    crc32,
    digest_range,
    end_records,
    local_header,
    pwrite_all,
)
from etm_compat.constants import ETM_ALIGN_DEFAULT, ETM_ALIGN_MAPPED, MEMBER_METADATA
from etm_compat.errors import EtmError, MetadataError, OutputError, UnreadableError, UsageError
from etm_compat.fileio import FileStamp, check_output, new_temp_file, output_error, stamp_of
from etm_compat.remembered import hashed_sha256

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
    data_offset: int
    crc32: int = 0
    sha256: str = SHA256_PLACEHOLDER


def _alignment(name: str) -> int:
    return ETM_ALIGN_MAPPED if name.endswith((".pte", ".ptd")) else ETM_ALIGN_DEFAULT


#: The metadata, its provenance sources and its serialized placeholder (sha256 digests zeroed).
_Prepared = tuple[dict[str, Any], list[dict[str, Any]], bytes]


class ArchiveDraft:
    """An archive being written at ``dest``: a temp file beside it that holds the members from
    the start, to which :meth:`finish` adds the metadata before it replaces ``dest``.

    Given the ``metadata`` up front (as :func:`write_archive` does), the layout is known and
    :meth:`finish` copies the members. Without it, they are copied at once, on a thread of their
    own, where the smallest metadata would place them, while the caller works the metadata out
    (``pack`` infers and checks meanwhile); :meth:`finish` keeps that copy when the real
    metadata leaves every member where it was, and copies them again otherwise
    (:attr:`copies` counts the passes). The main program's data starts on a 16 KiB boundary, so
    any metadata of up to about 16 KiB leaves them in place. Either way the archive is the one
    :func:`write_archive` writes from the same input, byte for byte.

    A context manager: leaving the block without :meth:`finish` stops the copy and removes the
    temp file. The checks that :func:`write_archive` makes before writing (the destination, the
    sources' sizes) are made here, on creation.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        members: Sequence[MemberSpec],
        *,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        fsync: bool = True,
    ) -> None:
        self.dest = Path(dest)
        self._ordered = order_specs(members)
        self._fsync = fsync
        check_output(self.dest, force=overwrite, sources=[spec.source for spec in self._ordered])
        if not self.dest.parent.is_dir():
            raise OutputError("destination folder does not exist", path=self.dest.parent)
        self._stamps = {spec.name: _stamp(spec.source) for spec in self._ordered}
        self._sizes = {name: stamp[2] for name, stamp in self._stamps.items()}
        self._prepared = self._prepare(metadata) if metadata is not None else None
        #: How many times the members were copied (2: the metadata moved them; see above).
        self.copies = 0
        try:
            fd, tmp_name = new_temp_file(self.dest.parent, f".{self.dest.name}.")
        except OSError as exc:
            raise output_error(exc, self.dest.parent, "the archive here") from None
        self._fd, self._tmp, self._open = fd, Path(tmp_name), True
        self._pool = ThreadPoolExecutor(max_workers=1)  # sha256 beside large copies
        self._stream: BackgroundStream | None = None
        if self._prepared is None:
            self.copies = 1
            self._stream = BackgroundStream(self._placements(self._layout(0)), fd, self._pool, sync=fsync)

    def __enter__(self) -> ArchiveDraft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def _prepare(self, metadata: Mapping[str, Any]) -> _Prepared:
        """The metadata with the writer's fields filled in, checked, and its placeholder."""
        meta: dict[str, Any] = copy.deepcopy(dict(metadata))
        fill_metadata(meta, self._ordered, self._sizes, SHA256_PLACEHOLDER)
        sources: list[dict[str, Any]] = meta.get("provenance", {}).get("sources", [])
        for spec in self._ordered:
            if spec.provenance is not None:
                if not 0 <= spec.provenance < len(sources):
                    raise UsageError(f"member {spec.name!r}: no provenance source #{spec.provenance}")
                sources[spec.provenance]["sha256"] = SHA256_PLACEHOLDER
        problems = validate_metadata(meta)
        if problems:
            raise MetadataError(
                "metadata to pack is invalid: " + "; ".join(problems),
                path=self.dest,
                hint="this is a bug in the caller building the metadata",
            )
        return meta, sources, serialize_metadata(meta)

    def _layout(self, metadata_size: int) -> list[_Slot]:
        """Where each member goes after a metadata of ``metadata_size`` bytes (CRCs still 0)."""
        slots: list[_Slot] = []
        pos = 0
        entries: list[tuple[str, Role | None, Path | None, int]] = [(MEMBER_METADATA, None, None, metadata_size)]
        entries += [(s.name, s.role, s.source, self._sizes[s.name]) for s in self._ordered]
        for name, role, source, size in entries:
            header = local_header(name.encode("ascii"), size, 0, pos, _alignment(name))
            slots.append(_Slot(name, role or "program", source, size, pos, pos + len(header)))
            pos = slots[-1].data_offset + size
        return slots

    @staticmethod
    def _placements(slots: Sequence[_Slot]) -> tuple[Placement, ...]:
        return tuple((s.source, s.data_offset, s.size) for s in slots[1:] if s.source is not None)

    def _digests(self, slots: Sequence[_Slot]) -> list[Digests]:
        """The members' digests, copied where ``slots`` place them: by the background copy when
        it placed them there, else now."""
        placements = self._placements(slots)
        stream, self._stream = self._stream, None
        if stream is not None:
            if stream.placements == placements:
                return self._settled(slots, stream.result())
            stream.stop()
        self.copies += 1
        return self._settled(slots, stream_members(placements, self._fd, self._pool))

    def _settled(self, slots: Sequence[_Slot], digests: list[Digests]) -> list[Digests]:
        """``digests`` with each pending sha256 (a member copied from the bytes its reader read
        ahead) taken from that reader, who hashed the file at the stamp this draft began with;
        else (the reader read another state of it, or none) hashed from the copy itself."""
        settled = []
        for slot, (crc, sha) in zip(slots[1:], digests, strict=True):
            if sha == PENDING_SHA256:
                sha = hashed_sha256(self._stamps[slot.name]) or digest_range(
                    self._fd, slot.data_offset, slot.size, self._pool
                )[1]
            settled.append((crc, sha))
        return settled

    def finish(self, metadata: Mapping[str, Any] | None = None) -> ArchiveWriteResult:
        """Add the metadata (given here, or on creation) and publish the archive at ``dest``."""
        if not self._open:
            raise UsageError("this archive draft was finished or discarded already")
        if (metadata is None) == (self._prepared is None):
            raise UsageError("give the metadata once: on creation or to finish()")
        try:
            meta, sources, placeholder = self._prepared or self._prepare(metadata or {})
            slots = self._layout(len(placeholder))
            for slot, (crc, sha) in zip(slots[1:], self._digests(slots), strict=True):
                slot.crc32, slot.sha256 = crc, sha
            for spec in self._ordered:  # each as measured when the draft began, copied since
                if _stamp(spec.source) != self._stamps[spec.name]:
                    raise UnreadableError(
                        "changed while being packed", path=spec.source, hint="pack again once it is stable"
                    )
            by_name = {spec.name: spec for spec in self._ordered}
            for entry, slot in zip(meta["members"], slots[1:], strict=True):
                entry["sha256"] = slot.sha256
                index = by_name[slot.name].provenance
                if index is not None:
                    sources[index]["sha256"] = slot.sha256
            twice = duplicate_weights(meta) if meta["min_reader_version"] >= 2 else []
            if twice:
                raise UsageError("cannot pack these members: " + "; ".join(twice), path=self.dest)
            final = serialize_metadata(meta)
            if len(final) != len(placeholder):  # pragma: no cover - sha256 hex has a fixed length
                raise AssertionError("metadata changed length")
            slots[0].crc32, slots[0].sha256 = crc32(final), hashlib.sha256(final).hexdigest()
            total = self._write_frame(slots, final)
            if self._fsync:
                os.fsync(self._fd)
            self._close()
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.dest)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, EtmError):  # full disk, read-only...
                raise output_error(exc, self.dest, "the archive") from None
            raise
        if self._fsync:
            _fsync_dir(self.dest.parent)
        written = tuple(
            WrittenMember(s.name, s.role, s.data_offset, s.size, s.crc32, s.sha256) for s in slots[1:]
        )
        return ArchiveWriteResult(self.dest, total, written, meta)

    def _write_frame(self, slots: Sequence[_Slot], final: bytes) -> int:
        """Everything around the members' data: the local headers (with their CRCs), the
        metadata, the central directory and its end records; the archive's size."""
        for slot in slots:
            header = local_header(slot.name.encode("ascii"), slot.size, slot.crc32, slot.header_offset,
                                  _alignment(slot.name))  # fmt: skip
            pwrite_all(self._fd, memoryview(header), slot.header_offset)
        pwrite_all(self._fd, memoryview(final), slots[0].data_offset)
        cd_offset = slots[-1].data_offset + slots[-1].size
        central = b"".join(
            central_entry(slot.name.encode("ascii"), slot.size, slot.crc32, slot.header_offset)
            for slot in slots
        )
        tail = central + end_records(len(slots), cd_offset, len(central))
        pwrite_all(self._fd, memoryview(tail), cd_offset)
        os.ftruncate(self._fd, cd_offset + len(tail))  # past it: only a first copy's leftovers
        return cd_offset + len(tail)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._pool.shutdown(wait=True)
            os.close(self._fd)

    def discard(self) -> None:
        """Stop the copy and remove the temp file (nothing when finished already)."""
        if not self._open:
            return
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
        with contextlib.suppress(OSError):
            self._close()
        self._tmp.unlink(missing_ok=True)


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
    :class:`ArchiveDraft` writes the same archive with the metadata given later.

    >>> write_archive("out/model.etm", metadata=meta,   # doctest: +SKIP
    ...     members=[MemberSpec("model.pte", Path("legacy/model.pte"), "program")])
    """
    with ArchiveDraft(dest, members, metadata=metadata, overwrite=overwrite, fsync=fsync) as draft:
        return draft.finish()


def _stamp(source: Path) -> FileStamp:
    try:
        return stamp_of(os.stat(source))
    except OSError as exc:
        raise UnreadableError(f"cannot read: {exc.strerror}", path=source) from None


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


__all__ = ["CHUNK_BYTES", "ArchiveDraft", "ArchiveWriteResult", "WrittenMember", "write_archive"]
