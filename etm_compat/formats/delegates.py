"""The data keys a program's delegate payloads need, read without running anything.

A delegate's weights are not in the program head: the backend's payload (``processed``, inline
in the head or in a segment) names them as keys of the runtime's merged NamedDataMap (the
program's own ``named_data`` plus every ``.ptd`` it is given). Two payload formats are read:

* **XNNPACK** (``XnnpackBackend``): a 30-byte ``XH00`` header (4 zero bytes, magic, u16 length,
  u32 flatbuffer offset, u32 flatbuffer size, u32 constant offset, u64 constant size) then an
  ``XNNGraph`` FlatBuffer (identifier ``XN00``/``XN01``) whose ``constant_data[].named_key``
  are the keys (SHA-256 hex of the bytes; ``scale_<sha256>`` for quantization scales). Only the
  header and the FlatBuffer are read, never the constant data. A payload without the header
  (an ``XNNGraph`` at byte 0, older exports) is read the same way; its constants are inline.
* **AOTI** (``CudaBackend``, ``MetalBackend``): UTF-8 lines of keys (``<sha256>_so_blob``,
  ``<sha256>_weights_blob``), or CUDA's binary weight table (``ETCUDAFQN3``: the library key,
  then per weight its fqn and ``cuda_fqn_weight:...`` storage key).

Every other backend's payload is opaque here (Core ML, QNN, Vulkan, MPS...): its keys are
unknown and :attr:`DelegatePayload.readable` is False with the reason. A payload of a known
format that is malformed raises :class:`~etm_compat.errors.PteFormatError` (the runtime would
refuse it too); all reads are bounded by the segment's size and :data:`MAX_PAYLOAD_HEAD_BYTES`.

>>> keys = read_delegate_keys(open_program("fixtures/lora/adapter_a.pte"))  # doctest: +SKIP
>>> keys[0].backend, len(keys[0].keys)  # doctest: +SKIP
('XnnpackBackend', 5)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from etm_compat.constants import (
    BACKEND_XNNPACK,
    BACKENDS_AOTI,
    CUDA_WEIGHT_TABLE_MAGIC,
    XNN_FLATBUFFER_IDENTIFIERS,
    XNN_HEADER_MAGIC,
    XNN_HEADER_MIN_LENGTH,
)
from etm_compat.formats.flatbuf import FlatBuffer, Table
from etm_compat.formats.pte import MAX_DELEGATES, MAX_PLANS, ProgramHead

#: The most bytes of one payload read to find its keys (header + XNNGraph, or an AOTI key table).
MAX_PAYLOAD_HEAD_BYTES: Final = 256 * 1024 * 1024
#: The most keys one payload may name (an XNNGraph's constant_data, a CUDA weight table).
MAX_PAYLOAD_KEYS: Final = 1_000_000
#: AOTI key lines are short; a text payload longer than this is not one.
MAX_AOTI_TEXT_BYTES: Final = 64 * 1024

# program.fbs slots (4 + 2 * field id).
_PROGRAM_EXECUTION_PLAN, _PROGRAM_DELEGATE_DATA = 6, 10
_PLAN_NAME, _PLAN_DELEGATES = 4, 18
_DELEGATE_ID, _DELEGATE_PROCESSED = 4, 6
_REFERENCE_LOCATION, _REFERENCE_INDEX = 4, 6
_INLINE_DATA = 4
_LOCATION_INLINE, _LOCATION_SEGMENT = 0, 1
# XNNPACK schema.fbs: XNNGraph.constant_data is field 8; ConstantDataOffset.named_key field 2.
_XNN_GRAPH_CONSTANT_DATA, _XNN_CONSTANT_NAMED_KEY = 20, 8
_XNN_HEADER = struct.Struct("<4s4sHIIIQ")
_CUDA_ENTRY = struct.Struct("<QiiqI")

Location = Literal["inline", "segment"]


@dataclass(frozen=True)
class DelegatePayload:
    """One delegate of one method: its backend, where its payload is, and the keys it needs.

    ``keys`` are the NamedDataMap keys the payload names (empty if it names none or cannot be
    read); ``readable`` says whether they are known; ``note`` says how they were read or why not.
    """

    method: str
    index: int
    backend: str
    location: Location
    size: int
    readable: bool
    keys: tuple[str, ...]
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "index": self.index,
            "backend": self.backend,
            "location": self.location,
            "size": self.size,
            "readable": self.readable,
            "keys": list(self.keys),
            "note": self.note,
        }


def read_delegate_keys(head: ProgramHead) -> tuple[DelegatePayload, ...]:
    """Every delegate of every method, with the data keys its payload needs where readable."""
    program = head.program
    inline = program.tables(_PROGRAM_DELEGATE_DATA, "backend_delegate_data", MAX_DELEGATES)
    out: list[DelegatePayload] = []
    for plan in program.tables(_PROGRAM_EXECUTION_PLAN, "execution_plan", MAX_PLANS):
        method = plan.string(_PLAN_NAME, "name") or ""
        delegates = plan.tables(_PLAN_DELEGATES, f"{method}.delegates", MAX_DELEGATES)
        for index, delegate in enumerate(delegates):
            backend = delegate.string(_DELEGATE_ID, "id") or ""
            where = f"{method}.delegates[{index}] ({backend or 'no id'})"
            location, size, read = _payload(head, inline, delegate, where)
            readable, keys, note = _keys(backend, read, where, head)
            out.append(
                DelegatePayload(method, index, backend, location, size, readable, keys, note)
            )
    return tuple(out)


class _Reader:
    """``read(offset, size)`` within one payload, bounded by its size (and the file's length)."""

    def __init__(self, size: int, read: Callable[[int, int], bytes]) -> None:
        self.size, self._read = size, read

    def __call__(self, offset: int, size: int) -> bytes:
        return self._read(offset, max(0, min(size, self.size - offset)))


def _payload(
    head: ProgramHead, inline: list[Table], delegate: Table, where: str
) -> tuple[Location, int, _Reader]:
    buf = delegate.buf
    ref = delegate.table(_DELEGATE_PROCESSED, "processed")
    if ref is None:
        buf.fail(f"{where} has no processed payload", offset=delegate.pos)
    location, index = ref.u8(_REFERENCE_LOCATION, "location"), ref.u32(_REFERENCE_INDEX, "index")
    if location == _LOCATION_INLINE:
        if index >= len(inline):
            buf.fail(f"{where} names inline data {index} of {len(inline)}", offset=ref.pos)
        vec = inline[index].vector(_INLINE_DATA, "data", 1, buf.size)
        start, count = vec if vec is not None else (0, 0)
        data = buf.data
        return (
            "inline",
            count,
            _Reader(count, lambda at, n: bytes(data[start + at : start + at + n])),
        )
    if location != _LOCATION_SEGMENT:
        buf.fail(f"{where} has unknown payload location {location}", offset=ref.pos)
    if index >= len(head.segments) or head.header.segment_base_offset is None:
        buf.fail(f"{where} names segment {index} of {len(head.segments)}", offset=ref.pos)
    seg = head.segments[index]
    base = head.header.segment_base_offset + seg.offset
    return "segment", seg.size, _Reader(seg.size, lambda at, n: head.fetch(base + at, n))


def _keys(
    backend: str, read: _Reader, where: str, head: ProgramHead
) -> tuple[bool, tuple[str, ...], str]:
    fail, size = head.program.buf.fail, read.size
    if backend == BACKEND_XNNPACK:
        return _xnnpack_keys(read, where, head)
    if backend in BACKENDS_AOTI:
        first = read(0, len(CUDA_WEIGHT_TABLE_MAGIC))
        if first == CUDA_WEIGHT_TABLE_MAGIC:
            return True, _cuda_table_keys(read, where, head), "CUDA weight table"
        if size <= MAX_AOTI_TEXT_BYTES:
            try:
                lines = read(0, size).decode("utf-8").splitlines()
            except UnicodeDecodeError:
                fail(f"{where}: AOTI payload is neither key lines nor a CUDA weight table")
            return True, tuple(line for line in lines if line), "AOTI key lines"
        return False, (), f"{size}-byte AOTI payload of no known layout"
    return False, (), f"the {backend or 'unnamed'} payload format is not read (opaque)"


def _xnnpack_keys(
    read: _Reader, where: str, head: ProgramHead
) -> tuple[bool, tuple[str, ...], str]:
    fail = head.program.buf.fail
    first = read(0, XNN_HEADER_MIN_LENGTH)
    if len(first) >= 8 and first[4:8] in XNN_FLATBUFFER_IDENTIFIERS:  # no header: all XNNGraph
        return _xnn_graph_keys(read, 0, read.size, where, head, "XNNGraph without XH00 header")
    if len(first) < XNN_HEADER_MIN_LENGTH or first[4:8] != XNN_HEADER_MAGIC:
        fail(f"{where}: XNNPACK payload starts with {bytes(first[:8])!r}, not an XH00 header")
    _, _, length, fb_offset, fb_size, const_offset, const_size = _XNN_HEADER.unpack(first)
    if length < XNN_HEADER_MIN_LENGTH or fb_size < 8 or fb_offset < length:
        fail(f"{where}: bad XH00 header (length {length}, flatbuffer {fb_offset}+{fb_size})")
    if fb_offset + fb_size > read.size or const_offset < fb_offset + fb_size:
        fail(
            f"{where}: XH00 flatbuffer [{fb_offset}, {fb_offset + fb_size}) and constants at "
            f"{const_offset} do not fit the {read.size}-byte payload"
        )
    if const_offset + const_size > read.size:
        fail(f"{where}: XH00 constant data ends past the {read.size}-byte payload")
    return _xnn_graph_keys(read, fb_offset, fb_size, where, head, "XH00 + XNNGraph")


def _xnn_graph_keys(
    read: _Reader, fb_offset: int, fb_size: int, where: str, head: ProgramHead, layout: str
) -> tuple[bool, tuple[str, ...], str]:
    """The non-empty ``constant_data[].named_key`` of the XNNGraph at ``[fb_offset, +fb_size)``."""
    fail = head.program.buf.fail
    if fb_size > MAX_PAYLOAD_HEAD_BYTES:
        return False, (), f"XNNGraph of {fb_size} bytes is over the {MAX_PAYLOAD_HEAD_BYTES} cap"
    data = read(fb_offset, fb_size)
    if len(data) != fb_size:
        fail(f"{where}: file is truncated inside the XNNPACK payload")
    if data[4:8] not in XNN_FLATBUFFER_IDENTIFIERS:
        fail(f"{where}: XNNGraph identifier {bytes(data[4:8])!r}, expected XN00 or XN01")
    graph = FlatBuffer(data, path=head.name, error=head.program.buf.error).root("XNNGraph")
    keys: dict[str, None] = {}
    for entry in graph.tables(_XNN_GRAPH_CONSTANT_DATA, "constant_data", MAX_PAYLOAD_KEYS):
        key = entry.string(_XNN_CONSTANT_NAMED_KEY, "named_key")
        if key:
            keys[key] = None
    return True, tuple(keys), f"{layout}: constant_data named keys"


def _cuda_table_keys(read: _Reader, where: str, head: ProgramHead) -> tuple[str, ...]:
    """``ETCUDAFQN3``, the library key (u32 length + UTF-8), a u32 count, then per weight:
    fqn, storage key, ``<QiiqI`` (nbytes, dtype, device, offset, rank), rank sizes, rank strides."""
    if read.size > MAX_PAYLOAD_HEAD_BYTES:
        head.program.buf.fail(f"{where}: CUDA weight table of {read.size} bytes is over the cap")
    data = read(0, read.size)
    pos = len(CUDA_WEIGHT_TABLE_MAGIC)

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            head.program.buf.fail(f"{where}: CUDA weight table is truncated at byte {pos}")
        pos += n
        return data[pos - n : pos]

    def string() -> str:
        raw = take(struct.unpack("<I", take(4))[0])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            head.program.buf.fail(f"{where}: CUDA weight table has a key that is not UTF-8")

    keys = {string(): None}
    (count,) = struct.unpack("<I", take(4))
    if count > min(MAX_PAYLOAD_KEYS, len(data) // _CUDA_ENTRY.size):
        head.program.buf.fail(f"{where}: CUDA weight table claims {count} entries")
    for _ in range(count):
        string()  # the fqn: the runtime's name for the tensor, not a data key
        keys[string()] = None
        rank = _CUDA_ENTRY.unpack(take(_CUDA_ENTRY.size))[4]
        take(16 * rank)
    return tuple(keys)


__all__ = ["MAX_PAYLOAD_HEAD_BYTES", "DelegatePayload", "read_delegate_keys"]
