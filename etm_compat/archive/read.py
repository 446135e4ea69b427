"""Read ``.etm`` archives safely: validate the zip structure, map members in place.

Opening reads only the end records, the central directory, the local headers and
``metadata.json``: O(1) in the size of the model. Everything read is untrusted; every structural
problem found is collected and reported at once (:class:`ArchiveError`), naming the member. An
archive for a newer reader is refused as such (:class:`UnsupportedVersionError`) even when its
new member names break this reader's name rules: the version is judged before the names.
Member bytes are served zero-copy from one ``mmap`` of the file (:meth:`EtmArchive.member_view`)
or read with ``pread`` (:meth:`~EtmArchive.read_member`, verification, extraction): these never
touch the mapping, so an archive truncated in place meanwhile is an :class:`IntegrityError`, not
a SIGBUS. :attr:`EtmArchive.layout` says which member is which (programs, their weights in load
order, processors, modalities).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from etm_compat.archive.layout import ArchiveLayout, check_members, read_layout
from etm_compat.archive.metadata import parse_metadata
from etm_compat.archive.names import check_member_name, is_archive, role_of
from etm_compat.archive.zipfmt import (
    HINT_REPACK,
    MemberInfo,
    crc32,
    digest_range,
    read_at,
    read_directory,
)
from etm_compat.constants import (
    ETM_MAX_METADATA_BYTES,
    MEMBER_METADATA,
)
from etm_compat.errors import (
    ArchiveError,
    EtmError,
    IntegrityError,
    MetadataError,
    OutputError,
    UnreadableError,
    UnsupportedVersionError,
    UsageError,
)
from etm_compat.fileio import new_temp_file, open_regular, output_error

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "EtmArchive",
    "MemberInfo",
    "Problem",
    "check_member_name",
    "is_archive",
    "open_archive",
    "role_of",
]



@dataclass(frozen=True)
class Problem:
    """One verification finding about one member."""

    member: str
    code: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.member}: {self.message}"


class EtmArchive:
    """An open, validated ``.etm`` archive; use :func:`open_archive`.

    >>> with open_archive("model.etm") as etm:     # doctest: +SKIP
    ...     etm.metadata["tokenizer"]["format"], etm.member_range("model.pte")
    ('sentencepiece', (16384, 2304))
    >>> with open_archive("lora.etm") as etm:      # doctest: +SKIP
    ...     [(p.name, p.role, p.data) for p in etm.layout.programs]
    [('model', 'model', ('weights/foundation.ptd', 'weights/adapter_a.ptd')), ...]
    """

    def __init__(
        self,
        path: Path,
        file: BinaryIO,
        members: dict[str, MemberInfo],
        metadata: dict[str, Any],
        metadata_bytes: bytes | None = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        #: ``metadata.json`` exactly as read (and CRC-checked) when the archive was opened.
        self.metadata_bytes = metadata_bytes
        #: The programs and their roles, each program's weights in load order, processors,
        #: modalities (a version-1 archive is one program, ``model``, loading every weights file).
        self.layout: ArchiveLayout = read_layout(metadata)
        self.members: Mapping[str, MemberInfo] = members
        self._file = file
        self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def __enter__(self) -> EtmArchive:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def close(self) -> None:
        """Unmap and close; views handed out by :meth:`member_view` must be released first."""
        try:
            self._map.close()
        except BufferError:
            # Lazy: a warning only a misuse reaches; opening an archive stays light.
            import logging

            logging.getLogger(__name__).warning(
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
        """The member's bytes, zero-copy over the archive's mapping (read-only).

        A mapping is only as stable as the file: if another process truncates the archive while
        the view is read (``cp`` over it does), the kernel kills this process with SIGBUS. Use
        :meth:`read_member` (plain reads: a truncation is an :class:`IntegrityError`) for bytes
        that outlive a moment, or wherever the archive may be replaced in place.
        """
        info = self._info(name)
        return memoryview(self._map)[info.offset : info.offset + info.size]

    def read_member(self, name: str, start: int = 0, length: int | None = None) -> bytes:
        """The member's bytes (or ``length`` of them from ``start``, clamped to the member), read
        with ``pread``: one copy, the mapping is not touched.

        Raises :class:`IntegrityError` when the file is shorter than its directory says: it was
        truncated or replaced after it was opened.
        """
        info = self._info(name)
        start = min(max(start, 0), info.size)
        end = info.size if length is None else min(info.size, start + max(length, 0))
        parts: list[bytes] = []
        done = start
        while done < end:  # Linux reads at most 2 GiB - 4 KiB per call
            part = os.pread(self._file.fileno(), end - done, info.offset + done)
            if not part:
                raise self.truncated_error(name, done)
            parts.append(part)
            done += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def fileno(self) -> int:
        """The archive's open file descriptor (valid until :meth:`close`), for kernel copies."""
        return self._file.fileno()

    def truncated_error(self, name: str, got: int) -> IntegrityError:
        """The error for a member whose bytes ended after ``got`` of them."""
        info = self._info(name)
        return IntegrityError(
            f"member {name!r} ends after {got} of its {info.size} bytes: the archive was "
            "truncated or replaced after it was opened",
            path=self.path,
            hint="open the archive again once it is complete; if it stays short, repack it",
        )

    def _expected_sha(self) -> dict[str, str]:
        return {m["name"]: m["sha256"] for m in self.metadata["members"]}

    def _hash(
        self, info: MemberInfo, pool: ThreadPoolExecutor, sink: BinaryIO | None = None
    ) -> tuple[int, str]:
        fd, write = self._file.fileno(), None if sink is None else sink.write
        crc, sha, got = digest_range(fd, info.offset, info.size, pool, sink=write)
        if got != info.size:
            raise self.truncated_error(info.name, got)
        return crc, sha

    def _check(self, info: MemberInfo, crc: int, sha: str) -> list[Problem]:
        hint = "the archive is corrupt; repack it from the original files"
        want = self._expected_sha().get(info.name)
        found = []
        if crc != info.crc32:
            found.append(Problem(info.name, "crc-mismatch",
                                 f"CRC32 is {crc:08x}, the central directory says {info.crc32:08x}", hint))
        if info.name != MEMBER_METADATA and sha != want:
            found.append(Problem(info.name, "sha256-mismatch",
                                 f"sha256 is {sha}, metadata.json says {want}", hint))
        return found  # fmt: skip

    def verify(self) -> list[Problem]:
        """Stream every member; compare CRC32 and sha256 with the directory and metadata."""
        problems: list[Problem] = []
        # Lazy: only hashing members needs a thread pool; opening and inspecting never do.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            for info in self.members.values():
                try:
                    crc, sha = self._hash(info, pool)
                except IntegrityError as exc:
                    problems.append(Problem(info.name, "truncated", exc.message, exc.hint or HINT_REPACK))
                    continue
                problems.extend(self._check(info, crc, sha))
        return problems

    def extract(
        self,
        dest_dir: str | os.PathLike[str],
        *,
        force: bool = False,
        include_metadata: bool = False,
        rename: Mapping[str, str] | None = None,
    ) -> list[Path]:
        """Restore the loose layout into ``dest_dir``: ``weights/x.ptd`` becomes ``x.ptd``.

        ``rename`` maps member names to other plain file names (``{"model.pte":
        "llama3_2-model.pte"}``); a name with a folder part, a member not in the archive, or two
        members landing on one file is a :class:`UsageError`. Refuses to replace existing files
        unless ``force``; each file is written to a temp file beside it, checked against its
        sha256 and CRC, and renamed only once every member has been checked, so a corrupt
        archive leaves nothing behind.
        """
        renames = dict(rename or {})
        unknown = sorted(set(renames) - set(self.members))
        bad = sorted(n for n in renames.values() if not _plain_file_name(n))
        if unknown or bad:
            raise UsageError(
                f"cannot rename {', '.join(map(repr, unknown))}: not members of the archive"
                if unknown
                else f"cannot extract to {', '.join(map(repr, bad))}: not a plain file name",
                path=self.path,
            )
        names = {
            info.name: renames.get(info.name, info.name.rsplit("/", 1)[-1])
            for info in self.members.values()
            if info.name != MEMBER_METADATA or include_metadata
        }
        targets = list(names.values())
        clashes = sorted({t for t in targets if targets.count(t) > 1})
        if clashes:
            raise UsageError(
                f"several members would be written to {', '.join(map(repr, clashes))}",
                path=self.path,
            )
        root = Path(dest_dir)
        if root.exists() and not root.is_dir():
            raise OutputError("is a file, not a folder", path=root, hint="name a folder to extract into")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be, read-only, no rights
            raise output_error(exc, root, "the folder") from None
        real_root = root.resolve()
        plan: list[tuple[MemberInfo, Path]] = []
        for member, file_name in names.items():
            target = root / file_name
            # Names were validated at open; this guards against a future name rule slipping.
            if target.parent.resolve() != real_root:
                raise ArchiveError(f"member {member!r} would be written outside {root}", path=self.path)
            plan.append((self.members[member], target))
        folders = [str(t) for _, t in plan if t.is_dir() and not t.is_symlink()]
        if folders:
            raise OutputError(
                f"a folder is in the way of {', '.join(folders)}",
                path=root,
                hint="extract into an empty folder",
            )
        existing = [str(t) for _, t in plan if t.exists() or t.is_symlink()]
        for existing_path in existing:  # never over the archive itself, even with force
            if os.path.exists(existing_path) and os.path.samefile(existing_path, self.path):
                raise OutputError(
                    "is one of the files this run reads (the archive being unpacked); refusing to write over a source",
                    path=existing_path,
                    hint="extract into another folder",
                )
        if existing and not force:
            raise OutputError(
                f"would overwrite {', '.join(existing)}",
                path=root,
                hint="extract into an empty folder or pass {force}",
            )
        temps: list[tuple[Path, Path]] = []
        # Lazy: only hashing members needs a thread pool (and extraction temp files); opening
        # and inspecting never do.
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                for info, target in plan:
                    fd, tmp_name = new_temp_file(root, f".{target.name}.")
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
        except BaseException as exc:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, EtmError):  # full disk, read-only...
                raise output_error(exc, root, "the extracted files") from None
            raise
        return [target for _, target in plan]


def _plain_file_name(name: str) -> bool:
    """A name that stays one file inside the destination folder (no folder part, no NUL)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


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
        members, problems = read_directory(f, size, path)
        if problems:
            _refuse_newer_version(f, members, path)
            raise ArchiveError(
                "unsafe or malformed archive: " + "; ".join(problems), path=path, hint=HINT_REPACK
            )
        if MEMBER_METADATA not in members:
            raise MetadataError(f"no {MEMBER_METADATA} member", path=path, hint=HINT_REPACK)
        raw, metadata = _read_metadata(f, members, path)
        return EtmArchive(path, f, members, metadata, raw)
    except BaseException:
        f.close()
        raise


def _read_metadata(
    f: BinaryIO, members: dict[str, MemberInfo], path: Path
) -> tuple[bytes, dict[str, Any]]:
    info = members[MEMBER_METADATA]
    name = f"{path}!{MEMBER_METADATA}"
    if info.size > ETM_MAX_METADATA_BYTES:
        raise MetadataError(
            f"metadata.json is {info.size} bytes, more than the {ETM_MAX_METADATA_BYTES} allowed",
            path=name,
            hint=HINT_REPACK,
        )
    raw = read_at(f, info.offset, info.size)
    if crc32(raw) != info.crc32:
        raise IntegrityError("metadata.json fails its CRC32 check", path=name, hint=HINT_REPACK)
    meta = parse_metadata(raw, name=name)
    sizes = {n: info.size for n, info in members.items() if n != MEMBER_METADATA}
    problems = check_members(meta, sizes)
    if problems:
        raise MetadataError(
            "metadata.json disagrees with the archive: " + "; ".join(problems),
            path=name,
            hint=HINT_REPACK,
        )
    return raw, meta


def _refuse_newer_version(f: BinaryIO, members: dict[str, MemberInfo], path: Path) -> None:
    """Raise :class:`UnsupportedVersionError` if the archive, structurally refused, says it is
    for a newer reader: its new member kinds are what broke the rules, and upgrading is the fix.
    Only a ``metadata.json`` that passes its bounds and CRC is read; otherwise this returns."""
    info = members.get(MEMBER_METADATA)
    if info is None or info.size > ETM_MAX_METADATA_BYTES:
        return
    raw = read_at(f, info.offset, info.size)
    if crc32(raw) != info.crc32:
        return
    try:
        parse_metadata(raw, name=f"{path}!{MEMBER_METADATA}")
    except UnsupportedVersionError:
        raise
    except MetadataError:
        return
