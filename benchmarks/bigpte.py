"""Make a real, large ExecuTorch program on demand (never committed).

The program is exported with executorch's own pipeline (torch.export -> to_edge(constant_methods)
-> to_executorch), so its layout is what real LLM programs have: a small FlatBuffer head and one
large constant segment. Its size is set by one Linear layer's weight.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work"

CONSTANTS = {
    "get_max_seq_len": 2048,
    "get_max_context_len": 2048,
    "get_vocab_size": 32000,
    "get_bos_id": 1,
    "get_eos_ids": [2, 32000],
    "use_kv_cache": True,
    "enable_dynamic_shape": False,
}


def make_big_pte(dest: Path, *, gib: float = 1.0) -> Path:
    """Export a program whose constant data is about ``gib`` GiB; reuse it if already there.

    The export runs in a child process: a benchmark that imported torch and held a 1 GiB
    program would pass that peak to every process it forks (Linux keeps ru_maxrss across
    fork + exec), and the memory figures of its children would be wrong.
    """
    if dest.exists() and dest.stat().st_size >= int(gib * (1 << 30)):
        return dest
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--gib", str(gib), "--out", str(dest)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return dest


def _export(dest: Path, gib: float) -> Path:
    import torch
    from executorch.exir import to_edge

    cols = 8192
    rows = int(gib * (1 << 30)) // (cols * 4) + 1

    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(cols, rows, bias=False)
            with torch.no_grad():
                self.proj.weight.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)[:, :4]

    torch.manual_seed(0)
    with torch.no_grad():
        ep = torch.export.export(Big().eval(), (torch.zeros(1, cols),))
    program = to_edge(ep, constant_methods=CONSTANTS).to_executorch()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        program.write_to_file(fh)
    os.replace(tmp, dest)
    return dest


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--out", default=str(WORK / "big.pte"))
    ns = parser.parse_args()
    path = _export(Path(ns.out), ns.gib)
    print(f"{path} {path.stat().st_size:,} bytes", file=sys.stderr)
