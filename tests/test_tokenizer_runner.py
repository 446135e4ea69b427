"""The runner check (pytorch_tokenizers, the on-device runner's own loader) runs once per
distinct tokenizer content in a process, however many deployments share that tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from etm_compat.adapters import default_adapters
from etm_compat.diagnosis import diagnose
from etm_compat.formats.tokenizer import runner
from etm_compat.formats.tokenizer.detect import read_tokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _unique_tokenizer(dest: Path, indent: int) -> Path:
    """hf_bpe's tokenizer.json re-written with another indent: same tokenizer, new bytes."""
    doc = json.loads((FIXTURES / "tokenizers" / "hf_bpe" / "tokenizer.json").read_text())
    dest.write_text(json.dumps(doc, indent=indent))
    return dest


def test_a_tree_sharing_one_tokenizer_runs_the_check_once(tmp_path: Path) -> None:
    source = _unique_tokenizer(tmp_path / "tokenizer.json", indent=7)
    for i in range(20):
        folder = tmp_path / "tree" / f"dep{i:02d}"
        folder.mkdir(parents=True)
        shutil.copyfile(FIXTURES / "legacy" / "hf_style" / "model.pte", folder / "model.pte")
        shutil.copyfile(source, folder / "tokenizer.json")
    before = runner.native_checks
    report = diagnose(tmp_path / "tree", default_adapters())
    assert len(report.deployments) == 20
    assert runner.native_checks - before == 1


def test_a_repeat_names_its_own_file(tmp_path: Path) -> None:
    broken = tmp_path / "a" / "tokenizer.json"
    broken.parent.mkdir()
    doc = json.loads((FIXTURES / "tokenizers" / "hf_bpe" / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = {"type": "Whitespace"}  # a pre-tokenizer the runner lacks
    broken.write_text(json.dumps(doc, indent=5))
    other = tmp_path / "b" / "tokenizer.json"
    other.parent.mkdir()
    shutil.copyfile(broken, other)
    first = read_tokenizer(broken).runner
    before = runner.native_checks
    second = read_tokenizer(other).runner
    assert runner.native_checks == before  # answered from the first check
    assert first is not None and second is not None and first.loadable is False
    assert second.loadable is False and str(other) in (second.error or "") and str(broken) not in (second.error or "")
