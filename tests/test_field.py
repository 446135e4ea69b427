"""The layouts people actually have (fixtures/field, made by fixtures/gen_field.py): every program
is paired as the runner would pair it, by content, and nothing but programs is ever packed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_OK
from etm_compat.cli.main import main
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.legacy.resolve import resolve_source
from etm_compat.legacy.scan import scan

FIELD = Path(__file__).resolve().parent.parent / "fixtures" / "field"

#: program (relative to fixtures/field) -> its tokenizer, or the reason it is skipped.
EXPECTED_PAIRS = {
    "hub_llama32_et/Llama-3.2-1B-Instruct.pte": "hub_llama32_et/tokenizer.model",
    "hub_int8_int4/model.pte": "hub_int8_int4/tokenizer.json",
    "nested_shared/0_6b/xnnpack/qwen3_0_6b_xnnpack_8da4w.pte": "nested_shared/tokenizer.json",
    "nested_shared/1_7b/xnnpack/qwen3_1_7b_xnnpack_8da4w.pte": "nested_shared/tokenizer.json",
    "android_flat/llama3_2-1B.pte": "android_flat/tokenizer.model",
    "eos_singular/model.pte": "eos_singular/tokenizer.model",
    "tekken/model.pte": "tekken/tekken.json",
}
EXPECTED_SKIPS = {
    "android_flat/qwen3-model.pte": "ambiguous: tokenizer.json and tokenizer.bin",
    "android_flat/stories110M.pte": "ambiguous: tokenizer.json and tokenizer.bin",
    "per_chip/Llama-3.2-3B-Instruct.SM8650.pte": "no tokenizer file found",
    "per_chip/Llama-3.2-3B-Instruct.SM8750.pte": "no tokenizer file found",
    "optimum_out/model.pte": "no tokenizer file found",
    "hub_int8_int4/pytorch_model.bin": "training checkpoint",
    "hub_int8_int4/model.safetensors": "training checkpoint",
    "hub_llama32_et/Export_Recipe_Llama_3_2_1B_Instruct.ipynb": "notebook",
}


def _rel(path: Path) -> str:
    return path.relative_to(FIELD).as_posix()


@pytest.fixture(scope="module")
def field_scan():
    return scan(FIELD, default_adapters())


def test_every_program_is_paired_by_content(field_scan) -> None:
    pairs = {_rel(d.program): _rel(d.tokenizer) for d in field_scan.deployments if d.tokenizer}
    dialects = {k: v for k, v in pairs.items() if k.startswith("dialects/")}
    assert {k: v for k, v in pairs.items() if k not in dialects} == EXPECTED_PAIRS


def test_every_skip_says_why(field_scan) -> None:
    skipped = {_rel(s.path): s.reason for s in field_scan.skipped if not _rel(s.path).startswith("dialects/")}
    assert skipped.keys() == EXPECTED_SKIPS.keys()
    for path, needle in EXPECTED_SKIPS.items():
        assert needle in skipped[path], (path, skipped[path])


def test_shared_tokenizer_is_found_up_the_tree_and_noted(field_scan) -> None:
    (dep,) = [d for d in field_scan.deployments if d.program.name == "qwen3_0_6b_xnnpack_8da4w.pte"]
    assert dep.configs["tokenizer_config"] == FIELD / "nested_shared" / "tokenizer_config.json"
    assert dep.configs["config"] == FIELD / "nested_shared" / "0_6b" / "xnnpack" / "config.json"
    assert any("nearest one up the tree" in n for n in dep.notes)


def test_stub_config_is_not_evidence(field_scan) -> None:
    (dep,) = [d for d in field_scan.deployments if d.program.name == "Llama-3.2-1B-Instruct.pte"]
    assert "config" not in dep.configs
    assert any("stub config" in n for n in dep.notes)


def test_a_shared_tokenizer_is_never_taken_from_above_the_scan_root() -> None:
    result = scan(FIELD / "nested_shared" / "0_6b", default_adapters())
    assert not result.deployments
    assert [s.reason for s in result.skipped] == ["no tokenizer file found beside the program"]


def test_upgrade_packs_exactly_the_programs(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["upgrade", str(FIELD), "--out", str(out), "--json", "--jobs", "1"])
    result = json.loads(capsys.readouterr().out)
    assert code == EXIT_FINDINGS, result  # per_chip, optimum_out and two android programs wait for a tokenizer
    assert result["counts"]["failed"] == 0
    written = {Path(i["archive"]).relative_to(out).as_posix() for i in result["items"] if i["outcome"] == "written"}
    expected = {Path(p).with_suffix(".etm").as_posix() for p in EXPECTED_PAIRS}
    assert expected <= written
    for archive in out.rglob("*.etm"):
        with open_archive(archive) as etm:
            names = set(etm.members)
        assert not {n for n in names if n.endswith((".bin", ".safetensors", ".ipynb"))} - {"tokenizer.bin"}
        assert "model.pte" in names


def test_files_never_packed_do_not_make_an_upgrade_incomplete(tmp_path, capsys) -> None:
    code = main(["upgrade", str(FIELD / "hub_int8_int4"), "--out", str(tmp_path), "--json", "--jobs", "1"])
    result = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert {Path(s["path"]).name for s in result["skipped"]} == {"pytorch_model.bin", "model.safetensors"}


@pytest.mark.parametrize(
    "tokenizer",
    [
        FIELD / "hf_tokenizer_folder",
        FIELD / "hub_cache" / "models--org--tiny",
        next((FIELD / "hub_cache" / "models--org--tiny" / "snapshots").iterdir()),
        FIELD / "hf_tokenizer_folder" / "tokenizer.json",
    ],
    ids=["hf-folder", "hub-cache-repo", "hub-cache-snapshot", "file"],
)
def test_optimum_output_takes_the_tokenizer_from_a_folder_or_the_hub_cache(tmp_path, tokenizer) -> None:
    dep = resolve_source(FIELD / "optimum_out", default_adapters(), tokenizer=tokenizer)
    assert dep.tokenizer is not None and dep.tokenizer.name == "tokenizer.json"
    if tokenizer.is_dir():
        assert dep.configs["tokenizer_config"].name == "tokenizer_config.json"
    out = tmp_path / "m.etm"
    assert main(["pack", str(FIELD / "optimum_out"), "-o", str(out), "--tokenizer", str(tokenizer), "--json"]) == EXIT_OK
    with open_archive(out) as etm:
        assert ("tokenizer_config.json" in etm.members) == tokenizer.is_dir()


def test_per_chip_variant_packs_with_a_named_tokenizer(tmp_path, capsys) -> None:
    program = FIELD / "per_chip" / "Llama-3.2-3B-Instruct.SM8650.pte"
    assert main(["pack", str(program), "-o", str(tmp_path / "a.etm")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no tokenizer file found" in err and "--tokenizer PATH" in err
    tokenizer = FIELD.parent / "tokenizers" / "sp.model"
    assert main(["pack", str(program), "-o", str(tmp_path / "a.etm"), "--tokenizer", str(tokenizer)]) == EXIT_OK


def test_ambiguous_program_packs_once_its_tokenizer_is_named(tmp_path) -> None:
    program = FIELD / "android_flat" / "stories110M.pte"
    dep = resolve_source(program, default_adapters(), tokenizer=FIELD / "android_flat" / "tokenizer.bin")
    assert dep.tokenizer == FIELD / "android_flat" / "tokenizer.bin" and dep.problem is None


def test_diagnose_says_what_a_per_chip_folder_lacks(capsys) -> None:
    main(["diagnose", str(FIELD / "per_chip"), "--json"])
    report = json.loads(capsys.readouterr().out)
    kinds = {d["kind"] for d in report["deployments"]}
    assert kinds == {"skipped"}
    messages = [f["message"] for d in report["deployments"] for f in d["findings"]]
    assert messages and all("no tokenizer file found" in m for m in messages)


def test_tekken_fixture_is_read_as_the_runner_reads_it() -> None:
    tok = read_tokenizer(FIELD / "tekken" / "tekken.json")
    assert (tok.format, tok.vocab_size, tok.bos_id, tok.eos_id) == ("tekken", 1384, 1, 2)
    assert tok.runner is not None and tok.runner.loadable and tok.runner.loader == "Tekken"
    assert tok.special_tokens.get("[INST]") == 3
