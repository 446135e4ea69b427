"""A small, bounded, read-only FlatBuffer table reader shared by the ``.pte`` and ``.ptd`` readers.

Every offset in a FlatBuffer comes from the file, so every one is untrusted: each read is checked
against the buffer before it happens, vectors are checked against the bytes that remain, and the
total work of every reader of one buffer is capped by the buffer's size
(:attr:`FlatBuffer.max_work`): tables visited, vector elements walked and string bytes decoded
all count, so offsets that point many times at the same bytes (one huge vector or string shared
by thousands of parents) cannot multiply the work. Any violation raises the reader's error class
(a :class:`~etm_compat.errors.PteFormatError` or subclass) naming what was read and where; no
``IndexError``, ``struct.error`` or ``UnicodeDecodeError`` escapes.

>>> buf = FlatBuffer(b"\\x00" * 8, path="x.pte")
>>> buf.u32(4)
0
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from etm_compat.errors import PteFormatError

#: The most work units one buffer may cost, whatever its size (guards against cycles and
#: decompression-bomb style inputs whose offsets point many times at the same bytes).
DEFAULT_MAX_WORK: Final = 500_000
#: The work budget also grows with the buffer only: one unit per this many bytes, plus
#: :data:`MIN_WORK`. A unit is what visiting one table costs (a few microseconds of Python): a
#: table takes at least 8 bytes (its vtable offset and the offset that points to it) and every
#: reader of a real program walks each table once or twice, so real programs use under a fifth of
#: it (all readers of one head together), while a file that shares one vector or string between
#: many parents is refused after a few walks of it instead of one walk per parent.
BYTES_PER_WORK_UNIT: Final = 4
MIN_WORK: Final = 1024
#: What else costs a unit: this many scalar vector elements unpacked (:meth:`Table.scalars`),
#: or this many string bytes decoded (:meth:`Table.string`). Readers charge their own per-element
#: loops with :meth:`FlatBuffer.charge`.
SCALARS_PER_UNIT: Final = 16
STRING_BYTES_PER_UNIT: Final = 1024

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_VTABLE = struct.Struct("<HH")  # a vtable's length, then its object's length


class FlatBuffer:
    """Bounded little-endian reads over one FlatBuffer held in memory.

    ``work`` counts the work units spent so far by every reader sharing this buffer (``visits``
    the tables among them) and ``max_work`` is the budget: ``max_work`` as given, or less for a
    small buffer (see :data:`BYTES_PER_WORK_UNIT`).
    """

    __slots__ = ("data", "error", "max_work", "path", "size", "visits", "work")

    def __init__(
        self,
        data: bytes | memoryview,
        *,
        path: str,
        error: type[PteFormatError] = PteFormatError,
        max_work: int = DEFAULT_MAX_WORK,
    ) -> None:
        self.data = data
        self.size = len(data)
        self.path = path
        self.error = error
        self.visits = 0
        self.work = 0
        self.max_work = min(max_work, MIN_WORK + self.size // BYTES_PER_WORK_UNIT)

    def fail(self, message: str, offset: int | None = None, hint: str | None = None) -> NoReturn:
        """Raise the reader's error for this buffer."""
        raise self.error(message, path=self.path, offset=offset, hint=hint)

    def charge(self, units: int, what: str) -> None:
        """Spend ``units`` of the work budget on ``what``, before doing it; refuse the buffer
        when the budget is exhausted."""
        self.work += units
        if self.work > self.max_work:
            self.fail(
                f"reading {what} takes the FlatBuffer past {self.max_work} units of work (tables "
                f"visited, vector items and string bytes read), the limit for {self.size} bytes: "
                "its offsets point many times at the same data",
                hint="the file is corrupt or crafted; a real program reads each part once or twice",
            )

    def check(self, pos: int, length: int, what: str) -> None:
        """Fail unless ``[pos, pos + length)`` lies inside the buffer."""
        if pos < 0 or length < 0 or pos + length > self.size:
            self.fail(
                f"corrupt FlatBuffer: {what} spans bytes [{pos}, {pos + length}) "
                f"but the buffer has only {self.size} bytes",
                offset=pos,
            )

    def _unpack(self, fmt: struct.Struct, pos: int, what: str) -> int:
        self.check(pos, fmt.size, what)
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def u8(self, pos: int, what: str = "u8") -> int:
        return self._unpack(_U8, pos, what)

    def u16(self, pos: int, what: str = "u16") -> int:
        return self._unpack(_U16, pos, what)

    def i32(self, pos: int, what: str = "i32") -> int:
        return self._unpack(_I32, pos, what)

    def u32(self, pos: int, what: str = "u32") -> int:
        return self._unpack(_U32, pos, what)

    def i64(self, pos: int, what: str = "i64") -> int:
        return self._unpack(_I64, pos, what)

    def u64(self, pos: int, what: str = "u64") -> int:
        return self._unpack(_U64, pos, what)

    def f64(self, pos: int, what: str = "f64") -> float:
        self.check(pos, 8, what)
        value: float = _F64.unpack_from(self.data, pos)[0]
        return value

    def deref(self, pos: int, what: str) -> int:
        """Follow the uoffset stored at ``pos``; return the absolute target position."""
        if pos < 0 or pos + 4 > self.size:
            self.check(pos, 4, f"offset to {what}")
        target: int = pos + _U32.unpack_from(self.data, pos)[0]
        if target >= self.size:
            self.fail(
                f"corrupt FlatBuffer: offset to {what} points to byte {target}, "
                f"past the end of the {self.size}-byte buffer",
                offset=pos,
            )
        return target

    def root(self, what: str = "root table") -> Table:
        """The root table (its uoffset is at byte 0)."""
        return self.table_at(self.deref(0, what), what)

    def table_at(self, pos: int, what: str, index: int | None = None) -> Table:
        """The table whose start is at absolute position ``pos``, with its vtable checked.

        ``what`` names it in errors (``what[index]`` when ``index`` is given: the name is only
        spelled out when an error needs it, which matters on the hot path of long vectors).
        """
        self.visits += 1
        self.work += 1
        if self.work > self.max_work:
            self.charge(0, _label(what, index))
        size, data = self.size, self.data
        if pos < 0 or pos + 4 > size:
            self.check(pos, 4, f"{_label(what, index)} vtable offset")
        vtable: int = pos - _I32.unpack_from(data, pos)[0]
        if vtable < 0 or vtable + 4 > size:
            self.check(vtable, 4, f"{_label(what, index)} vtable")
        vt_len, obj_len = _VTABLE.unpack_from(data, vtable)
        if vt_len < 4 or vt_len % 2:
            self.fail(
                f"corrupt FlatBuffer: {_label(what, index)} vtable has invalid length {vt_len}",
                offset=vtable,
            )
        if vtable + vt_len > size:
            self.check(vtable, vt_len, f"{_label(what, index)} vtable")
        if obj_len < 4:
            self.fail(f"corrupt FlatBuffer: {_label(what, index)} has invalid size {obj_len}", offset=pos)
        if pos + obj_len > size:
            self.check(pos, obj_len, _label(what, index))
        return Table(self, pos, vtable, vt_len, obj_len, what, index)


def _label(what: str, index: int | None) -> str:
    return what if index is None else f"{what}[{index}]"


class Table:
    """One FlatBuffer table; fields are addressed by vtable slot (4 + 2 * field id).

    :meth:`FlatBuffer.table_at` checked that the whole vtable and the whole object lie inside the
    buffer, so a field whose slot is inside the vtable and whose bytes are inside the object is
    read without checking again.
    """

    __slots__ = ("_index", "_name", "buf", "obj_len", "pos", "vt_len", "vtable")

    def __init__(
        self,
        buf: FlatBuffer,
        pos: int,
        vtable: int,
        vt_len: int,
        obj_len: int,
        what: str,
        index: int | None = None,
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = vtable
        self.vt_len = vt_len
        self.obj_len = obj_len
        self._name = what
        self._index = index

    @property
    def what(self) -> str:
        """The table's name in errors (``values[3]``)."""
        return _label(self._name, self._index)

    @property
    def field_count(self) -> int:
        """How many field slots the vtable has (present or not)."""
        return (self.vt_len - 4) // 2

    def field(self, slot: int, size: int, name: str) -> int | None:
        """Absolute position of the field at ``slot`` (``size`` bytes), or None if absent."""
        if slot >= self.vt_len:
            return None
        rel: int = _U16.unpack_from(self.buf.data, self.vtable + slot)[0]  # inside the vtable
        if rel == 0:
            return None
        if rel + size > self.obj_len:
            self.buf.fail(
                f"corrupt FlatBuffer: field {self.what}.{name} at +{rel} overruns the "
                f"{self.obj_len}-byte table",
                offset=self.pos,
            )
        return self.pos + rel

    def has(self, slot: int) -> bool:
        return slot < self.vt_len and _U16.unpack_from(self.buf.data, self.vtable + slot)[0] != 0

    def u8(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 1, name)
        if pos is None:
            return default
        value: int = _U8.unpack_from(self.buf.data, pos)[0]  # inside the object
        return value

    def i8(self, slot: int, name: str, default: int = 0) -> int:
        value = self.u8(slot, name, default & 0xFF)
        return value - 256 if value >= 128 else value

    def u32(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 4, name)
        return default if pos is None else self.buf.u32(pos, name)

    def i32(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 4, name)
        return default if pos is None else self.buf.i32(pos, name)

    def i64(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 8, name)
        return default if pos is None else self.buf.i64(pos, name)

    def u64(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 8, name)
        return default if pos is None else self.buf.u64(pos, name)

    def f64(self, slot: int, name: str, default: float = 0.0) -> float:
        pos = self.field(slot, 8, name)
        return default if pos is None else self.buf.f64(pos, name)

    def table(self, slot: int, name: str) -> Table | None:
        pos = self.field(slot, 4, name)
        if pos is None:
            return None
        return self.buf.table_at(self.buf.deref(pos, name), name)

    def vector(self, slot: int, name: str, elem_size: int, limit: int) -> tuple[int, int] | None:
        """``(start of first element, element count)`` of a vector field, or None if absent.

        The count is checked against the bytes that remain and against ``limit``.
        """
        pos = self.field(slot, 4, name)
        if pos is None:
            return None
        vec = self.buf.deref(pos, name)
        count = self.buf.u32(vec, f"length of {name}")
        start = vec + 4
        if count * elem_size > self.buf.size - start:
            self.buf.fail(
                f"corrupt FlatBuffer: {name} claims {count} elements of {elem_size} bytes "
                f"but only {max(self.buf.size - start, 0)} bytes follow",
                offset=vec,
            )
        if count > limit:
            self.buf.fail(f"{name} has {count} elements; at most {limit} are supported", offset=vec)
        return start, count

    def vector_len(self, slot: int, name: str, elem_size: int, limit: int) -> int:
        vec = self.vector(slot, name, elem_size, limit)
        return 0 if vec is None else vec[1]

    def tables(self, slot: int, name: str, limit: int) -> list[Table]:
        """The tables of a ``[Table]`` vector field (empty if absent)."""
        vec = self.vector(slot, name, 4, limit)
        if vec is None:
            return []
        start, count = vec
        buf, data, size = self.buf, self.buf.data, self.buf.size
        tables = []
        for i in range(count):
            at = start + 4 * i  # inside the buffer: the vector's length was checked
            target: int = at + _U32.unpack_from(data, at)[0]
            if target >= size:
                buf.deref(at, f"{name}[{i}]")  # fails, naming the element
            tables.append(buf.table_at(target, name, i))
        return tables

    def scalars(self, slot: int, name: str, fmt: str, limit: int) -> tuple[int | float, ...]:
        """The items of a scalar vector field (``fmt`` one struct code, e.g. ``"q"``), unpacked at once."""
        size = struct.calcsize("<" + fmt)
        vec = self.vector(slot, name, size, limit)
        if vec is None:
            return ()
        start, count = vec
        self.buf.charge(1 + count // SCALARS_PER_UNIT, f"{self.what}.{name}")
        values: tuple[int | float, ...] = struct.unpack_from(f"<{count}{fmt}", self.buf.data, start)
        return values

    def ints(self, slot: int, name: str, fmt: str, limit: int) -> tuple[int, ...]:
        """Like :meth:`scalars` for integer codes."""
        return tuple(int(v) for v in self.scalars(slot, name, fmt, limit))

    def string(self, slot: int, name: str, limit: int = 1 << 20) -> str | None:
        """A UTF-8 string field, or None if absent."""
        vec = self.vector(slot, name, 1, limit)
        if vec is None:
            return None
        start, count = vec
        self.buf.charge(1 + count // STRING_BYTES_PER_UNIT, f"{self.what}.{name}")
        raw = bytes(self.buf.data[start : start + count])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.buf.fail(
                f"corrupt FlatBuffer: {self.what}.{name} is not valid UTF-8 ({exc.reason})",
                offset=start + exc.start,
            )


__all__ = [
    "BYTES_PER_WORK_UNIT",
    "DEFAULT_MAX_WORK",
    "MIN_WORK",
    "SCALARS_PER_UNIT",
    "STRING_BYTES_PER_UNIT",
    "FlatBuffer",
    "Table",
]
