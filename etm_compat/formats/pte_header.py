"""The first bytes of a ``.pte``: the ET12 identifier and the optional eh00 extended header.

Every field is checked against the file's size before anything else is read; the result says
where the program's FlatBuffer ends and where its segments start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from etm_compat.constants import (
    FLATBUFFER_MAX_BYTES,
    PTD_IDENTIFIER,
    PTE_EXTENDED_MAGIC,
    PTE_EXTENDED_MIN_LENGTH,
    PTE_EXTENDED_OFFSET,
    PTE_HEAD_BYTES,
    PTE_IDENTIFIER,
    PTE_IDENTIFIER_OFFSET,
)
from etm_compat.errors import PteFormatError
from etm_compat.formats.flatfile import FlatFileFormat

_OTHER_ET_ID = re.compile(rb"ET[0-9a-zA-Z]{2}")


@dataclass(frozen=True)
class PteHeader:
    """What the first bytes of a program say: where its FlatBuffer ends and where the segments lie."""

    flatbuffer_end: int  # program_size: the program head is the FlatBuffer, [0, program_size)
    extended: bool
    segment_base_offset: int | None
    segment_data_size: int | None


def parse_header(head: bytes, file_size: int, name: str) -> PteHeader:
    if file_size < 8 or len(head) < 8:
        raise PteFormatError(
            f"not an ExecuTorch program: only {file_size} bytes, too short for a FlatBuffer header",
            path=name,
            hint="expected a .pte file written by executorch",
        )
    ident = bytes(head[PTE_IDENTIFIER_OFFSET:8])
    if ident != PTE_IDENTIFIER:
        if _OTHER_ET_ID.fullmatch(ident):
            raise PteFormatError(
                f"unsupported program format version: identifier {ident!r} found, "
                f"only {PTE_IDENTIFIER!r} is supported",
                path=name,
                offset=PTE_IDENTIFIER_OFFSET,
                hint="re-export the model with an executorch release that writes ET12",
            )
        hint = None
        if ident == PTD_IDENTIFIER:
            hint = "this is a .ptd weights file, not a program"
        elif all(32 <= b < 127 or b in b"\t\r\n" for b in head[:8]):
            hint = "the file starts like text; a .pte is a binary file written by executorch"
        raise PteFormatError(
            f"not an ExecuTorch program: found {ident!r} (hex {ident.hex()}) at bytes 4..8, "
            f"expected {PTE_IDENTIFIER!r}",
            path=name,
            offset=PTE_IDENTIFIER_OFFSET,
            hint=hint or "expected a .pte file written by executorch",
        )
    if bytes(head[PTE_EXTENDED_OFFSET : PTE_EXTENDED_OFFSET + 4]) != PTE_EXTENDED_MAGIC:
        if file_size > FLATBUFFER_MAX_BYTES:
            raise PteFormatError(
                f"program without an extended header is {file_size} bytes, more than a "
                f"FlatBuffer can address ({FLATBUFFER_MAX_BYTES})",
                path=name,
            )
        return PteHeader(file_size, False, None, None)
    return _parse_extended_header(head, file_size, name)


def _parse_extended_header(head: bytes, file_size: int, name: str) -> PteHeader:
    base = PTE_EXTENDED_OFFSET
    if len(head) < base + PTE_EXTENDED_MIN_LENGTH:
        raise PteFormatError(
            f"file is truncated inside the eh00 extended header ({file_size} bytes)",
            path=name,
            offset=base,
        )
    length = int.from_bytes(head[base + 4 : base + 8], "little")
    if length < PTE_EXTENDED_MIN_LENGTH or base + length > len(head):
        raise PteFormatError(
            f"bad eh00 extended header: length {length}, expected "
            f"{PTE_EXTENDED_MIN_LENGTH} to {len(head) - base}",
            path=name,
            offset=base + 4,
        )
    program_size = int.from_bytes(head[base + 8 : base + 16], "little")
    seg_base = int.from_bytes(head[base + 16 : base + 24], "little")
    seg_size = int.from_bytes(head[base + 24 : base + 32], "little") if length >= 32 else None
    if not base + length <= program_size <= FLATBUFFER_MAX_BYTES:
        raise PteFormatError(
            f"bad eh00 extended header: program_size {program_size} is out of range "
            f"[{base + length}, {FLATBUFFER_MAX_BYTES}]",
            path=name,
            offset=base + 8,
        )
    if seg_base < program_size:
        raise PteFormatError(
            f"bad eh00 extended header: segment_base_offset {seg_base} lies inside the "
            f"program head (program_size {program_size})",
            path=name,
            offset=base + 16,
        )
    needed = max(program_size, seg_base + (seg_size or 0))
    if file_size < needed:
        raise PteFormatError(
            f"file is truncated: {file_size} bytes, but its header says the program "
            f"needs {needed} (segment_base_offset {seg_base} + segment_data_size {seg_size or 0})",
            path=name,
            hint="copy the file again; the download or transfer was incomplete",
        )
    return PteHeader(program_size, True, seg_base, seg_size)


#: How :mod:`etm_compat.formats.flatfile` reads a program's head.
PTE_FILE: Final[FlatFileFormat[PteHeader]] = FlatFileFormat(
    identifier=PTE_IDENTIFIER,
    head_bytes=PTE_HEAD_BYTES,
    parse_header=parse_header,
    error=PteFormatError,
    what="program",
    extent="program",
)




__all__ = ["PTE_FILE", "PteHeader", "parse_header"]
