"""The .etm writer and reader on real fixtures: layout, determinism, standard tools, extract."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import count_digest_ranges

from etm_compat.archive import (
    MemberSpec,
    open_archive,
    write_archive,
)
from etm_compat.archive.metadata import new_metadata
from etm_compat.archive.zipfmt import end_records, local_header
from etm_compat.errors import OutputError, UnreadableError, UsageError
from etm_compat.verification import verify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PTE = FIXTURES / "programs" / "ext_weights.pte"
PTD = FIXTURES / "programs" / "ext_weights.ptd"
SP = FIXTURES / "tokenizers" / "sp.model"
HF = FIXTURES / "tokenizers" / "hf_bpe"


def need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(
                f"fixture {path.relative_to(FIXTURES.parent)} missing (run ./dev.sh fixtures)"
            )


def specs() -> list[MemberSpec]:
    need(PTE, PTD, HF / "tokenizer.json", HF / "tokenizer_config.json")
    return [
        MemberSpec("weights/ext_weights.ptd", PTD, "weights", ("linear.weight", "linear.bias")),
        MemberSpec("tokenizer_config.json", HF / "tokenizer_config.json", "tokenizer_config"),
        MemberSpec("tokenizer.json", HF / "tokenizer.json", "tokenizer"),
        MemberSpec("model.pte", PTE, "program"),
    ]


def pack(dest: Path, members: list[MemberSpec] | None = None, **kw: Any) -> Path:
    meta = new_metadata(tool_version="0.1.0")
    write_archive(dest, metadata=meta, members=members if members is not None else specs(), **kw)
    return dest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_order_alignment_and_metadata(tmp_path: Path) -> None:
    meta = new_metadata(tool_version="0.1.0")
    result = write_archive(tmp_path / "m.etm", metadata=meta, members=specs())
    assert meta["members"] == []  # the caller's mapping is left alone
    with open_archive(result.path) as etm:
        names = list(etm.members)
        assert names == ["metadata.json", "model.pte", "tokenizer.json", "tokenizer_config.json",
                         "weights/ext_weights.ptd"]  # fmt: skip
        for name, info in etm.members.items():
            want = 16384 if name.endswith((".pte", ".ptd")) else 64
            assert info.offset % want == 0, name
        assert etm.member_range("model.pte") == (
            etm.members["model.pte"].offset,
            PTE.stat().st_size,
        )
        assert bytes(etm.member_view("model.pte")) == PTE.read_bytes()
        listed = {m["name"]: m for m in etm.metadata["members"]}
        assert listed["model.pte"]["sha256"] == sha(PTE)
        assert listed["weights/ext_weights.ptd"] == {
            "name": "weights/ext_weights.ptd", "size": PTD.stat().st_size, "sha256": sha(PTD), "role": "weights",
        }  # fmt: skip
        assert etm.metadata["weights"] == [
            {"member": "weights/ext_weights.ptd", "keys": ["linear.weight", "linear.bias"]}
        ]
        assert etm.verify() == []
    # every member is intact; the bare metadata records no constant methods the program has,
    # and verify says so (the snapshot check), nothing else
    assert {f.code for f in verify(result.path).findings} == {"metadata-snapshot-mismatch"}
    raw = result.path.read_bytes()
    assert raw[:4] == b"PK\x03\x04" and raw[30:43] == b"metadata.json"
    assert result.size == len(raw)


def test_deterministic_whatever_the_spec_order_and_times(tmp_path: Path) -> None:
    a = pack(tmp_path / "a.etm")
    src = tmp_path / "src"
    src.mkdir()
    copies = []
    for spec in reversed(specs()):
        copy = src / spec.source.name
        shutil.copyfile(spec.source, copy)
        os.utime(copy, ns=(1, 1))
        copies.append(MemberSpec(spec.name, copy, spec.role, spec.keys))
    b = pack(tmp_path / "b.etm", copies)
    assert a.read_bytes() == b.read_bytes()


def test_write_then_extract_is_byte_identical(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    out = tmp_path / "out"
    with open_archive(archive) as etm:
        written = etm.extract(out)
    assert sorted(p.name for p in written) == sorted(p.name for p in out.iterdir())
    assert (out / "model.pte").read_bytes() == PTE.read_bytes()
    assert (out / "ext_weights.ptd").read_bytes() == PTD.read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (HF / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").read_bytes() == (
        HF / "tokenizer_config.json"
    ).read_bytes()
    assert not (out / "metadata.json").exists()


def test_extract_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pte").write_bytes(b"mine")
    with open_archive(archive) as etm:
        with pytest.raises(OutputError, match="would overwrite"):
            etm.extract(out)
        assert sorted(p.name for p in out.iterdir()) == ["model.pte"]
        assert (out / "model.pte").read_bytes() == b"mine"
        etm.extract(out, force=True, include_metadata=True)
    assert (out / "model.pte").read_bytes() == PTE.read_bytes()
    assert (out / "metadata.json").exists()


def test_refuses_existing_destination(tmp_path: Path) -> None:
    dest = tmp_path / "m.etm"
    dest.write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        pack(dest)
    assert dest.read_bytes() == b"keep"
    pack(dest, overwrite=True)
    assert zipfile.is_zipfile(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.etm"]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    members = [*specs(), MemberSpec("tokenizer.model", tmp_path / "missing.model", "tokenizer")]
    with pytest.raises(UsageError, match="more than one tokenizer"):
        pack(tmp_path / "m.etm", members)
    members = [specs()[-1], MemberSpec("tokenizer.model", tmp_path / "missing.model", "tokenizer")]
    with pytest.raises(UnreadableError, match=r"missing\.model"):
        pack(tmp_path / "m.etm", members)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (MemberSpec("../model.pte", PTE, "program"), "path traversal"),
        (MemberSpec("tokenizer.bin", PTE, "weights"), "does not fit the name"),
        (MemberSpec("weights/a b.ptd", PTD, "weights"), "not an allowed member name"),
        (MemberSpec("metadata.json", PTE, "program"), "written by the archive writer"),
    ],
)
def test_writer_refuses_bad_member_specs(tmp_path: Path, spec: MemberSpec, needle: str) -> None:
    need(PTE, PTD)
    with pytest.raises(UsageError, match=needle):
        pack(tmp_path / "m.etm", [MemberSpec("model.pte", PTE, "program"), spec])


def test_standard_tools_list_test_and_extract(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert zf.read("weights/ext_weights.ptd") == PTD.read_bytes()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    if shutil.which("unzip") is None:
        pytest.skip("unzip not installed (apt-get install -y unzip)")
    listing = subprocess.run(
        ["unzip", "-l", str(archive)], capture_output=True, text=True, check=True
    )
    assert "weights/ext_weights.ptd" in listing.stdout and "5 files" in listing.stdout
    tested = subprocess.run(
        ["unzip", "-t", str(archive)], capture_output=True, text=True, check=True
    )
    assert "No errors detected" in tested.stdout
    out = tmp_path / "unzipped"
    subprocess.run(["unzip", "-q", str(archive), "-d", str(out)], check=True)
    assert (out / "model.pte").read_bytes() == PTE.read_bytes()


def test_zip64_records_when_sizes_need_them() -> None:
    # A member of 5 GiB cannot be written in a unit test, so check the records' encoding directly.
    head = local_header(b"model.pte", 5 << 30, 0, 0, 16384)
    assert struct.unpack_from("<II", head, 18) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert struct.unpack_from("<HHQQ", head, 30 + 9) == (1, 16, 5 << 30, 5 << 30)
    assert (len(head)) % 16384 == 0
    tail = end_records(3, 5 << 30, 200)
    assert (
        tail[:4] == b"PK\x06\x06" and tail[56:60] == b"PK\x06\x07" and tail[76:80] == b"PK\x05\x06"
    )
    assert struct.unpack_from("<I", tail, 76 + 16)[0] == 0xFFFFFFFF
    assert end_records(3, 100, 200)[:4] == b"PK\x05\x06"


def test_member_view_is_zero_copy(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    with open_archive(archive) as etm:
        view = etm.member_view("model.pte")
        assert view.readonly and view.obj is etm._map
        _, length = etm.member_range("model.pte")
        assert len(view) == length
        del view


def _refuse_kernel_copy(*args: Any) -> int:
    import errno

    raise OSError(errno.EXDEV, "cross-device copy_file_range refused")


@pytest.mark.parametrize("mode", ["no_copy_file_range", "copy_file_range_refused"])
def test_archive_bytes_do_not_depend_on_the_copy_path(tmp_path: Path, monkeypatch, mode: str) -> None:
    # The writer copies member bytes in the kernel where it can; other systems (no
    # copy_file_range, or a filesystem that refuses it) must give the very same archive.
    reference = pack(tmp_path / "kernel.etm")
    if mode == "no_copy_file_range":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", _refuse_kernel_copy)
    other = pack(tmp_path / "fallback.etm")
    assert other.read_bytes() == reference.read_bytes()
    with open_archive(other) as etm:
        assert etm.verify() == []


def test_a_member_is_copied_chunk_by_chunk_as_it_is_hashed(tmp_path: Path, monkeypatch) -> None:
    # Each chunk read for the digests is copied right after (one copy_file_range per chunk), and
    # a copy that fails once it has begun (a full disk) fails the write: nothing is published.
    from etm_compat.archive.write import CHUNK_BYTES

    big = tmp_path / "big.pte"
    big.write_bytes(PTE.read_bytes() + bytes(2 * CHUNK_BYTES))
    real = os.copy_file_range
    calls: list[int] = []

    def counted(src: int, dst: int, count: int, *offsets: Any) -> int:
        calls.append(count)
        return real(src, dst, count, *offsets)

    monkeypatch.setattr(os, "copy_file_range", counted)
    packed = pack(tmp_path / "ok.etm", [MemberSpec("model.pte", big, "program")])
    assert calls == [CHUNK_BYTES, CHUNK_BYTES, big.stat().st_size - 2 * CHUNK_BYTES]
    with open_archive(packed) as etm:
        assert etm.verify() == []

    def full_after_one(src: int, dst: int, count: int, *offsets: Any) -> int:
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(count)
        return real(src, dst, count, *offsets)

    calls.clear()
    monkeypatch.setattr(os, "copy_file_range", full_after_one)
    with pytest.raises(OutputError):
        pack(tmp_path / "full.etm", [MemberSpec("model.pte", big, "program")])
    assert not (tmp_path / "full.etm").exists() and not list(tmp_path.glob(".full.etm*"))


def test_writer_fills_provenance_digests_and_refuses_a_bad_index(tmp_path: Path) -> None:
    members = specs()
    meta = new_metadata(tool_version="0.1.0")
    meta["provenance"]["sources"] = [
        {"path": "model.pte", "size": PTE.stat().st_size, "sha256": "f" * 64, "mtime_ns": 0}
    ]
    program = next(m for m in members if m.name == "model.pte")
    linked = [MemberSpec(m.name, m.source, m.role, m.keys, provenance=0) if m is program else m for m in members]
    result = write_archive(tmp_path / "m.etm", metadata=meta, members=linked)
    assert result.metadata["provenance"]["sources"][0]["sha256"] == sha(PTE)
    with open_archive(result.path) as etm:
        assert etm.metadata["provenance"]["sources"][0]["sha256"] == sha(PTE)
    bad = [MemberSpec(m.name, m.source, m.role, m.keys, provenance=5) if m is program else m for m in members]
    with pytest.raises(UsageError, match="provenance"):
        write_archive(tmp_path / "bad.etm", metadata=meta, members=bad)
    assert not (tmp_path / "bad.etm").exists()


def test_the_fast_crc32_is_zlibs_crc32() -> None:
    import zlib

    from etm_compat.archive.zipfmt import crc32

    data = os.urandom(3 << 20) + b"tail"
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data[1000:], crc32(data[:1000])) == zlib.crc32(data)
    assert crc32(b"") == 0


def test_digest_range_reads_with_pread_and_counts_what_was_there(tmp_path: Path) -> None:
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    from etm_compat.archive.zipfmt import DIGEST_CHUNK, digest_range

    data = os.urandom(2 * DIGEST_CHUNK + 12345)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    sunk: list[bytes] = []
    with open(path, "rb") as fh, ThreadPoolExecutor(max_workers=1) as pool:
        fh.seek(77)  # the file position is neither used nor moved
        crc, digest, got = digest_range(fh.fileno(), 100, len(data) - 100, pool, sink=lambda c: sunk.append(bytes(c)))
        assert fh.tell() == 77
        assert (crc, digest, got) == (zlib.crc32(data[100:]), hashlib.sha256(data[100:]).hexdigest(), len(data) - 100)
        assert b"".join(sunk) == data[100:] and len(sunk) == 3  # chunks of DIGEST_CHUNK, in order
        assert digest_range(fh.fileno(), 100, len(data), pool)[2] == len(data) - 100  # ends early


def test_a_small_range_is_hashed_in_the_reading_thread_and_a_large_one_beside_it(tmp_path: Path) -> None:
    """Below BACKGROUND_HASH_MIN the pool gets nothing (no thread starts); from there on every
    chunk's sha256 goes to it. Counted in submissions; the digests are the same either way."""
    import zlib
    from concurrent.futures import Future, ThreadPoolExecutor

    from etm_compat.archive.zipfmt import DIGEST_CHUNK, digest_range
    from etm_compat.constants import BACKGROUND_HASH_MIN

    class Counting(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[no-untyped-def, type-arg]
            self.submitted += 1
            return super().submit(fn, *args, **kwargs)

    data = os.urandom(BACKGROUND_HASH_MIN + DIGEST_CHUNK)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for size, submissions in ((BACKGROUND_HASH_MIN - 1, 0), (BACKGROUND_HASH_MIN, 1), (len(data), 2)):
        with open(path, "rb") as fh, Counting(max_workers=1) as pool:
            got = digest_range(fh.fileno(), 0, size, pool)
            assert got == (zlib.crc32(data[:size]), hashlib.sha256(data[:size]).hexdigest(), size)
            assert pool.submitted == submissions
            assert not pool._threads if submissions == 0 else len(pool._threads) == 1


@pytest.mark.parametrize("delta", [-1, 1], ids=["grew", "shrank"])
def test_a_source_whose_size_changed_is_refused(tmp_path: Path, delta: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from etm_compat.archive.streaming import stream_member

    need(PTE)
    size = PTE.stat().st_size
    with (
        open(tmp_path / "out", "w+b") as dst,
        ThreadPoolExecutor(2) as pool,
        pytest.raises(UnreadableError, match="changed while being packed"),
    ):
        stream_member(PTE, dst.fileno(), 0, size + delta, pool)  # measured one byte off what is there


def test_read_member_reads_without_the_mapping_and_reports_truncation(tmp_path: Path) -> None:
    from etm_compat.errors import IntegrityError

    archive = pack(tmp_path / "m.etm")
    with open_archive(archive) as etm:
        assert etm.read_member("model.pte") == PTE.read_bytes()
        assert etm.read_member("weights/ext_weights.ptd") == PTD.read_bytes()
        offset, _ = etm.member_range("model.pte")
        os.truncate(archive, offset + 10)  # as `cp other.etm m.etm` would, in place
        with pytest.raises(IntegrityError, match=r"'model.pte' ends after 10 of its"):
            etm.read_member("model.pte")
        problems = etm.verify()
        assert {p.code for p in problems} == {"truncated"}
        assert {p.member for p in problems} == set(etm.members) - {"metadata.json"}


def test_read_member_reads_a_bounded_range(tmp_path: Path) -> None:
    archive = pack(tmp_path / "m.etm")
    program = PTE.read_bytes()
    with open_archive(archive) as etm:
        assert etm.read_member("model.pte", 8, 16) == program[8:24]
        assert etm.read_member("model.pte", len(program) - 4, 100) == program[-4:]  # clamped
        assert etm.read_member("model.pte", len(program) + 5) == b""


# --- ArchiveDraft: members copied before the metadata is known -----------------------------------


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_draft_finished_later_writes_the_archive_write_archive_writes(tmp_path: Path) -> None:
    from etm_compat.archive import ArchiveDraft

    meta = new_metadata(tool_version="0.1.0")
    with ArchiveDraft(tmp_path / "draft.etm", specs()) as draft:
        draft._stream.result()  # type: ignore[union-attr]  # copied before any metadata exists
        assert _temp_files(tmp_path) and not (tmp_path / "draft.etm").exists()
        result = draft.finish(meta)
    assert draft.copies == 1
    expected = pack(tmp_path / "whole.etm")
    assert (tmp_path / "draft.etm").read_bytes() == expected.read_bytes()
    assert result.size == expected.stat().st_size and not _temp_files(tmp_path)
    with open_archive(tmp_path / "draft.etm") as etm:
        assert etm.verify() == []  # every member's CRC and sha256


def test_a_draft_whose_metadata_moves_the_members_copies_them_again(tmp_path: Path) -> None:
    from etm_compat.archive import ArchiveDraft

    meta = new_metadata(tool_version="0.1.0")
    meta["diagnostics"] = [  # 20 KiB of metadata: the program's data starts 16 KiB later
        {"code": "note", "severity": "info", "message": "x" * 1000, "hint": None, "paths": []}
    ] * 20
    with ArchiveDraft(tmp_path / "draft.etm", specs()) as draft:
        result = draft.finish(meta)
    assert draft.copies == 2
    expected = write_archive(tmp_path / "whole.etm", metadata=meta, members=specs())
    assert (tmp_path / "draft.etm").read_bytes() == expected.path.read_bytes()
    assert result.members[0].offset == 32768  # model.pte, after the large metadata
    assert not _temp_files(tmp_path)


def test_a_draft_left_unfinished_leaves_nothing(tmp_path: Path) -> None:
    from etm_compat.archive import ArchiveDraft

    with pytest.raises(KeyError), ArchiveDraft(tmp_path / "draft.etm", specs()):
        assert _temp_files(tmp_path)
        raise KeyError("inference failed")
    assert list(tmp_path.iterdir()) == []


def test_a_draft_takes_its_metadata_once(tmp_path: Path) -> None:
    from etm_compat.archive import ArchiveDraft

    meta = new_metadata(tool_version="0.1.0")
    with ArchiveDraft(tmp_path / "a.etm", specs()) as draft, pytest.raises(UsageError, match="once"):
        draft.finish()
    with ArchiveDraft(tmp_path / "b.etm", specs(), metadata=meta) as draft, pytest.raises(UsageError, match="once"):
        draft.finish(meta)
    with ArchiveDraft(tmp_path / "c.etm", specs(), metadata=meta) as draft:
        draft.finish()
        with pytest.raises(UsageError, match="finished or discarded"):
            draft.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.etm"]


def test_a_source_that_changes_while_the_draft_copies_it_is_refused(tmp_path: Path) -> None:
    from etm_compat.archive import ArchiveDraft

    members = specs()
    program = tmp_path / "src" / "model.pte"
    program.parent.mkdir()
    shutil.copyfile(PTE, program)
    members = [MemberSpec(m.name, program, m.role, m.keys) if m.role == "program" else m for m in members]
    with ArchiveDraft(tmp_path / "draft.etm", members) as draft:
        draft._stream.result()  # type: ignore[union-attr]
        with open(program, "ab") as grown:
            grown.write(b"more")
        # Copied already, and the layout holds: but the file is no longer what was copied.
        with pytest.raises(UnreadableError, match="changed while being packed"):
            draft.finish(new_metadata(tool_version="0.1.0"))
    assert not (tmp_path / "draft.etm").exists() and not _temp_files(tmp_path)


def test_a_background_copy_hands_the_gil_over_often_while_it_runs(tmp_path: Path) -> None:
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from etm_compat.archive import streaming

    default = sys.getswitchinterval()
    seen: list[float] = []
    gate = threading.Event()
    real = streaming.stream_members

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(sys.getswitchinterval())
        gate.wait(10)
        return real(*args, **kwargs)

    with open(tmp_path / "out", "w+b") as out, ThreadPoolExecutor(1) as pool:
        streaming.stream_members = slow  # type: ignore[assignment]
        try:
            placements = [(PTE, 0, PTE.stat().st_size)]
            first = streaming.BackgroundStream(placements, out.fileno(), pool, sync=False)
            second = streaming.BackgroundStream(placements, out.fileno(), pool, sync=False)
            assert sys.getswitchinterval() == streaming.SWITCH_INTERVAL
            gate.set()
            first.result()
            second.result()
        finally:
            streaming.stream_members = real  # type: ignore[assignment]
    assert seen == [streaming.SWITCH_INTERVAL] * 2
    assert sys.getswitchinterval() == default  # put back once the last copy ended


def test_a_member_being_read_ahead_is_written_from_those_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source its reader is reading ahead (pack's tokenizer, before it is parsed) is written
    from those bytes, hashed beside the copy (counted: it is not streamed from the file), and
    the archive is the same as without the read ahead."""

    from etm_compat import fileio
    from etm_compat.archive import streaming

    plain = pack(tmp_path / "plain.etm")
    streamed = count_digest_ranges(monkeypatch, streaming)
    tokenizer = HF / "tokenizer.json"
    with fileio.read_ahead(tokenizer, 1 << 26):
        ahead = pack(tmp_path / "ahead.etm")
        assert fileio.read_capped(tokenizer, 1 << 26, what="t") == tokenizer.read_bytes()  # left for its reader
    assert ahead.read_bytes() == plain.read_bytes()
    assert tokenizer.stat().st_size not in streamed and len(streamed) == len(specs()) - 1
