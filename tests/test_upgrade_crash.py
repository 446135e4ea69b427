"""Crash safety: SIGKILL the whole `python -m etm_compat upgrade` process group at random moments.

After every kill, every ``*.etm`` visible under the output folder must open and verify (the writer
publishes with ``os.replace``), and a final re-run must complete the tree.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from test_upgrade import build_tree

from etm_compat.verification import verify


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "etm_compat", "upgrade", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the pool workers die with it
    )


def test_sigkill_at_random_moments_never_exposes_a_partial_archive(tmp_path):
    tree = build_tree(tmp_path / "tree", 60, big=2)
    out = tmp_path / "out"
    args = [str(tree.root), "--out", str(out), "-j", "2"]
    rng = random.Random(20240607)
    # Kill once at a random early moment (scan, pool start-up), then when a random, growing number
    # of archives has appeared, plus a random few milliseconds (mid-write of the next ones).
    targets = [0, *sorted(rng.sample(range(1, len(tree.good) - 4), 3))]
    seen = []
    for target in targets:
        proc = _start(args)
        deadline = time.monotonic() + 60
        if target == 0:
            time.sleep(rng.uniform(0.05, 0.5))
        else:
            while len(list(out.rglob("*.etm"))) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.03))
        assert proc.poll() is None, "the upgrade finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        archives = sorted(out.rglob("*.etm"))
        for archive in archives:
            assert verify(archive).ok  # a partial or corrupt archive fails
        seen.append(len(archives))
    assert 0 < seen[-1] < len(tree.good), seen
    proc = _start([*args, "--json"])
    stdout, stderr = proc.communicate(timeout=120)
    result = json.loads(stdout)
    outcome = {i["program"]: i["outcome"] for i in result["items"]}
    assert {p for p, o in outcome.items() if o in ("written", "up_to_date")} == tree.good, stderr
    assert result["counts"]["locked"] == 0
    for program in tree.good:
        assert verify((out / program).with_suffix(".etm")).ok
    leftovers = [p for p in out.rglob("*.tmp")]
    assert leftovers == [], "temporary files of killed runs must be cleaned by the run that retakes the lock"
