"""Tests of etm_compat.formats.pte: the lazy .pte head reader.

Ground truth comes from the real tools: executorch.runtime for constant values, executorch's own
FlatBuffer deserializer for the program table, torch's pytree for the shape of the values.
Malformed cases each mutate one thing of a good fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import flatbuffers
import pytest
from conftest import fixture_file, fixture_glob
from flips import assert_flips_from_read_the_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etm_compat.constants import LEGACY_KEYS
from etm_compat.errors import PteFormatError, UnreadableError
from etm_compat.fileio import open_regular
from etm_compat.formats import flatfile, pte
from etm_compat.formats.delegates import read_delegate_keys
from etm_compat.formats.flatbuf import BYTES_PER_WORK_UNIT, MIN_WORK, STRING_BYTES_PER_UNIT
from etm_compat.formats.flatfile import FlatFileFormat, read_flat_head, view_flat_head
from etm_compat.formats.program_kinds import classify_program
from etm_compat.formats.pte import (
    MAX_CONSTANT_TENSOR_BYTES,
    MAX_CONSTANT_TENSORS,
    PteInfo,
    describe_program,
    is_pte_file,
    open_program,
    open_program_bytes,
    read_pte,
    read_pte_bytes,
)

PTE_FIXTURES = fixture_glob("**/*.pte")
EXT_HEADER_FIXTURES = [p for p in PTE_FIXTURES if p.read_bytes()[8:12] == b"eh00"]
#: executorch reads its own package data through importlib.resources' deprecated API; the
#: warning is attributed to importlib, so pyproject's executorch filter does not catch it.
RUNTIME_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:importlib.*")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(p.parents[1])) for p in paths]


def _require(paths: list[Path]) -> None:
    if not paths:
        pytest.skip("no .pte fixtures yet (run fixtures/make_fixtures.py)")


# --- small independent FlatBuffer navigation, used only to aim mutations ---------------------


def _u32(data: bytes | bytearray, pos: int) -> int:
    return int(struct.unpack_from("<I", data, pos)[0])


def _field(data: bytes | bytearray, table: int, slot: int) -> int:
    vtable = table - int(struct.unpack_from("<i", data, table)[0])
    rel = int(struct.unpack_from("<H", data, vtable + slot)[0])
    assert rel, f"slot {slot} absent"
    return table + rel


def _deref(data: bytes | bytearray, pos: int) -> int:
    return pos + _u32(data, pos)


def _plans_vector(data: bytes | bytearray) -> int:
    """Position of the execution_plan vector's length word."""
    return _deref(data, _field(data, _u32(data, 0), 6))


def _plan(data: bytes | bytearray, index: int) -> int:
    vec = _plans_vector(data)
    return _deref(data, vec + 4 + 4 * index)


def _plan_name(data: bytes | bytearray, index: int) -> str:
    pos = _deref(data, _field(data, _plan(data, index), 4))
    return bytes(data[pos + 4 : pos + 4 + _u32(data, pos)]).decode()


def _plan_index(data: bytes | bytearray, name: str) -> int:
    count = _u32(data, _plans_vector(data))
    return next(i for i in range(count) if _plan_name(data, i) == name)


# --- agreement with the real runtime and the real deserializer ------------------------------


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _flatten(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _flatten(v)]
    return [value]


def _as_lists(value: Any) -> Any:
    """torch pytree gives tuples/OrderedDicts and tensors; the reader promises lists and dicts
    (a constant tensor as its ``tolist()``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal values *and* equal types all the way down (True is not 1, [2] is not 2)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _raw_program(path: Path) -> Any:
    """The Program table as executorch's own (flatc-based) deserializer reads it."""
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header

    data = path.read_bytes()
    header = _get_extended_header(data)
    size = header.program_size if header is not None and header.is_valid() else len(data)
    return _flatbuffer_to_program(data[:size])


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize("path", PTE_FIXTURES, ids=_ids(PTE_FIXTURES))
def test_constant_methods_match_runtime(path: Path) -> None:
    from executorch.runtime import Runtime
    from torch.utils._pytree import tree_unflatten, treespec_loads

    info = read_pte(path)
    ptds = sorted(path.parent.glob("*.ptd"))
    runtime = Runtime.get()
    program = runtime.load_program(path, data_path=ptds[0] if ptds else None)
    assert set(program.method_names) == set(info.methods) | set(info.constant_methods)
    specs = {
        plan.name: plan.container_meta_type.encoded_out_str
        for plan in _raw_program(path).execution_plan
    }
    for name, value in info.constant_methods.items():
        outputs = list(program.load_method(name).execute([]))
        assert _same(_flatten(value), _flatten(_as_lists(outputs))), (name, value, outputs)
        expected = _as_lists(tree_unflatten(outputs, treespec_loads(specs[name])))
        assert _same(value, expected), (name, value, expected)


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize("path", PTE_FIXTURES, ids=_ids(PTE_FIXTURES))
def test_program_table_matches_executorch_deserializer(path: Path) -> None:
    info = read_pte(path)
    program = _raw_program(path)
    plans = program.execution_plan
    assert sorted(p.name for p in plans) == sorted([*info.methods, *info.constant_methods])
    assert info.methods == tuple(p.name for p in plans if p.chains[0].instructions)
    assert list(info.constant_methods) == [p.name for p in plans if not p.chains[0].instructions]
    backends = {d.id for p in plans for d in p.delegates}
    assert info.backends == tuple(sorted(backends))
    external = []
    for plan in plans:
        for value in plan.values:
            extra = getattr(value.val, "extra_tensor_info", None)
            if extra is not None and int(extra.location) == 1:
                external.append(extra.fully_qualified_name)
    assert info.external_keys == tuple(dict.fromkeys(external))
    assert info.named_data_keys == tuple(nd.key for nd in program.named_data or [])
    assert [(s.offset, s.size) for s in info.segments] == [
        (s.offset, s.size) for s in program.segments
    ]


def test_header_fields_follow_the_extended_header() -> None:
    path = fixture_file("llama/tiny_llama.pte")
    raw = path.read_bytes()
    info = read_pte(path)
    assert raw[8:12] == b"eh00" and info.has_extended_header
    length, program_size, base, data_size = struct.unpack_from("<IQQQ", raw, 12)
    assert length == 32
    assert (info.program_size, info.segment_base_offset, info.segment_data_size) == (
        program_size,
        base,
        data_size,
    )
    assert info.file_size == len(raw) == base + data_size
    assert info.methods == ("forward",)
    assert isinstance(info.constant_methods["get_eos_ids"], list)
    assert type(info.constant_methods["use_kv_cache"]) is bool


def test_program_without_extended_header_is_read_whole() -> None:
    path = fixture_file("programs/ext_weights.pte")
    raw = path.read_bytes()
    assert raw[8:12] != b"eh00"
    info = read_pte(path)
    assert not info.has_extended_header
    assert info.program_size == info.file_size == len(raw)
    assert info.segment_base_offset is None and info.segment_data_size is None
    assert info.external_keys, "ext_weights.pte keeps its weights outside"


def test_legacy_key_names_are_read() -> None:
    info = read_pte(fixture_file("programs/legacy_keys.pte"))
    present = [k for k in LEGACY_KEYS if k in info.constant_methods]
    assert present, "legacy_keys.pte should carry v0.2/v0.3 key names"
    assert type(info.constant_methods["append_eos_to_prompt"]) is bool


def test_xnnpack_backend_and_named_data() -> None:
    info = read_pte(fixture_file("programs/xnnpack.pte"))
    assert info.backends == ("XnnpackBackend",)
    assert info.named_data_keys and all(len(k) == 64 for k in info.named_data_keys)


def test_to_json_is_json_and_complete() -> None:
    info = read_pte(fixture_file("programs/constants_all.pte"))
    doc = json.loads(json.dumps(info.to_json()))
    assert doc["kind"] == "pte"
    assert doc["constant_methods"] == _as_lists(dict(info.constant_methods))
    assert doc["segments"] == [{"offset": s.offset, "size": s.size} for s in info.segments]
    assert set(doc) >= {"path", "file_size", "program_size", "methods", "backends", "external_keys"}


def test_read_pte_bytes_equals_read_pte() -> None:
    path = fixture_file("programs/xnnpack.pte")
    raw = path.read_bytes()
    from_file = read_pte(path)
    from_bytes = read_pte_bytes(memoryview(raw), name=str(path))
    assert from_bytes == from_file


# --- laziness: nothing past program_size is read, but the constant tensors constant methods return

#: Constant methods returning constant tensors (fixtures/gen_field.py): their data is in the
#: constant segment, after the program head, and is the one thing read there.
CONSTANT_TENSOR_METHODS = {"mlx_offgraph_cache.pte": {"get_kv_heads", "get_head_dims", "get_windows"}}


@pytest.mark.parametrize("path", EXT_HEADER_FIXTURES, ids=_ids(EXT_HEADER_FIXTURES))
def test_bytes_past_program_size_do_not_matter(path: Path, tmp_path: Path) -> None:
    raw = bytearray(path.read_bytes())
    info = read_pte(path)
    assert info.program_size < len(raw)
    raw[info.program_size :] = bytes(
        (i * 7 + 13) % 256 for i in range(len(raw) - info.program_size)
    )
    garbled = tmp_path / path.name
    garbled.write_bytes(raw)
    again = read_pte(garbled)
    changed = {k for k, v in info.constant_methods.items() if again.constant_methods[k] != v}
    assert changed == CONSTANT_TENSOR_METHODS.get(path.name, set())
    blank = {"path": "", "constant_methods": {}}
    assert again.to_json() | blank == info.to_json() | blank


class _CountingFile:
    """A file whose ``read`` calls append how many bytes they returned to ``counted``."""

    def __init__(self, f: BinaryIO, counted: list[int]) -> None:
        self._f, self._counted = f, counted

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._counted.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the bytes the .pte reader reads from files (its two ways of opening them)."""
    counted: list[int] = []

    def opener(path: str | os.PathLike[str]) -> _CountingFile:
        return _CountingFile(open_regular(path), counted)

    monkeypatch.setattr(flatfile, "open_regular", opener)
    monkeypatch.setattr(pte, "open_regular", opener)
    return counted


def test_huge_sparse_program_costs_no_more_than_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fixture_file("llama/tiny_llama.pte")
    raw = bytearray(source.read_bytes())
    base = struct.unpack_from("<Q", raw, 24)[0]
    big = 1 << 30
    struct.pack_into("<Q", raw, 32, big)  # segment_data_size: 1 GiB of "weights"
    path = tmp_path / "huge.pte"
    with path.open("wb") as f:
        f.write(raw)
        f.truncate(base + big)  # sparse: no disk used, but reading it would take seconds
    counted = _count_reads(monkeypatch)
    info = read_pte(path)
    # Counted, not timed: the head and the few small constant tensors, never the 1 GiB.
    assert 0 < sum(counted) <= info.program_size + MAX_CONSTANT_TENSORS * MAX_CONSTANT_TENSOR_BYTES
    assert sum(counted) < big // 1000
    assert info.file_size == base + big
    assert info.constant_methods == read_pte(source).constant_methods


# --- malformed input ----------------------------------------------------------------------


def _write(tmp_path: Path, data: bytes | bytearray, name: str = "bad.pte") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def _good() -> bytearray:
    return bytearray(fixture_file("programs/constants_all.pte").read_bytes())


def _raises(tmp_path: Path, data: bytes | bytearray, *needles: str) -> PteFormatError:
    with pytest.raises(PteFormatError) as caught:
        read_pte(_write(tmp_path, data))
    text = str(caught.value)
    for needle in needles:
        assert needle in text, text
    with pytest.raises(PteFormatError):
        read_pte_bytes(bytes(data))
    return caught.value


def test_text_file_is_not_a_program(tmp_path: Path) -> None:
    err = _raises(
        tmp_path, b"hello, this is a README\n", "not an ExecuTorch program", "b'o, t'", "b'ET12'"
    )
    assert err.hint and "text" in err.hint


@pytest.mark.parametrize("ident", [b"XXXX", b"\x00\x00\x00\x00"])
def test_unknown_identifier(tmp_path: Path, ident: bytes) -> None:
    data = _good()
    data[4:8] = ident
    err = _raises(tmp_path, data, repr(ident), "expected b'ET12'")
    assert err.offset == 4


def test_other_et_version_is_unsupported(tmp_path: Path) -> None:
    data = _good()
    data[4:8] = b"ET99"
    _raises(tmp_path, data, "unsupported", "b'ET99'", "b'ET12'")


def test_ptd_given_as_pte_gets_a_hint(tmp_path: Path) -> None:
    err = _raises(tmp_path, fixture_file("programs/ext_weights.ptd").read_bytes(), "b'FT01'")
    assert err.hint and ".ptd" in err.hint


@pytest.mark.parametrize("size", [0, 3, 7])
def test_tiny_files(tmp_path: Path, size: int) -> None:
    _raises(tmp_path, _good()[:size], "too short")


@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    data = _good()
    _raises(tmp_path, data[:-cut], "truncated")


def test_truncated_inside_program_head(tmp_path: Path) -> None:
    data = _good()
    program_size = struct.unpack_from("<Q", data, 16)[0]
    _raises(tmp_path, data[: program_size - 10], "truncated")


def test_bad_extended_header_length(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<I", data, 12, 8)
    _raises(tmp_path, data, "eh00", "length 8")


def test_program_size_out_of_range(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<Q", data, 16, 12)
    _raises(tmp_path, data, "program_size 12")


def test_segment_base_inside_program(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<Q", data, 24, 40)
    _raises(tmp_path, data, "segment_base_offset 40")


def test_root_offset_out_of_range(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<I", data, 0, 0x7FFFFFF0)
    _raises(tmp_path, data, "root", "past the end")


def test_vtable_out_of_range(tmp_path: Path) -> None:
    data = _good()
    root = _u32(data, 0)
    struct.pack_into("<i", data, root, -0x7FFFFF00)
    _raises(tmp_path, data, "vtable")


def test_vector_length_out_of_range(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<I", data, _plans_vector(data), 0x3FFFFFFF)
    _raises(tmp_path, data, "execution_plan", "1073741823 elements")


def test_string_length_out_of_range(tmp_path: Path) -> None:
    data = _good()
    name = _deref(data, _field(data, _plan(data, 0), 4))
    struct.pack_into("<I", data, name, 0x7FFFFFF0)
    _raises(tmp_path, data, "name", "elements")


def test_string_not_utf8(tmp_path: Path) -> None:
    data = _good()
    name = _deref(data, _field(data, _plan(data, 0), 4))
    data[name + 4] = 0xFF
    _raises(tmp_path, data, "UTF-8")


def test_unknown_union_type(tmp_path: Path) -> None:
    data = _good()
    plan = _plan(data, _plan_index(data, "get_max_seq_len"))
    values = _deref(data, _field(data, plan, 8))
    evalue = _deref(data, values + 4)
    data[_field(data, evalue, 4)] = 99
    _raises(tmp_path, data, "unknown EValue union type 99", "get_max_seq_len")


def test_output_index_out_of_range(tmp_path: Path) -> None:
    data = _good()
    plan = _plan(data, _plan_index(data, "get_max_seq_len"))
    outputs = _deref(data, _field(data, plan, 12))
    struct.pack_into("<i", data, outputs + 4, 1000)
    _raises(tmp_path, data, "get_max_seq_len", "outputs value 1000")


def _program(b: flatbuffers.Builder, plans: list[int], *, named_data: int | None = None) -> bytes:
    """Finish ``b`` as a Program with these execution plans (repeats share one table)."""
    b.StartVector(4, len(plans), 4)
    for plan in reversed(plans):
        b.PrependUOffsetTRelative(plan)
    vector = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(1, vector, 0)
    if named_data is not None:
        b.PrependUOffsetTRelativeSlot(7, named_data, 0)
    b.Finish(b.EndObject(), file_identifier=b"ET12")
    return bytes(b.Output())


def _shared_values_program(plans: int = 20, values: int = 50_000) -> bytes:
    """A program whose ``plans`` execution plans all share one ``values`` vector of Int EValues."""
    b = flatbuffers.Builder(0)
    b.StartObject(2)
    b.PrependUint8Slot(0, 2, 0)  # an EValue of type Int with no payload
    evalue = b.EndObject()
    b.StartVector(4, values, 4)
    for _ in range(values):
        b.PrependUOffsetTRelative(evalue)
    shared = b.EndVector()
    name = b.CreateString("forward")
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(2, shared, 0)
    plan = b.EndObject()
    return _program(b, [plan] * plans)


def _shared_name_program(plans: int = 2000, name_bytes: int = 256 * 1024) -> bytes:
    """``plans`` execution plans that are one plan table, named by one ``name_bytes`` string."""
    b = flatbuffers.Builder(0)
    name = b.CreateString("f" * name_bytes)
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    plan = b.EndObject()
    return _program(b, [plan] * plans)


def _shared_outputs_program(plans: int = 20, outputs: int = 50_000, spec: str | None = None) -> bytes:
    """``plans`` constant methods that are one plan table returning ``outputs`` values (all the
    same None EValue), with an optional pytree ``spec``."""
    b = flatbuffers.Builder(0)
    b.StartObject(2)
    b.PrependUint8Slot(0, 0, 1)  # EValue type None, written out
    evalue = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(evalue)
    values = b.EndVector()
    b.StartVector(4, outputs, 4)
    for _ in range(outputs):
        b.PrependInt32(0)
    outs = b.EndVector()
    b.StartObject(4)  # a chain with no instructions: how a constant method is written
    chain = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(chain)
    chains = b.EndVector()
    meta = None
    if spec is not None:
        text = b.CreateString(spec)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(1, text, 0)
        meta = b.EndObject()
    name = b.CreateString("get_x")
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    if meta is not None:
        b.PrependUOffsetTRelativeSlot(1, meta, 0)
    b.PrependUOffsetTRelativeSlot(2, values, 0)
    b.PrependUOffsetTRelativeSlot(4, outs, 0)
    b.PrependUOffsetTRelativeSlot(5, chains, 0)
    plan = b.EndObject()
    return _program(b, [plan] * plans)


def _shared_key_program(entries: int = 4000, key_bytes: int = 256 * 1024) -> bytes:
    """``entries`` named_data entries that are one table, keyed by one ``key_bytes`` string."""
    b = flatbuffers.Builder(0)
    key = b.CreateString("k" * key_bytes)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, key, 0)
    entry = b.EndObject()
    b.StartVector(4, entries, 4)
    for _ in range(entries):
        b.PrependUOffsetTRelative(entry)
    named = b.EndVector()
    return _program(b, [], named_data=named)


def _long_spec(leaves: int) -> str:
    """A C++ pytree spec of a list of ``leaves`` leaves (``L2#1#1($,$)``)."""
    return f"L{leaves}#" + "#".join(["1"] * leaves) + "(" + ",".join(["$"] * leaves) + ")"


#: Programs whose parts are shared by many parents (offsets pointing many times at the same
#: bytes), what a walk of every parent would cost, and the part that is refused.
SHARED = {
    # 20 plans x 50,000 value tables: 1,000,000 table visits for 200 kB.
    "values": (_shared_values_program, "forward.values"),
    # 2,000 plans x one 256 KiB name: 512 MiB of UTF-8 to decode for 260 kB.
    "name": (_shared_name_program, "execution_plan"),
    # 20 constant methods x 50,000 outputs (each one an EValue read, visiting no table).
    "outputs": (_shared_outputs_program, "get_x.outputs"),
    # 4,000 named_data entries x one 256 KiB key: 1 GiB of UTF-8 for 280 kB.
    "key": (_shared_key_program, "named_data"),
    # 30 constant methods x one 160 kB pytree spec (C++ spelling, parsed character by character).
    "spec": (lambda: _shared_outputs_program(30, 1, _long_spec(40_000)), "encoded_out_str"),
}


@pytest.mark.parametrize("kind", sorted(SHARED))
def test_shared_parts_are_refused_after_work_bounded_by_the_input_size(kind: str) -> None:
    """One vector or string shared by many parents: refused once the work spent reaches the
    budget the input's size allows (one unit per 4 bytes), whichever part is multiplied.

    Without the budget (or without charging that part) each of these is read, slowly: the test
    then fails because nothing is refused.
    """
    make, part = SHARED[kind]
    data = make()
    head = open_program_bytes(data)
    with pytest.raises(PteFormatError, match="units of work") as caught:
        describe_program(head)
    buf = head.program.buf
    assert part in caught.value.message and caught.value.hint is not None
    assert buf.max_work == MIN_WORK + buf.size // BYTES_PER_WORK_UNIT
    assert buf.max_work < buf.work <= buf.max_work + 2 * len(data) // STRING_BYTES_PER_UNIT + 50_001
    assert buf.visits <= buf.max_work  # visits are part of the work, never beyond its budget
    with pytest.raises(PteFormatError, match="units of work"):
        read_pte_bytes(data)


def test_a_vector_over_its_limit_is_refused_before_it_is_walked() -> None:
    """10,001 execution plans (one table, shared): refused on the vector's length, having spent
    one unit of work (the root table); a reader that walked first would spend 10,001."""
    b = flatbuffers.Builder(0)
    name = b.CreateString("forward")
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    plan = b.EndObject()
    head = open_program_bytes(_program(b, [plan] * (pte.MAX_PLANS + 1)))
    with pytest.raises(PteFormatError, match=f"has {pte.MAX_PLANS + 1} elements; at most {pte.MAX_PLANS}"):
        describe_program(head)
    assert head.program.buf.work == head.program.buf.visits == 1


def test_one_walk_of_a_shared_part_is_fine() -> None:
    """The same programs with a single parent are read: the budget refuses repetition only."""
    assert read_pte_bytes(_shared_values_program(plans=1)).methods == ("forward",)
    assert read_pte_bytes(_shared_outputs_program(plans=1, outputs=10)).constant_methods["get_x"] == [None] * 10
    assert len(read_pte_bytes(_shared_name_program(plans=1)).methods[0]) == 256 * 1024
    assert read_pte_bytes(_shared_key_program(entries=1)).named_data_keys == ("k" * 256 * 1024,)


@pytest.mark.parametrize("path", PTE_FIXTURES, ids=_ids(PTE_FIXTURES))
def test_real_programs_use_a_fraction_of_the_visit_budget(path: Path) -> None:
    """Every reader of one head together stays well inside the budget (margin for new readers)."""
    head = open_program(path)
    classify_program(head, describe_program(head))  # reads the signatures too
    read_delegate_keys(head)
    buf = head.program.buf
    assert buf.visits > 0 and 5 * buf.work < buf.max_work


def test_missing_and_directory_paths_are_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError):
        read_pte(tmp_path / "absent.pte")
    with pytest.raises(UnreadableError):
        read_pte(tmp_path)


def fake_size(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Make ``os.fstat`` report ``size`` bytes: as if the file shrank between fstat and read."""
    real = os.fstat

    def fstat(fd: int) -> os.stat_result:
        st = real(fd)
        return os.stat_result((*st[:6], size, *st[7:10]))

    monkeypatch.setattr(os, "fstat", fstat)


def test_short_read_is_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fixture_file("programs/ext_weights.pte")  # no eh00: the whole file is the program
    fake_size(monkeypatch, path.stat().st_size + 100)
    with pytest.raises(PteFormatError) as caught:
        read_pte(path)
    size = path.stat().st_size
    assert caught.value.message == (
        f"file is truncated: expected {size + 100} program bytes, read {size}"
    )


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_read_error_is_unreadable() -> None:
    with pytest.raises(UnreadableError, match="cannot read program: "):
        read_pte("/proc/self/mem")  # a regular file whose read at offset 0 fails (EIO)


@dataclass(frozen=True)
class _End:
    flatbuffer_end: int


@pytest.mark.parametrize("past", [1, 1 << 40])
def test_shared_reader_bounds_what_a_header_parser_returns(tmp_path: Path, past: int) -> None:
    """The shared routine does not trust the format's parser: an end past the file is refused."""
    path = _write(tmp_path, _good())
    fmt = FlatFileFormat(
        b"ET12", 64, lambda _h, size, _n: _End(size + past), PteFormatError, "program", "program"
    )
    with pytest.raises(PteFormatError, match="out of range"):
        read_flat_head(path, fmt)
    with pytest.raises(PteFormatError, match="out of range"):
        view_flat_head(path.read_bytes(), fmt, str(path))


def test_is_pte_file(tmp_path: Path) -> None:
    assert is_pte_file(fixture_file("programs/constants_all.pte"))
    assert not is_pte_file(fixture_file("programs/ext_weights.ptd"))
    assert not is_pte_file(_write(tmp_path, b"text file\n", "t.txt"))
    assert not is_pte_file(tmp_path / "absent.pte")
    assert not is_pte_file(tmp_path)


def test_random_corruption_only_raises_pte_format_error() -> None:
    good = bytes(_good())
    program_size = struct.unpack_from("<Q", good, 16)[0]

    @settings(
        max_examples=200,
        deadline=None,  # no wall-clock bound: this machine is shared
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        flips=st.lists(
            st.tuples(st.integers(0, program_size - 1), st.integers(0, 255)), min_size=1, max_size=8
        ),
        cut=st.one_of(st.none(), st.integers(0, len(good))),
    )
    def check(flips: list[tuple[int, int]], cut: int | None) -> None:
        data = bytearray(good)
        for pos, byte in flips:
            data[pos] = byte
        if cut is not None:
            del data[cut:]
        try:
            info = read_pte_bytes(bytes(data))
        except PteFormatError:
            return
        assert isinstance(info, PteInfo)
        json.dumps(info.to_json())

    check()


def test_a_changed_identifier_is_always_refused() -> None:
    good = bytes(_good())

    @settings(max_examples=100, deadline=None, database=None)
    @given(ident=st.binary(min_size=4, max_size=4).filter(lambda b: b != b"ET12"))
    def check(ident: bytes) -> None:
        data = good[:4] + ident + good[8:]
        with pytest.raises(PteFormatError, match=r"at bytes 4\.\.8|identifier"):
            read_pte_bytes(data)

    check()


def test_flips_in_the_weights_segment_read_as_the_good_file() -> None:
    # The weights are never read: any change to them leaves what the reader says unchanged.
    good = fixture_file("llama/tiny_llama.pte").read_bytes()
    base = struct.unpack_from("<Q", good, 24)[0]  # segment_base_offset
    assert_flips_from_read_the_same(good, base, lambda data: read_pte_bytes(data).to_json())


# --- pytree specs: structure rebuilt from encoded_out_str -----------------------------------

NESTED: dict[str, Any] = {
    "one": [2],
    "scalar": 2,
    "pair": [2, 3],
    "nested": {"k": [1, 2], "b": True, "s": "x"},
    "tuple": (1, (2.5, 3)),
    "empty": [],
    "lists": [[1], []],
}


@pytest.fixture(scope="module")
def nested_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    exir = pytest.importorskip("executorch.exir")

    class Tiny(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x + 1

    exported = torch.export.export(Tiny(), (torch.ones(2),))
    program = exir.to_edge(exported, constant_methods=NESTED).to_executorch()
    path = tmp_path_factory.mktemp("nested") / "nested.pte"
    path.write_bytes(program.buffer)
    return path


@pytest.mark.runtime
@RUNTIME_WARNINGS
def test_nested_constants_rebuild_their_structure(nested_program: Path) -> None:
    info = read_pte(nested_program)
    for name, value in NESTED.items():
        assert _same(info.constant_methods[name], _as_lists(value)), name


_JSON_LIST = '{"type": "builtins.list", "context": "null", "children_spec": ['
_JSON_LEAF = '{"type": null, "context": null, "children_spec": []}'
_DEEP_JSON = "[1, " + _JSON_LIST * 100 + _JSON_LEAF + "]}" * 100 + "]"


def _with_spec(source: Path, method: str, spec: str, dest: Path) -> Path:
    """Rewrite one plan's encoded_out_str with executorch's own serializer."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte_file = deserialize_pte_binary(source.read_bytes())
    plan = next(p for p in pte_file.program.execution_plan if p.name == method)
    plan.container_meta_type.encoded_out_str = spec
    dest.write_bytes(bytes(serialize_pte_binary(pte_file, extract_delegate_segments=True)))
    return dest


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize(
    ("method", "spec", "expected"),
    [
        ("pair", "L2#1#1($,$)", [2, 3]),
        ("one", "L1#1($)", [2]),
        ("scalar", "$", 2),
        ("nested", "D3#2#1#1('k':L2#1#1($,$),'b':$,'s':$)", {"k": [1, 2], "b": True, "s": "x"}),
        ("tuple", "T2#1#2($,T2#1#1($,$))", [1, [2.5, 3]]),
        ("pair", "}{ not a spec", [2, 3]),  # unparseable: several outputs -> list
        ("one", '[1, {"type": "builtins.list"', 2),  # unparseable: one output -> scalar
        ("pair", "L3#1#1#1($,$,$)", [2, 3]),  # wrong leaf count: fall back
        ("one", "L1#1(" * 200 + "$" + ")" * 200, 2),  # too deep: fall back
        ("one", _DEEP_JSON, 2),  # too deep: fall back
    ],
)
def test_cpp_and_broken_specs(
    nested_program: Path, tmp_path: Path, method: str, spec: str, expected: Any
) -> None:
    shutil.copy(nested_program, tmp_path / "src.pte")
    path = _with_spec(tmp_path / "src.pte", method, spec, tmp_path / "out.pte")
    assert _same(read_pte(path).constant_methods[method], expected)
