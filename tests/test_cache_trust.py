"""The cache serves each archive its own bytes, or refuses it; never another archive's bytes.

Two archives with byte-identical metadata.json: the good one made by the real packer, and a copy
whose ``model.pte`` was swapped for same-size different bytes with the zip's CRC-32 fixed (a
valid zip whose sha256 no longer matches its metadata). The cache key covers the central
directory's CRC-32 and size of every member, and an entry is checked against metadata.json's
sha256 once when it is built.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest
from conftest import FIXTURES

import etm_compat
from etm_compat import shim
from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.compat import cache, cache_admin
from etm_compat.errors import IntegrityError
from etm_compat.packing import pack


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = FIXTURES / "legacy" / "et_example"
    if not source.is_dir():
        pytest.skip("fixtures missing (run ./dev.sh fixtures)")
    dest = tmp_path_factory.mktemp("good") / "good.etm"
    pack(source, dest, default_adapters())
    return dest


def _member(path: Path, name: str) -> tuple[int, int, int, bytes]:
    with open_archive(path) as etm:
        offset, size = etm.member_range(name)
        crc = etm.members[name].crc32
    return offset, size, crc, path.read_bytes()[offset : offset + size]


def swap_program(good: Path, dest: Path, new: bytes) -> Path:
    """``good`` with model.pte replaced by ``new`` (same size), the zip's CRC-32 fields fixed:
    metadata.json is byte for byte the same, and its sha256 of model.pte no longer holds."""
    offset, size, old_crc, _ = _member(good, "model.pte")
    assert len(new) == size
    data = bytearray(good.read_bytes())
    data[offset : offset + size] = new
    old, fixed = struct.pack("<I", old_crc), struct.pack("<I", zlib.crc32(new))
    assert data.count(old) == 2  # the local header and the central directory
    dest.write_bytes(bytes(data).replace(old, fixed))
    return dest


def flipped(good: Path) -> bytes:
    """model.pte with one byte changed near its end (same size, another CRC-32)."""
    _, _, _, program = _member(good, "model.pte")
    changed = bytearray(program)
    changed[-3] ^= 0x5A
    return bytes(changed)


def same_crc(good: Path) -> bytes:
    """model.pte with a few bits of its last 8 bytes flipped so that its CRC-32 is unchanged
    (CRC-32 is linear: a combination of single-bit flips whose CRC changes cancel out)."""
    _, _, _, program = _member(good, "model.pte")
    base = zlib.crc32(program)
    basis: dict[int, tuple[int, int]] = {}  # top bit -> (crc delta, mask of flipped bits)
    start = (len(program) - 8) * 8
    for bit in range(64):
        changed = bytearray(program)
        changed[(start + bit) // 8] ^= 1 << (bit % 8)
        delta, mask = zlib.crc32(bytes(changed)) ^ base, 1 << bit
        while delta and delta.bit_length() in basis:
            other, other_mask = basis[delta.bit_length()]
            delta, mask = delta ^ other, mask ^ other_mask
        if delta:
            basis[delta.bit_length()] = (delta, mask)
            continue
        forged = bytearray(program)
        for b in range(64):
            if mask >> b & 1:
                forged[(start + b) // 8] ^= 1 << (b % 8)
        assert bytes(forged) != program and zlib.crc32(bytes(forged)) == base
        return bytes(forged)
    raise AssertionError("65 vectors in a 32-bit space are always dependent")


@pytest.fixture()
def pair(good: Path, tmp_path: Path) -> tuple[Path, Path, bytes]:
    """The good archive, the one with another same-size program, and the good program's bytes."""
    mine = tmp_path / "a" / "model.etm"
    mine.parent.mkdir()
    shutil.copyfile(good, mine)
    other = tmp_path / "b" / "model.etm"
    other.parent.mkdir()
    swap_program(good, other, flipped(good))
    assert (
        _member(mine, "metadata.json")[3] == _member(other, "metadata.json")[3]
    ), "the two archives must have byte-identical metadata.json"
    return mine, other, _member(good, "model.pte")[3]


def test_keys_differ_when_only_the_members_differ(pair: tuple[Path, Path, bytes]) -> None:
    mine, other, _ = pair
    with open_archive(mine) as a, open_archive(other) as b:
        assert cache.archive_key(a) != cache.archive_key(b)


@pytest.mark.parametrize("good_first", [True, False])
def test_each_archive_gets_its_own_bytes_or_a_refusal(
    pair: tuple[Path, Path, bytes], tmp_path: Path, good_first: bool
) -> None:
    mine, other, program = pair
    root = tmp_path / "cache"
    order = [mine, other] if good_first else [other, mine]
    for path in order:
        with open_archive(path) as etm:
            if path == other:
                with pytest.raises(IntegrityError, match=r"model\.pte.*sha256 is"):
                    cache.materialize(etm, root=root)
            else:
                entry = cache.materialize(etm, root=root)
                assert entry.status == "built"
                assert entry.files["model.pte"].read_bytes() == program
    # Only the good archive's entry exists; the refused build left nothing behind.
    with open_archive(mine) as etm:
        assert [p.name for p in root.iterdir()] == [cache.archive_key(etm)]


def test_legacy_paths_and_the_shim_never_hand_out_the_other_program(
    pair: tuple[Path, Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other, program = pair
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "cache"))
    with etm_compat.load(mine) as bundle:
        assert bundle.legacy_paths().program.read_bytes() == program
    model, _, _ = shim.resolve_runner_paths(mine, None, None)
    assert Path(model).read_bytes() == program
    with etm_compat.load(other) as bundle, pytest.raises(IntegrityError, match="sha256"):
        bundle.legacy_paths()
    with pytest.raises(IntegrityError, match="sha256"):
        shim.resolve_runner_paths(other, None, None)


def test_a_crc_collision_is_refused_by_verify(good: Path, tmp_path: Path) -> None:
    """A program forged to keep its CRC-32 has the good archive's key (the cheap hit check cannot
    tell, docs/MIGRATION.md): built first it is refused; on a hit ``verify=True`` refuses it."""
    forged = swap_program(good, tmp_path / "forged.etm", same_crc(good))
    root = tmp_path / "cache"
    with open_archive(forged) as etm, pytest.raises(IntegrityError, match="sha256 is"):
        cache.materialize(etm, root=root)
    assert not root.exists() or list(root.iterdir()) == []
    with open_archive(good) as etm:
        assert cache.materialize(etm, root=root).status == "built"
    with open_archive(forged) as etm, pytest.raises(IntegrityError, match=r"model\.pte: sha256 is"):
        cache.materialize(etm, root=root, verify=True)


def test_the_marker_records_the_digests_that_were_checked(
    pair: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    mine, _, _ = pair
    with open_archive(mine) as etm:
        entry = cache.materialize(etm, root=tmp_path / "cache")
        recorded = {m["name"]: m["sha256"] for m in etm.metadata["members"]}
    marker = cache_admin.read_marker(entry.folder)
    assert marker is not None
    assert {n: f["sha256"] for n, f in marker["files"].items()} == recorded

