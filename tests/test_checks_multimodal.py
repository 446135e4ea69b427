"""checks/multimodal.py: preprocessor mel bins, media tokens, every program's data keys."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from etm_compat.adapters import default_adapters
from etm_compat.checks.multimodal import (
    check_media_tokens,
    check_multimodal,
    check_preprocessor_bins,
    check_program_data,
)
from etm_compat.formats.program_kinds import read_program_kind
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.legacy.deployment import Deployment
from etm_compat.legacy.resolve import resolve_source
from etm_compat.view import describe
from tests.conftest import FIXTURES

VOXTRAL = FIXTURES / "multimodal" / "voxtral_like"
WHISPER = FIXTURES / "multimodal" / "whisper_like"
LORA = FIXTURES / "lora"
BROKEN = FIXTURES / "broken"


def deployment(folder: Path, program: str | None = None) -> Deployment:
    return resolve_source(folder / program if program else folder, default_adapters())


def folder_of(tmp: Path, files: dict[str, Path]) -> Path:
    for name, source in files.items():
        if source.is_dir():
            shutil.copytree(source, tmp / name)
        else:
            shutil.copyfile(source, tmp / name)
    return tmp


def codes(dep: Deployment) -> list[str]:
    dep_tok = read_tokenizer(dep.tokenizer) if dep.tokenizer else None
    return [f.code for f in check_multimodal(dep, dep_tok)]


@pytest.mark.parametrize(
    "folder", [VOXTRAL, WHISPER, LORA, FIXTURES / "multimodal" / "vision"], ids=lambda p: p.name
)
def test_good_multi_program_fixtures_are_clean(folder: Path) -> None:
    dep = deployment(folder, "model.pte" if (folder / "model.pte").exists() else "adapter_a.pte")
    assert codes(dep) == []


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        ("preprocessor_bins_mismatch", "preprocessor-bins-mismatch"),
        ("media_token_out_of_vocab", "media-token-out-of-vocab"),
        ("adapter_foundation_mismatch", "adapter-foundation-mismatch"),
        ("program_data_missing", "program-data-missing"),
    ],
)
def test_each_scenario_gives_exactly_its_code(scenario: str, code: str) -> None:
    folder = BROKEN / scenario
    program = "model.pte" if (folder / "model.pte").exists() else "adapter_a.pte"
    assert codes(deployment(folder, program)) == [code]


def test_preprocessor_bins_message_names_both_counts() -> None:
    dep = deployment(BROKEN / "preprocessor_bins_mismatch", "model.pte")
    (f,) = check_preprocessor_bins(dep, read_program_kind(dep.program))
    assert f.severity == "error"
    assert "80 mel bins" in f.message and "audio_encoder takes 128" in f.message
    assert f.paths == ("whisper_preprocessor.pte", "model.pte")
    assert "--feature_size 128" in f.hint


def test_preprocessor_bins_seq2seq_encoder(tmp_path: Path) -> None:
    """whisper_like's encoder takes 80 bins; voxtral's preprocessor makes 128."""
    folder = folder_of(
        tmp_path,
        {"model.pte": WHISPER / "model.pte", "model.ptd": WHISPER / "model.ptd",
         "tokenizer": WHISPER / "tokenizer", "preprocessor.pte": VOXTRAL / "preprocessor.pte"},
    )  # fmt: skip
    dep = deployment(folder, "model.pte")
    assert [p.role for p in dep.parts] == ["preprocessor"]
    (f,) = check_preprocessor_bins(dep, read_program_kind(dep.program))
    assert "128 mel bins" in f.message and "encoder takes 80" in f.message


def test_media_token_against_vocab_size() -> None:
    dep = deployment(VOXTRAL, "model.pte")
    kind = read_program_kind(dep.program)
    tok = read_tokenizer(VOXTRAL / "tokenizer.json")
    assert tok.vocab_size == 518
    assert check_media_tokens(dep, kind, tok) == []
    (f,) = check_media_tokens(dep, kind, dataclasses.replace(tok, vocab_size=517))
    assert f.code == "media-token-out-of-vocab"
    assert "audio_token_id=517" in f.message and "0..516" in f.message


def test_hf_bpe_tokenizer_reuses_special_id_code_for_bos_eos(tmp_path: Path) -> None:
    """voxtral_like's program with the 512-token hf_bpe tokenizer: the media token is this
    module's; bos 512 is special-id-out-of-range's, not repeated here."""
    hf = FIXTURES / "tokenizers" / "hf_bpe"
    folder = folder_of(
        tmp_path,
        {"model.pte": VOXTRAL / "model.pte", "tokenizer.json": hf / "tokenizer.json",
         "tokenizer_config.json": hf / "tokenizer_config.json"},
    )  # fmt: skip
    found = [f for f in describe(deployment(folder, "model.pte")).findings if f.severity == "error"]
    assert sorted(f.code for f in found) == ["media-token-out-of-vocab", "special-id-out-of-range"]


def test_adapter_of_another_program() -> None:
    dep = deployment(BROKEN / "adapter_foundation_mismatch", "adapter_a.pte")
    (f,) = check_program_data(dep)
    assert f.code == "adapter-foundation-mismatch" and f.severity == "error"
    assert f.paths == ("adapter_a.pte", "foundation.ptd", "adapter_a.ptd")
    assert "needs 8 data key(s)" in f.message


def test_lora_part_without_its_adapter() -> None:
    dep = deployment(BROKEN / "program_data_missing", "adapter_a.pte")
    assert [p.name for p in dep.parts] == ["adapter_b"]
    (f,) = check_program_data(dep)
    assert f.code == "program-data-missing" and f.paths == ("adapter_b.pte",)
    assert "needs 16 data key(s)" in f.message and "foundation.ptd" in f.message


def test_main_program_head_keys_stay_weights_missing_key(tmp_path: Path) -> None:
    """whisper_like without model.ptd: weights-missing-key already says it; not repeated."""
    folder = folder_of(
        tmp_path, {"model.pte": WHISPER / "model.pte", "tokenizer": WHISPER / "tokenizer"}
    )
    dep = deployment(folder, "model.pte")
    assert check_program_data(dep) == []
    assert "weights-missing-key" in {f.code for f in describe(dep).findings}


def test_main_program_delegate_keys_missing(tmp_path: Path) -> None:
    """adapter_a.pte with its foundation alone: its adapter keys (in XNNPACK payloads) are missing."""
    folder = folder_of(
        tmp_path,
        {"adapter_a.pte": LORA / "adapter_a.pte", "foundation.ptd": LORA / "foundation.ptd",
         "tokenizer.model": LORA / "tokenizer.model"},
    )  # fmt: skip
    (f,) = check_program_data(deployment(folder, "adapter_a.pte"))
    assert f.code == "program-data-missing" and f.paths == ("adapter_a.pte",)
