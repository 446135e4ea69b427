"""Zip records of an ``.etm`` archive: the one place for zip format facts (APPNOTE.TXT 6.3.x).

Signatures, ``struct`` formats, extra-field ids, the fixed DOS time and attributes the writer
uses, and the validating parse of the end records (EOCD, ZIP64), the central directory and the
local headers that the reader uses. Everything parsed here is untrusted: structural problems
of one member are collected, not raised one at a time.

>>> import struct
>>> struct.calcsize(LOCAL_FORMAT), struct.calcsize(CD_FORMAT), struct.calcsize(EOCD_FORMAT)
(30, 46, 22)
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from etm_compat.archive.names import check_member_name
from etm_compat.constants import BACKGROUND_HASH_MIN, ETM_MAX_MEMBERS, MEMBER_METADATA
from etm_compat.errors import ArchiveError

if TYPE_CHECKING:  # annotations only: importing the reader starts no thread machinery
    from concurrent.futures import Executor, Future

try:
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - isal is a dependency; a platform without its wheels
    _fast_crc32 = zlib.crc32

__all__ = [
    "ALIGN_EXTRA_ID", "ALIGN_EXTRA_MIN", "CD_FORMAT", "CD_SIG", "DIGEST_CHUNK", "DOS_DATE",
    "DOS_TIME", "EOCD64_FORMAT", "EOCD64_LOCATOR_FORMAT", "EOCD64_LOCATOR_SIG", "EOCD64_SIG",
    "EOCD_FORMAT", "EOCD_SIG", "EXTERNAL_ATTR", "HINT_REPACK", "LOCAL_FORMAT", "LOCAL_SIG",
    "MAX16", "MAX32", "VERSION_MADE_BY_UNIX", "ZIP64_EXTRA_ID", "MemberInfo", "central_entry",
    "crc32", "digest_range", "end_records", "local_header", "pread_into", "pwrite_all", "read_at",
    "read_directory",
]  # fmt: skip

LOCAL_SIG: Final = 0x04034B50
LOCAL_FORMAT: Final = "<IHHHHHIIIHH"  # 30 bytes
CD_SIG: Final = 0x02014B50
CD_FORMAT: Final = "<IHHHHHHIIIHHHHHII"  # 46 bytes
EOCD_SIG: Final = 0x06054B50
EOCD_FORMAT: Final = "<IHHHHIIH"  # 22 bytes
EOCD64_SIG: Final = 0x06064B50
EOCD64_FORMAT: Final = "<IQHHIIQQQQ"  # 56 bytes
EOCD64_LOCATOR_SIG: Final = 0x07064B50
EOCD64_LOCATOR_FORMAT: Final = "<IIQI"  # 20 bytes
ZIP64_EXTRA_ID: Final = 0x0001
#: Android zipalign's extra field: u16 alignment then zero padding (6 bytes at least).
ALIGN_EXTRA_ID: Final = 0xD935
ALIGN_EXTRA_MIN: Final = 6
DOS_TIME: Final = 0
DOS_DATE: Final = (0 << 9) | (1 << 5) | 1  # 1980-01-01
EXTERNAL_ATTR: Final = (stat.S_IFREG | 0o644) << 16
VERSION_MADE_BY_UNIX: Final = 3 << 8
MAX16: Final = 0xFFFF
MAX32: Final = 0xFFFFFFFF
_MAX_CD_BYTES: Final = 1024 * 1024
HINT_REPACK: Final = (
    "the file is damaged or was not written by etm-compat; repack it with `etm-compat pack`"
)


@dataclass(frozen=True)
class MemberInfo:
    """Where a member's data sits in the archive file."""

    name: str
    offset: int
    size: int
    crc32: int


def _zip64_values(extra: bytes, wanted: int) -> list[int] | None:
    """The first ``wanted`` u64 values of the ZIP64 extra field, or None if absent or short."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == ZIP64_EXTRA_ID:
            if len(body) < 8 * wanted:
                return None
            return list(struct.unpack_from(f"<{wanted}Q", body))
        pos += 4 + size
    return None if wanted else []


def read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


# --- member bytes: CRC-32 and sha256 in one pass, read with pread (never through a mapping) ----

#: Bytes per read while digesting a member: two buffers of this size, whatever the member size.
DIGEST_CHUNK: Final = 8 * 1024 * 1024


#: ``crc32(data, value=0) -> int``, the zip checksum: ISA-L's (python-isal: PCLMUL/AVX-512
#: folding, about 10x zlib 1.2's table code on x86-64), else zlib's; both release the GIL on
#: large buffers.
crc32: Final[Callable[..., int]] = _fast_crc32


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` of ``fd`` without using or moving the file position
    (threads may share ``fd``); the count read, 0 at the end of the file.

    A plain read: a file truncated by another process meanwhile gives a short count here, where
    touching a mapping of it would kill the process with SIGBUS.
    """
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - platforms without preadv
    view[: len(data)] = data  # pragma: no cover
    return len(data)  # pragma: no cover


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` without using or moving the file position
    (a write may take fewer bytes than asked: the rest follows)."""
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def digest_range(
    fd: int,
    offset: int,
    size: int,
    pool: Executor,
    *,
    sink: Callable[[memoryview], Any] | None = None,
) -> tuple[int, str, int]:
    """CRC-32 and sha256 of ``size`` bytes of ``fd`` from ``offset``: ``(crc, sha256 hex, read)``.

    ``read`` is less than ``size`` when the file ends first (it was truncated): the caller says
    so. Two reused buffers of :data:`DIGEST_CHUNK` bytes: while ``pool`` hashes one chunk with
    sha256, this thread reads the next and computes its CRC (all three release the GIL), so on
    two cores the cost is about sha256's alone. A range under
    :data:`~etm_compat.constants.BACKGROUND_HASH_MIN` is hashed here instead, and ``pool`` gets
    nothing (no thread starts): its handoff costs more than the overlap saves. ``sink`` gets
    every chunk, in order (extraction writes it out).
    """
    # Lazy: OpenSSL's hashes load only where something is hashed (opening an archive is not).
    import hashlib

    sha = hashlib.sha256()
    background = size >= BACKGROUND_HASH_MIN
    crc = 0
    bufs = (bytearray(max(1, min(size, DIGEST_CHUNK))), bytearray(max(1, min(size, DIGEST_CHUNK))))
    pending: Future[None] | None = None
    done = turn = 0
    while done < size:
        buf = memoryview(bufs[turn])
        n = pread_into(fd, buf[: min(len(buf), size - done)], offset + done)
        if n == 0:
            break
        chunk = buf[:n]
        if pending is not None:
            pending.result()  # hashes stay in order; the buffer read next is then free
        if background:
            pending = pool.submit(sha.update, chunk)
        else:
            sha.update(chunk)
        crc = crc32(chunk, crc)
        if sink is not None:
            sink(chunk)
        done += n
        turn ^= 1
    if pending is not None:
        pending.result()
    return crc, sha.hexdigest(), done


def _find_eocd(f: BinaryIO, size: int, path: Path) -> tuple[int, tuple[int, ...]]:
    if size < 22:
        raise ArchiveError(
            f"{size} bytes is too short for a zip archive", path=path, hint=HINT_REPACK
        )
    tail_len = min(size, 22 + MAX16)
    tail = read_at(f, size - tail_len, tail_len)
    pos = len(tail) - 22
    while pos >= 0:
        pos = tail.rfind(b"PK\x05\x06", 0, pos + 4)
        if pos < 0:
            break
        fields = struct.unpack_from(EOCD_FORMAT, tail, pos)
        if pos + 22 + fields[7] == len(tail):
            return size - tail_len + pos, fields
        pos -= 1
    raise ArchiveError(
        "no end-of-central-directory record (truncated, or not a zip archive)",
        path=path,
        hint=HINT_REPACK,
    )


def read_directory(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, MemberInfo], list[str]]:
    """Parse and cross-check the end records, central directory and local headers."""
    eocd_pos, (_, disk, cd_disk, n_disk, count, cd_size, cd_offset, _) = _find_eocd(f, size, path)
    if disk or cd_disk or n_disk != count:
        raise ArchiveError("multi-disk archives are not supported", path=path, hint=HINT_REPACK)
    cd_end = eocd_pos
    if count == MAX16 or cd_size == MAX32 or cd_offset == MAX32:
        loc_pos = eocd_pos - 20
        loc = read_at(f, loc_pos, 20) if loc_pos >= 0 else b""
        if len(loc) != 20 or struct.unpack_from("<I", loc)[0] != EOCD64_LOCATOR_SIG:
            raise ArchiveError(
                "ZIP64 end-of-central-directory locator missing", path=path, hint=HINT_REPACK
            )
        _, loc_disk, rec_pos, disks = struct.unpack(EOCD64_LOCATOR_FORMAT, loc)
        rec = read_at(f, rec_pos, 56) if rec_pos + 56 == loc_pos else b""
        if loc_disk or disks != 1 or len(rec) != 56:
            raise ArchiveError(
                "ZIP64 locator points to no ZIP64 record", path=path, hint=HINT_REPACK
            )
        sig, rec_size, _, _, disk, cd_disk, n_disk, count, cd_size, cd_offset = struct.unpack(
            EOCD64_FORMAT, rec
        )
        if sig != EOCD64_SIG or rec_size != 44 or disk or cd_disk or n_disk != count:
            raise ArchiveError(
                "ZIP64 end-of-central-directory record is malformed", path=path, hint=HINT_REPACK
            )
        cd_end = rec_pos
    if count == 0:
        raise ArchiveError("the archive has no members", path=path, hint=HINT_REPACK)
    if count > ETM_MAX_MEMBERS:
        raise ArchiveError(
            f"too many members ({count}; at most {ETM_MAX_MEMBERS} allowed)",
            path=path,
            hint=HINT_REPACK,
        )
    if cd_offset + cd_size != cd_end or cd_size > _MAX_CD_BYTES:
        raise ArchiveError(
            f"central directory ({cd_size} bytes at {cd_offset}) does not end where the "
            f"end record starts ({cd_end}): bytes are missing or inserted",
            path=path,
            hint=HINT_REPACK,
        )
    cd = read_at(f, cd_offset, cd_size)
    problems: list[str] = []
    entries: list[tuple[str, bytes, int, int, int, int]] = []  # name, raw, lho, size, crc, flags
    seen: set[str] = set()
    pos = 0
    for index in range(count):
        if pos + 46 > len(cd) or struct.unpack_from("<I", cd, pos)[0] != CD_SIG:
            raise ArchiveError(
                f"central directory entry {index} is malformed", path=path, hint=HINT_REPACK
            )
        (
            _,
            made_by,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            n_len,
            e_len,
            c_len,
            disk_start,
            _,
            ext_attr,
            lho,
        ) = struct.unpack_from(CD_FORMAT, cd, pos)
        raw = cd[pos + 46 : pos + 46 + n_len]
        extra = cd[pos + 46 + n_len : pos + 46 + n_len + e_len]
        pos += 46 + n_len + e_len + c_len
        if pos > len(cd):
            raise ArchiveError(
                f"central directory entry {index} runs past its end", path=path, hint=HINT_REPACK
            )
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"member {raw!r}: name is not UTF-8")
            continue
        label = f"member {name!r}"
        reason = check_member_name(name)
        if reason:
            problems.append(f"{label}: {reason}")
        if name in seen:
            problems.append(f"{label}: duplicate name")
        seen.add(name)
        if flags & 0x1:
            problems.append(f"{label}: encrypted")
        if flags & 0x8:
            problems.append(f"{label}: uses a data descriptor (sizes not in the local header)")
        if method != 0:
            problems.append(f"{label}: compressed (method {method}); .etm members must be stored")
        mode = ext_attr >> 16
        if made_by >> 8 == 3 and mode and stat.S_ISLNK(mode):
            problems.append(f"{label}: symbolic link entry")
        elif (made_by >> 8 == 3 and mode and not stat.S_ISREG(mode)) or ext_attr & 0x10:
            problems.append(f"{label}: not a regular file")
        wanted = [usize == MAX32, csize == MAX32, lho == MAX32]
        values = _zip64_values(extra, sum(wanted))
        if values is None:
            problems.append(f"{label}: ZIP64 extra field missing or short")
            continue
        it = iter(values)
        usize = next(it) if wanted[0] else usize
        csize = next(it) if wanted[1] else csize
        lho = next(it) if wanted[2] else lho
        if disk_start:
            problems.append(f"{label}: on another disk")
        if csize != usize:
            problems.append(f"{label}: stored size {csize} differs from size {usize}")
        entries.append((name, raw, lho, usize, crc, flags))
    if pos != len(cd):
        problems.append(f"central directory has {len(cd) - pos} stray bytes after {count} entries")

    members: dict[str, MemberInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, raw, lho, usize, crc, flags in entries:
        label = f"member {name!r}"
        head = read_at(f, lho, 30) if lho + 30 <= cd_offset else b""
        if len(head) != 30 or struct.unpack_from("<I", head)[0] != LOCAL_SIG:
            problems.append(f"{label}: no local header at offset {lho}")
            continue
        _, _, l_flags, l_method, _, _, l_crc, l_csize, l_usize, n_len, e_len = struct.unpack(
            LOCAL_FORMAT, head
        )
        l_raw = read_at(f, lho + 30, n_len + e_len)
        l_name, l_extra = l_raw[:n_len], l_raw[n_len:]
        if l_name != raw or l_method != 0 or l_flags != flags or l_crc != crc:
            problems.append(f"{label}: local header disagrees with the central directory")
        wanted = [l_usize == MAX32, l_csize == MAX32]
        values = _zip64_values(l_extra, sum(wanted)) or []
        it = iter(values)
        l_usize = next(it, -1) if wanted[0] else l_usize
        l_csize = next(it, -1) if wanted[1] else l_csize
        if l_usize != usize or l_csize != usize:
            problems.append(f"{label}: local header sizes disagree with the central directory")
        data = lho + 30 + n_len + e_len
        if data + usize > cd_offset:
            problems.append(
                f"{label}: declares {usize} bytes at offset {data}, past the end of the "
                f"member data ({cd_offset}); truncated or forged size"
            )
            continue
        members[name] = MemberInfo(name, data, usize, crc)
        spans.append((lho, data + usize, name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            problems.append(
                f"members {first!r} and {second!r} overlap (shared or forged data ranges)"
            )
    if (
        not problems
        and MEMBER_METADATA in members
        and (spans[0][2] != MEMBER_METADATA or spans[0][0] != 0)
    ):
        problems.append(f"{MEMBER_METADATA} must be the first member, at offset 0")
    return members, problems


# --- building records (the writer) --------------------------------------------------------------


def local_header(name: bytes, size: int, crc: int, header_offset: int, align: int) -> bytes:
    """A STORED local header whose data starts ``align``-aligned (zipalign-style padding)."""
    zip64 = size >= MAX32
    extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, size, size) if zip64 else b""
    unpadded = header_offset + struct.calcsize(LOCAL_FORMAT) + len(name) + len(extra)
    pad = -unpadded % align
    while 0 < pad < ALIGN_EXTRA_MIN:
        pad += align
    if pad:
        extra += struct.pack("<HHH", ALIGN_EXTRA_ID, pad - 4, align) + bytes(pad - ALIGN_EXTRA_MIN)
    shown = MAX32 if zip64 else size
    head = struct.pack(LOCAL_FORMAT, LOCAL_SIG, 45 if zip64 else 20, 0, 0, DOS_TIME, DOS_DATE, crc,
                       shown, shown, len(name), len(extra))  # fmt: skip
    return head + name + extra


def central_entry(name: bytes, size: int, crc: int, header_offset: int) -> bytes:
    """A central directory entry (ZIP64 extra field only for what does not fit 32 bits)."""
    fields: list[int] = []
    size_shown = size
    if size >= MAX32:
        fields += [size, size]
        size_shown = MAX32
    offset_shown = header_offset
    if header_offset >= MAX32:
        fields.append(header_offset)
        offset_shown = MAX32
    extra = (
        struct.pack(f"<HH{len(fields)}Q", ZIP64_EXTRA_ID, 8 * len(fields), *fields)
        if fields
        else b""
    )
    needed = 45 if fields else 20
    head = struct.pack(CD_FORMAT, CD_SIG, VERSION_MADE_BY_UNIX | needed, needed, 0, 0, DOS_TIME,
                       DOS_DATE, crc, size_shown, size_shown, len(name), len(extra), 0, 0, 0,
                       EXTERNAL_ATTR, offset_shown)  # fmt: skip
    return head + name + extra


def end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    """The end records: ZIP64 record and locator when needed, then the classic EOCD."""
    out = b""
    if count > MAX16 or cd_offset >= MAX32 or cd_size >= MAX32:
        eocd64_offset = cd_offset + cd_size
        out += struct.pack(EOCD64_FORMAT, EOCD64_SIG, 44, VERSION_MADE_BY_UNIX | 45, 45, 0, 0,
                           count, count, cd_size, cd_offset)  # fmt: skip
        out += struct.pack(EOCD64_LOCATOR_FORMAT, EOCD64_LOCATOR_SIG, 0, eocd64_offset, 1)
    n = min(count, MAX16)
    out += struct.pack(
        EOCD_FORMAT, EOCD_SIG, 0, 0, n, n, min(cd_size, MAX32), min(cd_offset, MAX32), 0
    )
    return out
