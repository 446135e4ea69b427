"""The committed fixtures exist, stay small, and load in the real libraries and runtime.

Regeneration is not tested here (it takes about a minute): run ``./dev.sh fixtures``.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

MAX_FILE_BYTES = 1_000_000
# legacy/ and broken/ (~5 MB) plus field/ (~3 MB, issue 12) and multimodal/ + lora/ (~1.9 MB).
MAX_TOTAL_BYTES = 11_500_000

TOKENIZERS = [
    "tokenizers/corpus.txt",
    "tokenizers/sp.model",
    "tokenizers/hf_bpe/tokenizer.json",
    "tokenizers/hf_bpe/tokenizer_config.json",
    "tokenizers/tiktoken.model",
    "tokenizers/tokenizer.bin",
    "tokenizers/llama2c_original.bin",
]
PROGRAMS = [
    "programs/constants_all.pte",
    "programs/constants_none.pte",
    "programs/legacy_keys.pte",
    "programs/ext_weights.pte",
    "programs/ext_weights.ptd",
    "programs/xnnpack.pte",
]
LLAMA = ["llama/params.json", "llama/export_config.yaml", "llama/tiny_llama.pte"]
LEGACY = [
    "legacy/et_example/model.pte",
    "legacy/et_example/tokenizer.model",
    "legacy/hf_style/model.pte",
    "legacy/hf_style/tokenizer.json",
    "legacy/hf_style/tokenizer_config.json",
    "legacy/hf_style/generation_config.json",
    "legacy/hf_style/config.json",
    "legacy/with_ptd/program.pte",
    "legacy/with_ptd/weights.ptd",
    "legacy/with_ptd/tokenizer.model",
    "legacy/variants/model_a.pte",
    "legacy/variants/model_b.pte",
    "legacy/variants/tokenizer.model",
    "legacy/export_llm/tiny_llama.pte",
    "legacy/export_llm/export_config.yaml",
    "legacy/export_llm/params.json",
    "legacy/export_llm/tokenizer.bin",
    "legacy/tiktoken_llama3/model.pte",
    "legacy/tiktoken_llama3/tokenizer.model",
]
ALL_OUTPUTS = TOKENIZERS + PROGRAMS + LLAMA + LEGACY
# Programs that load without external data, with the .ptd each external-weights one needs.
PTE_FILES = sorted(p for p in ALL_OUTPUTS if p.endswith(".pte"))
PTD_FOR = {
    "programs/ext_weights.pte": "programs/ext_weights.ptd",
    "legacy/with_ptd/program.pte": "legacy/with_ptd/weights.ptd",
}


@pytest.mark.parametrize("rel", ALL_OUTPUTS)
def test_fixture_exists_and_is_small(rel: str) -> None:
    path = FIXTURES / rel
    assert path.is_file(), f"missing fixture {rel}: run ./dev.sh fixtures"
    assert 0 < path.stat().st_size <= MAX_FILE_BYTES


def test_fixtures_total_size_budget() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file() and not p.is_symlink())
    assert total <= MAX_TOTAL_BYTES


def test_checkpoint_is_not_committed() -> None:
    assert not list(FIXTURES.rglob("*.pth"))


def test_sentencepiece_model_loads() -> None:
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(FIXTURES / "tokenizers/sp.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert sp.get_piece_size() == 512
    assert not any(sp.is_byte(i) for i in range(sp.get_piece_size()))
    assert sp.decode(sp.encode("The cat walked to the market.")) == "The cat walked to the market."


def test_hf_bpe_tokenizer_loads() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(FIXTURES / "tokenizers/hf_bpe/tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 512
    ids = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert ids == [0, 1, 2]
    config = json.loads((FIXTURES / "tokenizers/hf_bpe/tokenizer_config.json").read_text())
    assert config["bos_token"] is None
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|endoftext|>"
    assert "<|im_start|>" in config["chat_template"]


def test_tiktoken_rank_file_loads() -> None:
    load = pytest.importorskip("tiktoken.load")
    ranks = load.load_tiktoken_bpe(str(FIXTURES / "tokenizers/tiktoken.model"))
    assert ranks == {bytes([i]): i for i in range(256)}


def test_pytorch_tokenizers_load_tiktoken_and_llama2c() -> None:
    pt = pytest.importorskip("pytorch_tokenizers.pytorch_tokenizers_cpp")
    tk = pt.Tiktoken()
    tk.load(str(FIXTURES / "tokenizers/tiktoken.model"))
    assert (tk.bos_tok(), tk.eos_tok(), tk.vocab_size()) == (256, 257, 512)
    l2c = pt.Llama2cTokenizer()
    l2c.load(str(FIXTURES / "tokenizers/tokenizer.bin"))
    assert (l2c.bos_tok(), l2c.eos_tok(), l2c.vocab_size()) == (1, 2, 512)


def test_llama2c_original_layout_parses() -> None:
    data = (FIXTURES / "tokenizers/llama2c_original.bin").read_bytes()
    (max_len,) = struct.unpack_from("<i", data, 0)
    offset, count, longest = 4, 0, 0
    while offset < len(data):
        _score, length = struct.unpack_from("<fi", data, offset)
        offset += 8 + length
        count += 1
        longest = max(longest, length)
    assert offset == len(data)
    assert count == 512
    assert longest == max_len


def test_tiktoken_rank_file_format() -> None:
    lines = (FIXTURES / "tokenizers/tiktoken.model").read_bytes().splitlines()
    assert len(lines) == 256
    token, rank = lines[65].split(b" ")
    assert (base64.b64decode(token), int(rank)) == (b"A", 65)


@pytest.mark.runtime
@pytest.mark.parametrize("rel", PTE_FILES)
def test_program_loads_in_runtime(rel: str) -> None:
    runtime = pytest.importorskip("executorch.runtime")
    ptd = PTD_FOR.get(rel)
    if ptd is None:
        program = runtime.Runtime.get().load_program(FIXTURES / rel)
    else:
        program = runtime.Runtime.get().load_program(FIXTURES / rel, data_path=FIXTURES / ptd)
    assert "forward" in program.method_names
    program.load_method("forward")


@pytest.mark.runtime
def test_constants_all_reads_back() -> None:
    runtime = pytest.importorskip("executorch.runtime")
    program = runtime.Runtime.get().load_program(FIXTURES / "programs/constants_all.pte")

    def value(name: str) -> list[object]:
        return list(program.load_method(name).execute([]))

    assert value("get_max_seq_len") == [128]
    assert value("use_kv_cache") == [True]
    assert value("model_name") == ["tiny"]
    assert value("get_eos_ids") == [2, 3]
    assert value("stop_ids") == [2]
    assert value("large_int") == [2**40]
    assert value("negative_offset") == [-7]


@pytest.mark.runtime
def test_constants_none_has_only_forward() -> None:
    runtime = pytest.importorskip("executorch.runtime")
    program = runtime.Runtime.get().load_program(FIXTURES / "programs/constants_none.pte")
    assert set(program.method_names) == {"forward"}
