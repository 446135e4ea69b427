"""The core (inspect, pack, verify, diagnose, render) works with torch and executorch unavailable.

Each command runs in a fresh interpreter where importing torch, executorch or pytorch_tokenizers
raises ImportError, as on a machine that installed etm-compat without the runtime extras. The
blocker is a ``sitecustomize`` on PYTHONPATH, so the supervised worker the native checks run in
(a separate interpreter, etm_compat.isolation) is blocked as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import FIXTURES

SITECUSTOMIZE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "executorch", "pytorch_tokenizers"):
            raise ImportError(f"{name} is not installed (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
"""

BLOCKER = """
import sys
from etm_compat.cli.main import main
rc = main(sys.argv[1:])
leaked = [m for m in ("torch", "executorch") if m in sys.modules]
assert not leaked, leaked
sys.exit(rc)
"""


@pytest.fixture(autouse=True)
def _blocked(tmp_path_factory, monkeypatch):
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = (str(site), os.environ.get("PYTHONPATH"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("folder", ["hf_style", "with_ptd", "export_llm"])
def test_pack_verify_inspect_diagnose_without_the_runtime(tmp_path, folder):
    src = FIXTURES / "legacy" / folder
    out = tmp_path / "m.etm"
    packed = run("pack", str(src), "-o", str(out), "--json")
    assert packed.returncode == 0, packed.stderr
    assert json.loads(packed.stdout)["archive"] == str(out)
    assert run("verify", str(out)).returncode == 0
    info = run("inspect", "--json", str(out))
    assert info.returncode == 0 and json.loads(info.stdout)["kind"] == "etm"
    report = run("diagnose", "--json", str(src))
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["deployments"]


def test_runtime_check_without_the_runtime_is_exit_5(tmp_path):
    out = tmp_path / "m.etm"
    assert run("pack", str(FIXTURES / "legacy" / "with_ptd"), "-o", str(out)).returncode == 0
    proc = run("verify", "--runtime", str(out))
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
