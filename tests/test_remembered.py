"""What a run reads once: whole files read and hashed, values parsed from files (by stamp)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from etm_compat import remembered
from etm_compat.errors import InputError, TokenizerFormatError
from etm_compat.fileio import read_stamped, stamp_of
from etm_compat.formats.configs import read_config
from etm_compat.formats.tokenizer.json_formats import read_config as read_tokenizer_config


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remembered, "_HASHED", remembered._Remembered(10_000))
    monkeypatch.setattr(remembered, "_PARSED", remembered._Remembered(10_000))


def test_hashed_content_is_kept_by_stamp_and_dropped_oldest_first(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"t{i}.json"
        path.write_bytes(bytes([65 + i]) * 4000)
        data, stamp = read_stamped(path, 1 << 20, what="t")
        remembered.remember_hashed(stamp, data, hashlib.sha256(data).hexdigest())
        paths.append(path)
    with open(paths[0], "rb") as f:
        assert remembered.hashed_content(f.fileno()) is None  # the oldest went past 10,000 bytes
    with open(paths[2], "rb") as f:
        assert remembered.hashed_content(f.fileno()) == (b"C" * 4000, hashlib.sha256(b"C" * 4000).hexdigest())
    stamp = stamp_of(paths[1].stat())
    os.utime(paths[1], ns=(1, 1))  # touched since it was read: not those bytes any more
    with open(paths[1], "rb") as f:
        assert remembered.hashed_content(f.fileno()) is None
    remembered.remember_hashed(stamp, b"short", "0" * 64)  # bytes that are not the whole file
    assert remembered._HASHED.get(stamp) == (b"B" * 4000, hashlib.sha256(b"B" * 4000).hexdigest())


def _aged(path: Path) -> Path:
    """``path``, last changed a minute ago (what was read of a file changed just now is not
    remembered: it could change again and keep its stamp)."""
    then = time.time_ns() - 60 * 1_000_000_000
    os.utime(path, ns=(then, then))
    return path


def _counting(calls: list[bytes]):  # type: ignore[no-untyped-def]
    def parse(data: bytes) -> object:
        calls.append(data)
        return json.loads(data)

    return parse


def test_a_file_is_parsed_once_per_kind_while_it_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"a": 1}')
    _aged(path)
    calls: list[bytes] = []
    first = remembered.read_parsed(path, 100, "k", _counting(calls), what="c")
    assert remembered.read_parsed(path, 100, "k", _counting(calls), what="c") is first
    assert len(calls) == 1
    remembered.read_parsed(path, 100, "other kind", _counting(calls), what="c")
    assert len(calls) == 2
    path.write_text('{"a": 22}')  # another size, another stamp
    assert remembered.read_parsed(path, 100, "k", _counting(calls), what="c") == {"a": 22}
    assert len(calls) == 3
    # Changed just now: read every time (a rewrite in the same clock tick would keep the stamp).
    assert remembered.read_parsed(path, 100, "k", _counting(calls), what="c") == {"a": 22}
    assert len(calls) == 4


def test_a_remembered_value_still_obeys_each_readers_limit_and_failures_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"a": 1}')
    _aged(path)
    calls: list[bytes] = []
    remembered.read_parsed(path, 100, "k", _counting(calls), what="c")
    with pytest.raises(InputError, match="more than the 4 bytes accepted"):
        remembered.read_parsed(path, 4, "k", _counting(calls), what="c")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    _aged(bad)
    for _ in range(2):
        with pytest.raises(ValueError):
            remembered.read_parsed(bad, 100, "k", _counting(calls), what="c")
    assert len(calls) == 3  # the good file once, the bad one at every try


def test_the_parsed_values_kept_are_bounded_by_their_files_bytes(tmp_path: Path) -> None:
    calls: list[bytes] = []
    paths = []
    for i in range(3):
        path = tmp_path / f"c{i}.json"
        path.write_text(json.dumps({"pad": "x" * 4000, "i": i}))
        _aged(path)
        remembered.read_parsed(path, 1 << 20, "k", _counting(calls), what="c")
        paths.append(path)
    remembered.read_parsed(paths[2], 1 << 20, "k", _counting(calls), what="c")
    remembered.read_parsed(paths[0], 1 << 20, "k", _counting(calls), what="c")  # dropped: read again
    assert len(calls) == 4


def test_configs_read_by_several_readers_are_parsed_once_per_reader(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"add_bos_token": True, "chat_template": "{{ x }}"}))
    _aged(path)
    assert read_config("tokenizer_config", path) is read_config("tokenizer_config", path)
    tok = read_tokenizer_config(path)
    assert tok is read_tokenizer_config(path) and tok == read_config("tokenizer_config", path)
    path.write_text("[1, 2]")  # changed: read again, and refused as it always was
    with pytest.raises(InputError, match="expected a mapping"):
        read_config("tokenizer_config", path)
    with pytest.raises(TokenizerFormatError, match="not a JSON object"):
        read_tokenizer_config(path)


def _settled_program(tmp_path: Path) -> Path:
    path = tmp_path / "model.pte"
    path.write_bytes(b"x" * 10)
    return _aged(path)


def test_a_fact_about_a_settled_file_is_computed_once_per_kind_and_stamp(tmp_path: Path) -> None:
    path = _settled_program(tmp_path)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert remembered.by_stamp(path, "k", compute) == 1
    assert remembered.by_stamp(path, "k", compute) == 1 and len(calls) == 1
    assert remembered.by_stamp(path, "other", compute) == 2
    path.write_bytes(b"y" * 10)  # changed just now: computed every time
    assert remembered.by_stamp(path, "k", compute) == 3
    assert remembered.by_stamp(path, "k", compute) == 4
    missing = tmp_path / "missing.pte"
    assert remembered.by_stamp(missing, "k", compute) == 5  # not a file: computed (it says why)


def test_a_file_that_changes_while_its_fact_is_computed_is_not_remembered(tmp_path: Path) -> None:
    path = _settled_program(tmp_path)
    calls: list[int] = []

    def compute() -> int:  # the file is rewritten while this runs
        calls.append(1)
        path.write_bytes(b"longer" * 10)
        _aged(path)
        return len(calls)

    remembered.by_stamp(path, "k", compute)
    remembered.by_stamp(path, "k", compute)
    assert len(calls) == 2


def test_what_kind_of_program_a_file_is_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import FIXTURES

    from etm_compat.formats import program_kinds

    program = tmp_path / "model.pte"
    program.write_bytes((FIXTURES / "programs" / "ext_weights.pte").read_bytes())
    _aged(program)
    opened: list[object] = []
    real_open = program_kinds.open_program
    monkeypatch.setattr(program_kinds, "open_program", lambda p: opened.append(p) or real_open(p))
    first = program_kinds.read_program_kind(program)
    assert program_kinds.read_program_kind(program) is first and len(opened) == 1
    link = tmp_path / "link.pte"
    link.symlink_to(program)  # the same file under another name: its kind says that name
    assert program_kinds.read_program_kind(link).path == str(link) and len(opened) == 2


def test_what_is_kept_is_counted_as_it_changes() -> None:
    kept: remembered._Remembered[str, int] = remembered._Remembered(100)
    kept.put("a", 1, 40)
    kept.put("a", 2, 30)  # replaced: counted once, at its new size
    kept.put("b", 3, 50)
    assert kept.get("a") == 2 and kept._total == 80
    kept.put("c", 4, 30)  # past 100: the oldest ("a") goes
    assert kept.get("a") is None and kept.get("b") == 3 and kept._total == 80
    kept.put("d", 5, 101)  # larger than everything allowed: not kept, nothing dropped
    assert kept.get("d") is None and kept._total == 80
    assert kept._total == sum(size for _, size in kept._kept.values())
