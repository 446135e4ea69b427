"""Bulk upgrade: `--jobs 2` vs `--jobs 1` on a 200-deployment tree, and a re-run on a finished tree.

The tree is the one tests/test_upgrade.py builds (nested folders; a few ~730 KB programs of each
layout, the rest small with_ptd programs), minus the deliberately broken deployments so every
run exits 0. Every measurement is a whole `etm-compat upgrade` process (start-up included).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common import ROOT, VENV_BIN, WORK, Result, Row, measure, median, spread

sys.path.insert(0, str(ROOT / "tests"))
from test_upgrade import build_tree  # the acceptance tests' tree generator


def make_tree(dest: Path, total: int, big: int) -> int:
    if dest.exists():
        shutil.rmtree(dest)
    tree = build_tree(dest, total + 12, big=big)
    for where in tree.broken:
        folder = dest / where
        shutil.rmtree(folder if folder.is_dir() else folder.parent)
    return len(tree.good)


def realistic_tree(reps: int, count: int = 24) -> tuple[int, list[float], list[float], list[float]]:
    """First runs (--jobs 1 and 2) and re-runs on deployments of a realistic size: 128 MiB
    programs, about the smallest real on-device LLM programs (SmolLM2-135M in 8 bits is ~150 MB)."""
    from bigpte import make_big_pte

    program = make_big_pte(WORK / "big-128m.pte", gib=1 / 8)
    tokenizer = ROOT / "fixtures" / "tokenizers" / "sp.model"
    tree = WORK / "upgrade-big-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for i in range(count):
        folder = tree / f"team{i % 4}" / f"model-{i:03d}"
        folder.mkdir(parents=True)
        shutil.copyfile(program, folder / "model.pte")
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
    cli = [str(VENV_BIN / "etm-compat"), "upgrade", str(tree)]
    firsts1, firsts, reruns = [], [], []
    for i in range(reps):
        out = WORK / f"upgrade-big-out-{i}"
        shutil.rmtree(out, ignore_errors=True)
        firsts1 += [s.seconds for s in measure([*cli, "--out", str(out), "--jobs", "1"], 1)]
        shutil.rmtree(out, ignore_errors=True)
        firsts += [s.seconds for s in measure([*cli, "--out", str(out), "--jobs", "2"], 1)]
        reruns += [s.seconds for s in measure([*cli, "--out", str(out), "--jobs", "2"], 2)]
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    return count, firsts1, firsts, reruns


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--big", type=int, default=4, help="copies of each ~730 KB layout")
    ns = parser.parse_args()
    reps = 2 if ns.quick else 3
    tree = WORK / "upgrade-tree"
    count = make_tree(tree, ns.deployments, ns.big)
    cli = [str(VENV_BIN / "etm-compat"), "upgrade", str(tree)]

    def first_runs(jobs: int) -> list[float]:
        times = []
        for i in range(reps):
            out = WORK / f"upgrade-out-j{jobs}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            times += [s.seconds for s in measure([*cli, "--out", str(out), "--jobs", str(jobs)], 1)]
        return times

    t1 = first_runs(1)
    t2 = first_runs(2)
    finished = WORK / "upgrade-out-j2-0"
    shutil.rmtree(finished, ignore_errors=True)
    measure([*cli, "--out", str(finished), "--jobs", "2"], 1)
    rerun = [s.seconds for s in measure([*cli, "--out", str(finished), "--jobs", "2"], reps + 2)]

    res = Result("upgrade", "./dev.sh bench upgrade  (= .venv/bin/python benchmarks/bench_upgrade.py)")
    speedup = median(t1) / median(t2)
    res.rows.append(Row(f"upgrade {count} deployments, --jobs 2", median(t2), "s",
                        "--jobs 1 (in-process)", median(t1), speedup, ">= 1.7x faster", speedup >= 1.7,
                        spread(t2)))
    share = median(rerun) / median(t2)
    res.rows.append(Row(f"re-run on the finished tree ({count} up to date), --jobs 2", median(rerun), "s",
                        "first run, --jobs 2", median(t2), share, "<= 0.05 of the first run",
                        share <= 0.05, spread(rerun)))
    big_count, big_first1, big_first, big_rerun = realistic_tree(reps)
    big_speedup = median(big_first1) / median(big_first)
    res.rows.append(Row(f"upgrade {big_count} deployments with 128 MiB programs, --jobs 2", median(big_first), "s",
                        "--jobs 1 (in-process)", median(big_first1), big_speedup, ">= 1.7x faster",
                        big_speedup >= 1.7, spread(big_first)))
    share_big = median(big_rerun) / median(big_first)
    res.rows.append(Row(f"re-run on a finished tree of {big_count} deployments with 128 MiB programs, --jobs 2",
                        median(big_rerun), "s", "first run, --jobs 2", median(big_first), share_big,
                        "<= 0.05 of the first run", share_big <= 0.05, spread(big_rerun)))
    res.notes.append(f"Realistic tree: {big_count} deployments, each a real exported 128 MiB program "
                     "(benchmarks/bigpte.py) with the fixture SentencePiece tokenizer; re-run cost is "
                     "per deployment, so its share shrinks as programs grow to real sizes (100 MB-4 GB).")
    res.notes.append(f"Tree: {count} deployments ({ns.big} copies of each of the 6 big programs, "
                     "~730 KB; the rest 2 KB programs with a .ptd), nested 3-5 folders deep.")
    res.notes.append("Times are whole processes: interpreter start-up, scan, plan, pool start-up, packing.")
    res.notes.append("Why --jobs 2 gains little on this 2-core machine: one pack already keeps both cores busy "
                     "(sha256 in a thread, the byte copy in the kernel and the CRC in the main thread), so a "
                     "second worker competes for the same cores on large programs; on the small-program tree "
                     "the serial part (start-up, scan, plan, report: about a third of the run) bounds the "
                     "speedup near 1.6x by Amdahl's law. More cores, or a Dask cluster, is where jobs pay.")
    res.notes.append("Why the re-run share is high on the small-program tree: a re-run still starts Python, "
                     "lists every folder and opens every archive (~0.3 s here), against a first run of ~1.5 s "
                     "for 202 deployments of a few KB; with real program sizes the share drops below 5 %.")
    res.notes.append("speedup ratio = jobs1/jobs2 (higher is better); re-run ratio = rerun/first (lower is better).")
    res.write()
    for r in res.rows:
        print(f"{r.metric}: {r.value:.4g}{r.unit} vs {r.baseline_value:.4g}{r.unit} -> ratio {r.ratio:.3g} "
              f"({'met' if r.met else 'MISSED'} {r.target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
