"""Every output follows one rule, and every output failure is one line and a documented exit code.

Issue 15, items 4, 5 and 9: reports never replace a file silently nor ever a source; ENOSPC,
EROFS and files in the way give exit 4; bad JSON, bad cache values and bad arguments give 2 or 3.

Full disks and read-only filesystems (real ones, a tmpfs mounted in a private namespace) are
tested in tests/test_fs_limits.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest

from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.compat.loader import load
from etm_compat.errors import OutputError, UnreadableError, UsageError
from tests.conftest import FIXTURES

HF = FIXTURES / "legacy" / "hf_style"
ET = FIXTURES / "legacy" / "et_example"
MESSAGES = '[{"role": "user", "content": "Hi"}]'


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A copy of the HF-style legacy deployment (sources to protect)."""
    dest = tmp_path / "dep"
    shutil.copytree(HF, dest)
    return dest


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("etm-compat: error:"), err
    assert "Traceback" not in err
    return lines[0]


# --- item 4: reports never replace a file silently, never a source -----------------------------


def test_diagnose_refuses_an_existing_report_without_force(deployment: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.md"
    report.write_text("keep")
    assert main(["diagnose", str(deployment), "-o", str(report)]) == EXIT_OUTPUT
    assert "--force" in one_error(capsys)
    assert report.read_text() == "keep"
    assert main(["diagnose", str(deployment), "-o", str(report), "--force"]) == EXIT_OK
    assert report.read_text().startswith("# ")


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_diagnose_never_writes_over_a_scanned_file(deployment: Path, capsys, force: list[str]) -> None:
    before = digest_tree(deployment)
    target = deployment / "tokenizer_config.json"
    assert main(["diagnose", str(deployment), "-o", str(target), *force]) == EXIT_OUTPUT
    line = one_error(capsys)
    assert ("reads" in line) if force else ("already exists" in line)
    assert digest_tree(deployment) == before


def test_diagnose_report_gets_normal_permissions(deployment: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["diagnose", str(deployment), "-o", str(tmp_path / "r.json")]) == EXIT_OK
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_upgrade_refuses_an_existing_report_before_any_work(deployment: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "u.md"
    report.write_text("keep")
    out = tmp_path / "out"
    argv = ["upgrade", str(deployment), "--out", str(out), "--jobs", "1", "--report", str(report)]
    assert main(argv) == EXIT_OUTPUT
    assert "--overwrite-reports" in one_error(capsys)
    assert report.read_text() == "keep" and not out.exists()
    assert main([*argv, "--overwrite-reports"]) == EXIT_OK
    assert report.read_text() != "keep"


def test_upgrade_report_never_replaces_a_source(deployment: Path, tmp_path: Path, capsys) -> None:
    before = digest_tree(deployment)
    argv = ["upgrade", str(deployment), "--out", str(tmp_path / "out"), "--jobs", "1",
            "--report", str(deployment / "tokenizer_config.json"), "--overwrite-reports"]
    assert main(argv) == EXIT_OUTPUT
    assert "reads" in one_error(capsys)
    assert digest_tree(deployment) == before


def test_pack_refuses_to_write_over_its_own_source(deployment: Path, capsys) -> None:
    before = digest_tree(deployment)
    assert main(["pack", str(deployment), "-o", str(deployment / "model.pte"), "--force"]) == EXIT_OUTPUT
    one_error(capsys)
    assert digest_tree(deployment) == before


# --- item 5: output failures are exit 4 --------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "m.etm"
    assert main(["pack", str(ET), "-o", str(path)]) == EXIT_OK
    return path


def test_unpack_into_an_existing_file(archive: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    target = tmp_path / "afile"
    target.write_text("keep")
    assert main(["unpack", str(archive), "-o", str(target)]) == EXIT_OUTPUT
    one_error(capsys)
    assert main(["unpack", str(archive), "-o", str(target / "sub")]) == EXIT_OUTPUT
    one_error(capsys)
    assert target.read_text() == "keep"


def test_unpack_with_a_folder_in_the_way(archive: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "x"
    (out / "model.pte").mkdir(parents=True)
    assert main(["unpack", str(archive), "-o", str(out), "--force"]) == EXIT_OUTPUT
    one_error(capsys)
    assert [p.name for p in out.iterdir()] == ["model.pte"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_pack_into_a_folder(tmp_path: Path, capsys, force: list[str]) -> None:
    folder = tmp_path / "x.etm"
    folder.mkdir()
    assert main(["pack", str(ET), "-o", str(folder), *force]) == EXIT_OUTPUT
    assert "folder" in one_error(capsys)
    assert list(folder.iterdir()) == []


# --- item 5: render --messages and cache --------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, '[{"role": "user", "content": "x", "n": ' + "9" * 5000 + "}]"],
    ids=["deep", "huge-number"],
)
def test_render_bad_json_is_exit_3(tmp_path: Path, capsys, text: str) -> None:
    messages = tmp_path / "m.json"
    messages.write_text(text)
    assert main(["render", str(HF), "--messages", str(messages)]) == EXIT_BAD_INPUT
    one_error(capsys)


@pytest.mark.parametrize("size", ["nan", "inf", "-1", "lots"])
def test_cache_prune_bad_size_is_exit_2(tmp_path: Path, monkeypatch, capsys, size: str) -> None:
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["cache", "prune", "--max-size", size]) == EXIT_USAGE
    one_error(capsys)


def test_cache_older_than_nan_is_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["cache", "prune", "--older-than", "nan"]) == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [["list"], ["prune", "--all"]])
def test_cache_dir_that_is_a_file(tmp_path: Path, monkeypatch, capsys, command: list[str]) -> None:
    afile = tmp_path / "cache"
    afile.write_text("keep")
    monkeypatch.setenv("ETM_CACHE_DIR", str(afile))
    assert main(["cache", *command]) == EXIT_USAGE
    assert "ETM_CACHE_DIR" in one_error(capsys)
    assert afile.read_text() == "keep"


@pytest.mark.parametrize(
    "marker",
    ['{"files": {"a": {"size": "x"}}}', '{"files": {}, "created": "x"}', "[" * 100_000, "\xff"],
    ids=["size", "created", "deep", "not-utf8"],
)
def test_cache_with_a_damaged_marker(tmp_path: Path, monkeypatch, capsys, marker: str) -> None:
    root = tmp_path / "cache"
    entry = root / ("a" * 64)
    entry.mkdir(parents=True)
    (entry / ".complete").write_text(marker, errors="surrogateescape")
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    assert main(["cache", "list"]) == EXIT_OK
    assert main(["cache", "prune", "--max-size", "0"]) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_cache_prune_with_a_dangling_temp_symlink(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".tmp-dead").symlink_to(tmp_path / "nowhere")
    outside = tmp_path / "keep.txt"
    outside.write_text("keep")
    (root / ".tmp-alive").symlink_to(outside)
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    assert main(["cache", "prune", "--all"]) == EXIT_OK
    assert capsys.readouterr().err == ""
    assert list(root.iterdir()) == [] and outside.read_text() == "keep"


# --- item 5: the library raises EtmError only ----------------------------------------------------


def test_legacy_paths_with_a_file_as_cache_root(archive: Path, tmp_path: Path) -> None:
    afile = tmp_path / "cache"
    afile.write_text("keep")
    with load(archive) as bundle, pytest.raises(OutputError, match=r"not a folder|Not a directory"):
        bundle.legacy_paths(cache_root=afile / "sub")
    assert afile.read_text() == "keep"


# --- item 9 ----------------------------------------------------------------------------------


def test_render_a_string_is_a_usage_error() -> None:
    with load(HF) as bundle, pytest.raises(UsageError, match=r"list of \{role, content\}"):
        bundle.render("hello")  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_load_a_fifo_says_it_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "x.etm"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableError, match="not a regular file"):
        load(fifo)


@pytest.mark.parametrize("jobs", ["0", "-3", "two"])
def test_jobs_must_be_at_least_one(tmp_path: Path, capsys, jobs: str) -> None:
    assert main(["upgrade", str(HF), "--out", str(tmp_path / "o"), "--jobs", jobs]) == EXIT_USAGE
    assert "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("seconds", ["0", "nan", "-1"])
def test_scheduler_timeout_must_be_positive(tmp_path: Path, capsys, seconds: str) -> None:
    argv = ["upgrade", str(HF), "--out", str(tmp_path / "o"), "--scheduler-timeout", seconds]
    assert main(argv) == EXIT_USAGE
    assert "--scheduler-timeout" in capsys.readouterr().err


def test_render_messages_from_stdin(monkeypatch, capsys) -> None:
    class Stdin:
        buffer = __import__("io").BytesIO(MESSAGES.encode())

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["render", str(HF), "--messages", "-", "--json"]) == EXIT_OK
    assert "Hi" in json.loads(capsys.readouterr().out)["prompt"]


def test_render_messages_from_stdin_is_bounded(monkeypatch, capsys) -> None:
    class Stdin:
        buffer = __import__("io").BytesIO(b" " * (5 * 1024 * 1024))

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["render", str(HF), "--messages", "-"]) == EXIT_BAD_INPUT
    one_error(capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_render_messages_from_a_pipe_with_a_writer(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "m.json"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as fh:
            fh.write(MESSAGES)

    # Like <(...): the writer has the pipe open before the reader does.
    writer = threading.Thread(target=write)
    writer.start()
    while not writer.is_alive():
        pass
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer's open() return
    try:
        writer.join(timeout=0.2)
        assert main(["render", str(HF), "--messages", str(fifo), "--json"]) == EXIT_OK
    finally:
        os.close(fd)
        writer.join(timeout=5)
    assert "Hi" in json.loads(capsys.readouterr().out)["prompt"]
