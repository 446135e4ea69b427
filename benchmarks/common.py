"""Shared measurement helpers: run a child process, return its wall time and peak memory.

Child processes get :func:`bench_env`: Python's bytecode cache on (in ``benchmarks/.work``), as
an installed package has it, even when the calling shell sets ``PYTHONDONTWRITEBYTECODE``
(otherwise every measured process would compile etm-compat from source first).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / ".work"
VENV_BIN = Path(sys.executable).parent


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of measured child processes (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(WORK / "pycache")
    return {**env, **(extra or {})}


@dataclass(frozen=True)
class Sample:
    seconds: float
    max_rss_bytes: int
    #: CPU seconds of the child and of its own children (user + system, from wait4).
    cpu_seconds: float = 0.0
    stderr: str = ""


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Sample:
    """Run ``cmd`` to completion; its own wall time and peak RSS (from wait4, per child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or bench_env(), cwd=cwd
    )
    stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return Sample(elapsed, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, stderr)


def measure(cmd: Sequence[str], repeat: int, **kw: object) -> list[Sample]:
    return [run_child(cmd, **kw) for _ in range(repeat)]  # type: ignore[arg-type]


def warm_up(cmd: Sequence[str]) -> None:
    """Run ``cmd`` once, unmeasured: fills the bytecode cache and the page cache."""
    run_child(cmd)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], unit: str = "s") -> str:
    return f"min {min(values):.4g}{unit}, max {max(values):.4g}{unit}, n={len(values)}"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()} ({cpu})"


@dataclass
class Row:
    metric: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str
    met: bool
    spread: str = ""


@dataclass
class Result:
    topic: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{self.topic}.json"
        data = {"topic": self.topic, "command": self.command, "machine": machine(), "rows": [asdict(r) for r in self.rows], "notes": self.notes}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, out)
        return out

    def print_rows(self) -> None:
        """One line a row on stdout: what the script measured, and whether each target is met."""
        for r in self.rows:
            print(f"{r.metric}: {r.value:.4g}{r.unit} vs {r.baseline_value:.4g}{r.unit} -> ratio {r.ratio:.3g} "
                  f"({'met' if r.met else 'MISSED'} {r.target})")
