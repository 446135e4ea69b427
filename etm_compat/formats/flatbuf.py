"""A small, bounded, read-only FlatBuffer table reader shared by the ``.pte`` and ``.ptd`` readers.

Every offset in a FlatBuffer comes from the file, so every one is untrusted: each read is checked
against the buffer before it happens, vectors are checked against the bytes that remain, and the
number of tables visited is capped by the buffer's size (:attr:`FlatBuffer.max_visits`), so
offsets that point many times at the same bytes cannot multiply the work. Any violation raises the reader's error class (a
:class:`~etm_compat.errors.PteFormatError` or subclass) naming what was read and where; no
``IndexError``, ``struct.error`` or ``UnicodeDecodeError`` escapes.

>>> buf = FlatBuffer(b"\\x00" * 8, path="x.pte")
>>> buf.u32(4)
0
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from etm_compat.errors import PteFormatError

#: How many tables one buffer may visit before the reader gives up, whatever its size (guards
#: against cycles and decompression-bomb style inputs whose offsets point many times at the same
#: bytes).
DEFAULT_MAX_TABLES: Final = 500_000
#: The visit budget also grows with the buffer only: one visit per this many bytes, plus
#: :data:`MIN_TABLE_VISITS`. A table takes at least 8 bytes (its vtable offset and the offset that
#: points to it) and every reader of a real program walks each table once or twice, so real
#: programs use under a fifth of it (about one visit per 20 bytes, all readers of one head
#: together), while a file that shares one vector between many parents is refused after a few
#: walks of that vector instead of one walk per parent.
BYTES_PER_TABLE_VISIT: Final = 4
MIN_TABLE_VISITS: Final = 1024

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


class FlatBuffer:
    """Bounded little-endian reads over one FlatBuffer held in memory.

    ``visits`` counts the tables read so far (by every reader sharing this buffer) and
    ``max_visits`` is the budget: ``max_tables``, or less for a small buffer (see
    :data:`BYTES_PER_TABLE_VISIT`).
    """

    __slots__ = ("data", "error", "max_visits", "path", "size", "visits")

    def __init__(
        self,
        data: bytes | memoryview,
        *,
        path: str,
        error: type[PteFormatError] = PteFormatError,
        max_tables: int = DEFAULT_MAX_TABLES,
    ) -> None:
        self.data = data
        self.size = len(data)
        self.path = path
        self.error = error
        self.visits = 0
        self.max_visits = min(max_tables, MIN_TABLE_VISITS + self.size // BYTES_PER_TABLE_VISIT)

    def fail(self, message: str, offset: int | None = None, hint: str | None = None) -> NoReturn:
        """Raise the reader's error for this buffer."""
        raise self.error(message, path=self.path, offset=offset, hint=hint)

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
        target = pos + self.u32(pos, f"offset to {what}")
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

    def table_at(self, pos: int, what: str) -> Table:
        """The table whose start is at absolute position ``pos``, with its vtable checked."""
        self.visits += 1
        if self.visits > self.max_visits:
            self.fail(
                f"FlatBuffer visits more than {self.max_visits} tables, the limit for "
                f"{self.size} bytes: its offsets point many times at the same data",
                hint="the file is corrupt or crafted; a real program visits each table once or twice",
            )
        vtable = pos - self.i32(pos, f"{what} vtable offset")
        self.check(vtable, 4, f"{what} vtable")
        vt_len = self.u16(vtable)
        obj_len = self.u16(vtable + 2)
        if vt_len < 4 or vt_len % 2:
            self.fail(
                f"corrupt FlatBuffer: {what} vtable has invalid length {vt_len}", offset=vtable
            )
        self.check(vtable, vt_len, f"{what} vtable")
        if obj_len < 4:
            self.fail(f"corrupt FlatBuffer: {what} has invalid size {obj_len}", offset=pos)
        self.check(pos, obj_len, what)
        return Table(self, pos, vtable, vt_len, obj_len, what)


class Table:
    """One FlatBuffer table; fields are addressed by vtable slot (4 + 2 * field id)."""

    __slots__ = ("buf", "obj_len", "pos", "vt_len", "vtable", "what")

    def __init__(
        self, buf: FlatBuffer, pos: int, vtable: int, vt_len: int, obj_len: int, what: str
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = vtable
        self.vt_len = vt_len
        self.obj_len = obj_len
        self.what = what

    @property
    def field_count(self) -> int:
        """How many field slots the vtable has (present or not)."""
        return (self.vt_len - 4) // 2

    def field(self, slot: int, size: int, name: str) -> int | None:
        """Absolute position of the field at ``slot`` (``size`` bytes), or None if absent."""
        if slot >= self.vt_len:
            return None
        rel = self.buf.u16(self.vtable + slot)
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
        return slot < self.vt_len and self.buf.u16(self.vtable + slot) != 0

    def u8(self, slot: int, name: str, default: int = 0) -> int:
        pos = self.field(slot, 1, name)
        return default if pos is None else self.buf.u8(pos, name)

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
        return [
            self.buf.table_at(self.buf.deref(start + 4 * i, f"{name}[{i}]"), f"{name}[{i}]")
            for i in range(count)
        ]

    def scalars(self, slot: int, name: str, fmt: str, limit: int) -> tuple[int | float, ...]:
        """The items of a scalar vector field (``fmt`` one struct code, e.g. ``"q"``), unpacked at once."""
        size = struct.calcsize("<" + fmt)
        vec = self.vector(slot, name, size, limit)
        if vec is None:
            return ()
        start, count = vec
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
        raw = bytes(self.buf.data[start : start + count])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.buf.fail(
                f"corrupt FlatBuffer: {self.what}.{name} is not valid UTF-8 ({exc.reason})",
                offset=start + exc.start,
            )


__all__ = [
    "BYTES_PER_TABLE_VISIT",
    "DEFAULT_MAX_TABLES",
    "MIN_TABLE_VISITS",
    "FlatBuffer",
    "Table",
]
