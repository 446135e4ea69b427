"""Lazy reader of ExecuTorch ``.pte`` programs: the FlatBuffer head only, never the weights.

A ``.pte`` is a FlatBuffer (identifier ``ET12``). When the program has segments, a ``eh00``
extended header at byte 8 gives ``program_size``: the reader reads ``[0, program_size)`` and
nothing after it, so a 1 GiB program costs as much to describe as a 1 MB one. Every offset in
the file is untrusted (see :mod:`etm_compat.formats.flatbuf`); anything malformed raises
:class:`~etm_compat.errors.PteFormatError`. The one read past the head: a constant method that
returns a small constant tensor (MLX's ``get_kv_heads``...) has its data fetched from the
constant segment, bounded, and reported as the nested lists ``Tensor.tolist()`` gives.

>>> info = read_pte("fixtures/programs/constants_all.pte")  # doctest: +SKIP
>>> info.constant_methods["get_eos_ids"]  # doctest: +SKIP
[2, 3]
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Mapping
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
    PTE_EXTENDED_OFFSET,
    TENSOR_DATA_LOCATION_EXTERNAL,
)
from etm_compat.errors import PteFormatError, UnreadableError
from etm_compat.fileio import open_regular
from etm_compat.formats.flatbuf import SCALARS_PER_UNIT, FlatBuffer, Table
from etm_compat.formats.flatfile import (
    Read,
    fetch_flat_head,
    has_identifier,
    read_flat_head,
    view_flat_head,
)
from etm_compat.formats.pte_header import PTE_FILE, PteHeader
from etm_compat.formats.treespec import ConstantValue, unflatten

# Loop bounds: far above any real program, low enough that a hostile file stays cheap.
MAX_PLANS: Final = 10_000
MAX_VALUES: Final = 1_000_000
MAX_LIST_ITEMS: Final = 1_000_000
MAX_SEGMENTS: Final = 1_000_000
MAX_DELEGATES: Final = 100_000
MAX_NAMED_DATA: Final = 1_000_000
#: Constant tensors that constant methods return are read up to this size, and at most this many
#: per program; a larger or later one reads as None (constant methods return metadata, not weights).
MAX_CONSTANT_TENSOR_BYTES: Final = 64 * 1024
MAX_CONSTANT_TENSORS: Final = 64
#: Characters of a constant method's pytree spec per work unit (:mod:`etm_compat.formats.flatbuf`).
_SPEC_CHARS_PER_UNIT: Final = 4

# Vtable slots (4 + 2 * field id), program.fbs; see docs/research notes section 2.
_PROGRAM_EXECUTION_PLAN, _PROGRAM_SEGMENTS, _PROGRAM_CONSTANT_SEGMENT = 6, 12, 14
_PROGRAM_NAMED_DATA = 18
_SUBSEGMENT_INDEX, _SUBSEGMENT_OFFSETS = 4, 6
_PLAN_NAME, _PLAN_META, _PLAN_VALUES, _PLAN_INPUTS, _PLAN_OUTPUTS, _PLAN_CHAINS, _PLAN_DELEGATES = 4, 6, 8, 10, 12, 14, 18
_META_OUT_STR = 6
_CHAIN_INSTRUCTIONS = 8
_EVALUE_TYPE, _EVALUE_VAL = 4, 6
_PAYLOAD_VALUE = 4  # Int.int_val, Bool.bool_val, Double.double_val, String.string_val, *List.items
_TENSOR_SCALAR_TYPE, _TENSOR_SIZES, _TENSOR_DIM_ORDER = 4, 8, 10
_TENSOR_DATA_BUFFER, _TENSOR_ALLOCATION, _TENSOR_EXTRA_INFO = 14, 16, 22
_EXTRA_FQN, _EXTRA_LOCATION = 6, 8
_DELEGATE_ID = 4
_KEY, _SEGMENT_INDEX = 4, 6  # NamedData
_SEGMENT_OFFSET, _SEGMENT_SIZE = 4, 6  # DataSegment

#: ScalarType -> struct code, for the element types a constant tensor is decoded from.
_TENSOR_CODES: Final = {0: "B", 1: "b", 2: "h", 3: "i", 4: "q", 5: "e", 6: "f", 7: "d", 11: "?"}
#: ``fetch(offset, size)``: bytes of the file at an absolute offset (the constant segment).
Fetch = Callable[[int, int], bytes]


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


def is_pte_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts like an ExecuTorch program (``ET12`` at bytes 4..8). Never raises."""
    return has_identifier(path, PTE_FILE)


def read_pte(path: str | os.PathLike[str]) -> PteInfo:
    """Describe the ``.pte`` at ``path``, reading only its program head.

    >>> read_pte("model.pte").methods  # doctest: +SKIP
    ('forward',)
    """
    return describe_program(open_program(path))


def read_pte_bytes(data: bytes | memoryview, *, name: str = "<bytes>") -> PteInfo:
    """Describe a ``.pte`` held in memory (e.g. an archive member); only its head is parsed."""
    return describe_program(open_program_bytes(data, name=name))


@dataclass(frozen=True)
class ProgramHead:
    """A program's parsed head: its Program table, checked segments, and a bounded ``fetch``.

    What :func:`describe_program` and the signature and delegate readers
    (:mod:`etm_compat.formats.signatures`, :mod:`etm_compat.formats.delegates`) start from.
    ``fetch(offset, size)`` reads bytes past the head; callers bound ``size`` themselves.
    """

    name: str
    file_size: int
    header: PteHeader
    program: Table
    segments: tuple[Segment, ...]
    fetch: Fetch


def open_program(path: str | os.PathLike[str]) -> ProgramHead:
    """Parse the head of the ``.pte`` at ``path`` (the FlatBuffer only) and check its segments."""
    name = os.fspath(path)
    head = read_flat_head(name, PTE_FILE)
    return _open_head(head.data, head.file_size, head.header, name, _file_fetch(name))


def open_program_bytes(data: bytes | memoryview, *, name: str = "<bytes>") -> ProgramHead:
    """Like :func:`open_program` for a ``.pte`` held in memory."""
    head, whole = view_flat_head(data, PTE_FILE, name), memoryview(data).cast("B")
    fetch: Fetch = lambda at, size: bytes(whole[at : at + size])  # noqa: E731
    return _open_head(head.data, head.file_size, head.header, name, fetch)


def open_program_at(read: Read, file_size: int, *, name: str) -> ProgramHead:
    """Like :func:`open_program` for a ``.pte`` of ``file_size`` bytes served by ``read`` (an
    archive member read with ``pread``, which reports a truncated file instead of faulting)."""
    head = fetch_flat_head(read, file_size, PTE_FILE, name)
    return _open_head(head.data, head.file_size, head.header, name, read)


def _open_head(
    data: bytes | memoryview, file_size: int, header: PteHeader, name: str, fetch: Fetch
) -> ProgramHead:
    program = FlatBuffer(data, path=name, error=PteFormatError).root("Program")
    segments = tuple(
        Segment(s.u64(_SEGMENT_OFFSET, "offset"), s.u64(_SEGMENT_SIZE, "size"))
        for s in program.tables(_PROGRAM_SEGMENTS, "segments", MAX_SEGMENTS)
    )
    _check_segments(segments, file_size, header, name)
    return ProgramHead(name, file_size, header, program, segments, fetch)


def _file_fetch(name: str) -> Fetch:
    def fetch(offset: int, size: int) -> bytes:
        try:
            with open_regular(name) as f:
                f.seek(offset)
                return f.read(size)
        except OSError as exc:
            raise UnreadableError(f"cannot read program: {exc.strerror or exc}", path=name) from exc

    return fetch


def describe_program(head: ProgramHead) -> PteInfo:
    """The :class:`PteInfo` of an opened program head (what :func:`read_pte` returns)."""
    program, segments, header, name = head.program, head.segments, head.header, head.name
    buf = program.buf
    tensors = _ConstantTensors(program, segments, header.segment_base_offset, head.fetch)
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
            constants[plan_name] = _read_constant(plan, plan_name, values, tensors)
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
    named = tuple(
        nd.string(_KEY, "key") or ""
        for nd in program.tables(_PROGRAM_NAMED_DATA, "named_data", MAX_NAMED_DATA)
    )
    return PteInfo(
        path=name,
        file_size=head.file_size,
        program_size=header.flatbuffer_end,
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


def _read_constant(
    plan: Table, name: str, values: list[Table], tensors: _ConstantTensors
) -> ConstantValue:
    outputs = plan.ints(_PLAN_OUTPUTS, f"{name}.outputs", "i", MAX_VALUES)
    # An EValue read per output, a unit each even when it visits no table (a None).
    plan.buf.charge(len(outputs), f"{name}.outputs")
    flat: list[ConstantValue] = []
    for out in outputs:
        if not 0 <= out < len(values):
            plan.buf.fail(
                f"constant method {name!r} outputs value {out}, but it has {len(values)} values",
                offset=plan.pos,
            )
        flat.append(_evalue(values[out], f"{name}.values[{out}]", tensors))
    meta = plan.table(_PLAN_META, "container_meta_type")
    spec = meta.string(_META_OUT_STR, "encoded_out_str") if meta is not None else None
    if spec is not None:  # parsed character by character: far more work than decoding it
        plan.buf.charge(len(spec) // _SPEC_CHARS_PER_UNIT, f"{name}.encoded_out_str")
    return unflatten(spec, flat)


def _evalue(value: Table, where: str, tensors: _ConstantTensors) -> ConstantValue:
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
    if tag == EVALUE_TENSOR and _external_key(value) is None:
        return tensors.read(payload)
    return None  # a TensorList, or a tensor whose data is in a .ptd: not read


class _ConstantTensors:
    """Small tensors returned by constant methods, as ``Tensor.tolist()`` gives them.

    Only plain, contiguous, non-empty tensors (at most 16 dimensions) whose data lies in the
    constant segment (``data_buffer_idx`` > 0, no ``allocation_info``), within the bounds above;
    any other reads as None.
    """

    def __init__(self, program: Table, segs: tuple[Segment, ...], base: int | None, fetch: Fetch):
        self.fetch, self.left, self.start, self.size = fetch, MAX_CONSTANT_TENSORS, 0, 0
        self.offsets: tuple[int, ...] = ()
        sub = program.table(_PROGRAM_CONSTANT_SEGMENT, "constant_segment")
        index = sub.u32(_SUBSEGMENT_INDEX, "segment_index") if sub is not None else len(segs)
        if sub is not None and base is not None and index < len(segs):
            self.start, self.size = base + segs[index].offset, segs[index].size
            self.offsets = sub.ints(_SUBSEGMENT_OFFSETS, "offsets", "Q", MAX_VALUES)

    def read(self, tensor: Table) -> ConstantValue:
        code = _TENSOR_CODES.get(tensor.i8(_TENSOR_SCALAR_TYPE, "scalar_type"))
        index = tensor.u32(_TENSOR_DATA_BUFFER, "data_buffer_idx")
        sizes = tensor.ints(_TENSOR_SIZES, "sizes", "i", MAX_LIST_ITEMS)
        order = tensor.ints(_TENSOR_DIM_ORDER, "dim_order", "B", MAX_LIST_ITEMS)
        if code is None or tensor.has(_TENSOR_ALLOCATION) or not 0 < index < len(self.offsets):
            return None
        contiguous = order in ((), tuple(range(len(sizes))))
        if len(sizes) > 16 or min(sizes, default=1) < 1 or not contiguous:
            return None
        count, at = math.prod(sizes), self.offsets[index]
        nbytes = count * struct.calcsize(code)
        if nbytes > MAX_CONSTANT_TENSOR_BYTES or at + nbytes > self.size or self.left < 1:
            return None
        self.left -= 1
        tensor.buf.charge(1 + count // SCALARS_PER_UNIT, "a constant tensor")
        raw = self.fetch(self.start + at, nbytes)
        if len(raw) != nbytes:
            tensor.buf.fail("file is truncated inside a constant tensor", offset=self.start + at)
        flat: list[ConstantValue] = list(struct.unpack(f"<{count}{code}", raw))
        for size in reversed(sizes[1:]):  # row-major nesting, as tolist() gives
            flat = [flat[i : i + size] for i in range(0, len(flat), size)]
        return flat if sizes else flat[0]


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
    segments: tuple[Segment, ...], file_size: int, header: PteHeader, name: str
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


__all__ = [
    "ConstantValue",
    "Fetch",
    "ProgramHead",
    "PteInfo",
    "Segment",
    "describe_program",
    "is_pte_file",
    "open_program",
    "open_program_at",
    "open_program_bytes",
    "read_pte",
    "read_pte_bytes",
]
