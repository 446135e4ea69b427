"""What this process read, remembered by the file's stamp (device, inode, size, modification
time: :func:`~etm_compat.fileio.stamp_of`), so that a file several readers of one run need is
read once:

* whole files read and hashed (:func:`remember_hashed`): the archive writer stores those bytes,
  with that digest, instead of reading and hashing the file again (:func:`hashed_content`);
* values parsed from whole files (:func:`read_parsed`): a ``tokenizer_config.json`` that
  detection, inference and the checks each read is read and parsed once per reader kind;
* small immutable facts read from a file (:func:`by_stamp`): what kind of program a ``.pte``
  is, which the checks and the packer both ask.

Each is bounded by the bytes of the files behind it (the oldest go first) and thread-safe. A
file changed since has another stamp, and is read again. A remembered value is shared by
everyone who reads it: it must not be modified.
"""

from __future__ import annotations

import collections
import contextlib
import os
import stat
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from etm_compat.errors import InputError
from etm_compat.fileio import FileStamp, read_stamped, settled_before, stamp_of

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
_T = TypeVar("_T")


class _Remembered(Generic[_K, _V]):
    """A thread-safe map that keeps at most ``max_bytes`` of files' worth of values, the newest.
    Every operation costs the same however many are kept (a hub of ten thousand deployments
    remembers thousands of configs)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: collections.OrderedDict[_K, tuple[_V, int]] = collections.OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        kept = self._kept.get(key)
        return kept[0] if kept is not None else None

    def put(self, key: _K, value: _V, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._kept[key] = (value, size)
            self._total += size
            while self._total > self.max_bytes:
                _, (_, dropped) = self._kept.popitem(last=False)
                self._total -= dropped


#: Whole files read and hashed: their bytes and sha256.
_HASHED: _Remembered[FileStamp, tuple[bytes, str]] = _Remembered(64 * 1024 * 1024)
#: Values parsed from whole files, by stamp and the kind of reading.
_PARSED: _Remembered[tuple[FileStamp, Hashable], tuple[object]] = _Remembered(64 * 1024 * 1024)
#: Small facts read from files, by stamp and kind (each counted as one "byte": at most 4096).
_FACTS: _Remembered[tuple[FileStamp, Hashable], tuple[object]] = _Remembered(4096)


def remember_hashed(stamp: FileStamp, data: bytes, sha256: str) -> None:
    """Keep ``data``, all of the file read at ``stamp`` (:func:`~etm_compat.fileio.read_stamped`),
    with its sha256 (computed by the caller on exactly these bytes), for :func:`hashed_content`.
    A file of another size than its stamp's is not kept."""
    if len(data) == stamp[2]:
        _HASHED.put(stamp, (data, sha256), len(data))


def hashed_content(fd: int) -> tuple[bytes, str] | None:
    """The bytes and sha256 :func:`remember_hashed` kept for the open file ``fd``, when it still
    has the identity, size and modification time it was read with."""
    return _HASHED.get(stamp_of(os.fstat(fd)))


def hashed_sha256(stamp: FileStamp) -> str | None:
    """The sha256 :func:`remember_hashed` kept for the file read at ``stamp``, if any."""
    known = _HASHED.get(stamp)
    return known[1] if known is not None else None


def read_parsed(
    path: str | os.PathLike[str],
    limit: int,
    kind: Hashable,
    parse: Callable[[bytes], _T],
    *,
    what: str,
    too_large: type[InputError] = InputError,
    hint: str | None = None,
) -> _T:
    """``parse`` of all of ``path`` (read as :func:`~etm_compat.fileio.read_stamped` reads it,
    within ``limit``), remembered by the file's stamp and ``kind``: what decides the value
    ``parse`` gives (its reader and options; a reader's error messages may differ, as nothing
    that fails is remembered). An unchanged file is read and parsed once per ``kind``; one
    changed in the last :data:`~etm_compat.constants.RACY_SECONDS` every time.
    """
    try:
        st = os.stat(path)
    except OSError:
        st = None  # read_stamped says why
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= limit:
        hit = _PARSED.get((stamp_of(st), kind))
        if hit is not None:
            return hit[0]  # type: ignore[return-value]  # stored by this function, for this kind
    settled = settled_before()
    data, stamp = read_stamped(path, limit, what=what, too_large=too_large, hint=hint)
    value = parse(data)
    if stamp[3] < settled:  # else it may change again and keep its stamp: read it again
        _PARSED.put((stamp, kind), (value,), len(data))
    return value


def by_stamp(path: str | os.PathLike[str], kind: Hashable, compute: Callable[[], _T]) -> _T:
    """``compute()``, what ``kind`` says of the file at ``path`` (a small, immutable value),
    remembered by the file's stamp: asked again while the file is unchanged, it is not computed
    again. Not remembered: what raises, and a file changed while it was computed or in the last
    :data:`~etm_compat.constants.RACY_SECONDS`."""
    try:
        before = os.stat(path)
    except OSError:
        return compute()  # it says why
    if not stat.S_ISREG(before.st_mode):
        return compute()
    key = (stamp_of(before), kind)
    hit = _FACTS.get(key)
    if hit is not None:
        return hit[0]  # type: ignore[return-value]  # stored by this function, for this kind
    settled = settled_before()
    value = compute()
    with contextlib.suppress(OSError):
        if before.st_mtime_ns < settled and stamp_of(os.stat(path)) == key[0]:
            _FACTS.put(key, (value,), 1)
    return value


__all__ = ["by_stamp", "hashed_content", "hashed_sha256", "read_parsed", "remember_hashed"]
