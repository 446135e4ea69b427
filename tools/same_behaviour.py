"""Record what every command does on every fixture, to compare two commits of etm-compat.

Used to show that a refactor changes no behaviour: run it on the old commit and on the new one,
then compare the two record folders::

    python tools/same_behaviour.py record /tmp/before --root CHECKOUT_OF_OLD_COMMIT
    python tools/same_behaviour.py record /tmp/after --root CHECKOUT_OF_NEW_COMMIT
    python tools/same_behaviour.py compare /tmp/before /tmp/after

The fixtures are copied into a fixed scratch folder with fixed modification times (archives
record their sources' mtimes), and each command runs as ``python -m etm_compat`` there, with the
checkout's code first on ``PYTHONPATH``: the records do not depend on where a checkout lives or
when it was made. A record holds the exit code, stdout and stderr of each command, and the sha256
of every file it wrote (archives byte for byte). Only the command line is used, so the script
works on any commit that has it (a commit from before ``etm_compat/adapters`` became a link to
``adapters/`` needs that link made in its checkout first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout whose code runs (--root)
WORK = Path("/tmp/etm-same-behaviour-work")  # fixed, so paths printed by commands are equal
FIXED_MTIME = 1_700_000_000
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Name a colour."},
]
FIXTURE_FOLDERS = ("programs", "tokenizers", "llama", "legacy", "broken")
# Timings vary from run to run; everything else must be equal.
VOLATILE = re.compile(r'"(seconds|elapsed|duration|started|finished|wall)[a-z_]*": [0-9.e+-]+')
#: Scratch folder names (tempfile's random suffix) and the timestamp/pid of torch's log lines.
SCRATCH = re.compile(r"(/tmp/etm-(?:diagnose|verify)-)[a-z0-9_]{8}")
TORCH_LOG = re.compile(r"^([WIE])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ", re.M)


def _normalize(text: str) -> str:
    text = VOLATILE.sub(r'"\1": 0', text)
    text = SCRATCH.sub(r"\1XXXXXXXX", text)
    return TORCH_LOG.sub(r"\1<time> <pid> ", text)


def _fixture_paths() -> list[str]:
    fixtures = WORK / "fixtures"
    paths: list[str] = []
    for sub in FIXTURE_FOLDERS:
        base = fixtures / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            paths.append(str(path.relative_to(WORK)))
    return paths


def _run(args: list[str], *, stdin: str | None = None) -> dict[str, object]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="120", ETM_CACHE_DIR=str(WORK / "cache"), PYTHONPATH=str(ROOT))
    env.pop("ETM_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "etm_compat", *args],
        cwd=WORK, capture_output=True, text=True, env=env, input=stdin, timeout=600,
    )
    return {
        "args": args,
        "exit": proc.returncode,
        "stdout": _normalize(proc.stdout),
        "stderr": _normalize(proc.stderr),
    }


def _tree_digest(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".etm-")
    }


def record(out: Path) -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for sub in FIXTURE_FOLDERS:
        shutil.copytree(ROOT / "fixtures" / sub, WORK / "fixtures" / sub, symlinks=True)
    for path in (WORK / "fixtures").rglob("*"):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    messages = WORK / "messages.json"
    messages.write_text(json.dumps(MESSAGES))
    records: list[dict[str, object]] = []
    paths = _fixture_paths()
    for i, path in enumerate(paths):
        p = WORK / path
        records.append(_run(["inspect", path, "--json"]))
        if not p.is_dir() and not path.endswith(".pte"):
            continue
        if p.is_dir() and p.parent.name not in ("legacy", "broken") and path != "fixtures/llama":
            continue
        extra = (p / "ARGS").read_text().split() if (p / "ARGS").is_file() else []
        records.append(_run(["diagnose", path, "--json", *[a for a in extra if a != "--json"]]))
        records.append(_run(["render", path, "--messages", str(messages), "--json"]))
        archive = WORK / f"a{i}.etm"
        rec = _run(["pack", path, "-o", str(archive), "--json", "--no-fsync"])
        rec["files"] = _tree_digest(archive)
        records.append(rec)
        if archive.exists():
            records.append(_run(["verify", str(archive), "--json"]))
            records.append(_run(["inspect", str(archive), "--json"]))
            records.append(_run(["render", str(archive), "--messages", str(messages), "--json"]))
            records.append(_run(["diagnose", str(archive), "--json"]))
            unpacked = WORK / f"u{i}"
            rec = _run(["unpack", str(archive), "-o", str(unpacked), "--json"])
            rec["files"] = _tree_digest(unpacked)
            records.append(rec)
    for path in paths:  # archives shipped as fixtures (hostile and damaged ones included)
        if path.endswith(".etm"):
            records.append(_run(["verify", path, "--json"]))
            records.append(_run(["diagnose", path, "--json"]))
    tree = WORK / "tree"  # the recorded fixture folders only, whatever else fixtures/ holds
    for sub in FIXTURE_FOLDERS:
        shutil.copytree(WORK / "fixtures" / sub, tree / sub, symlinks=True)
    for fmt in ("json", "md", "html"):
        records.append(_run(["diagnose", str(tree), "--format", fmt]))
    records.append(_run(["upgrade", "fixtures/legacy", "--out", str(WORK / "up"), "--dry-run", "--json"]))
    rec = _run(["upgrade", "fixtures/legacy", "--out", str(WORK / "up"), "--json", "--jobs", "1",
                "--report", str(WORK / "up.json"), "--report", str(WORK / "up.md")])
    rec["files"] = _tree_digest(WORK / "up")
    rec["reports"] = {n: _normalize((WORK / n).read_text()) for n in ("up.json", "up.md") if (WORK / n).exists()}
    records.append(rec)
    records.append(_run(["upgrade", "fixtures/legacy", "--out", str(WORK / "up"), "--json", "--jobs", "1"]))
    for bad in (["inspect", "nonexistent.pte"], ["pack", "fixtures/legacy/et_example", "-o", str(WORK / "a0.etm")],
                ["render", "fixtures/legacy/et_example", "--messages", "fixtures/programs/xnnpack.pte"], []):
        records.append(_run(bad))
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    print(f"{len(records)} commands recorded in {out / 'records.json'}")
    return 0


def _normalized(record: dict[str, object]) -> dict[str, object]:
    out = {k: _normalize(v) if k in ("stdout", "stderr") and isinstance(v, str) else v for k, v in record.items()}
    reports = record.get("reports")
    if isinstance(reports, dict):
        out["reports"] = {name: _normalize(str(text)) for name, text in reports.items()}
    return out


def compare(a: Path, b: Path) -> int:
    left = [_normalized(r) for r in json.loads((a / "records.json").read_text())]
    right = [_normalized(r) for r in json.loads((b / "records.json").read_text())]
    if len(left) != len(right):
        print(f"different number of commands: {len(left)} vs {len(right)}")
        return 1
    differing = 0
    for x, y in zip(left, right, strict=True):
        if x != y:
            differing += 1
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            print(f"DIFFERS: etm-compat {' '.join(map(str, x['args']))}: {', '.join(keys)}")
    archives = sum(1 for r in left if r.get("files"))
    print(f"{len(left)} commands compared ({archives} wrote files): {differing} differ")
    return 1 if differing else 0


def main() -> int:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out", type=Path)
    r.add_argument("--root", type=Path, help="the checkout whose code runs (default: this one)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "record":
        ROOT = (args.root or ROOT).resolve()
        return record(args.out)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
