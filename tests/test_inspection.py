"""inspection.tokenizers_read_ahead: which files are read ahead, within what budget, and that
the verbs reading a tokenizer take the bytes (counted, never timed)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, count_digest_ranges

from etm_compat import fileio, inspection
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import main


def _started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(name, bytes) of each file read ahead, in order."""
    started: list[tuple[str, int]] = []
    real = fileio.read_ahead

    @contextlib.contextmanager
    def spy(path, limit):  # type: ignore[no-untyped-def]
        with real(path, limit) as size:
            if size:
                started.append((Path(path).name, size))
            yield size

    monkeypatch.setattr(inspection, "read_ahead", spy)
    return started


def test_the_tokenizer_files_of_a_folder_are_read_ahead_in_name_order_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, size in (("tokenizer.json", 300), ("tokenizer_config.json", 200), ("model.pte", 50),
                       ("z.model", 600), ("notes.txt", 10)):  # fmt: skip
        (tmp_path / name).write_bytes(b"x" * size)
    monkeypatch.setattr(inspection, "READ_AHEAD_MAX_BYTES", 1000)
    started = _started(monkeypatch)
    with inspection.tokenizers_read_ahead([None, tmp_path, tmp_path / "missing.model"]):
        assert len(fileio._AHEAD) == 2
    # z.model would pass the budget left (500): it is left to its reader.
    assert started == [("tokenizer.json", 300), ("tokenizer_config.json", 200)]
    assert fileio._AHEAD == {}


def test_pack_reads_the_folders_tokenizer_ahead_and_takes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "dep"
    shutil.copytree(FIXTURES / "legacy" / "hf_style", folder)
    taken: list[bool] = []
    real_take = fileio._ReadAhead.take

    def take(self, size, mtime_ns):  # type: ignore[no-untyped-def]
        data = real_take(self, size, mtime_ns)
        taken.append(data is not None)
        return data

    monkeypatch.setattr(fileio._ReadAhead, "take", take)
    started = _started(monkeypatch)
    assert main(["pack", "--json", str(folder), "-o", str(tmp_path / "out.etm")]) == EXIT_OK
    # Each file read ahead is taken once (a second reader of it, a config read per reader, reads the file).
    assert started and taken.count(True) == len(started) and fileio._AHEAD == {}
    assert {name for name, _ in started} >= {"tokenizer.json"}


def test_pack_stores_the_tokenizer_it_read_without_reading_or_hashing_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer's bytes, read ahead for its reader, are written from memory, with the
    digest that reader computed (counted: the writer streams only the other members and hashes
    nothing again), and the archive checks out against the files."""
    import hashlib
    import json
    import zipfile

    from etm_compat.archive import streaming, write

    folder = tmp_path / "dep"
    shutil.copytree(FIXTURES / "legacy" / "hf_style", folder)
    streamed = count_digest_ranges(monkeypatch, streaming)
    rehashed = count_digest_ranges(monkeypatch, write)  # members copied from bytes read ahead, hashed again
    out = tmp_path / "out.etm"
    assert main(["pack", "--json", str(folder), "-o", str(out)]) == EXIT_OK
    tokenizer_size = (folder / "tokenizer.json").stat().st_size
    assert tokenizer_size not in rehashed  # its sha256 is the one its reader computed
    tokenizer = (folder / "tokenizer.json").read_bytes()
    with zipfile.ZipFile(out) as archive:
        meta = json.loads(archive.read("metadata.json"))
        member = next(m for m in meta["members"] if m["role"] == "tokenizer")
        assert archive.read(member["name"]) == tokenizer
        assert archive.testzip() is None  # every CRC-32 right
    assert member["sha256"] == hashlib.sha256(tokenizer).hexdigest()
    # Streamed from their files: only the members not read ahead (here the program).
    assert streamed == [(folder / "model.pte").stat().st_size]
    assert main(["verify", str(out)]) == EXIT_OK
