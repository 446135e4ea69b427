"""The legacy-layout adapters on the committed legacy fixtures, and on folders built from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.adapters import (
    ExecutorchExampleAdapter,
    ExportLlmAdapter,
    HfStyleAdapter,
    default_adapters,
)
from etm_compat.formats.ptd import read_ptd
from etm_compat.formats.pte import read_pte
from etm_compat.legacy.scan import deployments_in_folder

LEGACY = FIXTURES / "legacy"


def _read(name: str):
    folder = LEGACY / name
    if not folder.is_dir():
        pytest.skip(f"fixtures/legacy/{name} missing")
    found, skipped = deployments_in_folder(folder, default_adapters())
    assert not skipped
    return found


def test_every_adapter_satisfies_the_protocol():
    from etm_compat.legacy.deployment import Adapter

    for adapter in default_adapters():
        assert isinstance(adapter, Adapter)
        assert adapter.name


@pytest.mark.parametrize(
    ("folder", "layout"),
    [
        ("et_example", "executorch_example"),
        ("hf_style", "hf_style"),
        ("export_llm", "export_llm"),
        ("with_ptd", "executorch_example"),
        ("tiktoken_llama3", "export_llm"),
    ],
)
def test_layout_is_recognised(folder, layout):
    (dep,) = _read(folder)
    assert dep.layout == layout
    assert dep.tokenizer is not None and dep.tokenizer.parent == LEGACY / folder


def test_hf_style_collects_its_configs():
    (dep,) = _read("hf_style")
    assert dep.tokenizer.name == "tokenizer.json"
    assert {"tokenizer_config", "generation_config", "config"} <= set(dep.configs)


def test_export_llm_records_the_yaml_and_params():
    (dep,) = _read("export_llm")
    assert dep.configs["export_config"].suffix in (".yaml", ".yml")
    assert dep.configs["params"].name == "params.json"
    assert dep.tokenizer.name == "tokenizer.bin"


def test_variants_give_one_deployment_per_program_sharing_the_tokenizer():
    deps = _read("variants")
    assert sorted(d.program.name for d in deps) == ["model_a.pte", "model_b.pte"]
    assert len({d.tokenizer for d in deps}) == 1


def test_ptd_is_paired_by_external_keys_not_by_name():
    (dep,) = _read("with_ptd")
    assert [p.name for p in dep.weights] == ["weights.ptd"]
    wanted = set(read_pte(dep.program).external_keys)
    assert wanted and wanted <= read_ptd(dep.weights[0]).keys


def test_unrelated_ptd_is_not_paired(tmp_path):
    src = LEGACY / "with_ptd"
    if not src.is_dir():
        pytest.skip("fixture missing")
    # A program that needs no external weights, beside a .ptd named like it.
    shutil.copy(LEGACY / "et_example" / "model.pte", tmp_path / "model.pte")
    shutil.copy(src / "weights.ptd", tmp_path / "model.ptd")
    shutil.copy(src / "tokenizer.model", tmp_path / "tokenizer.model")
    (dep,) = deployments_in_folder(tmp_path, default_adapters())[0]
    assert dep.weights == ()
    assert any("no program uses model.ptd" in n for n in dep.notes)


def test_tokenizer_found_by_content_under_an_odd_name(tmp_path):
    shutil.copy(LEGACY / "et_example" / "model.pte", tmp_path / "model.pte")
    shutil.copy(LEGACY / "et_example" / "tokenizer.model", tmp_path / "spm_v2.model")
    shutil.copy(LEGACY / "hf_style" / "config.json", tmp_path / "notes.json")  # sniffs as no tokenizer
    (dep,) = deployments_in_folder(tmp_path, [ExecutorchExampleAdapter()])[0]
    assert dep.tokenizer == tmp_path / "spm_v2.model"


def test_folder_without_tokenizer_is_skipped_with_reason(tmp_path):
    shutil.copy(LEGACY / "et_example" / "model.pte", tmp_path / "model.pte")
    found, skipped = deployments_in_folder(tmp_path, default_adapters())
    assert found == []
    assert "no tokenizer" in skipped[0].reason


def test_a_pte_suffix_without_the_identifier_is_not_a_program(tmp_path):
    (tmp_path / "model.pte").write_bytes(b"not a program at all")
    shutil.copy(LEGACY / "et_example" / "tokenizer.model", tmp_path / "tokenizer.model")
    assert not ExecutorchExampleAdapter().detect(tmp_path)
    assert not HfStyleAdapter().detect(tmp_path)
    assert not ExportLlmAdapter().detect(tmp_path)


def test_sources_never_modified_by_reading(tmp_path):
    import hashlib

    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    before = digest(LEGACY / "hf_style")
    _read("hf_style")
    assert digest(LEGACY / "hf_style") == before


def test_a_corrupt_variant_does_not_hide_its_good_neighbour(tmp_path):
    # Reading a folder never parses program heads unless weights need pairing, so one damaged
    # program fails on its own later (when packed) instead of taking the whole folder with it.
    shutil.copy(LEGACY / "variants" / "model_a.pte", tmp_path / "model_a.pte")
    (tmp_path / "model_b.pte").write_bytes(b"\0\0\0\0ET12" + bytes(range(256)) * 8)
    shutil.copy(LEGACY / "variants" / "tokenizer.model", tmp_path / "tokenizer.model")
    found, skipped = deployments_in_folder(tmp_path, default_adapters())
    assert skipped == []
    assert sorted(d.program.name for d in found) == ["model_a.pte", "model_b.pte"]
