"""Opening untrusted input paths: regular files only, never blocking on a FIFO.

``open(path)`` on a FIFO blocks until a writer appears, and a device or socket can feed endless
bytes; a migration tool run over thousands of folders must not hang on either. Every reader
opens its input through :func:`open_regular`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from etm_compat.constants import RACY_SECONDS
from etm_compat.errors import InputError, OutputError, UnreadableError


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


def metadata_text(text: str) -> str:
    r"""``text`` as valid UTF-8 text: lone surrogates become ``\udcXX`` escape sequences.

    A file name that is not valid UTF-8 (legal on Linux) reaches Python surrogate-escaped
    (byte 0xFF as U+DCFF), which no UTF-8 JSON can hold. This is the one rule for putting such
    text into metadata.json: the same spelling error lines and reports use.

    >>> metadata_text("model\udcff.pte")
    'model\\udcff.pte'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def metadata_path(path: str | os.PathLike[str]) -> dict[str, str]:
    """How metadata.json records a (relative) path: ``{"path": text}``, plus ``path_bytes_b64``
    (the exact name bytes, standard base64) when the name is not valid UTF-8 (docs/FORMAT.md)."""
    text = os.fspath(path)
    safe = metadata_text(text)
    if safe == text:
        return {"path": text}
    raw = os.fsencode(text)
    return {"path": safe, "path_bytes_b64": base64.b64encode(raw).decode("ascii")}


def metadata_safe(value: Any) -> Any:
    """A JSON value with every string (keys too) made valid UTF-8 by :func:`metadata_text`."""
    if isinstance(value, str):
        return metadata_text(value)
    if isinstance(value, dict):
        return {metadata_safe(k): metadata_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [metadata_safe(v) for v in value]
    return value


class _ReadAhead:
    """One file being read whole in a background thread (:func:`read_ahead`)."""

    def __init__(self, f: BinaryIO, size: int, mtime_ns: int) -> None:
        self.size, self.mtime_ns = size, mtime_ns
        self._file: BinaryIO | None = f
        self._data: bytes | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._read, name="etm-read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._file is not None
        try:
            with self._file:
                self._data = self._file.read(self.size + 1)  # one byte more: did it grow?
        except (OSError, MemoryError):  # read_capped reads again, and says what went wrong
            self._data = None
        self._file = None

    def take(self, size: int, mtime_ns: int) -> bytes | None:
        """The bytes for their reader, once: when they are those of a file of this size and
        time (else None, and the reader reads the file)."""
        if self._taken:
            return None
        self._taken = True
        return self.peek(size, mtime_ns)

    def peek(self, size: int, mtime_ns: int) -> bytes | None:
        """The bytes, taken or not, when they are those of a file of this size and time (else
        None): for a writer copying the file (kept until the read ahead's block ends)."""
        self._thread.join()
        data = self._data
        if data is None or len(data) != size or (size, mtime_ns) != (self.size, self.mtime_ns):
            return None
        return data


#: Files being read ahead, by identity (device, inode): :func:`read_capped` takes them.
_AHEAD: dict[tuple[int, int], _ReadAhead] = {}


@contextlib.contextmanager
def read_ahead(path: str | os.PathLike[str], limit: int) -> Iterator[int]:
    """Inside, all of ``path`` is read in a background thread, when it is a regular file of at
    most ``limit`` bytes: a :func:`read_capped` of the same file (by device and inode, whatever
    the spelling of its path) takes the bytes instead of reading them, if its size and
    modification time are still those read. Reading releases the GIL, so it overlaps what the
    caller does meanwhile (importing the modules that will parse the file). The first such
    read takes them (a later one reads the file); a writer copying the file meanwhile may use
    them too (:func:`read_ahead_bytes`). They are dropped on the way out. Anything that cannot
    be read ahead is left to :func:`read_capped`, which reads it, or reports why not, as usual.
    Yields how many bytes are being read ahead (0 for none).
    """
    key = None
    size = 0
    try:
        f = open_regular(path)
    except (OSError, InputError):
        f = None
    if f is not None:
        try:
            st = os.fstat(f.fileno())
        except OSError:
            st = None
        if st is None or st.st_size > limit:
            f.close()
        else:
            key, size = (st.st_dev, st.st_ino), st.st_size
            _AHEAD[key] = _ReadAhead(f, size, st.st_mtime_ns)
    try:
        yield size
    finally:
        if key is not None:
            _AHEAD.pop(key, None)


def read_ahead_bytes(fd: int) -> bytes | None:
    """All of the open file ``fd`` as :func:`read_ahead` read it (whatever its path), when that
    read is done and the file still has the size and modification time read, whether its
    reader (:func:`read_capped`) took the bytes already or not: for a writer that copies the
    file meanwhile (a pack's archive, while the tokenizer is parsed)."""
    st = os.fstat(fd)
    ahead = _AHEAD.get((st.st_dev, st.st_ino))
    return ahead.peek(st.st_size, st.st_mtime_ns) if ahead is not None else None


#: A file's identity and state when it was read: (device, inode, size, modification time ns).
FileStamp = tuple[int, int, int, int]


def stamp_of(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def settled_before() -> int:
    """The newest modification time (ns) of a file whose stamp may be trusted to say it is
    unchanged later: one changed :data:`~etm_compat.constants.RACY_SECONDS` ago or earlier."""
    return time.time_ns() - RACY_SECONDS * 1_000_000_000


def read_stamped(
    path: str | os.PathLike[str],
    limit: int,
    *,
    what: str,
    too_large: type[InputError] = InputError,
    hint: str | None = None,
) -> tuple[bytes, FileStamp]:
    """All of a regular file, refusing one larger than ``limit`` bytes before reading it.

    ``too_large`` is the error class for an oversized file (a tokenizer reader raises its own
    format error); an unreadable path is always :class:`UnreadableError`.
    """
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size > limit:
                raise too_large(f"{what} is {size} bytes, more than the {limit} bytes accepted", path=path, hint=hint)
            ahead = _AHEAD.get((st.st_dev, st.st_ino))
            read = ahead.take(size, st.st_mtime_ns) if ahead is not None else None
            if read is not None:
                return read, stamp_of(st)
            # Sized to the file (a read of limit + 1 would set aside the whole limit first);
            # a file that grew meanwhile is read on, up to one byte past the limit.
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(limit + 1 - len(data))
    except OSError as exc:
        raise UnreadableError(f"cannot read {what}: {exc.strerror or exc}", path=path) from exc
    if len(data) > limit:  # the file grew while it was read
        raise too_large(f"{what} is larger than {limit} bytes", path=path, hint=hint)
    return data, stamp_of(st)


def read_capped(
    path: str | os.PathLike[str],
    limit: int,
    *,
    what: str,
    too_large: type[InputError] = InputError,
    hint: str | None = None,
) -> bytes:
    """:func:`read_stamped`'s bytes."""
    return read_stamped(path, limit, what=what, too_large=too_large, hint=hint)[0]


def read_stream_capped(stream: BinaryIO, limit: int, *, what: str, path: str) -> bytes:
    """All of an already open stream (stdin, a pipe), refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= limit and (chunk := stream.read(min(1 << 16, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UnreadableError(f"cannot read {what}: {exc.strerror or exc}", path=path) from exc
    if total > limit:
        raise InputError(f"{what} is larger than the {limit} bytes accepted", path=path)
    return b"".join(chunks)


def read_named_input(path: str | os.PathLike[str], limit: int, *, what: str) -> bytes:
    """A small input the user named explicitly (``--messages FILE``): a regular file or a pipe.

    Unlike :func:`read_capped`, a FIFO is accepted (process substitution, ``<(...)``): it is
    opened without blocking and read up to ``limit`` bytes once a writer is there; a FIFO that
    nothing writes to is refused (it would block forever). Folders, sockets and devices are
    refused too.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableError(f"cannot read {what}: {exc.strerror or exc}", path=path) from exc
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):  # os.fdopen itself refuses a folder, with a bare IsADirectoryError
        os.close(fd)
        raise UnreadableError(f"{what} is not a regular file or a pipe (a folder)", path=path)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return read_stream_capped(fh, limit, what=what, path=os.fspath(path))
        if not stat.S_ISFIFO(mode):
            raise UnreadableError(f"{what} is not a regular file or a pipe (a socket or device)", path=path)
        try:
            head = os.read(fd, 1 << 16)
        except BlockingIOError:  # a writer is there, nothing written yet
            head = None
        if head == b"":
            raise UnreadableError(
                f"{what} is a FIFO that nothing writes to (not a regular file)",
                path=path,
                hint="name a regular file, or a pipe with a writer such as <(command)",
            )
        os.set_blocking(fd, True)
        rest = read_stream_capped(fh, limit - len(head or b""), what=what, path=os.fspath(path))
        return (head or b"") + rest


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool,
    sources: Iterable[str | os.PathLike[str]] = (),
    force_option: str = "{force}",
) -> Path:
    """The one rule for every output file: refuse a folder, refuse a file the run reads as a
    source (even with ``force``), refuse an existing file unless ``force``.

    ``force_option`` is how the hint names the option that allows replacing (``{force}`` by
    default, spelled by the caller).
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError("is a folder, not a file", path=target, hint="name a file to write")
    check_output_folder(target.parent)
    for source in sources:
        if same_file(target, source):
            raise OutputError(
                "is one of the files this run reads; refusing to write over a source",
                path=target,
                hint="write the output somewhere else",
            )
    if (target.exists() or target.is_symlink()) and not force:
        raise OutputError("already exists", path=target, hint=f"choose another name or pass {force_option}")
    return target


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse an output folder that can never be made: it, or its nearest existing ancestor, is
    not a folder (a file, a dangling symlink). A folder that does not exist yet is fine: the
    writer makes it (``upgrade --report out/report.md`` before ``out`` exists).

    A run checks this before any work, so a typo costs nothing.

    >>> check_output_folder("README.md/reports")  # doctest: +SKIP
    Traceback (most recent call last):
    etm_compat.errors.OutputError: README.md: is a file, not a folder (hint: ...)
    """
    folder = Path(path)
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            if not candidate.is_dir():
                raise OutputError(
                    "is a file, not a folder: nothing can be written under it",
                    path=candidate,
                    hint="choose an output path under a folder",
                )
            break
    return folder


#: How often :func:`new_temp_file` draws another name when the one drawn exists.
_TEMP_TRIES = 100


def new_temp_file(
    folder: str | os.PathLike[str], prefix: str, suffix: str = ".tmp", *, mode: int = 0o600
) -> tuple[int, str]:
    """A new, empty file in ``folder`` that nobody else has opened: ``(fd, absolute path)``,
    open for reading and writing (not inherited by child processes).

    The one way etm-compat makes the temporary file that an atomic write then moves into place:
    ``mkstemp``'s guarantees (created exclusively, never through a symlink, a random name; mode
    0600 by default, ``mode=0o666`` for the umask's) without importing :mod:`tempfile`, whose
    imports (random, shutil and its compressors) cost more than a small pack's archive writing.
    Raises OSError (FileExistsError when no free name is found).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    base = os.path.abspath(folder)
    for _ in range(_TEMP_TRIES):
        path = os.path.join(base, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {base}")


def output_error(exc: OSError, path: str | os.PathLike[str], what: str = "the output") -> OutputError:
    """An OSError met while writing (ENOSPC, EROFS, EACCES, ...) as the OutputError to raise."""
    error = OutputError(f"cannot write {what}: {exc.strerror or exc}", path=path)
    error.errno = exc.errno  # callers tell a full or read-only filesystem from one bad target
    return error


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 4 * 1024 * 1024) -> str:
    """The sha256 hex digest of a regular file, read in chunks (constant memory)."""
    # Lazy: OpenSSL's hashes load only where something is hashed (opening an archive is not).
    import hashlib

    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()


__all__ = [
    "FileStamp",
    "check_output",
    "check_output_folder",
    "display_path",
    "metadata_path",
    "metadata_safe",
    "metadata_text",
    "new_temp_file",
    "open_regular",
    "output_error",
    "read_ahead",
    "read_ahead_bytes",
    "read_capped",
    "read_named_input",
    "read_stamped",
    "read_stream_capped",
    "same_file",
    "settled_before",
    "sha256_file",
    "stamp_of",
]
