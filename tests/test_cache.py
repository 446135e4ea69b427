"""The materialization cache: build once, reuse, survive races, detect and replace damage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.archive import open_archive
from etm_compat.cli.main import main
from etm_compat.compat import cache, cache_admin
from etm_compat.errors import IntegrityError, UsageError


def _pack(src: str, dest: Path) -> Path:
    assert main(["pack", str(FIXTURES / src), "-o", str(dest), "--json"]) == 0
    return dest


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (FIXTURES / "legacy").is_dir():
        pytest.skip("fixtures missing")
    out = tmp_path_factory.mktemp("archives")
    return {
        name: _pack(f"legacy/{name}", out / f"{name}.etm")
        for name in ("et_example", "with_ptd", "hf_style")
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_admin.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ETM_CACHE_DIR")
    assert cache_admin.cache_dir() == tmp_path / "xdg" / "etm-compat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_admin.cache_dir() == tmp_path / "home" / ".cache" / "etm-compat"


def test_materialize_builds_then_reuses(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["with_ptd"]) as etm:
        first = cache.materialize(etm, root=root)
        assert first.status == "built"
        assert first.key == cache.archive_key(etm) != hashlib.sha256(etm.member_view("metadata.json")).hexdigest()
        assert first.folder == root / first.key
        for entry in etm.metadata["members"]:
            path = first.files[entry["name"]]
            assert path.parent == first.folder
            assert _sha(path) == entry["sha256"]
        assert sorted(p.name for p in first.folder.iterdir()) == [
            ".complete", "metadata.json", "model.pte", "tokenizer.model", "weights.ptd"
        ]
        second = cache.materialize(etm, root=root)
    assert second.status == "reused" and second.files == first.files
    assert [p.name for p in root.iterdir()] == [first.key]  # no temp folders left


def test_same_content_elsewhere_shares_the_entry(archives: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "moved" / "renamed.etm"
    copy.parent.mkdir()
    shutil.copyfile(archives["et_example"], copy)
    root = tmp_path / "cache"
    with open_archive(archives["et_example"]) as a, open_archive(copy) as b:
        assert cache.materialize(a, root=root).status == "built"
        assert cache.materialize(b, root=root).status == "reused"


def test_hf_tokenizer_sits_beside_its_config(archives: dict[str, Path], tmp_path: Path) -> None:
    with open_archive(archives["hf_style"]) as etm:
        entry = cache.materialize(etm, root=tmp_path)
    assert entry.files["tokenizer.json"].parent == entry.files["tokenizer_config.json"].parent


_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from etm_compat.archive import open_archive
    from etm_compat.compat.cache import materialize
    archive, root, go = sys.argv[1:4]
    while not os.path.exists(go):
        time.sleep(0.001)
    with open_archive(archive) as etm:
        m = materialize(etm, root=root)
    print(json.dumps({"folder": str(m.folder), "status": m.status}))
    """
)


def test_concurrent_processes_end_with_one_complete_copy(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    root, go = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(archives["et_example"]), str(root), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(1.0)  # let every child import and start waiting
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    folders = {r["folder"] for r in results}
    assert len(folders) == 1
    assert {r["status"] for r in results} <= {"built", "reused", "raced"}
    assert [p.name for p in root.iterdir()] == [Path(folders.pop()).name]
    with open_archive(archives["et_example"]) as etm:
        assert cache.materialize(etm, root=root, verify=True).status == "reused"


def test_losing_the_publish_race_uses_the_winner(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["with_ptd"]) as etm:
        key = cache.archive_key(etm)
        mine = cache.build_entry(etm, root, key)
        theirs = cache.build_entry(etm, root, key)
        assert cache.publish(theirs, root / key) is True
        assert cache.publish(mine, root / key) is False
        assert not mine.exists()
        assert cache.materialize(etm, root=root).status == "reused"
    assert [p.name for p in root.iterdir()] == [key]


def test_changed_file_is_detected_and_replaced(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["et_example"]) as etm:
        entry = cache.materialize(etm, root=root)
        program = entry.files["model.pte"]
        good = _sha(program)
        data = bytearray(program.read_bytes())
        data[100] ^= 0xFF
        program.write_bytes(data)  # same size, new mtime: the stat signature catches it
        again = cache.materialize(etm, root=root)
        assert again.status == "repaired"
        assert _sha(again.files["model.pte"]) == good


def test_truncated_file_is_detected_and_replaced(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["et_example"]) as etm:
        entry = cache.materialize(etm, root=root)
        tok = entry.files["tokenizer.model"]
        os.truncate(tok, 10)
        again = cache.materialize(etm, root=root)
        assert again.status == "repaired"
        assert tok.stat().st_size == etm.members["tokenizer.model"].size


def test_same_stat_damage_needs_verify(archives: dict[str, Path], tmp_path: Path) -> None:
    """A flip that keeps size and mtime passes the cheap check; verify=True finds it."""
    root = tmp_path / "cache"
    with open_archive(archives["et_example"]) as etm:
        program = cache.materialize(etm, root=root).files["model.pte"]
        st = program.stat()
        data = bytearray(program.read_bytes())
        data[200] ^= 0x01
        program.write_bytes(data)
        os.utime(program, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert cache.materialize(etm, root=root).status == "reused"
        fixed = cache.materialize(etm, root=root, verify=True)
        assert fixed.status == "repaired"
        assert _sha(fixed.files["model.pte"]) == etm.metadata["members"][0]["sha256"]


def test_entry_without_marker_is_rebuilt(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["et_example"]) as etm:
        entry = cache.materialize(etm, root=root)
        (entry.folder / cache_admin.MARKER).unlink()
        assert cache.materialize(etm, root=root).status == "repaired"
        assert (entry.folder / cache_admin.MARKER).is_file()


def test_corrupt_archive_member_leaves_nothing(archives: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.etm"
    shutil.copyfile(archives["et_example"], bad)
    with open_archive(bad) as etm:
        offset, _ = etm.member_range("model.pte")
    with open(bad, "r+b") as fh:
        fh.seek(offset + 1000)
        byte = fh.read(1)
        fh.seek(offset + 1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    root = tmp_path / "cache"
    with open_archive(bad) as etm, pytest.raises(IntegrityError, match="CRC-32"):
        cache.materialize(etm, root=root)
    assert list(root.iterdir()) == []


def test_verify_checks_sha256_even_when_the_crc_was_forged(archives: dict[str, Path], tmp_path: Path) -> None:
    # Damage that also rewrites the zip's CRC-32 fields passes the CRC check on copy; the sha256
    # check every build makes refuses it (verify=True too), and nothing is left in the cache.
    import struct
    import zlib

    bad = tmp_path / "forged.etm"
    shutil.copyfile(archives["with_ptd"], bad)
    with open_archive(bad) as etm:
        offset, size = etm.member_range("model.pte")
        local = etm.members["model.pte"]
    data = bytearray(bad.read_bytes())
    data[offset + size - 1] ^= 0xFF
    old_crc = struct.pack("<I", local.crc32)
    new_crc = struct.pack("<I", zlib.crc32(bytes(data[offset : offset + size])))
    assert data.count(old_crc) == 2  # the local header and the central directory
    data = bytearray(bytes(data).replace(old_crc, new_crc))
    bad.write_bytes(bytes(data))
    root = tmp_path / "cache"
    with open_archive(bad) as etm:
        with pytest.raises(IntegrityError, match="sha256"):
            cache.materialize(etm, root=root, verify=True)
        assert list(root.iterdir()) == []


def test_list_and_prune(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    keys = []
    for name in ("et_example", "with_ptd", "hf_style"):
        with open_archive(archives[name]) as etm:
            keys.append(cache.materialize(etm, root=root).key)
    old = time.time() - 10 * 86400
    os.utime(root / keys[0] / cache_admin.MARKER, (old, old))
    entries = cache_admin.list_entries(root)
    assert next(e.key for e in entries) == keys[0]  # least recently used first
    assert {e.key for e in entries} == set(keys)
    sizes = {e.key: e.size for e in entries}
    with open_archive(archives["with_ptd"]) as etm:
        assert sizes[keys[1]] == sum(m["size"] for m in etm.metadata["members"])

    (root / ".tmp-deadbuild-x").mkdir()
    os.utime(root / ".tmp-deadbuild-x", (old, old))
    result = cache_admin.prune(older_than_days=5, root=root)
    assert [e.key for e in result.removed] == [keys[0]] and result.leftovers == 1
    assert sorted(p.name for p in root.iterdir()) == sorted(keys[1:])

    result = cache_admin.prune(max_size=sizes[keys[2]], root=root)
    remaining = {e.key for e in cache_admin.list_entries(root)}
    assert sum(sizes[k] for k in remaining) <= sizes[keys[2]]
    assert len(result.removed) == 1

    assert cache_admin.prune(remove_all=True, root=root).removed
    assert list(root.iterdir()) == []
    with pytest.raises(UsageError):
        cache_admin.prune(root=root)


def test_parse_size() -> None:
    assert cache_admin.parse_size("1000") == 1000
    assert cache_admin.parse_size("2G") == 2 << 30
    assert cache_admin.parse_size("1.5GiB") == 3 << 29
    assert cache_admin.parse_size("500M") == 500 << 20
    with pytest.raises(UsageError):
        cache_admin.parse_size("lots")


def test_cli_cache_list_and_prune(
    archives: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "c"))
    with open_archive(archives["et_example"]) as etm:
        key = cache.materialize(etm).key
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in listed["entries"]] == [key]
    assert listed["entries"][0]["archive"] == str(archives["et_example"])
    assert main(["cache", "prune"]) == 2  # nothing to prune by: a usage error
    capsys.readouterr()
    assert main(["cache", "prune", "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [key]
    assert main(["cache", "list"]) == 0
    assert "0 entries" in capsys.readouterr().out


def _reflink_works_here(folder: Path) -> bool:
    import fcntl
    import struct

    src, dst = folder / "probe.src", folder / "probe.dst"
    src.write_bytes(bytes(1 << 16))
    with open(src, "rb") as s, open(dst, "wb") as d:
        try:
            fcntl.ioctl(d.fileno(), 0x4020940D, struct.pack("qQQQ", s.fileno(), 0, 1 << 16, 0))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("kernel", ["copy_file_range", "refused", "absent"])
def test_copy_member_gives_the_member_bytes_whatever_the_copy_path(
    archives: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    # Blocks are shared where the file system can (reflink), else copied in the kernel, else
    # read and written; the file is the member's bytes every time.
    import errno

    reflink = _reflink_works_here(tmp_path)
    if kernel == "refused":
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device copy_file_range refused")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    elif kernel == "absent":
        monkeypatch.delattr(os, "copy_file_range")
    with open_archive(archives["with_ptd"]) as etm:
        name = next(n for n in etm.members if n.endswith(".ptd"))
        target = tmp_path / "copy.ptd"
        used = cache.copy_member(etm, name, target)
        assert target.read_bytes() == etm.read_member(name)
    copied = ("kernel copy",) if kernel == "copy_file_range" else ("read/write",)
    if reflink:  # whole blocks shared; the tail (if any) copied
        assert used[0] == "reflink" and used[1:] in ((), copied)
    else:  # ext4 and most others: EOPNOTSUPP, so the copy does it all
        assert used == copied


def test_find_entry_never_builds_and_refuses_damage(archives: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_archive(archives["with_ptd"]) as etm:
        assert cache.find_entry(etm, root=root) is None and not root.exists()
        built = cache.materialize(etm, root=root)
        found = cache.find_entry(etm, root=root)
        assert found is not None and (found.key, found.files) == (built.key, built.files)
        program = built.files["model.pte"]
        os.utime(program, ns=(0, 0))  # a changed file: the entry is no longer trusted
        assert cache.find_entry(etm, root=root) is None
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    with open_archive(archives["et_example"]) as other:
        assert cache.find_entry(other, root=root) is None  # another archive's key
        assert cache.find_entry(other, root=not_a_folder) is None
