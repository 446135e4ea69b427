"""Tests of etm_compat.formats.ptd: the lazy .ptd (flat-tensor data) reader.

Ground truth for the current layout is executorch's own FlatTensorSerializer; the v0.6 layout is
synthesized here with the flatbuffers Builder. Malformed cases each mutate one thing of a good file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from conftest import fixture_file, fixture_glob
from flips import assert_flips_from_read_the_same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etm_compat.errors import PtdFormatError, PteFormatError, UnreadableError
from etm_compat.formats.ptd import PtdInfo, is_ptd_file, read_ptd, read_ptd_bytes

PTD_FIXTURES = fixture_glob("**/*.ptd")
RUNTIME_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:importlib.*")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(p.parents[1])) for p in paths]


def _good() -> bytearray:
    return bytearray(fixture_file("programs/ext_weights.ptd").read_bytes())


# --- agreement with executorch's serializer ------------------------------------------------


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize("path", PTD_FIXTURES, ids=_ids(PTD_FIXTURES))
def test_tensors_match_flat_tensor_serializer(path: Path) -> None:
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = FlatTensorSerializer().deserialize(Cord(path.read_bytes()))
    info = read_ptd(path)
    assert info.layout == "v0.7"
    assert [t.key for t in info.tensors] == list(payload.named_data)
    for tensor in info.tensors:
        entry = payload.named_data[tensor.key]
        assert tensor.segment_index == entry.buffer_index
        assert tensor.nbytes == len(payload.buffers[entry.buffer_index])
        layout = entry.tensor_layout
        if layout is None:
            assert tensor.dtype is None and tensor.shape is None
        else:
            assert tensor.dtype == layout.scalar_type.name
            assert tensor.shape == tuple(layout.sizes)


def test_header_fields_and_keys() -> None:
    path = fixture_file("programs/ext_weights.ptd")
    raw = path.read_bytes()
    info = read_ptd(path)
    magic, length, _fb_offset, _fb_size, base, size = struct.unpack_from("<4sIQQQQ", raw, 8)
    assert (magic, length) == (b"FH01", 40)
    assert (info.segment_base_offset, info.segment_data_size) == (base, size)
    assert info.file_size == len(raw)
    assert info.keys == frozenset(t.key for t in info.tensors)
    # The program that uses these weights names exactly these keys.
    from etm_compat.formats.pte import read_pte

    assert info.keys == set(read_pte(fixture_file("programs/ext_weights.pte")).external_keys)


def test_to_json() -> None:
    info = read_ptd(fixture_file("programs/ext_weights.ptd"))
    doc = json.loads(json.dumps(info.to_json()))
    assert doc["kind"] == "ptd" and doc["layout"] == "v0.7"
    assert [t["key"] for t in doc["tensors"]] == [t.key for t in info.tensors]
    assert all(set(t) == {"key", "dtype", "shape", "nbytes"} for t in doc["tensors"])


def test_read_ptd_bytes_equals_read_ptd() -> None:
    path = fixture_file("programs/ext_weights.ptd")
    assert read_ptd_bytes(memoryview(path.read_bytes()), name=str(path)) == read_ptd(path)


def test_bytes_past_the_flatbuffer_do_not_matter(tmp_path: Path) -> None:
    raw = _good()
    info = read_ptd_bytes(bytes(raw))
    base = info.segment_base_offset
    raw[base:] = bytes((i * 5 + 1) % 256 for i in range(len(raw) - base))
    again = read_ptd_bytes(bytes(raw))
    assert again == info


# --- the v0.6 table layout -----------------------------------------------------------------


def _v06_ptd(
    tensors: list[tuple[str, int, list[int], int, int]], segments: list[bytes], version: int = 0
) -> bytes:
    """A v0.6 .ptd: FlatTensor{version, tensor_alignment, tensors, segments, named_data}.

    ``tensors`` are (name, scalar_type, sizes, segment_index, offset).
    """
    b = flatbuffers.Builder(0)

    def vector(items: list[int], prepend: Any, elem: int) -> int:
        b.StartVector(elem, len(items), elem)
        for item in reversed(items):
            prepend(item)
        return int(b.EndVector())

    def tables(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return int(b.EndVector())

    metas = []
    for name, scalar_type, sizes, segment_index, offset in tensors:
        fqn = b.CreateString(name)
        sizes_vec = vector(sizes, b.PrependInt32, 4)
        order_vec = vector(list(range(len(sizes))), b.PrependUint8, 1)
        b.StartObject(6)
        b.PrependUOffsetTRelativeSlot(0, fqn, 0)
        b.PrependInt8Slot(1, scalar_type, 0)
        b.PrependUOffsetTRelativeSlot(2, sizes_vec, 0)
        b.PrependUOffsetTRelativeSlot(3, order_vec, 0)
        b.PrependInt32Slot(4, segment_index, 0)
        b.PrependUint64Slot(5, offset, 0)
        metas.append(b.EndObject())
    segs = []
    offset = 0
    for blob in segments:
        b.StartObject(2)
        b.PrependUint64Slot(0, offset, 0)
        b.PrependUint64Slot(1, len(blob), 0)
        segs.append(b.EndObject())
        offset += -(-len(blob) // 16) * 16
    tensors_vec, segments_vec, named_vec = tables(metas), tables(segs), tables([])
    b.StartObject(5)
    b.PrependUint32Slot(0, version, 0)
    b.PrependUint32Slot(1, 16, 0)
    b.PrependUOffsetTRelativeSlot(2, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, segments_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, named_vec, 0)
    b.Finish(b.EndObject(), file_identifier=b"FT01")
    flat = bytes(b.Output())
    # Insert the FH01 header at byte 8 the way executorch does (padded to 16, root moved by it).
    header_len = 48
    data_blob = b"".join(blob.ljust(-(-len(blob) // 16) * 16, b"\0") for blob in segments)
    end = header_len + len(flat)
    base = -(-end // 128) * 128
    header = struct.pack("<4sIQQQQ", b"FH01", 40, header_len, len(flat), base, len(data_blob))
    root = struct.unpack_from("<I", flat, 0)[0] + header_len
    out = struct.pack("<I", root) + flat[4:8] + header.ljust(header_len, b"\0") + flat[8:]
    return out.ljust(base, b"\0") + data_blob


V06_TENSORS = [("w", 6, [3, 4], 0, 0), ("b", 5, [3], 0, 48), ("ids", 4, [2], 1, 0)]
V06_SEGMENTS = [bytes(48 + 6), bytes(16)]


def test_v06_layout_is_told_apart() -> None:
    info = read_ptd_bytes(_v06_ptd(V06_TENSORS, V06_SEGMENTS))
    assert info.layout == "v0.6"
    assert [t.key for t in info.tensors] == ["w", "b", "ids"]
    assert [t.dtype for t in info.tensors] == ["FLOAT", "HALF", "LONG"]
    assert [t.shape for t in info.tensors] == [(3, 4), (3,), (2,)]
    elem = {6: 4, 5: 2, 4: 8}  # float32, float16, int64: bytes per element
    assert [t.nbytes for t in info.tensors] == [
        math.prod(sizes) * elem[st] for _n, st, sizes, _s, _o in V06_TENSORS
    ]
    assert [t.segment_index for t in info.tensors] == [0, 0, 1]


def test_v06_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "old.ptd"
    path.write_bytes(_v06_ptd(V06_TENSORS, V06_SEGMENTS))
    assert is_ptd_file(path)
    assert read_ptd(path).layout == "v0.6"


def test_v06_segment_index_out_of_range() -> None:
    data = _v06_ptd([("w", 6, [3, 4], 5, 0)], V06_SEGMENTS)
    with pytest.raises(PtdFormatError, match="'w' refers to segment 5, but the file has 2"):
        read_ptd_bytes(data)


# --- malformed input ----------------------------------------------------------------------


def _raises(tmp_path: Path, data: bytes | bytearray, *needles: str) -> PtdFormatError:
    path = tmp_path / "bad.ptd"
    path.write_bytes(bytes(data))
    with pytest.raises(PtdFormatError) as caught:
        read_ptd(path)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)
    with pytest.raises(PtdFormatError):
        read_ptd_bytes(bytes(data))
    return caught.value


def test_pte_given_as_ptd(tmp_path: Path) -> None:
    err = _raises(
        tmp_path, fixture_file("programs/constants_all.pte").read_bytes(), "b'ET12'", "b'FT01'"
    )
    assert err.hint and ".pte" in err.hint


def test_text_file(tmp_path: Path) -> None:
    _raises(tmp_path, b"not weights at all\n", "not an ExecuTorch data file", "b'FT01'")


def test_missing_header_magic(tmp_path: Path) -> None:
    data = _good()
    data[8:12] = b"FH99"
    _raises(tmp_path, data, "b'FH99'", "b'FH01'")


def test_bad_header_length(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<I", data, 12, 16)
    _raises(tmp_path, data, "length 16")


@pytest.mark.parametrize("cut", [1, 200, 500])
def test_truncated(tmp_path: Path, cut: int) -> None:
    _raises(tmp_path, _good()[:-cut], "truncated")


def test_flatbuffer_size_out_of_range(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<Q", data, 24, 1 << 40)
    _raises(tmp_path, data, "flatbuffer_size")


def test_unsupported_version(tmp_path: Path) -> None:
    _raises(tmp_path, _v06_ptd(V06_TENSORS, V06_SEGMENTS, version=7), "version 7", "[0]")


def test_root_offset_out_of_range(tmp_path: Path) -> None:
    data = _good()
    struct.pack_into("<I", data, 0, 0x7FFFFF00)
    _raises(tmp_path, data, "past the end")


def test_ptd_error_is_a_pte_format_error() -> None:
    with pytest.raises(PteFormatError):
        read_ptd_bytes(b"\0" * 64)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError):
        read_ptd(tmp_path / "absent.ptd")
    with pytest.raises(UnreadableError):
        read_ptd(tmp_path)


def test_short_read_is_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that shrinks between fstat and read: the FlatBuffer comes up short."""
    data = _good()
    fb_offset = struct.unpack_from("<Q", data, 16)[0]
    struct.pack_into("<QQQ", data, 24, 600 - fb_offset, 0, 0)  # FlatBuffer ends at 600 > 524
    path = tmp_path / "long.ptd"
    path.write_bytes(bytes(data))
    real = os.fstat
    monkeypatch.setattr(
        os, "fstat", lambda fd: os.stat_result((*real(fd)[:6], 10_000, *real(fd)[7:10]))
    )
    with pytest.raises(PtdFormatError) as caught:
        read_ptd(path)
    assert caught.value.message == f"file is truncated: expected 600 header bytes, read {len(data)}"


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_read_error_is_unreadable() -> None:
    with pytest.raises(UnreadableError, match="cannot read data file: "):
        read_ptd("/proc/self/mem")  # a regular file whose read at offset 0 fails (EIO)


def test_is_ptd_file(tmp_path: Path) -> None:
    assert is_ptd_file(fixture_file("programs/ext_weights.ptd"))
    assert not is_ptd_file(fixture_file("programs/constants_all.pte"))
    assert not is_ptd_file(tmp_path / "absent.ptd")
    assert not is_ptd_file(tmp_path)


def test_random_corruption_only_raises_ptd_format_error() -> None:
    good = bytes(_good())
    end = min(len(good), 48 + struct.unpack_from("<Q", good, 24)[0])

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
    )
    @given(
        flips=st.lists(
            st.tuples(st.integers(0, end - 1), st.integers(0, 255)), min_size=1, max_size=8
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
            info = read_ptd_bytes(bytes(data))
        except PtdFormatError:
            return
        assert isinstance(info, PtdInfo)
        json.dumps(info.to_json())

    check()


def test_a_changed_identifier_is_always_refused() -> None:
    good = bytes(_good())

    @settings(max_examples=100, deadline=None, database=None)
    @given(ident=st.binary(min_size=4, max_size=4).filter(lambda b: b != b"FT01"))
    def check(ident: bytes) -> None:
        with pytest.raises(PtdFormatError, match=r"at bytes 4\.\.8"):
            read_ptd_bytes(good[:4] + ident + good[8:])

    check()


def test_flips_in_the_tensor_data_read_as_the_good_file() -> None:
    # The tensor data is never read (only the FlatBuffer that describes it): any change to it
    # leaves the keys, dtypes, shapes and sizes unchanged.
    good = bytes(_good())
    base = read_ptd_bytes(good).segment_base_offset
    assert_flips_from_read_the_same(good, base, lambda data: read_ptd_bytes(data).to_json())
