"""Copying members into an archive being written: each at its data offset, CRC-32 and sha256 in
the same pass, in this thread or in a background one that can be stopped.

:func:`stream_member` copies one member (:class:`_ChunkCopier` does the copying);
:class:`BackgroundStream` runs :func:`stream_members` on a thread of its own, so that the members
of an archive are copied while its metadata is still being worked out
(:class:`~etm_compat.archive.write.ArchiveDraft`).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from etm_compat.archive.zipfmt import crc32, digest_range, pread_into, pwrite_all
from etm_compat.errors import UnreadableError
from etm_compat.fileio import read_ahead_bytes
from etm_compat.remembered import hashed_content

#: What copy_file_range answers where it cannot be used at all.
_NO_KERNEL_COPY = frozenset({errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})

#: One member to copy: its source file, the offset of its data in the archive, its size.
Placement = tuple[Path, int, int]
#: What a copy gives: (CRC-32, sha256 hex) of the bytes copied.
Digests = tuple[int, str]
#: The sha256 of a member copied from bytes its reader hashes (:func:`stream_member`).
PENDING_SHA256: Final = ""


class Stopped(Exception):
    """A background copy was told to stop (its archive's layout changed, or it was discarded)."""


class _ChunkCopier:
    """Copies each chunk that :func:`digest_range` has just read to the archive, in the reading
    thread: inside the kernel (``copy_file_range``: no trip through user space, and a reflink
    where the file system shares blocks) from the source's same range, or, where the kernel
    cannot copy (another OS, a file system that refuses it), by writing the chunk just read.
    Between chunks it raises :class:`Stopped` once ``stop`` is set."""

    def __init__(self, src_fd: int, dst_fd: int, dst_start: int, stop: threading.Event | None) -> None:
        self.src_fd, self.dst_fd, self.dst_start = src_fd, dst_fd, dst_start
        self.stop = stop
        self.done = 0
        self.kernel = hasattr(os, "copy_file_range")

    def __call__(self, chunk: memoryview) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped
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


def stream_member(
    source: Path, dst_fd: int, offset: int, expected: int, pool: ThreadPoolExecutor,
    stop: threading.Event | None = None,
) -> Digests:
    """Copy ``expected`` bytes of ``source`` to ``offset`` of ``dst_fd``; return (crc32, sha256
    hex) of what was read.

    Two threads, so that on two cores neither waits on a third: a worker thread feeds sha256
    (:func:`~etm_compat.archive.zipfmt.digest_range`) while this one reads the next chunk into a
    reused buffer, computes its CRC-32 (ISA-L's, :data:`~etm_compat.archive.zipfmt.crc32`) and
    copies the same range to the archive (:class:`_ChunkCopier`). All of it releases the GIL, and
    this thread's share (a read, a CRC, a kernel copy) takes less than hashing the chunk, so the
    cost is about sha256's alone. The bytes copied are read right after the bytes hashed. A file
    this process read and hashed whole, and that is unchanged since
    (:func:`~etm_compat.remembered.hashed_content`), is written from those bytes, with their digest;
    one being read ahead for its reader (:func:`~etm_compat.fileio.read_ahead_bytes`), from the
    bytes that reader will take.
    """
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed right below
    except OSError as exc:
        raise UnreadableError(f"cannot read: {exc.strerror}", path=source) from None
    with src:
        known = hashed_content(src.fileno())
        if known is not None and len(known[0]) == expected:
            # Read and hashed whole already (a tokenizer, when it was described): those very
            # bytes are stored, with their digest, instead of reading and hashing the file again.
            data, sha = known
            pwrite_all(dst_fd, memoryview(data), offset)
            return crc32(data), sha
        ahead = read_ahead_bytes(src.fileno())
        if ahead is not None and len(ahead) == expected:
            # Being read whole for its reader (a tokenizer, before it is described): the bytes
            # its reader will take are stored. Their sha256 is the one that reader computes
            # (PENDING_SHA256 until then: see ArchiveDraft.finish).
            pwrite_all(dst_fd, memoryview(ahead), offset)
            return crc32(ahead), PENDING_SHA256
        copier = _ChunkCopier(src.fileno(), dst_fd, offset, stop)
        crc, sha, total = digest_range(src.fileno(), 0, expected, pool, sink=copier)
        if total == expected and pread_into(src.fileno(), memoryview(bytearray(1)), expected):
            total += 1  # it grew: at least one byte more than measured
    if total != expected:
        raise UnreadableError(
            f"changed while being packed ({expected} bytes expected, "
            f"{'more' if total > expected else total} read)",
            path=source,
            hint="pack again once it is stable",
        )
    return crc, sha


def stream_members(
    placements: Sequence[Placement], dst_fd: int, pool: ThreadPoolExecutor,
    stop: threading.Event | None = None,
) -> list[Digests]:
    """:func:`stream_member` for each placement, in order."""
    return [stream_member(src, dst_fd, offset, size, pool, stop) for src, offset, size in placements]


#: The interpreter's switch interval while a background copy runs (seconds; CPython's default is
#: 0.005). The copy needs the GIL for a moment after each system call, and a thread that asks
#: for it waits out the interval while another runs Python code: a pack's copy, about a dozen
#: calls, finished 25 ms after the inference beside it at the default, and before it at this.
SWITCH_INTERVAL: Final = 0.0005
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _lower_switch_interval() -> None:
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
        _switch_users += 1


def _restore_switch_interval() -> None:
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0:
            sys.setswitchinterval(_switch_saved)


class BackgroundStream:
    """:func:`stream_members` on a thread of its own, started at once; :meth:`result` waits for
    it, :meth:`stop` makes it give up between chunks. With ``sync``, the data copied is also
    flushed to the disk there (``fdatasync``), so that the archive's final fsync has little left.
    While it runs, the interpreter's switch interval is :data:`SWITCH_INTERVAL`.
    """

    def __init__(
        self, placements: Sequence[Placement], dst_fd: int, pool: ThreadPoolExecutor, *, sync: bool
    ) -> None:
        self.placements = tuple(placements)
        self._stop = threading.Event()
        self._outcome: list[Digests] | BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(dst_fd, pool, sync), name="etm-archive-stream", daemon=True
        )
        _lower_switch_interval()
        try:
            self._thread.start()
        except BaseException:
            _restore_switch_interval()
            raise

    def _run(self, dst_fd: int, pool: ThreadPoolExecutor, sync: bool) -> None:
        try:
            digests = stream_members(self.placements, dst_fd, pool, self._stop)
            if sync and hasattr(os, "fdatasync"):
                os.fdatasync(dst_fd)
            self._outcome = digests
        except BaseException as exc:  # handed to whoever waits (result)
            self._outcome = exc
        finally:
            _restore_switch_interval()

    def stop(self) -> None:
        """Give up between chunks, and wait until the thread has."""
        self._stop.set()
        self._thread.join()

    def result(self) -> list[Digests]:
        """The digests of every member, once copied; what the copy raised, raised here."""
        self._thread.join()
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


__all__ = ["BackgroundStream", "Digests", "Placement", "Stopped", "stream_member", "stream_members"]
