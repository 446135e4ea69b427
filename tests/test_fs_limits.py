"""Output failures on a real full filesystem and a real read-only one (issue 15, item 5).

Each case runs in a child inside its own mount namespace (``unshare -m``; ``unshare -rm`` for a
user without root, where user namespaces are allowed): the child mounts a small tmpfs over a
folder of the test, fills it (ENOSPC, before or during the write) or remounts it read-only
(EROFS), runs one etm-compat command (or one library call) whose output goes there, and lists
what is left on the filesystem. The mount dies with the namespace, so nothing leaks from a failed
test, and the test process never changes the host's mounts.

Every case checks the documented exit code (4: an output cannot be written), exactly one error
line and no traceback, that no partial or temporary file is left on the filesystem, and that no
source byte changed. A read-only or full *cache* folder never fails a command that only records
runner checks there.

Where no tmpfs can be mounted (no CAP_SYS_ADMIN and no user namespaces) every test here skips
with a message; docs/MIGRATION.md ("Running the filesystem tests") says how to run them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.cli.exit_codes import EXIT_OK, EXIT_OUTPUT

#: Runs in the namespace: mount, make the fault, run the command, list what is left.
DRIVER = r"""
set -u
mnt=$1; size=$2; fault=$3; free_k=$4; copy=$5; report=$6; shift 6
mount -t tmpfs -o "size=$size" tmpfs "$mnt" || exit 97
if [ -n "$copy" ]; then cp -r "$copy" "$mnt/tree" || exit 98; fi
(cd "$mnt" && find . -type f -exec sha256sum {} + | sort) > "$report/before"
case $fault in
  enospc) head -c 64M /dev/zero > "$mnt/.filler" 2>/dev/null ;;
  enospc-during)
    head -c 64M /dev/zero > "$mnt/.filler" 2>/dev/null
    truncate -s "-${free_k}K" "$mnt/.filler" ;;
  erofs) mount -o remount,ro "$mnt" || exit 99 ;;
esac
"$@" > "$report/stdout" 2> "$report/stderr"
echo $? > "$report/code"
(cd "$mnt" && find . -mindepth 1 ! -name .filler | sort) > "$report/listing"
(cd "$mnt" && find . -type f ! -name .filler -exec sha256sum {} + | sort) > "$report/after"
"""
CLI = [sys.executable, "-m", "etm_compat"]
ET = FIXTURES / "legacy" / "et_example"


def _namespace() -> list[str] | None:
    """``unshare`` flags that let a child mount a tmpfs here, or None."""
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    for flags in (["-m"], ["-r", "-m"]) if os.geteuid() == 0 else (["-r", "-m"],):
        probe = subprocess.run(
            ["unshare", *flags, "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d"'],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return ["unshare", *flags]
    return None


NAMESPACE = _namespace()
pytestmark = pytest.mark.skipif(
    NAMESPACE is None,
    reason="cannot mount a tmpfs (needs root, or unprivileged user namespaces for `unshare -rm`): "
    "see docs/MIGRATION.md, 'Running the filesystem tests'",
)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    left: list[str]
    before: str
    after: str


@dataclass(frozen=True)
class FsCase:
    fault: str  # enospc (full before the run), enospc-during (a few KiB free), erofs
    argv: Sequence[str]  # {mnt} is the mounted folder
    exit: int = EXIT_OUTPUT
    copy: str = ""  # a source folder copied to {mnt}/tree before the fault (upgrade --in-place)
    env: dict[str, str] = field(default_factory=dict)


def run_on_small_fs(tmp_path: Path, case: FsCase, size: str = "1m") -> Outcome:
    assert NAMESPACE is not None
    mnt, report = tmp_path / "mnt", tmp_path / "report"
    mnt.mkdir()
    report.mkdir()
    argv = [a.format(mnt=mnt) for a in case.argv]
    env = {**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8:strict",
           "ETM_CACHE_DIR": str(tmp_path / "cache"), **{k: v.format(mnt=mnt) for k, v in case.env.items()}}  # fmt: skip
    done = subprocess.run(
        [*NAMESPACE, "sh", "-c", DRIVER, "driver", str(mnt), size, case.fault, "16", case.copy,
         str(report), *argv],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode in (97, 98, 99):
        pytest.skip(f"the namespace could not mount, fill or remount the tmpfs: {done.stderr!r}")
    assert done.returncode == 0, done.stderr
    read = lambda name: (report / name).read_text(errors="replace")  # noqa: E731
    left = [line for line in read("listing").splitlines() if line]
    return Outcome(int(read("code")), read("stdout"), read("stderr"), left, read("before"), read("after"))


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    dest = tmp_path / "src"
    shutil.copytree(ET, dest / "dep")
    return dest


@pytest.fixture
def archive(tmp_path: Path, sources: Path) -> Path:
    path = tmp_path / "m.etm"
    subprocess.run([*CLI, "pack", str(sources / "dep"), "-o", str(path)], check=True, capture_output=True)
    return path


def one_error_line(outcome: Outcome) -> str:
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etm-compat: error: "), outcome.stderr
    return lines[0]


#: What a failed run may leave by design: upgrade's resumable state and its lock files.
BY_DESIGN = (".etm-upgrade", ".lock")
#: writer -> (argv, a source folder copied onto the filesystem, the faults, an xfail reason)
WRITERS: dict[str, tuple[list[str], str, tuple[str, ...], str]] = {
    "pack": (["pack", "{src}/dep", "-o", "{mnt}/m.etm"], "", ("enospc", "enospc-during", "erofs"), ""),
    "pack_force": (["pack", "{src}/dep", "-o", "{mnt}/m.etm", "--force"], "", ("enospc", "enospc-during", "erofs"), ""),
    "unpack": (["unpack", "{archive}", "-o", "{mnt}/u"], "", ("enospc", "enospc-during", "erofs"), ""),
    "diagnose_html": (["diagnose", "{src}/dep", "-o", "{mnt}/r.html"], "", ("enospc", "erofs"), ""),
    "diagnose_json": (["diagnose", "{src}/dep", "-o", "{mnt}/r.json"], "", ("enospc", "erofs"), ""),
    "upgrade_report": (["upgrade", "{src}", "--out", "{tmp}/o", "--jobs", "1", "--report", "{mnt}/r.md"], "", ("enospc", "erofs"), ""),
    "upgrade_out": (["upgrade", "{src}", "--out", "{mnt}/o", "--jobs", "1"], "", ("enospc", "enospc-during", "erofs"), ""),
    "upgrade_in_place": (["upgrade", "{mnt}/tree", "--in-place", "--jobs", "1"], str(ET), ("enospc-during", "erofs"), ""),
}  # fmt: skip
# enospc: full before the run; enospc-during: 16 KiB free, less than the output (the small
# reports would fit, so they are not run so); erofs: remounted read-only.
CASES = [
    pytest.param(w, f, id=f"{w}-{f}", marks=[pytest.mark.xfail(strict=True, reason=bug)] if bug else [])
    for w, (_, _, faults, bug) in WRITERS.items()
    for f in faults
]


@pytest.mark.parametrize(("writer", "fault"), CASES)
def test_an_output_on_a_full_or_read_only_filesystem_is_exit_4(
    tmp_path: Path, sources: Path, archive: Path, writer: str, fault: str
) -> None:
    before = digest_tree(sources)
    template, copy, _, _ = WRITERS[writer]
    argv = [a.format(src=sources, archive=archive, tmp=tmp_path, mnt="{mnt}") for a in template]
    outcome = run_on_small_fs(tmp_path, FsCase(fault, [*CLI, *argv], copy=copy))
    line = one_error_line(outcome)
    assert outcome.code == EXIT_OUTPUT, line
    assert ("No space left" if fault.startswith("enospc") else "Read-only") in line, line
    copied = {entry.split()[-1] for entry in outcome.before.splitlines()}
    left = [p for p in outcome.left if p not in copied and not any(d in p for d in BY_DESIGN)]
    # at most the empty folders a writer made before the write failed (upgrade mirrors: o/dep)
    assert left in ([], ["./o"], ["./o", "./o/dep"], ["./u"], ["./tree"]), f"left on the filesystem: {left}"
    kept = [entry for entry in outcome.after.splitlines() if entry.split()[-1] in copied]
    assert kept == outcome.before.splitlines(), "a source on the filesystem changed"
    assert digest_tree(sources) == before


@pytest.mark.parametrize("fault", ["enospc", "erofs"])
def test_a_full_or_read_only_cache_never_fails_a_reader(tmp_path: Path, sources: Path, fault: str) -> None:
    """``inspect`` records runner checks in the cache folder: one that cannot be written costs
    only the record, never the command."""
    outcome = run_on_small_fs(
        tmp_path,
        FsCase(fault, [*CLI, "inspect", str(sources / "dep")], env={"ETM_CACHE_DIR": "{mnt}/cache"}),
    )
    assert outcome.code == EXIT_OK, outcome.stderr
    assert outcome.stderr == ""
    assert [p for p in outcome.left if p not in ("./cache", "./cache/runner-checks")] == [], outcome.left


@pytest.mark.parametrize("fault", ["enospc", "erofs"])
def test_legacy_paths_into_a_full_or_read_only_cache_is_an_etm_error(
    tmp_path: Path, archive: Path, fault: str
) -> None:
    """The shim's materialization: a cache that cannot be written raises OutputError (an
    EtmError), not a bare OSError, and leaves no partial entry."""
    code = (
        "import sys, etm_compat\n"
        "from etm_compat.errors import OutputError\n"
        "try:\n"
        "    with etm_compat.load(sys.argv[1]) as b: b.legacy_paths()\n"
        "except OutputError as e: print('OutputError', e); sys.exit(4)\n"
    )
    outcome = run_on_small_fs(
        tmp_path,
        FsCase(fault, [sys.executable, "-c", code, str(archive)], env={"ETM_CACHE_DIR": "{mnt}/cache"}),
    )
    assert outcome.code == EXIT_OUTPUT, outcome.stdout + outcome.stderr
    assert outcome.stdout.startswith("OutputError") and outcome.stderr == ""
    assert [p for p in outcome.left if p != "./cache"] == [], outcome.left


def test_the_driver_really_fills_and_protects_the_filesystem(tmp_path: Path) -> None:
    """The faults are real: a plain write fails with ENOSPC and with EROFS in the namespace."""
    for fault, errno_name in (("enospc", "ENOSPC"), ("erofs", "EROFS")):
        sub = tmp_path / fault
        sub.mkdir()
        write = "import errno, sys\ntry: open(sys.argv[1], 'wb').write(b'x' * 8192)\nexcept OSError as e: print(errno.errorcode[e.errno])"
        outcome = run_on_small_fs(sub, FsCase(fault, [sys.executable, "-c", write, "{mnt}/probe"]))
        assert outcome.stdout.strip() == errno_name
        assert json.dumps(outcome.left) in ("[]", '["./probe"]')
