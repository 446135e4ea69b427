"""Every reader refuses a FIFO (which would block a plain open) quickly, with exit code 3; the
temporary files atomic writes start from are new, private files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import FIXTURES, hang_guard

from etm_compat import fileio
from etm_compat.archive import open_archive
from etm_compat.cli.exit_codes import EXIT_BAD_INPUT
from etm_compat.cli.main import main
from etm_compat.errors import UnreadableError
from etm_compat.fileio import open_regular
from etm_compat.formats.configs import read_bytes
from etm_compat.formats.ptd import read_ptd
from etm_compat.formats.pte import is_pte_file, read_pte


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    path = tmp_path / "model.pte"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "reader",
    [read_pte, read_ptd, open_archive, lambda p: read_bytes(p, 1024, what="config"), open_regular],
    ids=["read_pte", "read_ptd", "open_archive", "read_config", "open_regular"],
)
def test_library_readers_refuse_a_fifo(fifo, reader):
    with hang_guard(60), pytest.raises(UnreadableError, match="not a regular file"):
        reader(fifo)  # opening a FIFO for reading would block forever: the guard catches that
    assert not is_pte_file(fifo)


def test_a_folder_is_not_a_regular_file(tmp_path):
    with pytest.raises(UnreadableError, match="folder"):
        open_regular(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{fifo}"],
        ["verify", "{fifo}"],
        ["unpack", "{fifo}", "-o", "{out}"],
        ["pack", str(FIXTURES / "legacy" / "with_ptd"), "-o", "{out}/m.etm", "--ptd", "{fifo}"],
        ["render", str(FIXTURES / "legacy" / "hf_style"), "--messages", "{fifo}"],
        ["pack", str(FIXTURES / "legacy" / "et_example"), "-o", "{out}/m.etm", "--chat-template", "{fifo}"],
    ],
    ids=["inspect", "verify", "unpack", "pack-ptd", "render-messages", "pack-template"],
)
def test_cli_refuses_a_fifo_with_exit_3(fifo, tmp_path, capsys, args):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(fifo=fifo, out=out) for a in args]
    with hang_guard(60):
        assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not a regular file" in err and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_sha256_file_matches_hashlib_on_a_real_program():
    import hashlib

    from etm_compat.fileio import sha256_file

    program = FIXTURES / "llama" / "tiny_llama.pte"
    assert sha256_file(program, chunk=4096) == hashlib.sha256(program.read_bytes()).hexdigest()



def test_a_file_read_ahead_is_taken_by_the_next_capped_read_of_it(tmp_path):
    """The bytes read in the background are what read_capped returns, under another spelling of
    the same path; each read ahead is taken once, and none outlives its block."""
    from etm_compat import fileio

    path = tmp_path / "tokenizer.json"
    path.write_bytes(b'{"a": 1}' * 1000)
    with fileio.read_ahead(path, 1 << 20) as size:
        assert len(fileio._AHEAD) == 1 and size == 8000
        next(iter(fileio._AHEAD.values()))._thread.join()
        # Same size and time, other bytes: only the read ahead can give the old ones back.
        stamp = path.stat()
        path.write_bytes(b'{"b": 2}' * 1000)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        other_spelling = tmp_path / "." / "tokenizer.json"
        assert fileio.read_capped(other_spelling, 1 << 20, what="t") == b'{"a": 1}' * 1000
        assert fileio.read_capped(path, 1 << 20, what="t") == b'{"b": 2}' * 1000  # taken once
    assert fileio._AHEAD == {}


def test_bytes_read_ahead_that_nobody_took_are_dropped(tmp_path):
    from etm_compat import fileio

    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(KeyError), fileio.read_ahead(path, 1 << 20):
        assert len(fileio._AHEAD) == 1
        raise KeyError("the caller failed before reading")
    assert fileio._AHEAD == {}


@pytest.mark.parametrize("change", ["rewritten", "grown", "truncated"])
def test_a_file_changed_after_its_read_ahead_is_read_again(tmp_path, change):
    from etm_compat import fileio

    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"x" * 5000)
    with fileio.read_ahead(path, 1 << 20):
        next(iter(fileio._AHEAD.values()))._thread.join()  # read, then changed
        if change == "rewritten":
            path.write_bytes(b"y" * 5000)
            os.utime(path, ns=(1, 1))  # same size, another time
        elif change == "grown":
            with open(path, "ab") as f:
                f.write(b"z")
        else:
            os.truncate(path, 10)
        assert fileio.read_capped(path, 1 << 20, what="t") == path.read_bytes()


def test_only_a_regular_file_within_the_limit_is_read_ahead(tmp_path, fifo):
    from etm_compat import fileio

    big = tmp_path / "big.json"
    big.write_bytes(b"0" * 2000)
    for path in (big, tmp_path, fifo, tmp_path / "missing.json"):
        with fileio.read_ahead(path, 1000) as size:
            assert fileio._AHEAD == {} and size == 0
    with pytest.raises(UnreadableError):
        fileio.read_capped(fifo, 1000, what="t")  # and the reader still says why


def test_new_temp_file_is_created_exclusively_private_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fd, name = fileio.new_temp_file(".", ".a.etm.")
    os.close(fd)
    path = Path(name)
    assert path.is_absolute() and path.parent == tmp_path
    assert path.name.startswith(".a.etm.") and path.name.endswith(".tmp")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    umask = os.umask(0o022)
    try:
        fd, name = fileio.new_temp_file(tmp_path, "r.", ".md", mode=0o666)
    finally:
        os.umask(umask)
    os.close(fd)
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o644


def test_new_temp_file_draws_again_past_a_taken_name_and_never_follows_it(tmp_path, monkeypatch):
    """A name that exists (a file, or a symlink planted to point elsewhere) is passed over: the
    file made is always new. When every draw is taken it says so."""
    outside = tmp_path / "outside"
    outside.write_text("keep")
    draws = iter([b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(fileio.os, "urandom", lambda n: next(draws))
    (tmp_path / f"t.{'00' * 6}.tmp").symlink_to(outside)
    fd, name = fileio.new_temp_file(tmp_path, "t.")
    os.close(fd)
    assert Path(name).name == f"t.{'01' * 6}.tmp"
    assert outside.read_text() == "keep"
    monkeypatch.setattr(fileio.os, "urandom", lambda n: b"\x00" * 6)
    with pytest.raises(FileExistsError):
        fileio.new_temp_file(tmp_path, "t.")


def test_bytes_being_read_ahead_are_shown_to_a_writer_and_left_for_their_reader(tmp_path):
    """A writer copying a file that is being read ahead gets the very bytes its reader takes,
    before or after it takes them (one object, read once); a file changed since the read ahead
    gets none."""
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b'{"model": {}}' * 1000)
    with fileio.read_ahead(path, 1 << 20):
        with open(path, "rb") as f:
            shown = fileio.read_ahead_bytes(f.fileno())
        assert shown == path.read_bytes()
        assert fileio.read_capped(path, 1 << 20, what="t") is shown
        with open(path, "rb") as f:
            assert fileio.read_ahead_bytes(f.fileno()) is shown  # taken, still there for a writer
    assert fileio._AHEAD == {}
    with fileio.read_ahead(path, 1 << 20):
        os.utime(path, ns=(1, 1))
        with open(path, "rb") as f:
            assert fileio.read_ahead_bytes(f.fileno()) is None
