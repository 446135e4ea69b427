"""A short run of every fuzz harness (fuzz/harnesses.py) inside the suite.

The long run is ``fuzz/run.py`` (docs/FUZZING.md). Here each target gets its real seeds plus a
fixed number of mutations from a fixed random seed (a count of executions, never a time budget:
the machine is shared), and must end with no finding: no exception other than an EtmError, no
hang, no MemoryError. The hang guard (``hang_seconds``) only catches an input that never ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engine import fuzz, mutate
from fuzz.harnesses import TARGETS, Scratch

#: Executions per target, seeds included: every one runs, however slow the machine is.
RUNS = 400


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Harness files go to tmp_path, not /dev/shm."""
    old = Scratch._dir
    Scratch._dir = tmp_path
    try:
        yield tmp_path
    finally:
        Scratch._dir = old


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(target: str, scratch: Path) -> None:
    spec = TARGETS[target]
    seeds = spec.seeds()
    assert seeds, f"{target} has no seeds"
    runs = max(RUNS, len(seeds) + RUNS // 2)  # every seed, then at least RUNS // 2 mutations
    stats = fuzz(target, spec.run, seeds, runs=runs, seed=8, hang_seconds=60.0)
    assert stats.runs == runs
    assert not stats.findings, "\n\n".join(f.trace for f in stats.findings[:3])


def test_engine_reports_a_non_etm_exception(scratch: Path) -> None:
    """The engine is not a test that cannot fail: a harness that crashes is a finding."""

    def broken(data: bytes) -> None:
        if len(data) > 3:
            raise IndexError("boom")

    stats = fuzz("broken", broken, [b"abcd"], runs=5, seed=1, crash_dir=scratch / "crashes")
    assert stats.findings and stats.findings[0].kind == "exception"
    assert stats.findings[0].saved is not None and stats.findings[0].saved.read_bytes() == b"abcd"


def test_engine_reports_a_hang(scratch: Path) -> None:
    def spin(data: bytes) -> None:
        while True:
            pass

    stats = fuzz("spin", spin, [b"x"], runs=1, hang_seconds=0.2)
    assert [f.kind for f in stats.findings] == ["hang"]


def test_mutations_are_deterministic_and_bounded() -> None:
    import random

    a = [mutate(b"seed-bytes" * 10, random.Random(3), []) for _ in range(5)]
    b = [mutate(b"seed-bytes" * 10, random.Random(3), []) for _ in range(5)]
    assert a == b
    assert all(len(m) <= 1 << 20 for m in a)
