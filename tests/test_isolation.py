"""The isolation worker: native code given hostile bytes crashes, hangs or blows up memory in the
worker, and each becomes an outcome here; the worker is reused, reaped and never outlives us.

Every hostile input is real: pytorch_tokenizers 1.5 really segfaults on the nested Split regex,
really backtracks without end on the ReDoS one, and really allocates hundreds of MiB for the
16-byte llama2.c header (each was checked in a throwaway process first).
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES, hang_guard

from etm_compat import isolation
from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.archive.plan import MemberSpec
from etm_compat.archive.write import write_archive
from etm_compat.isolation_tasks import TASKS
from etm_compat.packing import pack

pytest.importorskip("pytorch_tokenizers")

HF_BPE = FIXTURES / "tokenizers" / "hf_bpe" / "tokenizer.json"
SP_MODEL = FIXTURES / "tokenizers" / "sp.model"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner-check records (written by pack) go to the test's own folder."""
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "cache"))


def _with_split(dest: Path, pattern: str) -> Path:
    """hf_bpe's tokenizer.json with a Split pre-tokenizer on ``pattern`` before its ByteLevel one."""
    doc = json.loads(HF_BPE.read_text())
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, doc["pre_tokenizer"]]}
    dest.write_text(json.dumps(doc))
    return dest


def crashing_tokenizer(dest: Path) -> Path:
    """A 1 MB tokenizer.json whose regex is nested 495,000 deep: RE2 refuses the lookahead, PCRE2
    the nesting, and std::regex, the last resort, overflows its stack compiling it (SIGSEGV)."""
    depth = 495_000
    return _with_split(dest, "(?=a)" + "(" * depth + "a" + ")" * depth)


def backtracking_tokenizer(dest: Path) -> Path:
    """Loads fine; encoding "a" * 40 makes std::regex backtrack 2**40 times (a ReDoS)."""
    return _with_split(dest, "(" * 260 + "(?=a)(a|a)*c" + ")" * 260)


def greedy_llama2c(dest: Path) -> Path:
    """16 bytes whose header claims 10 million tokens: the loader allocates ~700 MiB for them."""
    dest.write_bytes(struct.pack("<4i", 10_000_000, 1, 2, 16))
    return dest


def _load(path: Path, class_name: str, **limits: float) -> isolation.Outcome:
    args = {"class": class_name, "path": str(path), "config_path": None, "special_tokens_map_path": None}
    return isolation.run_task("tokenizer.load", args, **limits)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    """No process ``pid`` any more (a zombie still counts as there: nobody reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "X"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _started_worker() -> int:
    assert _load(SP_MODEL, "SPTokenizer").value["loaded"] is True
    pid = isolation.worker_pid()
    assert pid is not None
    return pid


def test_the_registry_is_the_only_way_in():
    assert set(TASKS) == isolation.TASK_NAMES
    with pytest.raises(ValueError, match="unknown isolated task"):
        isolation.run_task("os.system", {"command": "true"})  # type: ignore[arg-type]


def test_one_worker_serves_every_check():
    isolation.shutdown()
    before = isolation.worker_starts
    loads = [
        _load(SP_MODEL, "SPTokenizer"),
        _load(HF_BPE, "HFTokenizer"),
        _load(FIXTURES / "tokenizers" / "tiktoken.model", "Tiktoken"),
        _load(FIXTURES / "tokenizers" / "tokenizer.bin", "Llama2cTokenizer"),
        _load(SP_MODEL, "HFTokenizer"),  # a load that fails is an answer too
    ]
    assert [o.status for o in loads] == ["ok"] * 5
    assert [o.value["loaded"] for o in loads] == [True, True, True, True, False]
    assert isolation.worker_starts - before == 1


def test_a_segfault_is_an_outcome_and_the_dead_worker_is_reaped(tmp_path):
    crasher = crashing_tokenizer(tmp_path / "tokenizer.json")
    assert 1_000_000 <= crasher.stat().st_size < 1_100_000
    pid = _started_worker()
    starts = isolation.worker_starts
    outcome = _load(crasher, "HFTokenizer")
    assert outcome.status == "crashed" and outcome.signal == "SIGSEGV"
    assert outcome.describe() == "crashed (SIGSEGV: Segmentation fault)"
    assert "PCRE2 compilation failed" in outcome.log  # the native log, captured
    assert _gone(pid)  # reaped, not a zombie
    assert _load(SP_MODEL, "SPTokenizer").ok  # a new worker, started on demand
    assert isolation.worker_starts == starts + 1 and isolation.worker_pid() != pid


def test_a_hang_is_stopped_at_the_time_limit(tmp_path):
    tok = backtracking_tokenizer(tmp_path / "tokenizer.json")
    args = {"class": "HFTokenizer", "path": str(tok), "config_path": None, "text": "a" * 40, "bos": 0, "eos": 0}
    assert isolation.run_task("tokenizer.encode", {**args, "text": "a" * 4}).ok  # loads and encodes
    pid = isolation.worker_pid()
    assert pid is not None
    with hang_guard(120):
        outcome = isolation.run_task("tokenizer.encode", args, timeout=2)
    assert outcome.status == "timeout"
    assert outcome.describe() == "did not finish within 2 s (stopped)"
    assert _gone(pid) and isolation.worker_pid() is None


def test_a_memory_blow_up_hits_the_limit(tmp_path, monkeypatch):
    greedy = greedy_llama2c(tmp_path / "tokenizer.bin")
    pid = _started_worker()
    # The limit: what the worker maps now, plus 128 MiB (far below the ~700 MiB the load wants).
    mapped = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmSize:"))
    limit_mib = mapped // 1024 + 128
    monkeypatch.setenv(isolation.ENV_MEMORY_MB, str(limit_mib))
    outcome = _load(greedy, "Llama2cTokenizer")
    assert outcome.status == "memory", outcome
    assert outcome.describe() == f"ran out of memory (limit {limit_mib} MiB)"
    assert _gone(pid)  # a worker that hit the limit is replaced
    # The same limit is no obstacle to a real tokenizer.
    assert _load(HF_BPE, "HFTokenizer").value["loaded"] is True


def test_native_output_is_captured_not_printed(capfd):
    capfd.readouterr()
    outcome = _load(SP_MODEL, "HFTokenizer")  # the HF loader logs why it fails, on fd 2
    assert outcome.ok and outcome.value["loaded"] is False
    assert "hf_tokenizer.cpp" in outcome.log
    out, err = capfd.readouterr()
    assert "hf_tokenizer" not in out + err


_ORPHAN = """
import sys
from etm_compat import isolation
from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.archive.plan import MemberSpec
from etm_compat.archive.write import write_archive
args = {"class": "HFTokenizer", "path": sys.argv[1], "config_path": None, "text": "a", "bos": 0, "eos": 0}
assert isolation.run_task("tokenizer.encode", args).ok
print(isolation.worker_pid(), flush=True)
isolation.run_task("tokenizer.encode", {**args, "text": "a" * 40}, timeout=3600)  # hangs
"""


def test_the_worker_dies_with_its_parent_even_mid_hang(tmp_path):
    tok = backtracking_tokenizer(tmp_path / "tokenizer.json")
    with subprocess.Popen([sys.executable, "-c", _ORPHAN, str(tok)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            worker = int(proc.stdout.readline())
            with hang_guard(60):
                while _cpu_ticks(worker) < 100:
                    time.sleep(0.05)  # until the worker is busy backtracking (1 s of CPU)
            assert not _gone(worker)
        finally:
            proc.kill()  # SIGKILL: no atexit, no clean-up; only the kernel is left to act
    with hang_guard(60):
        while not _gone(worker) and Path(f"/proc/{worker}/stat").read_text().split(") ")[1][0] != "Z":
            time.sleep(0.05)  # the kernel kills it (PR_SET_PDEATHSIG); its new parent reaps it


def _pid_and_worker(_: int) -> tuple[int, int | None, int]:
    assert _load(SP_MODEL, "SPTokenizer").ok
    return os.getpid(), isolation.worker_pid(), isolation.worker_starts


def test_each_process_of_a_pool_has_its_own_worker():
    mine = _started_worker()
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        results = list(pool.map(_pid_and_worker, range(4)))
    children = {pid: worker for pid, worker, _ in results}
    assert mine not in children.values() and None not in children.values()
    assert len(set(children.values())) == len(children)  # one worker per pool process
    assert isolation.worker_pid() == mine and _load(SP_MODEL, "SPTokenizer").ok  # ours untouched
    for worker in children.values():
        assert worker is not None
        with hang_guard(60):
            while not _gone(worker) and Path(f"/proc/{worker}/stat").read_text().split(") ")[1][0] != "Z":
                time.sleep(0.05)  # the pool's processes are gone: so are their workers


def test_an_interrupt_mid_task_stops_the_worker(tmp_path):
    tok = backtracking_tokenizer(tmp_path / "tokenizer.json")
    args = {"class": "HFTokenizer", "path": str(tok), "config_path": None, "text": "a" * 40, "bos": 0, "eos": 0}
    _started_worker()
    pid = isolation.worker_pid()
    assert pid is not None

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            isolation.run_task("tokenizer.encode", args, timeout=300)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _gone(pid)
    assert _load(SP_MODEL, "SPTokenizer").ok  # the next task gets a fresh worker


def _archive_with_program_bytes(tmp: Path, patch: Callable[[bytearray], None]) -> Path:
    """et_example packed, then re-written with its model.pte patched (and hashes that match)."""
    good = tmp / "good.etm"
    pack(FIXTURES / "legacy" / "et_example", good, default_adapters())
    files = tmp / "members"
    files.mkdir()
    with open_archive(good) as etm:
        meta = copy.deepcopy(etm.metadata)
        specs = []
        for member in meta["members"]:
            dest = files / member["name"].replace("/", "_")
            with etm.member_view(member["name"]) as view:
                dest.write_bytes(bytes(view))
            specs.append(MemberSpec(member["name"], dest, member["role"]))
    program = bytearray((files / "model.pte").read_bytes())
    patch(program)
    (files / "model.pte").write_bytes(program)
    return write_archive(tmp / "patched.etm", metadata=meta, members=specs).path


@pytest.mark.runtime
def test_verify_runtime_reports_a_program_that_crashes_the_runtime(tmp_path):
    def identifier_not_utf8(program: bytearray) -> None:
        assert program[4:8] == b"ET12"
        program[7] = 0x80  # executorch logs the identifier; its Python log hook aborts on it

    archive = _archive_with_program_bytes(tmp_path, identifier_not_utf8)
    env = {**os.environ, "ETM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "etm_compat", "verify", "--runtime", "--json", str(archive)],
        capture_output=True, text=True, env=env, check=False,
    )
    assert proc.returncode == 1, proc.stderr  # findings, not -6
    assert "Traceback" not in proc.stdout + proc.stderr
    (crash,) = [f for f in json.loads(proc.stdout)["findings"] if f["code"] == "program-crashes-runtime"]
    assert crash["message"].startswith("the ExecuTorch runtime crashed (SIGABRT: Aborted) loading model.pte")
    plain = subprocess.run(
        [sys.executable, "-m", "etm_compat", "verify", "--json", str(archive)],
        capture_output=True, text=True, env=env, check=False,
    )
    # the bytes are whole (no integrity finding); etm-compat's own reader already refuses the
    # identifier, but only running it shows that the runtime would crash
    assert plain.returncode == 1
    codes = {f["code"] for f in json.loads(plain.stdout)["findings"]}
    assert "program-crashes-runtime" not in codes and "archive-crc-mismatch" not in codes
