"""Read ``.etm`` archives safely: validate the zip structure, map members in place.

Opening reads only the end records, the central directory, the local headers and
``metadata.json``: O(1) in the size of the model. Everything read is untrusted; every structural
problem found is collected and reported at once (:class:`ArchiveError`), naming the member.
Member bytes are then served zero-copy from one ``mmap`` of the file.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
import re
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

from etm_compat.constants import (
    ETM_MAX_MEMBERS,
    ETM_MAX_METADATA_BYTES,
    MEMBER_METADATA,
    MEMBER_PROGRAM,
    MEMBER_TOKENIZER_CONFIG,
    MEMBER_TOKENIZER_NAMES,
    MEMBER_WEIGHTS_DIR,
)
from etm_compat.errors import (
    ArchiveError,
    IntegrityError,
    MetadataError,
    OutputError,
    UnreadableError,
)
from etm_compat.fileio import open_regular
from etm_compat.metadata import Role, parse_metadata

log = logging.getLogger(__name__)

# --- zip structure (APPNOTE.TXT 6.3.x) --------------------------------------------------------
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
_CHUNK: Final = 8 * 1024 * 1024
_WEIGHTS_NAME = re.compile(r"weights/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.ptd\Z")
_HINT_REPACK: Final = (
    "the file is damaged or was not written by etm-compat; repack it with `etm-compat pack`"
)


def role_of(name: str) -> Role | None:
    """The role a member name implies, or None for a name an archive may not hold."""
    if name == MEMBER_PROGRAM:
        return "program"
    if name in MEMBER_TOKENIZER_NAMES:
        return "tokenizer"
    if name == MEMBER_TOKENIZER_CONFIG:
        return "tokenizer_config"
    if _WEIGHTS_NAME.match(name) and ".." not in name:
        return "weights"
    return None


def check_member_name(name: str) -> str | None:
    """Why ``name`` may not appear in an archive, or None if it may."""
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name:
        return "backslash in name"
    if ".." in name.split("/"):
        return "path traversal ('..')"
    if name == MEMBER_METADATA or role_of(name) is not None:
        return None
    return (
        f"not an allowed member name (allowed: {MEMBER_METADATA}, {MEMBER_PROGRAM}, "
        f"{', '.join(MEMBER_TOKENIZER_NAMES)}, {MEMBER_TOKENIZER_CONFIG}, "
        f"{MEMBER_WEIGHTS_DIR}<name>.ptd)"
    )


@dataclass(frozen=True)
class MemberInfo:
    """Where a member's data sits in the archive file."""

    name: str
    offset: int
    size: int
    crc32: int


@dataclass(frozen=True)
class Problem:
    """One verification finding about one member."""

    member: str
    code: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.member}: {self.message}"


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


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _find_eocd(f: BinaryIO, size: int, path: Path) -> tuple[int, tuple[int, ...]]:
    if size < 22:
        raise ArchiveError(
            f"{size} bytes is too short for a zip archive", path=path, hint=_HINT_REPACK
        )
    tail_len = min(size, 22 + MAX16)
    tail = _read_at(f, size - tail_len, tail_len)
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
        hint=_HINT_REPACK,
    )


def _read_directory(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, MemberInfo], list[str]]:
    """Parse and cross-check the end records, central directory and local headers."""
    eocd_pos, (_, disk, cd_disk, n_disk, count, cd_size, cd_offset, _) = _find_eocd(f, size, path)
    if disk or cd_disk or n_disk != count:
        raise ArchiveError("multi-disk archives are not supported", path=path, hint=_HINT_REPACK)
    cd_end = eocd_pos
    if count == MAX16 or cd_size == MAX32 or cd_offset == MAX32:
        loc_pos = eocd_pos - 20
        loc = _read_at(f, loc_pos, 20) if loc_pos >= 0 else b""
        if len(loc) != 20 or struct.unpack_from("<I", loc)[0] != EOCD64_LOCATOR_SIG:
            raise ArchiveError(
                "ZIP64 end-of-central-directory locator missing", path=path, hint=_HINT_REPACK
            )
        _, loc_disk, rec_pos, disks = struct.unpack(EOCD64_LOCATOR_FORMAT, loc)
        rec = _read_at(f, rec_pos, 56) if rec_pos + 56 == loc_pos else b""
        if loc_disk or disks != 1 or len(rec) != 56:
            raise ArchiveError(
                "ZIP64 locator points to no ZIP64 record", path=path, hint=_HINT_REPACK
            )
        sig, rec_size, _, _, disk, cd_disk, n_disk, count, cd_size, cd_offset = struct.unpack(
            EOCD64_FORMAT, rec
        )
        if sig != EOCD64_SIG or rec_size != 44 or disk or cd_disk or n_disk != count:
            raise ArchiveError(
                "ZIP64 end-of-central-directory record is malformed", path=path, hint=_HINT_REPACK
            )
        cd_end = rec_pos
    if count == 0:
        raise ArchiveError("the archive has no members", path=path, hint=_HINT_REPACK)
    if count > ETM_MAX_MEMBERS:
        raise ArchiveError(
            f"too many members ({count}; at most {ETM_MAX_MEMBERS} allowed)",
            path=path,
            hint=_HINT_REPACK,
        )
    if cd_offset + cd_size != cd_end or cd_size > _MAX_CD_BYTES:
        raise ArchiveError(
            f"central directory ({cd_size} bytes at {cd_offset}) does not end where the "
            f"end record starts ({cd_end}): bytes are missing or inserted",
            path=path,
            hint=_HINT_REPACK,
        )
    cd = _read_at(f, cd_offset, cd_size)
    problems: list[str] = []
    entries: list[tuple[str, bytes, int, int, int, int]] = []  # name, raw, lho, size, crc, flags
    seen: set[str] = set()
    pos = 0
    for index in range(count):
        if pos + 46 > len(cd) or struct.unpack_from("<I", cd, pos)[0] != CD_SIG:
            raise ArchiveError(
                f"central directory entry {index} is malformed", path=path, hint=_HINT_REPACK
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
                f"central directory entry {index} runs past its end", path=path, hint=_HINT_REPACK
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
        head = _read_at(f, lho, 30) if lho + 30 <= cd_offset else b""
        if len(head) != 30 or struct.unpack_from("<I", head)[0] != LOCAL_SIG:
            problems.append(f"{label}: no local header at offset {lho}")
            continue
        _, _, l_flags, l_method, _, _, l_crc, l_csize, l_usize, n_len, e_len = struct.unpack(
            LOCAL_FORMAT, head
        )
        l_raw = _read_at(f, lho + 30, n_len + e_len)
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


class EtmArchive:
    """An open, validated ``.etm`` archive; use :func:`open_archive`.

    >>> with open_archive("model.etm") as etm:     # doctest: +SKIP
    ...     etm.metadata["tokenizer"]["format"], etm.member_range("model.pte")
    ('sentencepiece', (16384, 2304))
    """

    def __init__(
        self, path: Path, file: BinaryIO, members: dict[str, MemberInfo], metadata: dict[str, Any]
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.members: Mapping[str, MemberInfo] = members
        self._file = file
        self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def __enter__(self) -> EtmArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close; views handed out by :meth:`member_view` must be released first."""
        try:
            self._map.close()
        except BufferError:
            log.warning(
                "%s: member views still in use; the mapping stays until they are freed", self.path
            )
        self._file.close()

    def _info(self, name: str) -> MemberInfo:
        try:
            return self.members[name]
        except KeyError:
            raise ArchiveError(
                f"no member {name!r} (members: {sorted(self.members)})", path=self.path
            ) from None

    def member_range(self, name: str) -> tuple[int, int]:
        """``(offset, length)`` of the member's data in the archive file."""
        info = self._info(name)
        return info.offset, info.size

    def member_view(self, name: str) -> memoryview:
        """The member's bytes, zero-copy over the archive's mapping (read-only)."""
        info = self._info(name)
        return memoryview(self._map)[info.offset : info.offset + info.size]

    def _expected_sha(self) -> dict[str, str]:
        return {m["name"]: m["sha256"] for m in self.metadata["members"]}

    def _chunks(self, info: MemberInfo) -> Iterator[bytes]:
        self._file.seek(info.offset)
        left = info.size
        while left:
            chunk = self._file.read(min(_CHUNK, left))
            if not chunk:
                raise IntegrityError(
                    f"member {info.name!r} is truncated", path=self.path, hint=_HINT_REPACK
                )
            left -= len(chunk)
            yield chunk

    def _hash(
        self, info: MemberInfo, pool: ThreadPoolExecutor, sink: BinaryIO | None = None
    ) -> tuple[int, str]:
        sha = hashlib.sha256()
        crc = 0
        pending: Future[None] | None = None
        for chunk in self._chunks(info):
            if pending is not None:
                pending.result()
            pending = pool.submit(sha.update, chunk)
            crc = zlib.crc32(chunk, crc)
            if sink is not None:
                sink.write(chunk)
        if pending is not None:
            pending.result()
        return crc, sha.hexdigest()

    def _check(self, info: MemberInfo, crc: int, sha: str) -> list[Problem]:
        found: list[Problem] = []
        hint = "the archive is corrupt; repack it from the original files"
        if crc != info.crc32:
            found.append(
                Problem(
                    info.name,
                    "crc-mismatch",
                    f"CRC32 is {crc:08x}, the central directory says {info.crc32:08x}",
                    hint,
                )
            )
        want = self._expected_sha().get(info.name)
        if info.name != MEMBER_METADATA and sha != want:
            found.append(
                Problem(
                    info.name,
                    "sha256-mismatch",
                    f"sha256 is {sha}, metadata.json says {want}",
                    hint,
                )
            )
        return found

    def verify(self) -> list[Problem]:
        """Stream every member; compare CRC32 and sha256 with the directory and metadata."""
        problems: list[Problem] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for info in self.members.values():
                try:
                    crc, sha = self._hash(info, pool)
                except IntegrityError as exc:
                    problems.append(Problem(info.name, "truncated", exc.message, _HINT_REPACK))
                    continue
                problems.extend(self._check(info, crc, sha))
        return problems

    def extract(
        self,
        dest_dir: str | os.PathLike[str],
        *,
        force: bool = False,
        include_metadata: bool = False,
    ) -> list[Path]:
        """Restore the loose layout into ``dest_dir``: ``weights/x.ptd`` becomes ``x.ptd``.

        Refuses to replace existing files unless ``force``; each file is written to a temp file
        beside it, checked against its sha256 and CRC, and renamed only once every member has
        been checked, so a corrupt archive leaves nothing behind.
        """
        root = Path(dest_dir)
        root.mkdir(parents=True, exist_ok=True)
        real_root = root.resolve()
        plan: list[tuple[MemberInfo, Path]] = []
        for info in self.members.values():
            if info.name == MEMBER_METADATA and not include_metadata:
                continue
            target = root / info.name.rsplit("/", 1)[-1]
            # Names were validated at open; this guards against a future name rule slipping.
            if target.parent.resolve() != real_root:
                raise ArchiveError(
                    f"member {info.name!r} would be written outside {root}", path=self.path
                )
            plan.append((info, target))
        existing = [str(t) for _, t in plan if t.exists() or t.is_symlink()]
        if existing and not force:
            raise OutputError(
                f"would overwrite {', '.join(existing)}",
                path=root,
                hint="extract into an empty folder or pass --force",
            )
        temps: list[tuple[Path, Path]] = []
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                for info, target in plan:
                    fd, tmp_name = tempfile.mkstemp(
                        prefix=f".{target.name}.", suffix=".tmp", dir=root
                    )
                    temps.append((Path(tmp_name), target))
                    with os.fdopen(fd, "wb") as out:
                        crc, sha = self._hash(info, pool, out)
                        out.flush()
                        os.fsync(out.fileno())
                    found = self._check(info, crc, sha)
                    if found:
                        raise IntegrityError(
                            "; ".join(map(str, found)), path=self.path, hint=found[0].hint
                        )
            for tmp, target in temps:
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            raise
        return [target for _, target in plan]


def open_archive(path: str | os.PathLike[str]) -> EtmArchive:
    """Open and validate an ``.etm`` archive (structure and metadata, not member hashes).

    >>> with open_archive("model.etm") as etm:     # doctest: +SKIP
    ...     etm.metadata["generation"]["stop_token_ids"]
    [2]
    """
    path = Path(path)
    try:
        f = open_regular(path)  # owned by the EtmArchive on success
    except OSError as exc:
        raise UnreadableError(f"cannot open: {exc.strerror}", path=path) from None
    try:
        size = os.fstat(f.fileno()).st_size
        members, problems = _read_directory(f, size, path)
        if problems:
            raise ArchiveError(
                "unsafe or malformed archive: " + "; ".join(problems), path=path, hint=_HINT_REPACK
            )
        if MEMBER_METADATA not in members:
            raise MetadataError(f"no {MEMBER_METADATA} member", path=path, hint=_HINT_REPACK)
        metadata = _read_metadata(f, members, path)
        return EtmArchive(path, f, members, metadata)
    except BaseException:
        f.close()
        raise


def _read_metadata(f: BinaryIO, members: dict[str, MemberInfo], path: Path) -> dict[str, Any]:
    info = members[MEMBER_METADATA]
    name = f"{path}!{MEMBER_METADATA}"
    if info.size > ETM_MAX_METADATA_BYTES:
        raise MetadataError(
            f"metadata.json is {info.size} bytes, more than the {ETM_MAX_METADATA_BYTES} allowed",
            path=name,
            hint=_HINT_REPACK,
        )
    raw = _read_at(f, info.offset, info.size)
    if zlib.crc32(raw) != info.crc32:
        raise IntegrityError("metadata.json fails its CRC32 check", path=name, hint=_HINT_REPACK)
    meta = parse_metadata(raw, name=name)
    problems: list[str] = []
    listed: dict[str, Any] = {}
    for entry in meta["members"]:
        if entry["name"] in listed:
            problems.append(f"{entry['name']!r} listed twice")
        listed[entry["name"]] = entry
    actual = {n for n in members if n != MEMBER_METADATA}
    for name_ in sorted(actual - listed.keys()):
        problems.append(f"member {name_!r} is in the archive but not in metadata.json")
    for name_ in sorted(listed.keys() - actual):
        problems.append(f"{name_!r} is listed in metadata.json but not in the archive")
    for name_ in sorted(actual & listed.keys()):
        entry = listed[name_]
        if entry["size"] != members[name_].size:
            problems.append(
                f"member {name_!r} is {members[name_].size} bytes, metadata.json says {entry['size']}"
            )
        if entry["role"] != role_of(name_):
            problems.append(
                f"member {name_!r} has role {entry['role']!r}, expected {role_of(name_)!r}"
            )
    if MEMBER_PROGRAM not in actual:
        problems.append(f"no {MEMBER_PROGRAM} member")
    if problems:
        raise MetadataError(
            "metadata.json disagrees with the archive: " + "; ".join(problems),
            path=name,
            hint=_HINT_REPACK,
        )
    return meta


def verify_archive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Open and fully verify an archive; raise :class:`IntegrityError` listing every problem.

    Returns the metadata when every member's CRC32 and sha256 match.
    """
    with open_archive(path) as etm:
        problems = etm.verify()
        if problems:
            raise IntegrityError(
                f"{len(problems)} problem(s): " + "; ".join(map(str, problems)),
                path=path,
                hint=problems[0].hint,
            )
        return etm.metadata
