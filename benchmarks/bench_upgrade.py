"""Bulk upgrade: --jobs 2 against --jobs 1, re-runs, and how the cost per deployment scales.

Three trees, all generated under benchmarks/.work:

* the 200-deployment tree tests/test_upgrade.py builds (nested folders; a few 729 kB programs of
  each layout, the rest 2 kB programs with a .ptd), minus its deliberately broken deployments so
  every run exits 0: ``--jobs 2`` against ``--jobs 1``, and a re-run;
* 24 deployments with real exported 128 MiB programs (benchmarks/bigpte.py);
* hub mirrors of 1,000 and 10,000 deployments (``org-NNN/model-NNNNN/<revision>/``, every layout
  of fixtures/legacy with its 729 kB programs replaced by the 4.6 kB fixtures/programs/constants_all.pte,
  hard links of one copy; some models share one tokenizer folder): scan, plan, first run and
  re-run, each per deployment, 10,000 against 1,000. Made once, reused while its stamp matches.

Whole-process rows run ``etm-compat upgrade`` as a user does (start-up included); scan and plan
rows time the library calls inside one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    ROOT,
    VENV_BIN,
    WORK,
    Result,
    Row,
    Sample,
    bench_env,
    measure,
    median,
    run_child,
    spread,
    warm_up,
)

sys.path.insert(0, str(ROOT / "tests"))
from test_upgrade import build_tree  # the acceptance tests' tree generator

LEGACY = ROOT / "fixtures" / "legacy"
TINY = ROOT / "fixtures" / "programs" / "constants_all.pte"
HUB_LAYOUTS = ("et_example", "hf_style", "export_llm", "tiktoken_llama3", "variants", "with_ptd", "shared_tokenizer")
REVISIONS = ("main", "v1.0", "4f2a9c1e0b7d3a5c6e8f9a1b2c3d4e5f60718293")
HUB_VERSION = "hub-1"

#: Runs `etm-compat upgrade ARGS` in this process through the console entry point, and at exit
#: prints its CPU use (this process, and the pool workers it waited for) and the CPU its imports
#: took, as JSON on stderr.
CPU_PROBE = """
import atexit, json, resource, sys
from etm_compat.cli.main import run
from etm_compat.bulk import executor
imports = resource.getrusage(resource.RUSAGE_SELF)
helped = []
shutdown = executor.LazyProcessPool.shutdown
def counted(pool, *args, **kwargs):
    helped.append(pool.helped)
    return shutdown(pool, *args, **kwargs)
executor.LazyProcessPool.shutdown = counted
def report():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = lambda r: r.ru_utime + r.ru_stime
    print(json.dumps({"imports": cpu(imports), "parent": cpu(me), "workers": cpu(kids), "helped": sum(helped)}),
          file=sys.stderr)
atexit.register(report)
run()
"""

#: Times scan() and plan_upgrade() in one process (serially, no state): JSON on stderr.
LIBRARY_PROBE = """
import json, sys, time
from etm_compat.adapters import default_adapters
from etm_compat.bulk.upgrade import plan_upgrade
from etm_compat.legacy.scan import scan
root, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
adapters = default_adapters()
scans, plans, scan_cpu, plan_cpu = [], [], [], []
for _ in range(reps):
    start, cpu = time.perf_counter(), time.process_time()
    found = scan(root, adapters)
    scans.append(time.perf_counter() - start)
    scan_cpu.append(time.process_time() - cpu)
    start, cpu = time.perf_counter(), time.process_time()
    plan = plan_upgrade(root, adapters, out=out, remember=False)
    plans.append(time.perf_counter() - start)
    plan_cpu.append(time.process_time() - cpu)
again = plan_upgrade(root, adapters, out=out).work
statuses = sorted({i.status for i in plan.items})
print(json.dumps({"scan": scans, "plan": plans, "scan_cpu": scan_cpu, "plan_cpu": plan_cpu, "deployments": len(found.deployments), "statuses": statuses,
                  "rerun_work": [again.folders_read, again.archives_opened, again.folders_remembered,
                                 again.archives_remembered]}), file=sys.stderr)
"""


def make_tree(dest: Path, total: int, big: int) -> int:
    if dest.exists():
        shutil.rmtree(dest)
    tree = build_tree(dest, total + 12, big=big)
    for where in tree.broken:
        folder = dest / where
        shutil.rmtree(folder if folder.is_dir() else folder.parent)
    return len(tree.good)


# --- the hub mirror ---------------------------------------------------------------------------------


def _templates(root: Path) -> Path:
    """One copy of each layout's files (hidden: the scan skips it), tiny programs."""
    tpl = root / ".templates"
    for layout in HUB_LAYOUTS[:-1]:
        (tpl / layout).mkdir(parents=True)
        for f in sorted((LEGACY / layout).iterdir()):
            src = TINY if f.suffix == ".pte" and f.stat().st_size > 100_000 else f
            shutil.copy2(src, tpl / layout / f.name)
    (tpl / "README.md").write_text("# model card\n")
    return tpl


def _link_all(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        os.link(f, dest / f.name)


def make_hub_tree(root: Path, count: int) -> Path:
    """``count`` deployments laid out like a hub mirror; reused when already made."""
    stamp, want = root / ".complete", f"{HUB_VERSION} {count}\n"
    if stamp.is_file() and stamp.read_text() == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    tpl = _templates(root)
    made = model = 0
    while made < count:
        layout = HUB_LAYOUTS[model % len(HUB_LAYOUTS)]
        base = root / f"org-{model // 40:03d}" / f"model-{model:05d}"
        base.mkdir(parents=True)
        os.link(tpl / "README.md", base / "README.md")
        if layout == "shared_tokenizer":  # revisions share the model's tokenizer/ folder
            (base / "tokenizer").mkdir()
            os.link(tpl / "et_example" / "tokenizer.model", base / "tokenizer" / "tokenizer.model")
        for revision in REVISIONS[: 1 + model % 3]:
            if made >= count:
                break
            dest = base / revision
            if layout == "shared_tokenizer":
                dest.mkdir()
                os.link(tpl / "et_example" / "model.pte", dest / "model.pte")
                made += 1
            elif layout == "variants" and count - made >= 2:
                _link_all(tpl / layout, dest)
                made += 2
            else:
                _link_all(tpl / ("et_example" if layout == "variants" else layout), dest)
                made += 1
        model += 1
    stamp.write_text(want)
    return root


def _probe(sample: Sample) -> dict[str, float]:
    line = sample.stderr.strip().splitlines()[-1]
    return json.loads(line)


def hub_scaling(sizes: tuple[int, ...], reps: int, quick: bool) -> dict[int, dict[str, list[float]]]:
    """Per-deployment seconds of scan, plan, first run and re-run, for each tree size."""
    cli = [str(VENV_BIN / "etm-compat"), "upgrade"]
    out: dict[int, dict[str, list[float]]] = {}
    for n in sizes:
        tree = make_hub_tree(WORK / f"hub-{n}", n)
        done = WORK / f"hub-{n}-out"
        firsts, reruns = [], []
        first_reps = 1 if quick or n > 5000 else reps
        for _ in range(first_reps):
            shutil.rmtree(done, ignore_errors=True)
            args = [*cli, str(tree), "--out", str(done), "--jobs", "2", "--report", str(done / "report.json")]
            firsts += [s.seconds / n for s in measure(args, 1)]
        rerun = [*cli, str(tree), "--out", str(done), "--jobs", "2"]
        reruns = [s.seconds / n for s in measure(rerun, reps + 1)]
        report = [*rerun, "--report", str(done / "again.json"), "--overwrite-reports"]
        with_report = [s.seconds / n for s in measure(report, reps)]
        lib = _probe(run_child([sys.executable, "-c", LIBRARY_PROBE, str(tree), str(done), str(max(1, reps - 1))]))
        assert lib["deployments"] == n and lib["statuses"] == ["up_to_date"], lib
        out[n] = {
            "scan": [t / n for t in lib["scan"]],
            "plan": [t / n for t in lib["plan"]],
            "scan (CPU time)": [t / n for t in lib["scan_cpu"]],
            "plan (CPU time)": [t / n for t in lib["plan_cpu"]],
            "first run": firsts,
            "re-run": reruns,
            "re-run with a JSON report": with_report,
            "rerun_work": lib["rerun_work"],
        }
    return out


def realistic_tree(reps: int, count: int = 24) -> tuple[int, list[float], list[float], list[float]]:
    """First runs (--jobs 1 and 2) and re-runs on deployments of a realistic size: 128 MiB
    programs, the smallest size class of real on-device LLM programs."""
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


def first_runs(tree: Path, reps: int) -> dict[int, tuple[list[float], list[dict[str, float]]]]:
    """Whole-process first runs with the CPU probe, --jobs 1 and 2 taking turns (so that the
    load of a shared machine falls on both alike): wall seconds, and where the CPU went."""
    runs: dict[int, tuple[list[float], list[dict[str, float]]]] = {1: ([], []), 2: ([], [])}
    for i in range(reps):
        for jobs in (1, 2):
            out = WORK / f"upgrade-out-j{jobs}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            sample = run_child([sys.executable, "-c", CPU_PROBE, "upgrade", str(tree), "--out", str(out),
                                "--jobs", str(jobs)])
            runs[jobs][0].append(sample.seconds)
            runs[jobs][1].append(_probe(sample))
    return runs


def machine_scaling(tree: Path, reps: int) -> tuple[list[float], list[float]]:
    """What two cores give this work at best: one ``--jobs 1`` first run alone, and two of them
    started together (each into its own output), taking turns. Two independent processes share
    nothing and have no serial part, so ``2 * alone / together`` bounds what any ``--jobs 2``
    schedule can gain on this machine (memory, caches, the file system's journal)."""
    cli = [str(VENV_BIN / "etm-compat"), "upgrade", str(tree), "--jobs", "1"]
    outs = [WORK / "upgrade-scaling-a", WORK / "upgrade-scaling-b"]
    alone, together = [], []
    for _ in range(reps):
        for pair in (outs[:1], outs):
            for out in pair:
                shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            children = [subprocess.Popen([*cli, "--out", str(out)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=bench_env()) for out in pair]
            if any(child.wait() != 0 for child in children):
                raise SystemExit(f"{cli}: a run failed")
            (together if len(pair) == 2 else alone).append(time.perf_counter() - start)
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    return alone, together


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--big", type=int, default=4, help="copies of each 729 kB layout")
    parser.add_argument("--hub", type=int, nargs="*", default=[1_000, 10_000], help="hub tree sizes")
    parser.add_argument("--no-realistic", action="store_true", help="skip the 128 MiB tree")
    ns = parser.parse_args()
    reps = 2 if ns.quick else 3
    tree = WORK / "upgrade-tree"
    count = make_tree(tree, ns.deployments, ns.big)
    cli = [str(VENV_BIN / "etm-compat"), "upgrade", str(tree)]
    warm_up([str(VENV_BIN / "etm-compat"), "--help"])

    runs = first_runs(tree, reps)
    (t1, cpu1), (t2, cpu2) = runs[1], runs[2]
    finished = WORK / "upgrade-out-j2-0"
    rerun = [s.seconds for s in measure([*cli, "--out", str(finished), "--jobs", "2"], reps + 2)]
    startup = [s.seconds for s in measure([str(VENV_BIN / "etm-compat"), "--help"], reps + 2)]
    # What --jobs 2 cannot share out: start-up and the plan, which a dry run is (nothing written).
    serial = [s.seconds for s in measure([*cli, "--out", str(WORK / "upgrade-dry-run"), "--jobs", "1",
                                          "--dry-run", "--json"], reps + 2)]
    alone, together = machine_scaling(tree, reps + 2)

    res = Result("upgrade", "./dev.sh bench upgrade  (= .venv/bin/python benchmarks/bench_upgrade.py)")
    speedup = median(t1) / median(t2)
    res.rows.append(Row(f"upgrade {count} deployments, --jobs 2", median(t2), "s",
                        "--jobs 1 (in-process)", median(t1), speedup, ">= 1.7x faster", speedup >= 1.7,
                        spread(t2)))
    share = median(rerun) / median(t2)
    res.rows.append(Row(f"re-run on the finished tree ({count} up to date), --jobs 2", median(rerun), "s",
                        "first run, --jobs 2", median(t2), share, "<= 0.05 of the first run",
                        share <= 0.05, spread(rerun)))

    sizes = tuple(sorted(ns.hub))
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        hub = hub_scaling(sizes, reps, ns.quick)
        for phase in ("scan", "plan", "first run", "re-run", "re-run with a JSON report"):
            big_ms, small_ms = median(hub[large][phase]) * 1e3, median(hub[small][phase]) * 1e3
            growth = big_ms / small_ms
            res.rows.append(Row(f"hub tree, {phase}: per deployment at {large:,}", big_ms, "ms",
                                f"the same at {small:,}", small_ms, growth, "<= 1.2 (linear)", growth <= 1.2,
                                spread([v * 1e3 for v in hub[large][phase]], "ms")))
        for phase in ("scan (CPU time)", "plan (CPU time)"):  # what the machine's load cannot skew
            big_ms, small_ms = median(hub[large][phase]) * 1e3, median(hub[small][phase]) * 1e3
            res.rows.append(Row(f"hub tree, {phase}: per deployment at {large:,}", big_ms, "ms",
                                f"the same at {small:,}", small_ms, big_ms / small_ms, "report", True,
                                spread([v * 1e3 for v in hub[large][phase]], "ms")))
        per_dep = median(hub[large]["re-run"]) * 1e3
        res.rows.append(Row(f"hub tree, re-run of {large:,} up-to-date deployments: per deployment", per_dep, "ms",
                            "target", 0.5, per_dep / 0.5, "<= 0.5 ms", per_dep <= 0.5,
                            spread([v * 1e3 for v in hub[large]["re-run"]], "ms")))
        read, opened, kept, reused = hub[large]["rerun_work"]
        res.notes.append(f"Hub re-run work at {large:,} (counted by the plan): {read} folders read and {opened} "
                         f"archives opened; {kept:,} folder reads and {reused:,} archive checks taken from "
                         "the state the previous run left (.etm-upgrade/state.json: folder stamps, archive "
                         "stat + source fingerprint).")
        res.notes.append("Hub rows: scan = legacy.scan.scan(), plan = plan_upgrade() on the finished tree "
                         "without the state (every folder read, every archive opened), both serial in one "
                         "process; first run = `etm-compat upgrade --jobs 2 --report report.json` on an "
                         "empty output; re-run = the same command on the finished output.")

    if not ns.no_realistic:
        big_count, big_first1, big_first, big_rerun = realistic_tree(reps)
        big_speedup = median(big_first1) / median(big_first)
        res.rows.append(Row(f"upgrade {big_count} deployments with 128 MiB programs, --jobs 2", median(big_first),
                            "s", "--jobs 1 (in-process)", median(big_first1), big_speedup, ">= 1.7x faster",
                            big_speedup >= 1.7, spread(big_first)))
        share_big = median(big_rerun) / median(big_first)
        res.rows.append(Row(f"re-run on a finished tree of {big_count} deployments with 128 MiB programs, "
                            "--jobs 2", median(big_rerun), "s", "first run, --jobs 2", median(big_first),
                            share_big, "<= 0.05 of the first run", share_big <= 0.05, spread(big_rerun)))
        res.notes.append(f"Realistic tree: {big_count} deployments, each a real exported 128 MiB program "
                         "(benchmarks/bigpte.py) with the fixture SentencePiece tokenizer.")

    parent1 = median([c["parent"] for c in cpu1])
    parent2, imports2 = median([c["parent"] for c in cpu2]), median([c["imports"] for c in cpu2])
    workers2, helped2 = median([c["workers"] for c in cpu2]), median([c["helped"] for c in cpu2])
    total2 = median([c["parent"] + c["workers"] for c in cpu2])
    s_serial, s_first = median(serial), median(t1)
    bound = s_serial + (s_first - s_serial) / 2
    gain = 2 * median(alone) / median(together)
    ceiling = s_serial + (s_first - s_serial) / gain
    res.rows.append(Row(f"two --jobs 1 upgrades of the {count}-deployment tree at once: throughput gain",
                        median(together), "s", "one alone", median(alone), gain,
                        "report (2.0 = the machine doubles this work)", True, spread(together)))
    res.rows.append(Row("--jobs 2 at best on this machine: start-up and planning, then the rest at that gain",
                        ceiling, "s", "--jobs 1", s_first, s_first / ceiling,
                        "report (the most --jobs 2 can reach here)", True, spread(serial)))
    res.notes.append(f"What --jobs 2 cannot share out: start-up and planning (`upgrade --dry-run --json --jobs 1` "
                     f"on the same tree, medians) take {s_serial:.3f} s of --jobs 1's {s_first:.2f} s; even with "
                     f"the rest split evenly over two cores at no cost, --jobs 2 would take {bound:.2f} s, "
                     f"{s_first / bound:.2f}x.")
    res.notes.append(f"What two cores give this work: two independent --jobs 1 runs started together took "
                     f"{median(together):.2f} s against {median(alone):.2f} s for one alone, a throughput gain of "
                     f"{gain:.2f}x, not 2x (they share nothing but the machine: memory, caches, the file "
                     f"system's journal, which every archive's fsync commits). With start-up and planning "
                     f"serial and the rest sped up by that gain, --jobs 2 cannot beat {ceiling:.2f} s here, "
                     f"{s_first / ceiling:.2f}x --jobs 1.")
    res.notes.append(f"Where the CPU of a first run on the {count}-deployment tree goes (getrusage, medians): "
                     f"--jobs 1: {parent1:.2f} s in one process; --jobs 2: {parent2:.2f} s in the parent "
                     f"({imports2:.2f} s of it starting the interpreter and the command line; it also ran "
                     f"{helped2:g} of the pool's calls itself while it waited), {workers2:.2f} s in its "
                     f"worker (--jobs 2 is this process and one worker; the worker reads folders and opens "
                     f"archives for the plan, and packs); {total2:.2f} s in "
                     f"all, so on two cores no schedule of --jobs 2 beats {total2 / 2:.2f} s, "
                     f"{parent1 / (total2 / 2):.2f}x --jobs 1's CPU time.")
    res.notes.append(f"Start-up alone (`etm-compat --help`): {median(startup):.3f} s; a re-run of the "
                     f"{count}-deployment tree takes {median(rerun):.3f} s.")
    res.notes.append(f"Tree: {count} deployments ({ns.big} copies of each of the 6 big programs, 729 kB; "
                     "the rest 2 kB programs with a .ptd), nested 3-5 folders deep.")
    res.notes.append("Times are whole processes (interpreter start-up, imports, scan, plan, pool start-up, "
                     "packing), with the bytecode cache on (benchmarks/common.py, bench_env).")
    res.notes.append("speedup ratio = jobs1/jobs2 (higher is better); re-run ratio = rerun/first and "
                     "10,000/1,000 growth (lower is better).")
    res.write()
    res.print_rows()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
