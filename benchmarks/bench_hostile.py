"""Hostile inputs are refused as fast as good ones are read (issue 14, item 5).

The hostile ``.pte``: 20 execution plans sharing one 50,000-value vector (tests/test_pte.py), so a
walker that follows every plan does 1,000,000 table visits for 200 kB of input. The baseline, in
the same run: a well-formed program of the same size (one plan owning the same vector). Both are
parsed in this process from memory with ``read_pte_bytes``; the ratio is refusal time over read time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Result, Row, median, spread
from test_pte import _shared_values_program

from etm_compat.errors import PteFormatError
from etm_compat.formats.pte import read_pte_bytes


def _time(data: bytes, reps: int, *, refused: bool) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        try:
            read_pte_bytes(data)
        except PteFormatError:
            if not refused:
                raise
        else:
            if refused:
                raise SystemExit("the hostile program was read, not refused")
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    ns = parser.parse_args()
    reps = 3 if ns.quick else 9
    hostile = _shared_values_program(plans=20)
    good = _shared_values_program(plans=1)
    t_bad = _time(hostile, reps, refused=True)
    t_good = _time(good, reps, refused=False)
    ratio = median(t_bad) / median(t_good)
    res = Result("hostile", "./dev.sh bench hostile  (= .venv/bin/python benchmarks/bench_hostile.py)")
    res.rows.append(Row(f"refuse .pte with 20 plans sharing 50k values ({len(hostile) // 1000} kB)",
                        median(t_bad), "s", f"read a well-formed .pte of {len(good) // 1000} kB",
                        median(t_good), ratio, "<= 3x the good read", ratio <= 3, spread(t_bad)))
    res.notes.append("Ratio is hostile/good (lower is better): the refusal's work is bounded by the input's size.")
    res.write()
    for r in res.rows:
        print(f"{r.metric}: {r.value:.4g}{r.unit} vs {r.baseline_value:.4g}{r.unit} -> ratio {r.ratio:.3g} ({'met' if r.met else 'MISSED'} {r.target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
