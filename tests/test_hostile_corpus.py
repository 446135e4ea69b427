"""Issue 15's acceptance corpus: every case in tests/hostile_cases.py through the real CLI.

Each case gets its own folder holding every file it reads, an empty current directory inside
it, and its own cache folder (``ETM_CACHE_DIR``). It runs ``etm-compat`` with the case's
arguments: in this process through ``etm_compat.cli.main.main`` (the console script's
function), with stdout strict UTF-8 as under a desktop's UTF-8 locale; or, for the cases that
may hang, blow up memory or die of a signal, in a child ``python -m etm_compat`` under an
address-space limit, whose peak RSS (``wait4``) is bounded too. The children start together at
the beginning of the run, ``ETM_CORPUS_JOBS`` (2) at a time; ``ETM_CORPUS_SUBPROCESS=1`` runs
every case in a child. Then each case checks the contract:

* the exit code the README documents for the case;
* for an error (exit 2 to 5), exactly one error line on stderr; for a result (exit 0 or 1), an
  empty stderr; never a traceback, never an internal error (70);
* no control character, C1 code, bidi override or raw surrogate in the output: names from
  files are escaped;
* nothing created, changed or removed in the case folder but the case's own outputs (and the
  cache's runner-check records), and so no source byte changed: every file is hashed before and
  after (symlinks by target, FIFOs and sockets by kind, multi-GiB sparse files by inode and ctime);
* a child ends within its hang guard, under its memory bound, and not by a signal.

A case whose fix lies outside the tests is ``xfail(strict=True)`` with the fix in its reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import hang_guard
from hostile_cases import CASES, Case, Kit, Run

from etm_compat.adapters import default_adapters
from etm_compat.cli.exit_codes import EXIT_INTERNAL
from etm_compat.cli.main import main
from etm_compat.packing import pack

REPO = Path(__file__).resolve().parent.parent
#: A child's address space: a template that builds a 500 MB string fails here, not in the OOM killer.
CHILD_ADDRESS_SPACE = 3 << 30
#: The peak resident memory a child may reach (the CLI itself needs about 100 MiB).
MAX_CHILD_RSS = 384 << 20
#: A child writes strict UTF-8, as Python does under a desktop's UTF-8 locale (en_US.UTF-8): a
#: raw surrogate (an undecodable file name) on stdout is then an error, not a stray byte.
CHILD_ENV = {"PYTHONIOENCODING": "utf-8:strict"}
HASH_LIMIT = 16 << 20
ALL_IN_CHILDREN = os.environ.get("ETM_CORPUS_SUBPROCESS") == "1"
#: The environment children start from, taken before any in-process case changes os.environ.
BASE_ENV = {k: v for k, v in os.environ.items() if k != "ETM_TRACEBACK"}
#: How many children run side by side (``ETM_CORPUS_JOBS``).
CHILD_JOBS = int(os.environ.get("ETM_CORPUS_JOBS", "2"))
Snapshot = dict[str, tuple[object, ...]]


@pytest.fixture(scope="session")
def good_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One good archive per legacy fixture the cases start from, packed once by the real packer."""
    folder = tmp_path_factory.mktemp("good-archives")
    archives = {}
    for src in ("with_ptd", "hf_style", "et_example"):
        source = REPO / "fixtures" / "legacy" / src
        if not source.is_dir():
            pytest.skip(f"fixture legacy/{src} is missing (run ./dev.sh fixtures)")
        archives[src] = pack(source, folder / f"{src}.etm", default_adapters()).archive
    return archives


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` (not following symlinks): its kind, mode and content.

    A file's content is its sha256; a file over :data:`HASH_LIMIT` (the sparse multi-GiB
    inputs) is known by inode, size, mtime and ctime instead: any write moves ctime, and no
    process can set it back.
    """
    found: Snapshot = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(path, base))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= HASH_LIMIT:
                with open(path, "rb") as fh:
                    found[rel] = ("file", st.st_mode, hashlib.file_digest(fh, "sha256").hexdigest())
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("big file", st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return found


#: What any run may write besides its outputs: the runner-check records of the cache folder.
CACHE_RECORDS = ("cache", "cache/runner-checks", "cache/runner-checks/*.json")


def allowed(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


#: ``python -m etm_compat`` under an address-space limit (set here, not in a preexec_fn: the
#: children are started from threads).
#: The child reports its own peak RSS (VmHWM, reset at exec) at exit: wait4's ru_maxrss would
#: include the parent's RSS at fork time, which grows over a long test session.
CHILD = (
    "import atexit, resource, runpy, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv.pop(1)),) * 2)\n"
    "hwm_file = sys.argv.pop(1)\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as fh, open(hwm_file, 'w') as out:\n"
    "        out.write(next(l for l in fh if l.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(_hwm)\n"
    "runpy.run_module('etm_compat', run_name='__main__', alter_sys=True)\n"
)


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str
    before: Snapshot
    after: Snapshot
    json: bool  # the command was asked for JSON (--json)


def run_child(run: Run, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """``python -m etm_compat ARGV`` in ``cwd``; its peak RSS (VmHWM) stays under the bound."""
    hwm_file = Path(tempfile.gettempdir()) / f"etm-corpus-hwm-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin.write(run.stdin)
        stdin.seek(0)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(CHILD_ADDRESS_SPACE), str(hwm_file), *run.argv],
            stdin=stdin, stdout=out, stderr=err, cwd=cwd, env={**BASE_ENV, **env, **CHILD_ENV, **run.env},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                child.returncode = os.waitstatus_to_exitcode(os.wait4(child.pid, 0)[1])
                pytest.fail(f"still running after {timeout} s (a hang)")
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    if child.returncode < 0:
        pytest.fail(f"killed by {signal.Signals(-child.returncode).name}: {stderr[-2000:]!r}")
    del usage
    reported = hwm_file.read_text() if hwm_file.exists() else ""
    hwm_file.unlink(missing_ok=True)
    assert reported, "the child did not report its peak RSS (it did not exit normally)"
    peak = int(reported) * 1024
    assert peak < MAX_CHILD_RSS, f"peak RSS {peak >> 20} MiB, over {MAX_CHILD_RSS >> 20} MiB"
    return child.returncode, stdout, stderr


def case_env(root: Path) -> dict[str, str]:
    return {"NO_COLOR": "1", "COLUMNS": "100", "ETM_CACHE_DIR": str(root / "cache"), "HOME": str(root / "cwd")}


def prepare(case: Case, root: Path, archives: dict[str, Path]) -> Run:
    (root / "cwd").mkdir(parents=True)
    built = case.build(Kit(root, archives))
    return built if isinstance(built, Run) else Run(tuple(built))


def run_case_in_child(case: Case, root: Path, archives: dict[str, Path]) -> Outcome:
    run = prepare(case, root, archives)
    before = snapshot(root)
    code, out, err = run_child(run, root / "cwd", case_env(root), case.timeout)
    return Outcome(code, out, err, before, snapshot(root), "--json" in run.argv)


@pytest.fixture(scope="session")
def children(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, good_archives: dict[str, Path]
) -> Iterator[dict[str, Future[Outcome]]]:
    """Every selected case that runs in a child, all started at once, :data:`CHILD_JOBS` at a
    time, so that the children's start-up and the in-process cases overlap."""
    selected = {
        item.callspec.params["case"].name
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    }
    chosen = [c for c in CASES if (c.subprocess or ALL_IN_CHILDREN) and c.name in selected]
    with ThreadPoolExecutor(max_workers=CHILD_JOBS) as pool:
        yield {
            c.name: pool.submit(run_case_in_child, c, tmp_path_factory.mktemp("child") / "case", good_archives)
            for c in chosen
        }


def run_here(
    run: Run, cwd: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], timeout: float,
) -> tuple[int, str, str]:
    """``main(argv)`` in this process, with what a child under a UTF-8 locale would have: stdout
    strict UTF-8 (a raw surrogate raises, as it would on a terminal), stderr backslashreplace."""
    monkeypatch.chdir(cwd)
    for key, value in {**env, **run.env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(run.stdin)))
    capfd.readouterr()
    streams = {
        name: io.TextIOWrapper(getattr(sys, name).buffer, encoding="utf-8", errors=errors, write_through=True)
        for name, errors in (("stdout", "strict"), ("stderr", "backslashreplace"))
    }  # fmt: skip
    for name, stream in streams.items():
        monkeypatch.setattr(sys, name, stream)
    try:
        with hang_guard(timeout):
            code = main(list(run.argv))
    finally:
        for stream in streams.values():
            stream.flush()
            stream.detach()  # the captured file stays open for capfd
    out, err = capfd.readouterr()
    return code, out, err


BIDI_AND_INVISIBLE = frozenset("\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                               "\u2060\u2066\u2067\u2068\u2069\ufeff")  # fmt: skip


def unsafe_characters(text: str) -> set[str]:
    """What a terminal would act on or hide: controls but newline (C0, DEL, C1), line and paragraph
    separators, bidi overrides and invisible marks, lone surrogates; and U+FFFD, which stands for
    output bytes that were not UTF-8."""
    return {
        ch for ch in text
        if (ch != "\n" and unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"))
        or ch in BIDI_AND_INVISIBLE or ch == "\ufffd"
    }  # fmt: skip


def not_json(literal: str) -> None:
    raise AssertionError(f"--json printed {literal}, which is not JSON")


def marks(case: Case) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=f"{c.kind}-{c.name}", marks=marks(c)) for c in CASES]
)
def test_hostile_case(
    case: Case,
    tmp_path: Path,
    good_archives: dict[str, Path],
    children: dict[str, Future[Outcome]],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ETM_TRACEBACK", raising=False)
    if case.name in children:
        outcome = children[case.name].result()
    else:
        root = tmp_path / "case"
        run = prepare(case, root, good_archives)
        before = snapshot(root)
        code, out, err = run_here(run, root / "cwd", case_env(root), monkeypatch, capfd, case.timeout)
        outcome = Outcome(code, out, err, before, snapshot(root), "--json" in run.argv)
    code, out, err, before, after = outcome.code, outcome.out, outcome.err, outcome.before, outcome.after

    assert code != EXIT_INTERNAL, err
    assert "Traceback" not in out + err, err
    assert code == case.exit, f"exit {code}, expected {case.exit}: {err.strip()}"
    if code in (0, 1):
        assert err == "", err
        assert case.needle in out, out
        if outcome.json:  # strict JSON: NaN and Infinity are not JSON
            json.loads(out, parse_constant=not_json)
    else:
        lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
        assert len(lines) == 1 and "error:" in lines[0], err
        assert case.needle in lines[0], lines[0]
    assert not unsafe_characters(out + err), sorted(unsafe_characters(out + err))

    outputs = case.outputs if case.kind == "cache" else case.outputs + CACHE_RECORDS
    created = {p for p in after.keys() - before.keys() if not allowed(p, outputs)}
    removed = {p for p in before.keys() - after.keys() if not allowed(p, outputs)}
    changed = {p for p in before.keys() & after.keys() if before[p] != after[p] and not allowed(p, outputs)}
    assert not created, f"wrote outside its outputs: {sorted(created)}"
    assert not removed, f"removed: {sorted(removed)}"
    assert not changed, f"changed a source: {sorted(changed)}"


def test_the_corpus_covers_every_class_with_at_least_100_cases() -> None:
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 100, len(CASES)
    assert kinds == {"template", "json", "output", "cache", "name", "lie", "special", "truncated", "terminal", "native"}
    assert len({c.name for c in CASES}) == len(CASES), "case names are unique"
