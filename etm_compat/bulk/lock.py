"""Per-archive exclusivity for ``upgrade``: one writer per archive, across processes and runs.

Each archive ``<dir>/<name>.etm`` has a hidden lock file ``<dir>/.<name>.etm.lock``. A worker
holds an exclusive ``flock`` on it while it checks, packs and publishes that archive. The lock is
advisory and belongs to the open file description, so the kernel drops it when the holder dies
(even on SIGKILL): a crashed run never leaves a tree locked. Lock files are left in place on
purpose; removing them would let two runs hold "the" lock on two different inodes.

The archive itself is published with ``os.replace`` by the writer, so readers never see a partial
file whatever the lock says; the lock only stops two runs from doing the same work twice and from
racing each other's cleanup of temporary files.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def lock_path(archive: Path) -> Path:
    """The lock file guarding ``archive`` (hidden, beside it)."""
    return archive.with_name(f".{archive.name}.lock")


@contextmanager
def archive_lock(archive: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold the lock of ``archive``; yields False (without waiting) when another holder has it.

    >>> with archive_lock(Path("out/model.etm")) as mine:  # doctest: +SKIP
    ...     if mine:
    ...         ...  # check, pack, publish
    """
    path = lock_path(archive)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_stale_temporaries(archive: Path) -> list[Path]:
    """Delete the archive writer's leftovers for ``archive`` (``.<name>.*.tmp``) from a killed run.

    Only call this while holding :func:`archive_lock`: then no other upgrade is writing them.
    """
    removed: list[Path] = []
    prefix = f".{archive.name}."
    try:
        entries = list(os.scandir(archive.parent))
    except OSError:
        return removed
    for entry in entries:
        if (
            entry.name.startswith(prefix)
            and entry.name.endswith(".tmp")
            and entry.is_file(follow_symlinks=False)
        ):
            try:
                os.unlink(entry.path)
            except OSError as exc:
                log.warning("cannot remove leftover %s: %s", entry.path, exc.strerror)
                continue
            removed.append(Path(entry.path))
    if removed:
        log.info("removed %d leftover temporary file(s) of %s", len(removed), archive)
    return removed


__all__ = ["archive_lock", "lock_path", "remove_stale_temporaries"]
