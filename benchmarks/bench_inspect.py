"""`etm-compat inspect --json` vs the executorch-runtime way of reading a program's metadata.

Baseline: what a user had to do before, in a fresh process: import torch and executorch
(``from executorch.runtime import Runtime`` imports both), load the program, execute every constant
method. Both sides run as child processes on the same >= 1 GiB program (exported for real,
generated on demand); time and peak memory are compared as ratios. A second row shows that
inspect's cost is flat in file size (1 GiB program vs the 0.7 MB tiny Llama).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bigpte import make_big_pte
from common import ROOT, VENV_BIN, WORK, Result, Row, measure, median, spread, warm_up

RUNTIME_WAY = """
import sys
from executorch.runtime import Runtime  # imports torch too
assert "torch" in sys.modules
program = Runtime.get().load_program(sys.argv[1])
values = {}
for name in sorted(program.method_names):
    if name == "forward":
        continue
    values[name] = list(program.load_method(name).execute([]))
print(values)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--gib", type=float, default=1.0)
    ns = parser.parse_args()
    big = make_big_pte(WORK / "big.pte", gib=ns.gib)
    small = ROOT / "fixtures" / "llama" / "tiny_llama.pte"
    reps = 3 if ns.quick else 7
    ours = [str(VENV_BIN / "etm-compat"), "inspect", "--json"]
    base = [sys.executable, "-c", RUNTIME_WAY]

    warm_up([*ours, str(small)])
    ours_big = measure([*ours, str(big)], reps)
    ours_small = measure([*ours, str(small)], reps)
    runtime_big = measure([*base, str(big)], max(2, reps // 2))

    t_ours = [s.seconds for s in ours_big]
    t_base = [s.seconds for s in runtime_big]
    m_ours = [s.max_rss_bytes / 2**20 for s in ours_big]
    m_base = [s.max_rss_bytes / 2**20 for s in runtime_big]
    t_small = [s.seconds for s in ours_small]
    size_gib = big.stat().st_size / 2**30

    res = Result("inspect", "./dev.sh bench inspect  (= .venv/bin/python benchmarks/bench_inspect.py)")
    speedup = median(t_base) / median(t_ours)
    res.rows.append(Row(f"inspect --json, {size_gib:.2f} GiB .pte: time", median(t_ours), "s",
                        "executorch runtime: import torch + executorch, load_program, execute constant "
                        "methods", median(t_base), speedup, ">= 50x faster", speedup >= 50, spread(t_ours)))
    mem_ratio = median(m_base) / median(m_ours)
    res.rows.append(Row(f"inspect --json, {size_gib:.2f} GiB .pte: peak RSS", median(m_ours), "MiB",
                        "executorch runtime way", median(m_base), mem_ratio, "less memory (report)",
                        mem_ratio > 1, spread(m_ours, "MiB")))
    flat = median(t_ours) / median(t_small)
    res.rows.append(Row("inspect time, 1 GiB vs 0.7 MB program (flat in size)", median(t_ours), "s",
                        "inspect on fixtures/llama/tiny_llama.pte", median(t_small), flat,
                        "<= 1.2 (flat)", flat <= 1.2, spread(t_small)))
    res.notes.append("Ratios are baseline/ours for speed and memory (higher is better), ours/ours for flatness.")
    res.notes.append("Both sides include interpreter start-up and imports (the baseline's: torch and "
                     "executorch; inspect imports neither): that is what a user pays per call.")
    res.write()
    res.print_rows()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
