"""Opening untrusted input paths: regular files only, never blocking on a FIFO.

``open(path)`` on a FIFO blocks until a writer appears, and a device or socket can feed endless
bytes; a migration tool run over thousands of folders must not hang on either. Every reader
opens its input through :func:`open_regular`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from etm_compat.errors import InputError, UnreadableError


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading; refuse anything but a regular file (after symlinks).

    The file is opened non-blocking first, so a FIFO cannot stall the call, then checked with
    ``fstat`` on the opened descriptor (no race between the check and the open).

    >>> with open_regular("README.md") as fh:  # doctest: +SKIP
    ...     head = fh.read(16)
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "folder" if stat.S_ISDIR(mode) else "FIFO, socket or device"
            raise UnreadableError(f"not a regular file (a {kind})", path=path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def display_path(path: Path, root: Path) -> str:
    """How reports name a file: relative to ``root``, or its bare name when it lies outside.

    >>> display_path(Path("a/b/c.pte"), Path("a"))
    'b/c.pte'
    """
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return str(path)
    return path.name if rel.startswith("..") else rel


def read_capped(
    path: str | os.PathLike[str],
    limit: int,
    *,
    what: str,
    too_large: type[InputError] = InputError,
    hint: str | None = None,
) -> bytes:
    """All of a regular file, refusing one larger than ``limit`` bytes before reading it.

    ``too_large`` is the error class for an oversized file (a tokenizer reader raises its own
    format error); an unreadable path is always :class:`UnreadableError`.
    """
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise too_large(f"{what} is {size} bytes, more than the {limit} bytes accepted", path=path, hint=hint)
            data = f.read(limit + 1)
    except OSError as exc:
        raise UnreadableError(f"cannot read {what}: {exc.strerror or exc}", path=path) from exc
    if len(data) > limit:  # the file grew while it was read
        raise too_large(f"{what} is larger than {limit} bytes", path=path, hint=hint)
    return data


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 4 * 1024 * 1024) -> str:
    """The sha256 hex digest of a regular file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()


__all__ = ["display_path", "open_regular", "read_capped", "sha256_file"]
