"""Run the benchmark suite and regenerate BENCHMARKS.md from benchmarks/results/*.json.

    ./dev.sh bench                 # every benchmarks/bench_*.py, then BENCHMARKS.md
    ./dev.sh bench inspect archive # only these topics, then BENCHMARKS.md from all results
    ./dev.sh bench --render-only   # just rebuild BENCHMARKS.md
    ./dev.sh bench --quick         # fewer repetitions (passed to each script)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def run_scripts(topics: list[str], quick: bool) -> list[str]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if topics:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in topics]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        if subprocess.call(cmd, cwd=ROOT) != 0:
            failed.append(script.name)
    return failed


def render() -> str:
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = [
        "# Benchmarks",
        "",
        "Every figure is measured against its baseline **in the same run** and reported as a ratio.",
        "Regenerate everything with `./dev.sh bench` (one topic: `./dev.sh bench <topic>`; this file",
        "is rebuilt from `benchmarks/results/*.json` by `benchmarks/run.py`). Large inputs are generated",
        "on demand under `benchmarks/.work/` and never committed.",
        "",
    ]
    missed = []
    for res in results:
        lines += [f"## {res['topic']}", "", f"Command: `{res['command']}`  ", f"Machine: {res['machine']}", ""]
        lines += ["| metric | value | baseline | baseline value | ratio | target | met | spread |", "|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            ok = "yes" if r["met"] else "**missed**"
            if not r["met"]:
                missed.append(f"{res['topic']}: {r['metric']} (ratio {r['ratio']:.3g}, target {r['target']})")
            lines.append(
                f"| {r['metric']} | {r['value']:.4g} {r['unit']} | {r['baseline']} | {r['baseline_value']:.4g} {r['unit']} "
                f"| {r['ratio']:.3g} | {r['target']} | {ok} | {r.get('spread', '')} |"
            )
        for note in res.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    lines += ["## Targets missed", ""]
    lines += [f"- {m}" for m in missed] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("topics", nargs="*")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    ns = parser.parse_args()
    failed = [] if ns.render_only else run_scripts(ns.topics, ns.quick)
    out = ROOT / "BENCHMARKS.md"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(render())
    os.replace(tmp, out)
    print(f"wrote {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
