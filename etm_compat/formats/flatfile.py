"""The one bounded reader of a file's FlatBuffer head, shared by ``.pte`` and ``.ptd``.

Both ExecuTorch files put a 4-byte identifier at bytes 4..8 and a fixed-size header after it that
says where the FlatBuffer ends; what follows (weights, tensor data) is never read. The shared
routine opens the file (regular files only), reads at most ``head_bytes``, lets the format's
header parser check the head against the file size, then reads up to the FlatBuffer's end and
nothing more. What differs between the formats is a :class:`FlatFileFormat`.

>>> head = read_flat_head("model.pte", pte_format)  # doctest: +SKIP
>>> len(head.data) == head.header.flatbuffer_end  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from etm_compat.constants import FLATBUFFER_MAX_BYTES, PTE_IDENTIFIER_OFFSET
from etm_compat.errors import PteFormatError, UnreadableError
from etm_compat.fileio import open_regular

#: Where the file identifier sits: bytes 4..8, after the root table's uoffset.
IDENTIFIER_AT: Final = PTE_IDENTIFIER_OFFSET
IDENTIFIER_END: Final = 8


class FlatHeader(Protocol):
    """A parsed file header; it knows where the FlatBuffer ends (its byte count from offset 0)."""

    @property
    def flatbuffer_end(self) -> int: ...


H = TypeVar("H", bound=FlatHeader)


@dataclass(frozen=True)
class FlatFileFormat(Generic[H]):
    """What differs between the FlatBuffer-headed formats (``.pte``, ``.ptd``).

    - ``identifier``: the 4 bytes :func:`has_identifier` looks for at bytes 4..8;
    - ``head_bytes``: how many bytes are read before the header is parsed;
    - ``parse_header(head, file_size, name)``: checks identifier and header, raising ``error``,
      and bounds ``flatbuffer_end`` by the file size and :data:`FLATBUFFER_MAX_BYTES`;
    - ``error``: the format's error class, for a short read;
    - ``what``: the file in read errors (``"cannot read program: ..."``);
    - ``extent``: the FlatBuffer bytes in the truncation error (``"expected N program bytes"``).
    """

    identifier: bytes
    head_bytes: int
    parse_header: Callable[[bytes, int, str], H]
    error: type[PteFormatError]
    what: str
    extent: str


@dataclass(frozen=True)
class FlatHead(Generic[H]):
    """The FlatBuffer bytes of a file (``[0, header.flatbuffer_end)``), its size and header."""

    data: bytes | memoryview
    file_size: int
    header: H


def file_identifier(path: str | os.PathLike[str]) -> bytes:
    """Bytes 4..8 of the regular file at ``path`` (a FlatBuffer's file identifier: ``ET12`` for
    a program, ``FT01`` for weights); empty when it is no regular file or is shorter. Never
    raises. Telling the formats apart needs no reader of either."""
    try:
        with open_regular(path) as f:
            return f.read(IDENTIFIER_END)[IDENTIFIER_AT:IDENTIFIER_END]
    except (OSError, ValueError):
        return b""


def has_identifier(path: str | os.PathLike[str], fmt: FlatFileFormat[H]) -> bool:
    """True if ``path`` is a regular file with ``fmt.identifier`` at bytes 4..8. Never raises."""
    return file_identifier(path) == fmt.identifier


def read_flat_head(path: str | os.PathLike[str], fmt: FlatFileFormat[H]) -> FlatHead[H]:
    """Read the FlatBuffer at the head of the file at ``path``, and nothing after it.

    Reads ``fmt.head_bytes``, then at most up to the parsed header's ``flatbuffer_end``. An
    unreadable path raises :class:`UnreadableError`; a short read raises ``fmt.error``.
    """
    name = os.fspath(path)
    try:
        with open_regular(name) as f:

            def read(at: int, size: int) -> bytes:
                f.seek(at)
                return f.read(size)

            return fetch_flat_head(read, os.fstat(f.fileno()).st_size, fmt, name)
    except OSError as exc:
        raise UnreadableError(f"cannot read {fmt.what}: {exc.strerror or exc}", path=name) from exc


#: ``read(offset, size)``: at most ``size`` bytes from ``offset`` (fewer only at the end).
Read = Callable[[int, int], bytes]


def fetch_flat_head(read: Read, file_size: int, fmt: FlatFileFormat[H], name: str) -> FlatHead[H]:
    """Like :func:`read_flat_head` for a file of ``file_size`` bytes served by ``read`` (an
    archive member read with ``pread``): ``fmt.head_bytes``, then up to the FlatBuffer's end."""
    head = read(0, fmt.head_bytes)
    header = fmt.parse_header(head, file_size, name)
    end = _checked_end(header, file_size, fmt, name)
    data = head[:end]
    while len(data) < end and (more := read(len(data), end - len(data))):
        data += more
    if len(data) != end:
        raise fmt.error(
            f"file is truncated: expected {end} {fmt.extent} bytes, read {len(data)}",
            path=name,
        )
    return FlatHead(data, file_size, header)


def view_flat_head(data: bytes | memoryview, fmt: FlatFileFormat[H], name: str) -> FlatHead[H]:
    """Like :func:`read_flat_head` for a file held in memory; the FlatBuffer is a slice of it."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    header = fmt.parse_header(bytes(view[: fmt.head_bytes]), len(view), name)
    end = _checked_end(header, len(view), fmt, name)
    return FlatHead(view[:end], len(view), header)


def _checked_end(header: FlatHeader, file_size: int, fmt: FlatFileFormat[H], name: str) -> int:
    """The header's FlatBuffer end, refused if its parser let it past the file or the 2 GiB cap.

    The parsers check this already; the routine does not trust them to, so it stays bounded.
    """
    end = header.flatbuffer_end
    if not 0 <= end <= min(file_size, FLATBUFFER_MAX_BYTES):
        raise fmt.error(
            f"FlatBuffer end {end} is out of range [0, {min(file_size, FLATBUFFER_MAX_BYTES)}]",
            path=name,
        )
    return end


__all__ = [
    "IDENTIFIER_AT",
    "IDENTIFIER_END",
    "FlatFileFormat",
    "FlatHead",
    "FlatHeader",
    "Read",
    "fetch_flat_head",
    "file_identifier",
    "has_identifier",
    "read_flat_head",
    "view_flat_head",
]
