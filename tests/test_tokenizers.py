"""Tests of etm_compat.formats.tokenizer.detect: detection by content, values against the real libraries."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etm_compat.constants import TOKENIZER_SNIFF_BYTES
from etm_compat.errors import TokenizerFormatError, UsageError
from etm_compat.formats.tokenizer.detect import (
    looks_like_tokenizer,
    read_tokenizer,
    sniff_tokenizer_bytes,
    sniff_tokenizer_format,
)
from etm_compat.formats.tokenizer.llama2c import convert_llama2c_original

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "tokenizers"

spm = pytest.importorskip("sentencepiece")
hf_tokenizers = pytest.importorskip("tokenizers")
cpp = pytest.importorskip("pytorch_tokenizers.pytorch_tokenizers_cpp")

CASES = [
    ("sp.model", "sentencepiece", None),
    ("hf_bpe/tokenizer.json", "hf_json", None),
    ("tiktoken.model", "tiktoken", None),
    ("tokenizer.bin", "llama2c", "pytorch_tokenizers"),
    ("llama2c_original.bin", "llama2c", "llama2c_original"),
]
MISLEADING = {
    "sp.model": "tokenizer.json",
    "hf_bpe/tokenizer.json": "tokenizer.model",
    "tokenizer.bin": "vocab.txt",
    "tiktoken.model": "tokenizer.bin",
    "llama2c_original.bin": "tokenizer.model",
}


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} missing: run fixtures/gen_tokenizers.py")
    return path


def cpp_load(cls_name: str, path: Path | str) -> Any:
    tok = getattr(cpp, cls_name)()
    tok.load(str(path))
    return tok


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt", "variant"), CASES)
def test_fixture_detected(name: str, fmt: str, variant: str | None) -> None:
    path = fixture(name)
    assert sniff_tokenizer_format(path) == fmt
    assert looks_like_tokenizer(path)
    info = read_tokenizer(path, check_runner=False)
    assert (info.format, info.variant, info.runner) == (fmt, variant, None)


@pytest.mark.parametrize(("name", "fmt", "variant"), CASES)
def test_detected_under_misleading_name(
    tmp_path: Path, name: str, fmt: str, variant: str | None
) -> None:
    copy = tmp_path / MISLEADING[name]
    shutil.copyfile(fixture(name), copy)
    info = read_tokenizer(copy, check_runner=False)
    assert (info.format, info.variant) == (fmt, variant)
    assert info.path == str(copy)


def test_sniff_bytes_of_nothing_is_none() -> None:
    assert sniff_tokenizer_bytes(b"") is None
    assert sniff_tokenizer_bytes(b'{"bos_token": "<s>"}') is None


def test_looks_like_tokenizer_never_raises(tmp_path: Path) -> None:
    assert not looks_like_tokenizer(tmp_path)
    assert not looks_like_tokenizer(tmp_path / "missing.model")
    assert not looks_like_tokenizer(fixture("corpus.txt"))


# --- values against the real libraries ---------------------------------------------------------


def test_sentencepiece_matches_library() -> None:
    path = fixture("sp.model")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    info = read_tokenizer(path)
    assert info.vocab_size == sp.get_piece_size()
    assert (info.bos_id, info.eos_id) == (sp.bos_id(), sp.eos_id())
    assert (info.bos_token, info.eos_token) == (sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id()))
    special = {
        sp.id_to_piece(i): i
        for i in range(sp.get_piece_size())
        if sp.is_control(i) or sp.is_unknown(i)
    }
    assert dict(info.special_tokens) == special
    for i in range(sp.get_piece_size()):
        assert info.token_id(sp.id_to_piece(i)) == i
    runner = cpp_load("SPTokenizer", path)
    assert info.runner is not None and info.runner.loader == "SPTokenizer"
    assert (info.runner.vocab_size, info.runner.bos_id, info.runner.eos_id) == (
        runner.vocab_size(), runner.bos_tok(), runner.eos_tok()
    )


def test_sentencepiece_bos_follows_bos_piece_type(tmp_path: Path) -> None:
    """The library's bos is the CONTROL piece named bos_piece; a NORMAL <s> gives none."""
    pb: Any = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    model = pb.ModelProto()
    model.ParseFromString(fixture("sp.model").read_bytes())
    model.pieces[1].type = pb.ModelProto.SentencePiece.NORMAL
    path = tmp_path / "edited.model"
    path.write_bytes(model.SerializeToString())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    info = read_tokenizer(path, check_runner=False)
    assert sp.bos_id() == -1 and info.bos_id is None
    assert info.eos_id == sp.eos_id()


def test_hf_json_matches_library() -> None:
    path = fixture("hf_bpe/tokenizer.json")
    tok = hf_tokenizers.Tokenizer.from_file(str(path))
    info = read_tokenizer(path)
    vocab = tok.get_vocab(with_added_tokens=True)
    assert info.vocab_size == max(vocab.values()) + 1
    for text in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert info.special_tokens[text] == tok.token_to_id(text)
    for text, token_id in vocab.items():
        assert info.token_id(text) == token_id
    alone = cpp_load("HFTokenizer", path)
    assert info.runner is not None and info.runner.loader == "HFTokenizer"
    assert (info.runner.bos_id, info.runner.eos_id) == (alone.bos_tok(), alone.eos_tok())
    # "end" matches two added tokens and nothing matches "bos"/"begin": the file names none.
    assert (info.bos_id, info.eos_id) == (None, None)


def test_hf_json_with_config_matches_runner_folder_load() -> None:
    path = fixture("hf_bpe/tokenizer.json")
    config = fixture("hf_bpe/tokenizer_config.json")
    tok = hf_tokenizers.Tokenizer.from_file(str(path))
    info = read_tokenizer(path, config_path=config)
    folder = cpp_load("HFTokenizer", path.parent)
    eos_text = json.loads(config.read_text())["eos_token"]
    assert info.eos_id == tok.token_to_id(eos_text) == folder.eos_tok()
    assert info.bos_id == folder.bos_tok()  # bos_token is null: the runner reuses eos
    assert info.runner is not None and (info.runner.bos_id, info.runner.eos_id) == (
        folder.bos_tok(), folder.eos_tok()
    )


@pytest.mark.parametrize(
    "specials",
    [
        ["<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        ["<pad>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|end_header|>"],
        ["<pad>", "<bos>", "<eos>"],
        ["<pad>", "<|im_start|>", "<|im_end|>"],
    ],
)
def test_hf_bos_eos_rule_matches_runner(tmp_path: Path, specials: list[str]) -> None:
    from tokenizers import models, pre_tokenizers, trainers

    tok = hf_tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(fixture("corpus.txt"))], trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    info = read_tokenizer(path)
    runner = cpp_load("HFTokenizer", path)
    assert info.bos_id is not None and info.eos_id is not None
    assert (info.bos_id, info.eos_id) == (runner.bos_tok(), runner.eos_tok())
    assert info.bos_token == tok.id_to_token(info.bos_id)


def test_tiktoken_matches_library() -> None:
    from pytorch_tokenizers.tiktoken import TiktokenTokenizer

    path = fixture("tiktoken.model")
    py_tok = TiktokenTokenizer(str(path))
    runner = cpp_load("Tiktoken", path)
    info = read_tokenizer(path)
    assert info.vocab_size == py_tok.n_words == runner.vocab_size()
    assert (info.bos_id, info.eos_id) == (py_tok.bos_id, py_tok.eos_id)
    assert (info.bos_id, info.eos_id) == (runner.bos_tok(), runner.eos_tok())
    assert len(info.special_tokens) == 256
    for name in ("<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_100|>", info.eos_token):
        assert name is not None
        assert runner.encode(name, 0, 0) == [info.token_id(name)]
    assert runner.encode("A", 0, 0) == [info.token_id("A")]
    assert info.runner is not None and info.runner.loader == "Tiktoken"


def test_llama2c_matches_library() -> None:
    path = fixture("tokenizer.bin")
    runner = cpp_load("Llama2cTokenizer", path)
    info = read_tokenizer(path)
    assert (info.vocab_size, info.bos_id, info.eos_id) == (
        runner.vocab_size(), runner.bos_tok(), runner.eos_tok()
    )
    assert info.bos_token == runner.decode(info.bos_id)
    assert info.runner is not None and info.runner.loader == "Llama2cTokenizer"


def test_llama2c_original_is_refused_by_runner() -> None:
    path = fixture("llama2c_original.bin")
    sp = spm.SentencePieceProcessor(model_file=str(fixture("sp.model")))
    info = read_tokenizer(path)
    assert info.vocab_size == sp.get_piece_size()
    # llama2.c's exporter writes sp's bos/eos as "\n<s>\n"/"\n</s>\n": found by that piece.
    assert (info.bos_id, info.eos_id) == (sp.bos_id(), sp.eos_id())
    assert (info.bos_token, info.eos_token) == (
        sp.id_to_piece(sp.bos_id()),
        sp.id_to_piece(sp.eos_id()),
    )
    assert info.runner is not None and info.runner.loadable is False
    assert info.runner.error is not None and "Llama2cTokenizer" in info.runner.error


def test_llama2c_original_without_exported_pieces_has_no_bos_eos(tmp_path: Path) -> None:
    data = fixture("llama2c_original.bin").read_bytes()
    # Same-length pieces keep every record length: only the bos/eos texts change.
    renamed = data.replace(b"\n<s>\n", b"[bos]").replace(b"\n</s>\n", b"[eos]\n")
    assert len(renamed) == len(data)
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(renamed)
    info = read_tokenizer(path, check_runner=False)
    assert info.variant == "llama2c_original"
    assert (info.bos_id, info.eos_id, dict(info.special_tokens)) == (None, None, {})


def _write_tekken(path: Path, with_specials: bool = True) -> None:
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    doc: dict[str, Any] = {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+",
            "num_vocab_tokens": 256,
            "default_vocab_size": 266,
            "default_num_special_tokens": 10,
            "version": "v3",
        },
        "vocab": [
            {"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None}
            for i in range(256)
        ],
    }
    if with_specials:
        doc["special_tokens"] = [
            {"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(specials)
        ]
    path.write_text(json.dumps(doc), encoding="utf-8")


def test_tekken_matches_library(tmp_path: Path) -> None:
    path = tmp_path / "tekken.json"
    _write_tekken(path)
    runner = cpp_load("Tekken", path)
    info = read_tokenizer(path)
    assert info.format == "tekken"
    assert (info.vocab_size, info.bos_id, info.eos_id) == (
        runner.vocab_size(), runner.bos_tok(), runner.eos_tok()
    )
    assert runner.encode("A", 0, 0) == [info.token_id("A")]
    assert info.runner is not None and info.runner.loader == "Tekken"
    misnamed = tmp_path / "tokenizer.json"
    shutil.copyfile(path, misnamed)
    assert read_tokenizer(misnamed, check_runner=False).format == "tekken"


def test_to_json_shape() -> None:
    data = read_tokenizer(fixture("sp.model")).to_json()
    assert set(data) == {
        "kind", "format", "variant", "vocab_size", "bos_id", "bos_token", "eos_id",
        "eos_token", "special_tokens", "runner",
    }
    assert data["kind"] == "tokenizer"
    json.dumps(data)


# --- bad input -------------------------------------------------------------------------------


def _expect_error(path: Path, *words: str) -> TokenizerFormatError:
    with pytest.raises(TokenizerFormatError) as caught:
        read_tokenizer(path, check_runner=False)
    text = str(caught.value)
    assert str(path) in text
    for word in words:
        assert word in text
    return caught.value


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(hashlib.sha512(b"garbage").digest() * 64)
    _expect_error(path, "known format")


def test_truncated_sentencepiece(tmp_path: Path) -> None:
    path = tmp_path / "sp.model"
    path.write_bytes(fixture("sp.model").read_bytes()[:1001])
    _expect_error(path, "SentencePiece", "truncated")


def test_json_neither_hf_nor_tekken(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    shutil.copyfile(fixture("hf_bpe/tokenizer_config.json"), path)
    _expect_error(path, "neither")


def test_json_sniffed_but_without_structure(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": 3, "added_tokens": []}')
    _expect_error(path, "structure")


def test_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": ' + "[" * 5000 + "]" * 5000 + "}")
    _expect_error(path, "nested")


def test_tiktoken_bad_line_in_head(tmp_path: Path) -> None:
    lines = fixture("tiktoken.model").read_bytes().split(b"\n")
    lines[10] = b"not base64 at all"
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n".join(lines))
    _expect_error(path, "line 11")


def test_tiktoken_bad_line_after_head(tmp_path: Path) -> None:
    ranks = [bytes([i]) for i in range(256)] + [bytes([a, b]) for a in range(97, 123)
                                                 for b in range(256)]
    body = b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(ranks))
    assert len(body) > TOKENIZER_SNIFF_BYTES
    path = tmp_path / "tokenizer.model"
    path.write_bytes(body + b"QUJD x\n")
    _expect_error(path, f"line {len(ranks) + 1}")


def test_llama2c_length_past_eof(tmp_path: Path) -> None:
    data = bytearray(fixture("tokenizer.bin").read_bytes())
    vocab_size = struct.unpack_from("<i", data)[0]
    pos = 16
    for _ in range(vocab_size - 1):  # find the last record
        pos += 8 + struct.unpack_from("<i", data, pos + 4)[0]
    struct.pack_into("<i", data, pos + 4, 9)
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(bytes(data))
    _expect_error(path, "llama2.c", "past the end")


def test_oversized_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import etm_compat.formats.tokenizer.detect as mod

    monkeypatch.setattr(mod, "TOKENIZER_MAX_BYTES", 1000)
    path = tmp_path / "sp.model"
    shutil.copyfile(fixture("sp.model"), path)
    _expect_error(path, "bytes")


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    def mutate(edits: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(data)
        for pos, value in edits:
            out[pos % len(out)] = value
        return bytes(out[: max(1, len(out) - cut)])

    edit = st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255))
    return st.builds(mutate, st.lists(edit, max_size=4), st.sampled_from([0, 0, 1, 7, 100]))


def _only_format_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "tokenizer")
        path.write_bytes(data)
        with contextlib.suppress(TokenizerFormatError):  # the one error allowed
            read_tokenizer(path, check_runner=False)
        sniff_tokenizer_bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_format_errors(data: bytes) -> None:
    _only_format_errors(data)


@pytest.mark.parametrize(("name", "fmt", "variant"), CASES)
def test_mutations_only_raise_format_errors(name: str, fmt: str, variant: str | None) -> None:
    data = fixture(name).read_bytes()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutations(data))
    def check(mutated: bytes) -> None:
        _only_format_errors(mutated)

    check()


@pytest.mark.parametrize("name", ["hf_bpe/tokenizer.json", "tokenizer.bin"])
def test_a_truncated_tokenizer_is_always_refused(name: str) -> None:
    # Detection, not only "no crash": these formats say how much follows (JSON's closing
    # brackets, the pytorch_tokenizers llama2c header's vocab_size), so no cut short of the end
    # may read as a tokenizer. (Karpathy's original llama2c layout has no count: a cut between
    # records is a smaller valid vocabulary; tiktoken and SentencePiece files alike.)
    data = fixture(name).read_bytes()
    end = len(data.rstrip()) if name.endswith(".json") else len(data)

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(1, end - 1))
    def check(cut: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, Path(name).name)
            path.write_bytes(data[:cut])
            with pytest.raises(TokenizerFormatError):
                read_tokenizer(path, check_runner=False)

    check()


# --- conversion ------------------------------------------------------------------------------


def test_convert_llama2c_original(tmp_path: Path) -> None:
    src = fixture("llama2c_original.bin")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "tokenizer.bin"
    convert_llama2c_original(src, dest)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.bin"]  # no temp file left
    converted = cpp_load("Llama2cTokenizer", dest)
    reference = cpp_load("Llama2cTokenizer", fixture("tokenizer.bin"))  # its own converter
    sp = spm.SentencePieceProcessor(model_file=str(fixture("sp.model")))
    assert converted.vocab_size() == sp.get_piece_size()
    assert (converted.bos_tok(), converted.eos_tok()) == (1, 2)
    for i in range(3, sp.get_piece_size()):
        assert converted.decode(i) == reference.decode(i)
    text = "The cat walked to the green house."
    assert converted.encode(text, 1, 1) == reference.encode(text, 1, 1)
    info = read_tokenizer(dest, check_runner=False)
    assert info.variant == "pytorch_tokenizers"
    original = read_tokenizer(src, check_runner=False)
    assert (info.bos_id, info.bos_token, info.eos_id, info.eos_token) == (
        original.bos_id, original.bos_token, original.eos_id, original.eos_token
    )


def test_convert_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFormatError, match="already"):
        convert_llama2c_original(fixture("tokenizer.bin"), tmp_path / "out.bin")
    src = tmp_path / "orig.bin"
    shutil.copyfile(fixture("llama2c_original.bin"), src)
    with pytest.raises(UsageError):
        convert_llama2c_original(src, src)
    with pytest.raises(UsageError):
        convert_llama2c_original(src, tmp_path / "out.bin", bos_id=100000)
    assert not (tmp_path / "out.bin").exists()


# --- optional dependencies -------------------------------------------------------------------


def test_imports_without_tokenizer_libraries(tmp_path: Path) -> None:
    """Without the tokenizer libraries (blocked in every process, the runner check's helper
    included, and no cached check to fall back on) a tokenizer still reads; the check says why."""
    blocked = ["sentencepiece", "tiktoken", "pytorch_tokenizers", "tokenizers", "torch",
               "executorch"]
    stubs = tmp_path / "blocked"
    for name in blocked:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} blocked by the test')\n")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from etm_compat.formats.tokenizer.detect import read_tokenizer\n"
        f"info = read_tokenizer({str(fixture('sp.model'))!r})\n"
        "assert info.runner is not None and info.runner.loadable is None, info.runner\n"
        "assert info.vocab_size == 512\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), str(ROOT)]),
           "ETM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_parsed_results_are_shared_by_content_but_keep_their_own_path(tmp_path):
    src = fixture("sp.model")
    a, b = tmp_path / "a" / "tokenizer.model", tmp_path / "b" / "renamed.bin"
    for dest in (a, b):
        dest.parent.mkdir()
        shutil.copy(src, dest)
    first = read_tokenizer(a, check_runner=False)
    second = read_tokenizer(b, check_runner=False)
    assert first.path == str(a) and second.path == str(b)
    assert dataclasses.replace(second, path=first.path) == first
    # A different file with the same name is parsed afresh, not served from the cache.
    shutil.copy(fixture("tiktoken.model"), a)
    assert read_tokenizer(a, check_runner=False).format == "tiktoken"


def test_a_read_is_logged_at_debug_level_once_logging_is_in_use(caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="etm_compat.formats.tokenizer.detect")
    read_tokenizer(fixture("sp.model"), check_runner=False)
    assert any("sentencepiece, vocab 512" in r.getMessage() for r in caplog.records)
