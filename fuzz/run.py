"""The long-run fuzz command (see docs/FUZZING.md).

    .venv/bin/python fuzz/run.py --target all --runs 100000            # mutation loop
    .venv/bin/python fuzz/run.py --target pte --runs 100000 --engine atheris
    .venv/bin/python fuzz/run.py --target archive --replay fuzz/crashes/archive-exception-ab.bin

Exit status: 0 when every execution ended normally or with an EtmError, 1 when there were
findings (saved under ``fuzz/crashes/``), 2 on bad usage. ``--engine atheris`` needs
``pip install atheris``; it runs each target in its own process (libFuzzer exits when done).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_NAMES = ("pte", "ptd", "tokenizer", "archive", "metadata", "template", "prompt_format")


def _cleanup_scratch() -> None:
    harnesses = sys.modules.get("fuzz.harnesses")
    if harnesses is not None and harnesses.Scratch._dir is not None:
        shutil.rmtree(harnesses.Scratch._dir, ignore_errors=True)


def _run_mutation(target: str, args: argparse.Namespace) -> int:
    from fuzz.engine import fuzz
    from fuzz.harnesses import TARGETS

    spec = TARGETS[target]

    def progress(stats: object) -> None:
        s = stats  # a Stats
        print(
            f"  {target}: {s.runs} runs, {s.seconds:.0f} s, corpus {s.corpus}, "  # type: ignore[attr-defined]
            f"findings {len(s.findings)}",  # type: ignore[attr-defined]
            file=sys.stderr,
            flush=True,
        )

    stats = fuzz(
        target,
        spec.run,
        spec.seeds(),
        runs=args.runs,
        seed=args.seed,
        hang_seconds=args.timeout,
        crash_dir=Path(args.crash_dir),
        max_seconds=args.max_seconds,
        progress=progress if args.verbose else None,
    )
    record = {
        "target": target,
        "engine": "mutation",
        "runs": stats.runs,
        "seconds": round(stats.seconds, 1),
        "execs_per_second": round(stats.runs / stats.seconds) if stats.seconds else None,
        "slowest_input_seconds": round(stats.slowest, 3),
        "corpus": stats.corpus,
        "findings": stats.distinct,
        "saved": [str(f.saved) for f in stats.findings if f.saved],
    }
    print(json.dumps(record), flush=True)
    for finding in stats.findings[:5]:
        print(finding.trace, file=sys.stderr)
    return 1 if stats.findings else 0


def _run_atheris(target: str, args: argparse.Namespace) -> int:
    """Run one target under libFuzzer in a child process (atheris.Fuzz never returns)."""
    corpus = HERE / "corpus" / target
    crashes = Path(args.crash_dir)
    crashes.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, str(HERE / "run.py"), "--atheris-child", target,
        str(corpus), f"-runs={args.runs}", f"-seed={args.seed or 1}",
        f"-timeout={int(args.timeout)}", "-rss_limit_mb=3072", "-max_len=1048576",
        f"-artifact_prefix={crashes}/{target}-", "-print_final_stats=1",
    ]
    if args.max_seconds:
        cmd.append(f"-max_total_time={int(args.max_seconds)}")
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    runs = next(
        (int(line.rsplit(":", 1)[1]) for line in proc.stderr.splitlines()
         if line.startswith("stat::number_of_executed_units")),
        None,
    )
    print(json.dumps({
        "target": target, "engine": "atheris", "runs": runs, "seconds": round(seconds, 1),
        "execs_per_second": round(runs / seconds) if runs and seconds else None,
        "exit": proc.returncode, "corpus": len(list(corpus.iterdir())) if corpus.is_dir() else 0,
    }), flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-6000:], file=sys.stderr)
        return 1
    return 0


def _atheris_child(argv: list[str]) -> None:
    import atheris

    target = argv[0]
    with atheris.instrument_imports(include=["etm_compat", "fuzz"]):
        from fuzz.harnesses import TARGETS
    spec = TARGETS[target]
    corpus = Path(argv[1])
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(spec.seeds()):
        path = corpus / f"seed-{i}"
        if not path.exists():
            path.write_bytes(seed)
    atexit.register(_cleanup_scratch)
    atheris.Setup([sys.argv[0], *argv[1:]], spec.run)
    atheris.Fuzz()


def _replay(target: str, files: list[str]) -> int:
    from fuzz.harnesses import TARGETS

    spec = TARGETS[target]
    for name in files:
        start = time.monotonic()
        spec.run(Path(name).read_bytes())  # a finding raises here, with its traceback
        print(f"{name}: ok ({time.monotonic() - start:.3f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-child"]:
        _atheris_child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, choices=(*TARGET_NAMES, "all"))
    parser.add_argument("--runs", type=int, default=100_000, help="executions per target")
    parser.add_argument("--engine", choices=("mutation", "atheris"), default="mutation")
    parser.add_argument("--seed", type=int, default=0, help="random seed (mutation engine)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an input is a hang")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop a target after this long")
    parser.add_argument("--crash-dir", default=str(HERE / "crashes"))
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run saved inputs once")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress every 5000 runs")
    args = parser.parse_args(argv)
    targets = TARGET_NAMES if args.target == "all" else (args.target,)
    if args.replay:
        if args.target == "all":
            parser.error("--replay needs one --target")
        return _replay(args.target, args.replay)
    os.environ.setdefault("NO_COLOR", "1")
    atexit.register(_cleanup_scratch)
    status = 0
    for target in targets:
        runner = _run_atheris if args.engine == "atheris" else _run_mutation
        status |= runner(target, args)
    return status


if __name__ == "__main__":
    sys.exit(main())
