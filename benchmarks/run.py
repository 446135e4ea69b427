"""Run the benchmark suite and regenerate BENCHMARKS.md from benchmarks/results/*.json.

    ./dev.sh bench                 # every benchmarks/bench_*.py (one full run), then BENCHMARKS.md
    ./dev.sh bench inspect archive # only these topics (a rerun of each), then BENCHMARKS.md
    ./dev.sh bench --render-only   # just rebuild BENCHMARKS.md
    ./dev.sh bench --quick         # fewer repetitions (passed to each script)

BENCHMARKS.md is only ever written here, from the results files, so every number in it is one a
benchmark script computed. Which run made each topic's figures is kept in results/runs.json (the
ledger): a topic measured alone after the last full run is labelled as a rerun with its date, a
topic whose script failed in the full run is labelled with the date of the figures still shown,
and a results file written outside this script says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LEDGER = RESULTS / "runs.json"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _date_of(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_ledger() -> dict[str, Any]:
    try:
        data = json.loads(LEDGER.read_text())
    except (OSError, ValueError):
        return {"full_run": None, "topics": {}}
    return data if isinstance(data, dict) else {"full_run": None, "topics": {}}


def topic_of(script: Path) -> str:
    return script.stem.removeprefix("bench_")


def run_scripts(topics: list[str], quick: bool) -> tuple[list[str], dict[str, Any]]:
    """Run the scripts; record in the ledger which run measured each topic that succeeded."""
    scripts = sorted(HERE.glob("bench_*.py"))
    full = not topics
    if topics:
        unknown = set(topics) - {topic_of(s) for s in scripts}
        if unknown:
            raise SystemExit(f"unknown topic(s): {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if topic_of(s) in topics]
    ledger = load_ledger()
    run_id = _now()
    if full:
        ledger["full_run"] = {"date": run_id, "topics": [topic_of(s) for s in scripts], "failed": []}
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        if subprocess.call(cmd, cwd=ROOT) != 0:
            failed.append(script.name)
            if full:
                ledger["full_run"]["failed"].append(topic_of(script))
            continue
        result = RESULTS / f"{topic_of(script)}.json"
        if result.is_file():
            ledger["topics"][topic_of(script)] = {
                "date": _now(),
                "run": run_id,
                "full": full,
                "quick": quick,
                "mtime_ns": result.stat().st_mtime_ns,
            }
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write_json(LEDGER, ledger)
    return failed, ledger


def provenance(topic: str, path: Path, ledger: dict[str, Any]) -> str | None:
    """How this topic's figures relate to the last full run (None: they are from it)."""
    full = ledger.get("full_run") or {}
    entry = (ledger.get("topics") or {}).get(topic)
    if entry is None or entry.get("mtime_ns") != path.stat().st_mtime_ns:
        where = f"; the full run of {full['date']} did not produce them" if full else ""
        return f"**Measured outside `./dev.sh bench`** (results file of {_date_of(path)}){where}."
    quick = " with --quick" if entry.get("quick") else ""
    if full and entry.get("run") == full.get("date"):
        return f"Measured by the full run of {full['date']}{quick}." if quick else None
    if full and topic in full.get("failed", []):
        return (f"**Not re-measured**: the script failed in the full run of {full['date']}; "
                f"these figures are from {entry['date']}{quick}.")
    since = f"; the other topics come from the full run of {full['date']}" if full else ""
    return f"**Rerun**: this topic was measured alone on {entry['date']}{quick}{since}."


def render() -> str:
    ledger = load_ledger()
    full = ledger.get("full_run")
    lines = [
        "# Benchmarks",
        "",
        "Every figure is measured against its baseline **in the same run** and reported as a ratio.",
        "Regenerate everything with `./dev.sh bench` (one topic: `./dev.sh bench <topic>`, which is",
        "labelled below as a rerun); this file is written only by `benchmarks/run.py`, from",
        "`benchmarks/results/*.json`. Large inputs are generated on demand under `benchmarks/.work/`",
        "and never committed. Timings are from a shared machine: see each row's spread.",
        "",
    ]
    if full:
        lines += [f"Last full run: {full['date']} ({len(full['topics'])} topics).", ""]
    missed = []
    for path in sorted(RESULTS.glob("*.json")):
        if path == LEDGER:
            continue
        res = json.loads(path.read_text())
        topic = res.get("topic", path.stem)
        lines += [f"## {topic}", ""]
        label = provenance(topic, path, ledger)
        if label:
            lines += [label, ""]
        lines += [f"Command: `{res['command']}`  ", f"Machine: {res['machine']}", ""]
        lines += ["| metric | value | baseline | baseline value | ratio | target | met | spread |", "|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            ok = "yes" if r["met"] else "**missed**"
            if not r["met"]:
                missed.append(f"{topic}: {r['metric']} (ratio {r['ratio']:.3g}, target {r['target']})")
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
    failed = [] if ns.render_only else run_scripts(ns.topics, ns.quick)[0]
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
