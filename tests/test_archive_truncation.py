"""An archive truncated in place while a process holds it open (``cp`` over it does that) must
give that process one clean error, or the bytes it had, never a SIGBUS.

Each case runs in a child process that opens the archive, says so, waits while this test
truncates the file, then reads. A read through the archive's mapping really is killed by SIGBUS
(the control case): every other way of reading a member avoids the mapping.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from etm_compat.archive import MemberSpec, write_archive
from etm_compat.archive.metadata import new_metadata

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PTE = FIXTURES / "programs" / "constants_all.pte"
LLAMA = FIXTURES / "llama" / "tiny_llama.pte"

CHILD = r"""
import os, sys, tempfile
from pathlib import Path
from etm_compat.archive import open_archive
from etm_compat.errors import EtmError
op, path = sys.argv[1], sys.argv[2]
etm = open_archive(path)
if op == "load-then-truncate":  # load first: the program must run on its sealed copy
    from etm_compat.compat.runtime import load_program_from_archive
    program = load_program_from_archive(etm, route="memfd")
    before = [str(v) for v in program.load_method("get_max_seq_len").execute([])]
print("open", flush=True)
sys.stdin.readline()  # the parent truncates the archive now
try:
    if op == "mapping":
        data = bytes(etm.member_view("model.pte"))
    elif op == "read_member":
        data = etm.read_member("model.pte")
    elif op == "verify":
        problems = etm.verify()
        print("problems", ";".join(sorted({p.code for p in problems})), flush=True)
        data = b""
    elif op == "snapshot":  # diagnose's and verify's reads of the program head and .ptd keys
        from etm_compat.checks.archive import snapshot_findings
        snapshot = snapshot_findings(etm)
        print("findings", ";".join(sorted({f"{f.code}:{f.paths}" for f in snapshot.findings})), flush=True)
        data = b""
    elif op == "extract":
        etm.extract(tempfile.mkdtemp())
        data = b""
    elif op == "materialize":
        from etm_compat.compat.cache import materialize
        materialize(etm, root=tempfile.mkdtemp())
        data = b""
    elif op == "load":
        from etm_compat.compat.runtime import load_program_from_archive
        load_program_from_archive(etm, route=sys.argv[3])
        data = b""
    elif op == "load-then-truncate":
        after = [str(v) for v in program.load_method("get_max_seq_len").execute([])]
        assert after == before, (before, after)
        data = b""
    print("ok", len(data), flush=True)
except EtmError as exc:
    print("error", type(exc).__name__, exc.message, flush=True)
"""


def _archive(tmp_path: Path, program: Path, filler: int = 0) -> Path:
    """An archive whose program member is a real program, plus ``filler`` bytes of padding data
    at the end so that its data spans many pages."""
    if not program.is_file():
        pytest.skip(f"fixture {program.name} missing (run ./dev.sh fixtures)")
    source = tmp_path / "model.pte"
    source.write_bytes(program.read_bytes() + os.urandom(filler))
    dest = tmp_path / "m.etm"
    write_archive(dest, metadata=new_metadata(tool_version="0"), members=[MemberSpec("model.pte", source, "program")])
    return dest


def _truncate_in_place(archive: Path, how: str) -> None:
    if how == "truncate":
        os.truncate(archive, 4096)  # the metadata's page survives, the program's data does not
    else:  # cp of a small file over it: O_TRUNC on the same inode, then a short write
        small = archive.with_name("small.bin")
        small.write_bytes(b"PK" + bytes(100))
        shutil.copyfile(small, archive)


def _run(archive: Path, op: str, how: str, *extra: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, op, str(archive), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        ready = child.stdout.readline()
        assert ready == "open\n", ready + (child.stderr.read() if child.stderr else "")
        _truncate_in_place(archive, how)
        out, err = child.communicate("go\n", timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGBUS or child.returncode == 0, err[-3000:]
    return child.returncode, out


@pytest.mark.parametrize("how", ["truncate", "cp-over"])
def test_a_read_through_the_mapping_dies_of_sigbus(tmp_path: Path, how: str) -> None:
    # The hazard itself, so that the cases below prove something: member_view is the mapping.
    code, _ = _run(_archive(tmp_path, PTE, filler=1 << 20), "mapping", how)
    assert code == -signal.SIGBUS


@pytest.mark.parametrize("how", ["truncate", "cp-over"])
@pytest.mark.parametrize("op", ["read_member", "extract", "materialize"])
def test_reads_give_one_clean_error(tmp_path: Path, op: str, how: str) -> None:
    code, out = _run(_archive(tmp_path, PTE, filler=1 << 20), op, how)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error IntegrityError member 'model.pte' ends after"), out
    assert "truncated or replaced after it was opened" in lines[0]


@pytest.mark.parametrize("how", ["truncate", "cp-over"])
def test_verify_reports_the_truncation(tmp_path: Path, how: str) -> None:
    code, out = _run(_archive(tmp_path, PTE, filler=1 << 20), "verify", how)
    assert code == 0
    assert out.splitlines()[0] == "problems truncated", out


@pytest.mark.parametrize("how", ["truncate", "cp-over"])
def test_the_snapshot_reads_report_the_truncation(tmp_path: Path, how: str) -> None:
    # The program head is read with pread: the archive truncated under it is a finding.
    code, out = _run(_archive(tmp_path, PTE, filler=1 << 20), "snapshot", how)
    assert code == 0, out
    assert out.splitlines()[0] == "findings archive-unreadable:('model.pte',)", out


@pytest.mark.runtime
@pytest.mark.parametrize("route", ["memfd", "bytes"])
def test_loading_a_truncated_archive_gives_one_clean_error(tmp_path: Path, route: str) -> None:
    pytest.importorskip("executorch.runtime")
    code, out = _run(_archive(tmp_path, LLAMA), "load", "truncate", route)
    assert code == 0
    assert out.startswith("error IntegrityError member 'model.pte' ends after"), out


@pytest.mark.runtime
def test_a_loaded_program_keeps_running_on_its_sealed_copy(tmp_path: Path) -> None:
    pytest.importorskip("executorch.runtime")
    code, out = _run(_archive(tmp_path, LLAMA), "load-then-truncate", "cp-over")
    assert (code, out) == (0, "ok 0\n")
