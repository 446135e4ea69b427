"""Load a program of an ``.etm`` archive into the ExecuTorch runtime without extracting it.

torch and executorch are imported lazily, inside the function: importing this module costs
nothing, and a missing runtime raises :class:`RuntimeUnavailableError` only when asked for.

What executorch 1.5.1's Python API allows (``executorch/runtime/__init__.py``, the pybind
``_load_program`` and ``_load_program_from_buffer``): the program as a *path* (the runtime maps
it: ``MmapDataLoader``, locked in memory) or as ``bytes`` (``BufferDataLoader`` over the object;
a ``memoryview``, ``bytearray`` or mapped buffer is refused or copied into ``bytes`` first); its
data file (``.ptd``) only as a path. No entry point takes an offset into a file. So the routes,
best first (``route="auto"`` takes the first that applies):

* ``"cache"``: the archive was materialized already (:func:`~etm_compat.compat.cache.find_entry`:
  the shim's runners, ``Bundle.legacy_paths()``): its files are loaded by path, exactly as loose
  files are. Nothing is copied.
* ``"memfd"`` (Linux): each member is copied in the kernel (``sendfile`` from the archive's open
  file) into an anonymous in-memory file, sealed against any change (``F_SEAL_SHRINK``,
  ``F_SEAL_GROW``, ``F_SEAL_WRITE``), and loaded by its ``/proc/self/fd/<n>`` path: the runtime maps
  it as it maps a loose file, so peak RSS is the loose file's; the copy is the cost. The sealed
  copy is a snapshot: truncating or rewriting the archive afterwards cannot reach the program.
* ``"bytes"``: the program read with ``pread`` into ``bytes`` (one copy), its data file in an
  in-memory file, or a private temp file where ``memfd_create`` does not exist.

No route reads the archive through its mapping: an archive truncated in place while a program
loads is an :class:`~etm_compat.errors.IntegrityError`, never a SIGBUS. See docs/FORMAT.md,
"Loading in place".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import weakref
from typing import Any, Literal

from etm_compat.archive.layout import ProgramRecord
from etm_compat.archive.read import EtmArchive
from etm_compat.compat.cache import find_entry
from etm_compat.constants import MAIN_PROGRAM_NAME
from etm_compat.errors import RuntimeUnavailableError, UsageError

log = logging.getLogger(__name__)

#: How a program reaches the runtime: see the module's docstring.
Route = Literal["auto", "cache", "memfd", "bytes"]
ROUTES: tuple[Route, ...] = ("auto", "cache", "memfd", "bytes")
_WRITE_CHUNK = 8 * 1024 * 1024
#: Seals of every copy: the size and the bytes are fixed, and the seals themselves too.
_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 1)
    | getattr(fcntl, "F_SEAL_SHRINK", 2)
    | getattr(fcntl, "F_SEAL_GROW", 4)
    | getattr(fcntl, "F_SEAL_WRITE", 8)
)


def memfd_supported() -> bool:
    """Whether sealed in-memory files can be made and opened by path (Linux)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class _Held:
    """File descriptors and temp files the runtime reads by path: kept until the program goes
    (the runtime may open a data file lazily), then closed and removed."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.temps: list[str] = []

    def memfd(self, name: str) -> int:
        fd = os.memfd_create(f"etm:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.fds.append(fd)
        return fd


def _release(fds: tuple[int, ...], temps: tuple[str, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for temp in temps:  # pragma: no cover - platforms without memfd_create
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:_WRITE_CHUNK]) :]


def _send_member(archive: EtmArchive, member: str, fd: int) -> None:
    """Append ``member`` to ``fd`` from the archive's open file, in the kernel where it can
    (``sendfile``), else with ``pread`` and ``write``; short means the archive was truncated."""
    offset, size = archive.member_range(member)
    src = archive.fileno()
    done = 0
    kernel = hasattr(os, "sendfile")
    while done < size:
        n = 0
        if kernel:
            try:
                n = os.sendfile(fd, src, offset + done, size - done)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                kernel = False
                continue
        else:
            chunk = os.pread(src, min(size - done, _WRITE_CHUNK), offset + done)
            n = len(chunk)
            _write_all(fd, chunk)
        if n == 0:
            raise archive.truncated_error(member, done)
        done += n


def _sealed_member(archive: EtmArchive, member: str, held: _Held) -> str:
    fd = held.memfd(member)
    _send_member(archive, member, fd)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    return f"/proc/self/fd/{fd}"


def _data_file(data: bytes, name: str, held: _Held) -> str:
    """``data`` as a file the runtime can open by path: a sealed memfd, else a private temp file."""
    if memfd_supported():
        fd = held.memfd(name)
        _write_all(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(suffix=".ptd")  # pragma: no cover - platforms without memfd
    held.temps.append(path)  # pragma: no cover
    try:  # pragma: no cover
        _write_all(fd, data)
    finally:  # pragma: no cover
        os.close(fd)
    return path  # pragma: no cover


def _merged_data(archive: EtmArchive, members: tuple[str, ...]) -> bytes:
    """One ``.ptd`` holding every key of ``members``, in load order, for the one ``data_path``
    executorch's Python API takes (the C++ ``Module`` merges several files itself).

    Costs one in-memory copy of the data. A key in two files is refused, as the runtime's
    MergedDataMap refuses it.
    """
    # Lazy: executorch's FlatTensor serializer imports torch; only multi-file programs need it.
    from executorch.exir._serialize._cord import Cord

    # Lazy: as above.
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload

    # Lazy: as above.
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    serializer = FlatTensorSerializer()
    buffers: list[Any] = []
    named: dict[str, Any] = {}
    for member in members:
        payload = serializer.deserialize(Cord(archive.read_member(member)))
        base = len(buffers)
        buffers.extend(payload.buffers)
        for key, entry in payload.named_data.items():
            if key in named:
                raise UsageError(f"data key {key!r} is in more than one of {', '.join(members)}", path=archive.path)
            named[key] = DataEntry(base + entry.buffer_index, 1, entry.tensor_layout)
    return bytes(serializer.serialize(DataPayload(buffers=buffers, named_data=named)))


def _sources(
    archive: EtmArchive, record: ProgramRecord, route: Route, held: _Held
) -> tuple[str | bytes, str | None, Route]:
    """What to hand the runtime for ``record``: (program path or bytes, data path, route taken)."""
    entry = find_entry(archive) if route in ("auto", "cache") else None
    if route == "cache" and entry is None:
        raise UsageError(
            "the archive has no cache entry to load from",
            path=archive.path,
            hint="materialize it first (Bundle.legacy_paths()), or load it with route='auto'",
        )
    if route == "memfd" and not memfd_supported():
        raise UsageError("in-memory files (memfd_create) are not available here", path=archive.path)
    if entry is not None:
        taken: Route = "cache"
    else:
        taken = "memfd" if route == "memfd" or (route == "auto" and memfd_supported()) else "bytes"
    data_path: str | None = None
    if len(record.data) > 1:
        data_path = _data_file(_merged_data(archive, record.data), "merged.ptd", held)
    elif record.data and entry is not None:
        data_path = os.fspath(entry.files[record.data[0]])
    elif record.data:
        only = record.data[0]
        data_path = (
            _sealed_member(archive, only, held)
            if memfd_supported()
            else _data_file(archive.read_member(only), only, held)
        )
    if entry is not None:
        return os.fspath(entry.files[record.member]), data_path, taken
    if taken == "memfd":
        return _sealed_member(archive, record.member, held), data_path, taken
    return archive.read_member(record.member), data_path, taken


def load_program_from_archive(
    archive: EtmArchive,
    *,
    program: str = MAIN_PROGRAM_NAME,
    verification: Any = None,
    route: Route = "auto",
) -> Any:
    """Load one program of an open archive (``model.pte`` by default) with the data it loads.

    Returns an ``executorch.runtime.Program``. ``verification`` is an
    ``executorch.runtime.Verification`` (default: ``InternalConsistency``). ``route`` chooses how
    the bytes reach the runtime (the module's docstring); the default takes the archive's cache
    entry when it has one, else a sealed in-memory copy. executorch 1.5.1's Python API takes one
    data file: the data of a program that loads several (a LoRA foundation and its adapter) is
    merged into one in memory first (the C++ ``Module(path, data_files)`` loads them as they are).

    >>> with open_archive("model.etm") as etm:               # doctest: +SKIP
    ...     program = load_program_from_archive(etm)
    ...     program.load_method("forward").execute([torch.ones(1, 4)])
    """
    if route not in ROUTES:
        raise UsageError(f"unknown route {route!r} (routes: {', '.join(ROUTES)})")
    try:
        # Lazy: importing executorch loads torch (seconds); only loading a program needs it.
        from executorch.runtime import Runtime, Verification
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"the ExecuTorch runtime cannot be imported ({exc})",
            hint="pip install 'etm-compat[runtime]' (torch + executorch)",
        ) from None
    record = archive.layout.program(program)
    held = _Held()
    try:
        source, data_path, taken = _sources(archive, record, route, held)
        try:
            loaded = Runtime.get().load_program(
                source,
                verification=verification
                if verification is not None
                else Verification.InternalConsistency,
                data_path=data_path,
            )
        except RuntimeError as exc:
            raise RuntimeUnavailableError(
                f"the runtime refused the program: {exc}", path=archive.path
            ) from None
    except BaseException:
        _release(tuple(held.fds), tuple(held.temps))
        raise
    log.debug("%s: program %r loaded by route %s", archive.path, program, taken)
    if held.fds or held.temps:
        weakref.finalize(loaded, _release, tuple(held.fds), tuple(held.temps))
    return loaded


__all__ = ["ROUTES", "Route", "load_program_from_archive", "memfd_supported"]
