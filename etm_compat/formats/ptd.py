"""Lazy reader of ExecuTorch ``.ptd`` flat-tensor data files: names, dtypes, shapes, sizes.

A ``.ptd`` is a FlatBuffer (identifier ``FT01``) with a ``FH01`` header at byte 8 that gives the
FlatBuffer's extent and where the segments (the tensor bytes) start. Only the FlatBuffer is read;
segment sizes come from its segment table. Two table layouts exist: v0.7+ (``named_data`` with an
optional ``TensorLayout``) and v0.6 (``tensors: [TensorMetadata]`` plus ``tensor_alignment``).

>>> info = read_ptd("fixtures/programs/ext_weights.ptd")  # doctest: +SKIP
>>> sorted(info.keys)  # doctest: +SKIP
['linear.bias', 'linear.weight']
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, Literal

from etm_compat.constants import (
    BACKEND_BLOB_PREFIXES,
    BACKEND_BLOB_SUFFIXES,
    FLATBUFFER_MAX_BYTES,
    PTD_HEAD_BYTES,
    PTD_HEADER_LENGTH,
    PTD_HEADER_MAGIC,
    PTD_IDENTIFIER,
    PTD_SUPPORTED_VERSIONS,
    PTE_IDENTIFIER,
    SCALAR_TYPES,
)
from etm_compat.errors import PtdFormatError
from etm_compat.formats.flatbuf import FlatBuffer, Table
from etm_compat.formats.flatfile import (
    IDENTIFIER_AT,
    FlatFileFormat,
    Read,
    fetch_flat_head,
    has_identifier,
    read_flat_head,
    view_flat_head,
)

MAX_TENSORS: Final = 1_000_000
MAX_SEGMENTS: Final = 1_000_000
MAX_RANK: Final = 64

_IDENT_AT, _MAGIC_AT = IDENTIFIER_AT, 8
# FlatTensor vtable slots: v0.7 {version, segments, named_data};
# v0.6 {version, tensor_alignment, tensors, segments, named_data}.
_VERSION = 4
_V7_SEGMENTS, _V7_NAMED_DATA = 6, 8
_V6_ALIGNMENT, _V6_TENSORS, _V6_SEGMENTS, _V6_NAMED_DATA = 6, 8, 10, 12
_NAMED_KEY, _NAMED_SEGMENT, _NAMED_LAYOUT = 4, 6, 8
_LAYOUT_SCALAR_TYPE, _LAYOUT_SIZES = 4, 6
_META_FQN, _META_SCALAR_TYPE, _META_SIZES, _META_SEGMENT, _META_OFFSET = 4, 6, 8, 12, 14
_SEGMENT_OFFSET, _SEGMENT_SIZE = 4, 6

Layout = Literal["v0.7", "v0.6"]


@dataclass(frozen=True)
class PtdTensor:
    """One named blob of a ``.ptd``; ``dtype``/``shape`` are None for blobs without a layout.

    ``dtype`` is the ExecuTorch ScalarType enum name (``"FLOAT"``, ``"HALF"``, ``"BFLOAT16"``...).
    """

    key: str
    dtype: str | None
    shape: tuple[int, ...] | None
    nbytes: int
    segment_index: int


@dataclass(frozen=True)
class PtdInfo:
    """What a ``.ptd`` holds. Built by :func:`read_ptd`; never holds tensor bytes."""

    path: str
    file_size: int
    layout: Layout
    segment_base_offset: int
    segment_data_size: int
    tensors: tuple[PtdTensor, ...]

    @property
    def keys(self) -> frozenset[str]:
        """The names a program can look data up by."""
        return frozenset(t.key for t in self.tensors)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable description, ``{"kind": "ptd", ...}``."""
        return {
            "kind": "ptd",
            "path": self.path,
            "file_size": self.file_size,
            "layout": self.layout,
            "segment_base_offset": self.segment_base_offset,
            "segment_data_size": self.segment_data_size,
            "tensors": [
                {
                    "key": t.key,
                    "dtype": t.dtype,
                    "shape": None if t.shape is None else list(t.shape),
                    "nbytes": t.nbytes,
                }
                for t in self.tensors
            ],
        }


@dataclass(frozen=True)
class _Header:
    flatbuffer_end: int
    segment_base_offset: int
    segment_data_size: int


def is_ptd_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts like a flat-tensor data file (``FT01`` at bytes 4..8). Never raises."""
    return has_identifier(path, _PTD_FILE)


def read_ptd(path: str | os.PathLike[str]) -> PtdInfo:
    """Describe the ``.ptd`` at ``path``, reading only its FlatBuffer (not the tensor data).

    >>> [t.key for t in read_ptd("weights.ptd").tensors]  # doctest: +SKIP
    ['linear.weight', 'linear.bias']
    """
    head = read_flat_head(path, _PTD_FILE)
    return _parse_table(head.data, head.file_size, head.header, os.fspath(path))


def read_ptd_bytes(data: bytes | memoryview, *, name: str = "<bytes>") -> PtdInfo:
    """Describe a ``.ptd`` held in memory (e.g. an archive member)."""
    head = view_flat_head(data, _PTD_FILE, name)
    return _parse_table(head.data, head.file_size, head.header, name)


def read_ptd_at(read: Read, file_size: int, *, name: str) -> PtdInfo:
    """Describe a ``.ptd`` of ``file_size`` bytes served by ``read`` (an archive member)."""
    head = fetch_flat_head(read, file_size, _PTD_FILE, name)
    return _parse_table(head.data, head.file_size, head.header, name)


def _parse_header(head: bytes, file_size: int, name: str) -> _Header:
    ident = bytes(head[_IDENT_AT:8])
    if ident != PTD_IDENTIFIER:
        hint = "this is a .pte program, not a data file" if ident == PTE_IDENTIFIER else None
        raise PtdFormatError(
            f"not an ExecuTorch data file: found {ident!r} (hex {ident.hex()}) at bytes 4..8, "
            f"expected {PTD_IDENTIFIER!r}",
            path=name,
            offset=_IDENT_AT,
            hint=hint or "expected a .ptd file written by executorch",
        )
    magic = bytes(head[_MAGIC_AT : _MAGIC_AT + 4])
    if magic != PTD_HEADER_MAGIC:
        raise PtdFormatError(
            f"bad flat-tensor header: found {magic!r} at bytes 8..12, expected {PTD_HEADER_MAGIC!r}",
            path=name,
            offset=_MAGIC_AT,
        )
    if len(head) < _MAGIC_AT + PTD_HEADER_LENGTH:
        raise PtdFormatError(
            f"file is truncated inside the FH01 header ({file_size} bytes)", path=name, offset=8
        )

    def field(at: int) -> int:
        return int.from_bytes(head[_MAGIC_AT + at : _MAGIC_AT + at + 8], "little")

    length = int.from_bytes(head[_MAGIC_AT + 4 : _MAGIC_AT + 8], "little")
    fb_offset, fb_size, seg_base, seg_size = field(8), field(16), field(24), field(32)
    if length < PTD_HEADER_LENGTH:
        raise PtdFormatError(
            f"bad FH01 header: length {length}, expected at least {PTD_HEADER_LENGTH}",
            path=name,
            offset=_MAGIC_AT + 4,
        )
    end = fb_offset + fb_size
    if fb_offset < _MAGIC_AT or not _MAGIC_AT + length <= end <= FLATBUFFER_MAX_BYTES:
        raise PtdFormatError(
            f"bad FH01 header: flatbuffer_offset {fb_offset} + flatbuffer_size {fb_size} = {end} "
            f"is out of range [{_MAGIC_AT + length}, {FLATBUFFER_MAX_BYTES}]",
            path=name,
            offset=_MAGIC_AT + 8,
        )
    if seg_size and seg_base < end:
        raise PtdFormatError(
            f"bad FH01 header: segment_base_offset {seg_base} lies inside the FlatBuffer "
            f"(which ends at {end})",
            path=name,
            offset=_MAGIC_AT + 24,
        )
    needed = max(end, seg_base + seg_size)
    if file_size < needed:
        raise PtdFormatError(
            f"file is truncated: {file_size} bytes, but its header says it needs {needed}",
            path=name,
            hint="copy the file again; the download or transfer was incomplete",
        )
    return _Header(end, seg_base, seg_size)


#: How :mod:`etm_compat.formats.flatfile` reads a data file's head.
_PTD_FILE: Final[FlatFileFormat[_Header]] = FlatFileFormat(
    identifier=PTD_IDENTIFIER,
    head_bytes=PTD_HEAD_BYTES,
    parse_header=_parse_header,
    error=PtdFormatError,
    what="data file",
    extent="header",
)


def _detect_layout(root: Table) -> Layout:
    """v0.6 roots have more than 3 fields and a scalar tensor_alignment (a power of two) at slot 6."""
    if root.field_count <= 3:
        return "v0.7"
    alignment = root.u32(_V6_ALIGNMENT, "tensor_alignment")
    if alignment and alignment & (alignment - 1) == 0 and alignment <= 1 << 20:
        return "v0.6"
    return "v0.7"


def _parse_table(data: bytes | memoryview, file_size: int, header: _Header, name: str) -> PtdInfo:
    buf = FlatBuffer(data, path=name, error=PtdFormatError)
    root = buf.root("FlatTensor")
    version = root.u32(_VERSION, "version")
    if version not in PTD_SUPPORTED_VERSIONS:
        buf.fail(
            f"unsupported flat-tensor version {version}; supported: {list(PTD_SUPPORTED_VERSIONS)}",
            offset=root.pos,
            hint="upgrade etm-compat, or re-export the weights with a supported executorch",
        )
    layout = _detect_layout(root)
    seg_slot = _V6_SEGMENTS if layout == "v0.6" else _V7_SEGMENTS
    segments = [
        (s.u64(_SEGMENT_OFFSET, "offset"), s.u64(_SEGMENT_SIZE, "size"))
        for s in root.tables(seg_slot, "segments", MAX_SEGMENTS)
    ]
    for index, (offset, size) in enumerate(segments):
        end = header.segment_base_offset + offset + size
        if end > file_size:
            buf.fail(
                f"file is truncated: segment {index} ends at byte {end}, "
                f"but the file has {file_size} bytes",
                hint="copy the file again; the download or transfer was incomplete",
            )
    tensors: list[PtdTensor] = []
    if layout == "v0.6":
        tensors.extend(_v06_tensors(root, segments))
    named_slot = _V6_NAMED_DATA if layout == "v0.6" else _V7_NAMED_DATA
    for entry in root.tables(named_slot, "named_data", MAX_TENSORS):
        key = entry.string(_NAMED_KEY, "key")
        if key is None:
            buf.fail("named_data entry has no key", offset=entry.pos)
        index = entry.u32(_NAMED_SEGMENT, "segment_index")
        size = _segment(segments, index, key, entry)[1]
        tensor_layout = entry.table(_NAMED_LAYOUT, "tensor_layout")
        dtype = shape = None
        if tensor_layout is not None:
            dtype = _dtype_name(tensor_layout.i8(_LAYOUT_SCALAR_TYPE, "scalar_type"))
            shape = tensor_layout.ints(_LAYOUT_SIZES, "sizes", "i", MAX_RANK)
        tensors.append(PtdTensor(key, dtype, shape, size, index))
    return PtdInfo(
        path=name,
        file_size=file_size,
        layout=layout,
        segment_base_offset=header.segment_base_offset,
        segment_data_size=header.segment_data_size,
        tensors=tuple(tensors),
    )


def _v06_tensors(root: Table, segments: list[tuple[int, int]]) -> list[PtdTensor]:
    """v0.6 TensorMetadata: several tensors may share a segment, each at its own offset."""
    out: list[PtdTensor] = []
    for meta in root.tables(_V6_TENSORS, "tensors", MAX_TENSORS):
        key = meta.string(_META_FQN, "fully_qualified_name")
        if key is None:
            root.buf.fail("tensor entry has no fully_qualified_name", offset=meta.pos)
        scalar_type = meta.i8(_META_SCALAR_TYPE, "scalar_type")
        shape = meta.ints(_META_SIZES, "sizes", "i", MAX_RANK)
        index = meta.i32(_META_SEGMENT, "segment_index")
        offset = meta.u64(_META_OFFSET, "offset")
        seg_size = _segment(segments, index, key, meta)[1]
        if offset > seg_size:
            root.buf.fail(
                f"tensor {key!r} starts at offset {offset}, past the end of its "
                f"{seg_size}-byte segment {index}",
                offset=meta.pos,
            )
        nbytes = seg_size - offset
        elem = SCALAR_TYPES.get(scalar_type, ("", None))[1]
        if elem is not None and all(dim >= 0 for dim in shape):
            nbytes = min(nbytes, math.prod(shape) * elem)
        out.append(PtdTensor(key, _dtype_name(scalar_type), shape, nbytes, index))
    return out


def _segment(
    segments: list[tuple[int, int]], index: int, key: str, entry: Table
) -> tuple[int, int]:
    if not 0 <= index < len(segments):
        entry.buf.fail(
            f"{key!r} refers to segment {index}, but the file has {len(segments)} segments",
            offset=entry.pos,
        )
    return segments[index]


def _dtype_name(scalar_type: int) -> str:
    known = SCALAR_TYPES.get(scalar_type)
    return known[0] if known else f"UNKNOWN_{scalar_type}"


# --- what the entries are: weights, a delegate's constants, or a backend's own blobs ----------

#: What one entry of a ``.ptd`` holds, by content (see :func:`entry_kind`).
EntryKind = Literal["tensor", "delegate_constant", "backend_blob", "opaque"]
#: What a whole ``.ptd`` holds (see :func:`ptd_content`).
PtdContent = Literal["weights", "backend_blob", "opaque", "empty"]
#: XNNPACK and Vulkan key each constant by the SHA-256 hex of its bytes (``scale_`` + hex for
#: XNNPACK's quantization scales).
_CONTENT_HASH_KEY = re.compile(r"(?:scale_)?[0-9a-f]{64}")


def entry_kind(tensor: PtdTensor) -> EntryKind:
    """What one entry holds, from its layout and key.

    ``tensor``: it has a TensorLayout (a named tensor any kernel can use; every v0.6 entry).
    Without a layout: ``backend_blob`` for a key a backend gives its own artifact (AOTI's
    ``*_so_blob``/``*_weights_blob``, CUDA's ``cuda_fqn_weight:*``, ``coreml_*``, ``coreai/*``);
    ``delegate_constant`` for a content-hash key (one XNNPACK/Vulkan constant, still a weight);
    ``opaque`` for any other key. Keys are the only evidence for blobs: a backend that keyed
    its artifact by a bare SHA-256 would read as ``delegate_constant``.

    >>> entry_kind(PtdTensor("a" * 64, None, None, 16, 0))
    'delegate_constant'
    """
    if tensor.dtype is not None:
        return "tensor"
    key = tensor.key
    if key.endswith(BACKEND_BLOB_SUFFIXES) or key.startswith(BACKEND_BLOB_PREFIXES):
        return "backend_blob"
    return "delegate_constant" if _CONTENT_HASH_KEY.fullmatch(key) else "opaque"


def ptd_content(info: PtdInfo) -> PtdContent:
    """What a ``.ptd`` is for: ``weights`` if any entry is a tensor or a delegate constant (a
    model's weights, a LoRA foundation or adapter), else ``backend_blob`` if any entry is a
    backend's artifact (``aoti_cuda_blob.ptd``), else ``opaque`` (only unknown layout-less
    blobs), or ``empty``.

    >>> ptd_content(read_ptd("fixtures/lora/foundation.ptd"))  # doctest: +SKIP
    'weights'
    """
    kinds = Counter(entry_kind(t) for t in info.tensors)
    if kinds["tensor"] or kinds["delegate_constant"]:
        return "weights"
    if kinds["backend_blob"]:
        return "backend_blob"
    return "opaque" if kinds["opaque"] else "empty"


__all__ = [
    "EntryKind",
    "PtdContent",
    "PtdInfo",
    "PtdTensor",
    "entry_kind",
    "is_ptd_file",
    "ptd_content",
    "read_ptd",
    "read_ptd_at",
    "read_ptd_bytes",
]
