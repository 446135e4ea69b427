"""A hostile-archive corpus, built here from raw bytes or one mutation of a good archive.

Each case must fail with the right error class and a message naming the problem, and writing
nothing outside the extraction folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_archive import PTE, pack

from etm_compat.archive import open_archive
from etm_compat.archive.metadata import new_metadata, serialize_metadata
from etm_compat.errors import (
    ArchiveError,
    IntegrityError,
    MetadataError,
    OutputError,
    UnsupportedVersionError,
)
from etm_compat.verification import verify

REG = (0o100644 << 16, (3 << 8) | 20)


def meta_bytes(members: dict[str, bytes], **changes: Any) -> bytes:
    meta = new_metadata(tool_version="0")
    meta["members"] = [
        {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "role": "program"}
        for n, d in members.items()
    ]
    meta.update(changes)
    return serialize_metadata(meta)


def raw_zip(entries: list[dict[str, Any]], *, tail: bytes = b"") -> bytes:
    """Hand-made zip bytes: each entry a dict with name, data and optional forged fields."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        name = e["name"].encode() if isinstance(e["name"], str) else e["name"]
        data = e["data"]
        crc = e.get("crc", zlib.crc32(data))
        size = e.get("size", len(data))
        method = e.get("method", 0)
        offset = e.get("offset", len(out))
        ext_attr, made_by = e.get("attr", REG)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 33, crc, size, size, len(name), 0
        )
        out += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, made_by, 20, 0, method, 0, 33, crc,
                               size, size, len(name), 0, 0, 0, 0, ext_attr, offset) + name  # fmt: skip
    cd_offset = len(out)
    out += central
    n = len(entries)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out + tail)


def simple(extra: list[dict[str, Any]], meta: bytes | None = None) -> bytes:
    pte = b"\x1c\x00\x00\x00ET12" + bytes(56)
    meta = meta if meta is not None else meta_bytes({"model.pte": pte})
    return raw_zip(
        [{"name": "metadata.json", "data": meta}, {"name": "model.pte", "data": pte}, *extra]
    )


def good(tmp_path: Path) -> bytes:
    return pack(tmp_path / "good.etm").read_bytes()


def mutate_member_byte(raw: bytes, tmp_path: Path) -> bytes:
    with open_archive(tmp_path / "good.etm") as etm:
        offset, _ = etm.member_range("model.pte")
    data = bytearray(raw)
    data[offset + 100] ^= 0xFF
    return bytes(data)


def forge_sha(raw: bytes, tmp_path: Path) -> bytes:
    """Replace model.pte's sha256 in metadata.json (same length) and fix the metadata CRCs."""
    with open_archive(tmp_path / "good.etm") as etm:
        offset, size = etm.member_range("metadata.json")
        old = etm.members["metadata.json"].crc32
        want = next(m["sha256"] for m in etm.metadata["members"] if m["name"] == "model.pte")
    data = bytearray(raw)
    meta = bytes(data[offset : offset + size]).replace(want.encode(), b"f" * 64)
    data[offset : offset + size] = meta
    new = struct.pack("<I", zlib.crc32(meta))
    return bytes(data).replace(struct.pack("<I", old), new)


def move_eocd_offset(raw: bytes, _: Path) -> bytes:
    data = bytearray(raw)
    (cd_offset,) = struct.unpack_from("<I", data, len(data) - 6)
    struct.pack_into("<I", data, len(data) - 6, cd_offset + 1)
    return bytes(data)


def rename_local(raw: bytes, _: Path) -> bytes:
    """Rename model.pte in its local header only (the central directory keeps the name)."""
    pos = raw.find(b"model.pte")
    while raw[pos - 30 : pos - 26] != b"PK\x03\x04":
        pos = raw.find(b"model.pte", pos + 1)
    return raw[:pos] + b"model.ptx" + raw[pos + 9 :]


Build = Callable[[Path], bytes]
BIG_META = b'{"format": "etm", "pad": "' + b" " * (5 * 1024 * 1024) + b'"}'
PTE_BYTES = b"\x1c\x00\x00\x00ET12" + bytes(56)

# case -> (build, error class, needle in the message, fails at open?)
CASES: dict[str, tuple[Build, type[Exception], str, bool]] = {
    "path_traversal": (lambda _: simple([{"name": "../evil.ptd", "data": b"x"}]), ArchiveError, "path traversal", True),
    "traversal_in_weights": (lambda _: simple([{"name": "weights/../../x.ptd", "data": b"x"}]), ArchiveError, "path traversal", True),
    "absolute_path": (lambda _: simple([{"name": "/etc/cron.d/x", "data": b"x"}]), ArchiveError, "absolute path", True),
    "drive_path": (lambda _: simple([{"name": "C:/x.ptd", "data": b"x"}]), ArchiveError, "absolute path", True),
    "symlink_entry": (lambda _: simple([{"name": "tokenizer.bin", "data": b"/etc/passwd", "attr": (0o120777 << 16, 3 << 8 | 20)}]), ArchiveError, "symbolic link", True),
    "duplicate_name": (lambda _: simple([{"name": "model.pte", "data": PTE_BYTES}]), ArchiveError, "duplicate name", True),
    "compressed_member": (lambda _: simple([{"name": "tokenizer.bin", "data": zlib.compress(b"a" * 1000)[2:-4], "method": 8}]), ArchiveError, "compressed (method 8)", True),
    "shared_data_bomb": (lambda _: simple([{"name": "tokenizer.bin", "data": b"", "offset": 0, "size": 0}]), ArchiveError, "overlap", True),
    "huge_declared_size": (lambda _: simple([{"name": "tokenizer.bin", "data": b"abc", "size": 0xFFFFFFF0}]), ArchiveError, "past the end", True),
    "truncated_half": (lambda p: (lambda raw: raw[: len(raw) // 2])(good(p)), ArchiveError, "no end-of-central-directory", True),
    "truncated_tail": (lambda p: good(p)[:-1], ArchiveError, "no end-of-central-directory", True),
    "eocd_garbage_after": (lambda p: good(p) + b"garbage", ArchiveError, "no end-of-central-directory", True),
    "eocd_wrong_offset": (lambda p: move_eocd_offset(good(p), p), ArchiveError, "central directory", True),
    "prepended_stub": (lambda p: b"MZ" * 64 + good(p), ArchiveError, "central directory", True),
    "local_header_mismatch": (lambda p: rename_local(good(p), p), ArchiveError, "local header disagrees", True),
    "non_utf8_name": (lambda _: simple([{"name": b"tokenizer\xff.bin", "data": b"x"}]), ArchiveError, "not UTF-8", True),
    "backslash_name": (lambda _: simple([{"name": "weights\\x.ptd", "data": b"x"}]), ArchiveError, "backslash", True),
    "unknown_name": (lambda _: simple([{"name": "run.sh", "data": b"x"}]), ArchiveError, "not an allowed member name", True),
    "too_many_members": (lambda _: simple([{"name": f"weights/w{i}.ptd", "data": b""} for i in range(300)]), ArchiveError, "too many members", True),
    "not_a_zip": (lambda _: b"\x00" * 100, ArchiveError, "no end-of-central-directory", True),
    "empty_file": (lambda _: b"", ArchiveError, "too short", True),
    "missing_metadata": (lambda _: raw_zip([{"name": "model.pte", "data": PTE_BYTES}]), MetadataError, "no metadata.json", True),
    "metadata_not_first": (lambda _: raw_zip([{"name": "model.pte", "data": PTE_BYTES}, {"name": "metadata.json", "data": meta_bytes({"model.pte": PTE_BYTES})}]), ArchiveError, "first member", True),
    "oversized_metadata": (lambda _: simple([], BIG_META), MetadataError, "more than the 4194304 allowed", True),
    "schema_invalid_metadata": (lambda _: simple([], b'{"format": "etm", "format_version": 1, "min_reader_version": 1}'), MetadataError, "missing required key 'family'", True),
    "metadata_not_json": (lambda _: simple([], b"{]"), MetadataError, "not valid JSON", True),
    "unsupported_version": (lambda _: simple([], meta_bytes({"model.pte": PTE_BYTES}, format_version=3, min_reader_version=3)), UnsupportedVersionError, "reads format versions 1, 2", True),
    "unlisted_member": (lambda _: simple([{"name": "tokenizer.bin", "data": b"x"}]), MetadataError, "not in metadata.json", True),
    "metadata_bad_crc": (lambda _: raw_zip([{"name": "metadata.json", "data": meta_bytes({"model.pte": PTE_BYTES}), "crc": 1234}, {"name": "model.pte", "data": PTE_BYTES}]), IntegrityError, "fails its CRC32 check", True),
    "wrong_crc": (lambda p: mutate_member_byte(good(p), p), IntegrityError, "CRC32", False),
    "wrong_sha256": (lambda p: forge_sha(good(p), p), IntegrityError, "sha256 is", False),
}  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_archive(tmp_path: Path, case: str) -> None:
    build, error, needle, at_open = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    data = build(work)
    archive = tmp_path / "hostile.etm"
    archive.write_bytes(data)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    if at_open:
        with pytest.raises(error) as info, open_archive(archive) as etm:
            etm.extract(out)
    else:
        with open_archive(archive) as etm:
            problems = etm.verify()
            assert problems and all(p.member == "model.pte" for p in problems)
            with pytest.raises(error) as info:
                etm.extract(out)
        result = verify(archive)
        assert not result.ok and {f.code for f in result.findings} == {"archive-integrity"}
    message = str(info.value)
    assert needle in message
    assert str(archive) in message and info.value.hint  # type: ignore[attr-defined]
    after = snapshot(tmp_path)
    assert after == before, "something was written"
    assert not out.exists() or list(out.iterdir()) == []


def test_wrong_crc_reports_both_checks(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    archive = tmp_path / "x.etm"
    archive.write_bytes(mutate_member_byte(good(work), work))
    with open_archive(archive) as etm:
        codes = sorted(p.code for p in etm.verify())
    assert codes == ["crc-mismatch", "sha256-mismatch"]


def test_extract_does_not_follow_symlinks_out(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    outside = tmp_path / "outside.pte"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "model.pte")
    with open_archive(archive) as etm:
        with pytest.raises(OutputError):
            etm.extract(out)
        etm.extract(out, force=True)
    assert outside.read_bytes() == b"precious"
    assert not (out / "model.pte").is_symlink()
    assert (out / "model.pte").read_bytes() == PTE.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(st.data())
def test_any_single_byte_change_is_caught_or_harmless(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Flipping one byte: inside metadata.json's data, opening refuses the archive (its CRC is
    checked then); inside another member's data, the archive opens (no member is read at open)
    and verify names exactly that member, by CRC-32 and by sha256; elsewhere (headers, the
    central directory, padding) a clean ArchiveError at open, or only CRC/sha256 problems."""
    root = tmp_path_factory.mktemp("fuzz")
    good = pack(root / "good.etm")
    with open_archive(good) as etm:
        ranges = {name: etm.member_range(name) for name in etm.members}
    raw = bytearray(good.read_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    bad = root / "bad.etm"
    bad.write_bytes(bytes(raw))
    inside = {name for name, (offset, size) in ranges.items() if offset <= pos < offset + size}
    if inside == {"metadata.json"}:
        with pytest.raises(ArchiveError, match=r"metadata\.json"):
            open_archive(bad)
        return
    try:
        with open_archive(bad) as etm:
            problems = etm.verify()
            meta = json.dumps(etm.metadata)
    except ArchiveError as exc:
        assert not inside, f"a flip inside {inside}'s data refused at open: {exc}"
        return
    assert meta
    found = {(p.code, p.member) for p in problems}
    if inside:  # a changed data byte is always detected, and named: both checks, that member only
        (member,) = inside
        assert found == {("crc-mismatch", member), ("sha256-mismatch", member)}, (pos, found)
    else:
        assert {code for code, _ in found} <= {"crc-mismatch", "sha256-mismatch"}, (pos, found)
