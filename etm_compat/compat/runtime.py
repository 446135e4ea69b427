"""Load the program of an ``.etm`` archive into the ExecuTorch runtime without extracting it.

torch and executorch are imported lazily, inside the function: importing this module costs
nothing, and a missing runtime raises :class:`RuntimeUnavailableError` only when asked for.

What executorch 1.5.1's Python API allows (``executorch/runtime/__init__.py``): the program may be
``bytes`` (so the mapped member is copied once into memory with ``bytes(view)``; a
``memoryview`` or ``bytearray`` is refused or copied by the binding), but a ``.ptd`` is only
accepted as a *path* (``data_path``). The weights member is therefore copied into an anonymous
in-memory file (``memfd_create``) and passed as ``/proc/self/fd/<n>``: nothing touches the disk.
Where ``memfd_create`` does not exist, the ``.ptd`` alone is written to a private temp file that
is removed when the program is freed. See docs/FORMAT.md, "Loading in place".
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any

from etm_compat.archive.read import EtmArchive
from etm_compat.constants import MAIN_PROGRAM_NAME
from etm_compat.errors import RuntimeUnavailableError, UsageError

_COPY_CHUNK = 8 * 1024 * 1024


def _weights_path(view: memoryview) -> tuple[str, int | None, str | None]:
    """An in-memory file holding ``view``: (path to pass, fd to close, temp path to delete)."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("etm-weights.ptd", os.MFD_CLOEXEC)
        path: str | None = None
        target = f"/proc/self/fd/{fd}"
    else:  # pragma: no cover - non-Linux fallback
        fd, path = tempfile.mkstemp(suffix=".ptd")
        target = path
    try:
        for start in range(0, len(view), _COPY_CHUNK):
            os.write(fd, view[start : start + _COPY_CHUNK])
    except BaseException:
        os.close(fd)
        if path is not None:  # pragma: no cover
            os.unlink(path)
        raise
    return target, fd, path


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
        view = archive.member_view(member)
        try:
            payload = serializer.deserialize(Cord(bytes(view)))
        finally:
            view.release()
        base = len(buffers)
        buffers.extend(payload.buffers)
        for key, entry in payload.named_data.items():
            if key in named:
                raise UsageError(f"data key {key!r} is in more than one of {', '.join(members)}", path=archive.path)
            named[key] = DataEntry(base + entry.buffer_index, 1, entry.tensor_layout)
    return bytes(serializer.serialize(DataPayload(buffers=buffers, named_data=named)))


def _release(fd: int | None, path: str | None) -> None:
    if fd is not None:
        os.close(fd)
    if path is not None:  # pragma: no cover - non-Linux fallback
        os.unlink(path)


def load_program_from_archive(
    archive: EtmArchive, *, program: str = MAIN_PROGRAM_NAME, verification: Any = None
) -> Any:
    """Load one program of an open archive (``model.pte`` by default) with the data it loads.

    Returns an ``executorch.runtime.Program``. ``verification`` is an
    ``executorch.runtime.Verification`` (default: ``InternalConsistency``). executorch 1.5.1's
    Python API takes one data file: the data of a program that loads several (a LoRA foundation
    and its adapter) is merged into one in memory first (the C++ ``Module(path, data_files)``
    loads the files as they are).

    >>> with open_archive("model.etm") as etm:               # doctest: +SKIP
    ...     program = load_program_from_archive(etm)
    ...     program.load_method("forward").execute([torch.ones(1, 4)])
    """
    try:
        # Lazy: importing executorch loads torch (seconds); only loading a program needs it.
        from executorch.runtime import Runtime, Verification
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"the ExecuTorch runtime cannot be imported ({exc})",
            hint="pip install 'etm-compat[runtime]' (torch + executorch)",
        ) from None
    record = archive.layout.program(program)
    weights = list(record.data)
    view = archive.member_view(record.member)
    try:
        program_bytes = bytes(view)  # the API demands bytes: the one copy of the program
    finally:
        view.release()
    data_path: str | None = None
    fd: int | None = None
    temp: str | None = None
    if len(weights) > 1:
        data_path, fd, temp = _weights_path(memoryview(_merged_data(archive, record.data)))
    elif weights:
        wview = archive.member_view(weights[0])
        try:
            data_path, fd, temp = _weights_path(wview)
        finally:
            wview.release()
    try:
        program = Runtime.get().load_program(
            program_bytes,
            verification=verification
            if verification is not None
            else Verification.InternalConsistency,
            data_path=data_path,
        )
    except RuntimeError as exc:
        _release(fd, temp)
        raise RuntimeUnavailableError(
            f"the runtime refused the program: {exc}", path=archive.path
        ) from None
    except BaseException:
        _release(fd, temp)
        raise
    if fd is not None or temp is not None:
        # The runtime may read the data file lazily (at load_method): keep it until the program goes.
        weakref.finalize(program, _release, fd, temp)
    return program


__all__ = ["load_program_from_archive"]
