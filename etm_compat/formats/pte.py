"""Lazy reader of ExecuTorch ``.pte`` programs: the FlatBuffer head only, never the weights.

A ``.pte`` is a FlatBuffer (identifier ``ET12``). When the program has segments, a ``eh00``
extended header at byte 8 gives ``program_size``: the reader reads ``[0, program_size)`` and
nothing after it, so a 1 GiB program costs as much to describe as a 1 MB one. Every offset in
the file is untrusted (see :mod:`etm_compat.formats.flatbuf`); anything malformed raises
:class:`~etm_compat.errors.PteFormatError`.

>>> info = read_pte("fixtures/programs/constants_all.pte")  # doctest: +SKIP
>>> info.constant_methods["get_eos_ids"]  # doctest: +SKIP
[2, 3]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from etm_compat.constants import (
    EVALUE_BOOL,
    EVALUE_BOOL_LIST,
    EVALUE_DOUBLE,
    EVALUE_DOUBLE_LIST,
    EVALUE_INT,
    EVALUE_INT_LIST,
    EVALUE_MAX_TAG,
    EVALUE_NONE,
    EVALUE_NULL,
    EVALUE_STRING,
    EVALUE_TENSOR,
    FLATBUFFER_MAX_BYTES,
    PTD_IDENTIFIER,
    PTE_EXTENDED_MAGIC,
    PTE_EXTENDED_MIN_LENGTH,
    PTE_EXTENDED_OFFSET,
    PTE_HEAD_BYTES,
    PTE_IDENTIFIER,
    PTE_IDENTIFIER_OFFSET,
    TENSOR_DATA_LOCATION_EXTERNAL,
)
from etm_compat.errors import PteFormatError
from etm_compat.formats.flatbuf import FlatBuffer, Table
from etm_compat.formats.flatfile import (
    FlatFileFormat,
    has_identifier,
    read_flat_head,
    view_flat_head,
)
from etm_compat.formats.treespec import ConstantValue, unflatten

# Loop bounds: far above any real program, low enough that a hostile file stays cheap.
MAX_PLANS: Final = 10_000
MAX_VALUES: Final = 1_000_000
MAX_LIST_ITEMS: Final = 1_000_000
MAX_SEGMENTS: Final = 1_000_000
MAX_DELEGATES: Final = 100_000
MAX_NAMED_DATA: Final = 1_000_000

# Vtable slots (4 + 2 * field id), program.fbs; see docs/research notes section 2.
_PROGRAM_EXECUTION_PLAN, _PROGRAM_SEGMENTS, _PROGRAM_NAMED_DATA = 6, 12, 18
_PLAN_NAME, _PLAN_META, _PLAN_VALUES, _PLAN_INPUTS = 4, 6, 8, 10
_PLAN_OUTPUTS, _PLAN_CHAINS, _PLAN_DELEGATES = 12, 14, 18
_META_OUT_STR = 6
_CHAIN_INSTRUCTIONS = 8
_EVALUE_TYPE, _EVALUE_VAL = 4, 6
_PAYLOAD_VALUE = 4  # Int.int_val, Bool.bool_val, Double.double_val, String.string_val, *List.items
_TENSOR_EXTRA_INFO = 22
_EXTRA_FQN, _EXTRA_LOCATION = 6, 8
_DELEGATE_ID = 4
_KEY, _SEGMENT_INDEX = 4, 6  # NamedData
_SEGMENT_OFFSET, _SEGMENT_SIZE = 4, 6  # DataSegment

_OTHER_ET_ID = re.compile(rb"ET[0-9a-zA-Z]{2}")


@dataclass(frozen=True)
class Segment:
    """A ``Program.segments`` entry; ``offset`` is relative to ``segment_base_offset``."""

    offset: int
    size: int


@dataclass(frozen=True)
class PteInfo:
    """What the head of a ``.pte`` says. Built by :func:`read_pte`; never holds weight bytes."""

    path: str
    file_size: int
    program_size: int
    has_extended_header: bool
    segment_base_offset: int | None
    segment_data_size: int | None
    methods: tuple[str, ...]
    constant_methods: Mapping[str, ConstantValue]
    backends: tuple[str, ...]
    external_keys: tuple[str, ...]
    named_data_keys: tuple[str, ...]
    segments: tuple[Segment, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable description, ``{"kind": "pte", ...}``."""
        return {
            "kind": "pte",
            "path": self.path,
            "file_size": self.file_size,
            "program_size": self.program_size,
            "has_extended_header": self.has_extended_header,
            "segment_base_offset": self.segment_base_offset,
            "segment_data_size": self.segment_data_size,
            "methods": list(self.methods),
            "constant_methods": dict(self.constant_methods),
            "backends": list(self.backends),
            "external_keys": list(self.external_keys),
            "named_data_keys": list(self.named_data_keys),
            "segments": [{"offset": s.offset, "size": s.size} for s in self.segments],
        }


@dataclass(frozen=True)
class _Header:
    program_size: int
    extended: bool
    segment_base_offset: int | None
    segment_data_size: int | None

    @property
    def flatbuffer_end(self) -> int:
        """The program head is the FlatBuffer: ``[0, program_size)``."""
        return self.program_size


def is_pte_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts like an ExecuTorch program (``ET12`` at bytes 4..8). Never raises."""
    return has_identifier(path, _PTE_FILE)


def read_pte(path: str | os.PathLike[str]) -> PteInfo:
    """Describe the ``.pte`` at ``path``, reading only its program head.

    >>> read_pte("model.pte").methods  # doctest: +SKIP
    ('forward',)
    """
    head = read_flat_head(path, _PTE_FILE)
    return _parse_program(head.data, head.file_size, head.header, os.fspath(path))


def read_pte_bytes(data: bytes | memoryview, *, name: str = "<bytes>") -> PteInfo:
    """Describe a ``.pte`` held in memory (e.g. an archive member); only its head is parsed."""
    head = view_flat_head(data, _PTE_FILE, name)
    return _parse_program(head.data, head.file_size, head.header, name)


def _parse_header(head: bytes, file_size: int, name: str) -> _Header:
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
        return _Header(file_size, False, None, None)
    return _parse_extended_header(head, file_size, name)


def _parse_extended_header(head: bytes, file_size: int, name: str) -> _Header:
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
    return _Header(program_size, True, seg_base, seg_size)


#: How :mod:`etm_compat.formats.flatfile` reads a program's head.
_PTE_FILE: Final[FlatFileFormat[_Header]] = FlatFileFormat(
    identifier=PTE_IDENTIFIER,
    head_bytes=PTE_HEAD_BYTES,
    parse_header=_parse_header,
    error=PteFormatError,
    what="program",
    extent="program",
)


def _parse_program(data: bytes | memoryview, file_size: int, header: _Header, name: str) -> PteInfo:
    buf = FlatBuffer(data, path=name, error=PteFormatError)
    program = buf.root("Program")
    methods: list[str] = []
    constants: dict[str, ConstantValue] = {}
    backends: set[str] = set()
    external: dict[str, None] = {}
    for index, plan in enumerate(
        program.tables(_PROGRAM_EXECUTION_PLAN, "execution_plan", MAX_PLANS)
    ):
        plan_name = plan.string(_PLAN_NAME, "name")
        if plan_name is None:
            buf.fail(f"execution_plan[{index}] has no name", offset=plan.pos)
        values = plan.tables(_PLAN_VALUES, f"{plan_name}.values", MAX_VALUES)
        if _is_constant_method(plan):
            constants[plan_name] = _read_constant(plan, plan_name, values)
        else:
            methods.append(plan_name)
        for delegate in plan.tables(_PLAN_DELEGATES, f"{plan_name}.delegates", MAX_DELEGATES):
            backend = delegate.string(_DELEGATE_ID, "id")
            if backend is not None:
                backends.add(backend)
        for value in values:
            key = _external_key(value)
            if key is not None:
                external[key] = None
    segments = tuple(
        Segment(s.u64(_SEGMENT_OFFSET, "offset"), s.u64(_SEGMENT_SIZE, "size"))
        for s in program.tables(_PROGRAM_SEGMENTS, "segments", MAX_SEGMENTS)
    )
    _check_segments(segments, file_size, header, name)
    named = tuple(
        nd.string(_KEY, "key") or ""
        for nd in program.tables(_PROGRAM_NAMED_DATA, "named_data", MAX_NAMED_DATA)
    )
    return PteInfo(
        path=name,
        file_size=file_size,
        program_size=header.program_size,
        has_extended_header=header.extended,
        segment_base_offset=header.segment_base_offset,
        segment_data_size=header.segment_data_size,
        methods=tuple(methods),
        constant_methods=MappingProxyType(constants),
        backends=tuple(sorted(backends)),
        external_keys=tuple(external),
        named_data_keys=named,
        segments=segments,
    )


def _is_constant_method(plan: Table) -> bool:
    """One chain with zero instructions and no inputs: how the emitter writes a prim getter."""
    chains = plan.tables(_PLAN_CHAINS, "chains", MAX_PLANS)
    if len(chains) != 1:
        return False
    if chains[0].vector_len(_CHAIN_INSTRUCTIONS, "instructions", 4, MAX_VALUES) != 0:
        return False
    return plan.vector_len(_PLAN_INPUTS, "inputs", 4, MAX_VALUES) == 0


def _read_constant(plan: Table, name: str, values: list[Table]) -> ConstantValue:
    outputs = plan.ints(_PLAN_OUTPUTS, f"{name}.outputs", "i", MAX_VALUES)
    flat: list[ConstantValue] = []
    for out in outputs:
        if not 0 <= out < len(values):
            plan.buf.fail(
                f"constant method {name!r} outputs value {out}, but it has {len(values)} values",
                offset=plan.pos,
            )
        flat.append(_evalue(values[out], f"{name}.values[{out}]"))
    meta = plan.table(_PLAN_META, "container_meta_type")
    spec = meta.string(_META_OUT_STR, "encoded_out_str") if meta is not None else None
    return unflatten(spec, flat)


def _evalue(value: Table, where: str) -> ConstantValue:
    buf = value.buf
    tag = value.u8(_EVALUE_TYPE, "val_type")
    if tag > EVALUE_MAX_TAG:
        buf.fail(
            f"unknown EValue union type {tag} in {where} (known types are 0..{EVALUE_MAX_TAG})",
            offset=value.pos,
        )
    if tag in (EVALUE_NONE, EVALUE_NULL):
        return None
    payload = value.table(_EVALUE_VAL, "val")
    if payload is None:
        buf.fail(f"{where} has union type {tag} but no value", offset=value.pos)
    if tag == EVALUE_INT:
        return payload.i64(_PAYLOAD_VALUE, "int_val")
    if tag == EVALUE_BOOL:
        return payload.u8(_PAYLOAD_VALUE, "bool_val") != 0
    if tag == EVALUE_DOUBLE:
        return payload.f64(_PAYLOAD_VALUE, "double_val")
    if tag == EVALUE_STRING:
        return payload.string(_PAYLOAD_VALUE, "string_val") or ""
    if tag == EVALUE_INT_LIST:
        return list(payload.ints(_PAYLOAD_VALUE, "items", "q", MAX_LIST_ITEMS))
    if tag == EVALUE_DOUBLE_LIST:
        return [float(v) for v in payload.scalars(_PAYLOAD_VALUE, "items", "d", MAX_LIST_ITEMS)]
    if tag == EVALUE_BOOL_LIST:
        return [v != 0 for v in payload.ints(_PAYLOAD_VALUE, "items", "B", MAX_LIST_ITEMS)]
    # Tensor, TensorList, OptionalTensorList: a constant method returning tensors has no
    # scalar value to report; its data lives in segments this reader does not touch.
    return None


def _external_key(value: Table) -> str | None:
    """The fully_qualified_name of a tensor value stored EXTERNAL, else None."""
    if value.u8(_EVALUE_TYPE, "val_type") != EVALUE_TENSOR:
        return None
    tensor = value.table(_EVALUE_VAL, "val")
    extra = tensor.table(_TENSOR_EXTRA_INFO, "extra_tensor_info") if tensor else None
    if extra is None or extra.u8(_EXTRA_LOCATION, "location") != TENSOR_DATA_LOCATION_EXTERNAL:
        return None
    key = extra.string(_EXTRA_FQN, "fully_qualified_name")
    if not key:
        value.buf.fail("EXTERNAL tensor has no fully_qualified_name", offset=extra.pos)
    return key


def _check_segments(
    segments: tuple[Segment, ...], file_size: int, header: _Header, name: str
) -> None:
    """Every segment must lie inside the file (checked by size, without reading it)."""
    if header.segment_base_offset is None:
        if any(s.size for s in segments):
            raise PteFormatError(
                "program lists segment data but has no eh00 extended header to locate it",
                path=name,
                offset=PTE_EXTENDED_OFFSET,
            )
        return
    for index, seg in enumerate(segments):
        end = header.segment_base_offset + seg.offset + seg.size
        if end > file_size:
            raise PteFormatError(
                f"file is truncated: segment {index} ends at byte {end}, "
                f"but the file has {file_size} bytes",
                path=name,
                hint="copy the file again; the download or transfer was incomplete",
            )


__all__ = ["ConstantValue", "PteInfo", "Segment", "is_pte_file", "read_pte", "read_pte_bytes"]
