"""Tests of etm_compat.formats.tokenizer.json_document and hf_json: the outline decode of JSON
tokenizer files, the typed vocabulary path against the checking path, and the bounds on hostile
input (nesting, UTF-8, numbers, duplicates), none of which may be skipped with the merges."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etm_compat.constants import (
    TOKENIZER_JSON_MAX_DEPTH,
    TOKENIZER_MAX_VOCAB,
    TOKENIZER_VOCAB_LOOKUP_MAX,
)
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer import detect, hf_json, vocab_index
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.json_document import decode_document, decode_value
from etm_compat.jsonlimits import STRUCTURE_AND_NUMBERS, json_outside_strings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "tokenizers"
hf_tokenizers = pytest.importorskip("tokenizers")


def _train(tmp_path: Path, kind: str) -> Path:
    """A real tokenizer.json of ``kind`` trained by HF ``tokenizers`` on the fixture corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    model, trainer = {
        "bpe": (models.BPE(unk_token="<unk>"), trainers.BpeTrainer),
        "unigram": (models.Unigram(), trainers.UnigramTrainer),
        "wordpiece": (models.WordPiece(unk_token="<unk>"), trainers.WordPieceTrainer),
        "wordlevel": (models.WordLevel(unk_token="<unk>"), trainers.WordLevelTrainer),
    }[kind]
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    options: dict[str, Any] = {"vocab_size": 300, "special_tokens": specials, "show_progress": False}
    if kind == "unigram":
        options["unk_token"] = "<unk>"
    tok.train([str(FIXTURES / "corpus.txt")], trainer(**options))
    path = tmp_path / f"{kind}.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "wordlevel"])
def test_every_hf_model_kind_matches_the_library(tmp_path: Path, kind: str) -> None:
    path = _train(tmp_path, kind)
    tok = hf_tokenizers.Tokenizer.from_file(str(path))
    info = read_tokenizer(path, check_runner=False)
    vocab = tok.get_vocab(with_added_tokens=True)
    assert info.format == "hf_json"
    assert info.vocab_size == max(vocab.values()) + 1
    assert dict(info.special_tokens) == {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    for text, token_id in vocab.items():
        assert info.token_id(text) == token_id
    assert info.to_json()["special_tokens"] == dict(info.special_tokens)


def test_bom_and_duplicate_keys_read_as_json_loads_reads_them(tmp_path: Path) -> None:
    doc = (b'\xef\xbb\xbf{"model": {"vocab": {"x": 9}}, "added_tokens": [], '
           b'"model": {"vocab": {"a": 0, "b": 1, "a": 2}}}')
    path = tmp_path / "tokenizer.json"
    path.write_bytes(doc)
    info = read_tokenizer(path, check_runner=False)
    reference = json.loads(doc.decode("utf-8-sig"))["model"]["vocab"]
    assert (info.vocab_size, dict(info.vocab or {})) == (max(reference.values()) + 1, reference)


def test_outline_kinds() -> None:
    assert decode_document(b'{"model": {}}', "t").kind == "hf_json"
    tekken = b'{"config": {}, "vocab": [], "model": {}}'  # tekken first, as the runner
    assert decode_document(tekken, "t").kind == "tekken"
    for neither in (b'{"model": null}', b'{"model": [1]}', b'{"model": 3, "config": {}}', b"{}",
                    b'{"config": {}, "vocab": {}}', b"[1, 2]"):
        assert decode_document(neither, "t").kind is None, neither
    assert decode_document(b'{"model": 3, "config": {}, "vocab": []}', "t").kind == "tekken"


def test_values_beyond_64_bits_read_as_json_loads_reads_them() -> None:
    raw = msgspec.Raw(b'{"model_max_length": 1000000000000000019884624838656}')
    assert decode_value(raw, "t") == {"model_max_length": 1000000000000000019884624838656}


def _merges_doc(n: int) -> bytes:
    merges = [[f"a{i}", f"b{i}"] for i in range(n)]
    vocab = {f"t{i}": i for i in range(50)}
    return json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}).encode()


def test_merges_are_checked_but_never_built(tmp_path: Path) -> None:
    """Reading a file whose merges take M bytes allocates well under what building them costs
    (json.loads: about 10 M); counted in bytes allocated, never in time."""
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_bytes(_merges_doc(0))
    big.write_bytes(_merges_doc(200_000))
    merges_bytes = big.stat().st_size - small.stat().st_size

    def peak(path: Path) -> int:
        read_tokenizer(path, check_runner=False)  # warm: first-call allocations are not counted
        tracemalloc.start()
        try:
            read_tokenizer(path, check_runner=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    extra = peak(big) - peak(small)
    assert extra < 3 * merges_bytes, (extra, merges_bytes)
    tracemalloc.start()
    try:
        json.loads(big.read_bytes())
        built = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert built > 3 * merges_bytes  # what the test guards against really costs more


# --- the typed vocabulary path agrees with the checking path ----------------------------------

_KEYS = st.text(alphabet=st.sampled_from('ab"\\[{\u00e9\u2581 '), max_size=4)
_IDS = st.one_of(st.integers(-3, 5), st.sampled_from([TOKENIZER_MAX_VOCAB - 1, TOKENIZER_MAX_VOCAB, 2**70]),
                 st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.none(), _KEYS)
_ENTRIES = st.one_of(st.tuples(_KEYS, st.floats(allow_nan=False, allow_infinity=False)).map(list),
                     st.lists(st.one_of(_KEYS, _IDS), max_size=3))
_VOCABS = st.one_of(st.dictionaries(_KEYS, _IDS, max_size=6), st.lists(_ENTRIES, max_size=6), _IDS)


@settings(max_examples=500, deadline=None)
@given(_VOCABS)
def test_typed_vocabulary_equals_the_checked_one(vocab: Any) -> None:
    raw = msgspec.Raw(json.dumps(vocab).encode())
    try:
        expected: dict[str, int] | None = hf_json._checked_vocab("t", json.loads(bytes(raw)))
    except TokenizerFormatError:
        expected = None
    typed = hf_json._typed_vocab(raw)
    assert typed is None or typed == expected  # None: the checking path decides
    if expected is None:
        with pytest.raises(TokenizerFormatError):
            hf_json._vocab("t", raw)
    else:
        assert hf_json._vocab("t", raw) == expected


@pytest.mark.parametrize(
    ("vocab", "words"),
    [
        ('{"a": 0, "b": true}', ["'b': True", "not text -> id"]),
        ('{"a": 0, "b": 1.0}', ["'b': 1.0"]),
        ('{"a": -1}', ["'a': -1"]),
        ('{"a": 123456789012345678901234567890}', ["123456789012345678901234567890"]),
        ('[["a", 0.0], [3, 0.0]]', ["entry 3: 1 "]),
        ('"vocab"', ['no "model.vocab"']),
    ],
)
def test_unusual_vocabularies_name_the_entry_at_fault(tmp_path: Path, vocab: str, words: list[str]) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"vocab": ' + vocab + '}, "added_tokens": []}')
    with pytest.raises(TokenizerFormatError) as caught:
        read_tokenizer(path, check_runner=False)
    for word in words:
        assert word in str(caught.value)


# --- bounds over the whole document, skipped parts included -----------------------------------


def _with_merges(merges: bytes) -> bytes:
    return b'{"model": {"vocab": {"a": 0}, "merges": ' + merges + b'}, "added_tokens": []}'


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (_with_merges(b"[" * (TOKENIZER_JSON_MAX_DEPTH + 1) + b"]" * (TOKENIZER_JSON_MAX_DEPTH + 1)),
         ["nested", str(TOKENIZER_JSON_MAX_DEPTH)]),
        (_with_merges(b"[" * 5000 + b"]" * 5000), ["nested"]),
        (_with_merges(b"[" * 2_000_000), ["nested"]),  # never closed: stopped, not recursed
        (_with_merges(b'["\xff\xfe"]'), ["UTF-8"]),
        (_with_merges(b'["a", "b"'), ["not valid JSON"]),
        (_with_merges(b"[NaN]"), ["not valid JSON"]),
        (_with_merges(b'["a\x01"]'), ["not valid JSON"]),
        (b'{"model": {"vocab": {"\xc3": 0}}}', ["UTF-8"]),
        (b'{"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1e999999, "content": "x"}]}',
         ["added_tokens"]),
        (b'{"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": ' + b"9" * 5000 + b', "content": "x"}]}',
         ["not valid JSON"]),
    ],
)
def test_hostile_documents_give_one_format_error(tmp_path: Path, doc: bytes, words: list[str]) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(doc)
    with pytest.raises(TokenizerFormatError) as caught:
        read_tokenizer(path, check_runner=False)
    for word in words:
        assert word in str(caught.value), caught.value
    assert str(path) in str(caught.value)


def test_the_nesting_limit_itself_is_accepted(tmp_path: Path) -> None:
    inner = TOKENIZER_JSON_MAX_DEPTH - 2  # the document and "model" take two levels
    path = tmp_path / "tokenizer.json"
    path.write_bytes(_with_merges(b"[" * inner + b"]" * inner))
    assert read_tokenizer(path, check_runner=False).vocab_size == 1


def test_enormous_strings_in_skipped_parts_are_read_past(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(_with_merges(b'["' + b"x" * (20 << 20) + b'"]'))
    assert read_tokenizer(path, check_runner=False).vocab_size == 1


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many JSON tokenizer documents are decoded from now on (the dear part of a read)."""
    decodes = {"n": 0}
    real = detect.json_document.decode_document

    def counting(*args: Any, **kwargs: Any) -> Any:
        decodes["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(detect.json_document, "decode_document", counting)
    return decodes


def test_a_tokenizer_seen_before_is_not_decoded_again_but_takes_its_own_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parses are kept by content (a tree of variants shares one tokenizer); the configs beside
    each copy still decide its bos/eos. Counted in decodes, never in time."""
    decodes = _count_decodes(monkeypatch)
    doc = json.loads((FIXTURES / "hf_bpe" / "tokenizer.json").read_text())
    doc["model"]["vocab"]["a-token-only-this-test-has"] = len(doc["model"]["vocab"]) + 1000
    copies = []
    for name, eos in (("a", "<|im_end|>"), ("b", "<|endoftext|>")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tokenizer.json").write_text(json.dumps(doc))
        (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
        copies.append(folder)
    first, second = (read_tokenizer(f / "tokenizer.json", config_path=f / "tokenizer_config.json",
                                    check_runner=False) for f in copies)
    assert decodes["n"] == 1
    assert (first.eos_token, second.eos_token) == ("<|im_end|>", "<|endoftext|>")
    assert first.eos_id != second.eos_id and first.vocab_size == second.vocab_size
    assert second.path == str(copies[1] / "tokenizer.json")
    assert second.token_id("a-token-only-this-test-has") == first.vocab_size - 1


def test_a_vocabulary_past_the_entry_limit_is_refused_on_the_typed_path_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hf_json, "TOKENIZER_MAX_VOCAB", 3)
    raw = msgspec.Raw(b'{"a": 0, "b": 0, "c": 1, "d": 2}')
    assert hf_json._typed_vocab(raw) is None
    with pytest.raises(TokenizerFormatError, match="4 entries, too many"):
        hf_json._vocab("t", raw)


# --- the vocabulary read from its ids, built only when a lookup asks ---------------------------


def test_inspecting_a_tokenizer_never_builds_its_vocabulary(tmp_path: Path) -> None:
    """Describing a tokenizer.json needs the size, not the text -> id dict (a quarter of a million
    entries for Gemma 3): counted in dicts built, never in time."""
    path = tmp_path / "tokenizer.json"
    vocab = {f"t{i}\u2581\"{i % 7}": i for i in range(5000)}
    path.write_text(json.dumps({"added_tokens": [{"id": 5000, "content": "<eos>"}],
                                "model": {"type": "BPE", "vocab": vocab, "merges": []}}))
    before, buckets = vocab_index.vocabularies_built, vocab_index.buckets_read
    info = read_tokenizer(path, check_runner=False)
    assert (info.vocab_size, info.eos_id) == (5001, 5000)
    assert info.to_json()["vocab_size"] == 5001
    assert vocab_index.vocabularies_built == before
    # A lookup reads the keys that start with the same byte (all of them here: "t"; none: "a").
    assert info.token_id('t42\u2581"0') == 42 and info.token_id("absent") is None
    assert info.token_id("t4999\u2581\"1") == 4999
    assert (vocab_index.vocabularies_built, vocab_index.buckets_read) == (before, buckets + 2)
    assert info.vocab is not None and len(info.vocab) == 5000 and dict(info.vocab) == vocab
    assert vocab_index.vocabularies_built == before + 1  # built once


def test_a_vocabulary_built_on_demand_is_a_plain_mapping_everywhere() -> None:
    import pickle

    lazy = hf_json.Vocabulary(b'{"a": 0, "b": 1, "a": 2}')
    assert pickle.loads(pickle.dumps(lazy)) == {"a": 2, "b": 1}
    assert ("a" in lazy, "c" in lazy, lazy.get("b"), lazy.get("c", -1)) == (True, False, 1, -1)
    assert (sorted(lazy), len(lazy), lazy == {"b": 1, "a": 2}) == (["a", "b"], 2, True)


_VALUES = st.sampled_from(["0", "1", "2", "7", "-1", "-0", "1.0", "1e2", "1E2", "1e+2", "2e-1", "true",
                           "false", "null", '"3"', "[1]", '{"a": 1}', str(TOKENIZER_MAX_VOCAB - 1),
                           str(TOKENIZER_MAX_VOCAB), str(2**64), "1" * 30])
_RAW_KEYS = _KEYS.map(lambda k: json.dumps(k, ensure_ascii=False))
_SPACES = st.sampled_from(["", " ", "\n  ", "\t"])


@st.composite
def _vocab_objects(draw: Any) -> bytes:
    """A vocabulary object as text: ids in order or not, odd values, repeated keys, escapes."""
    n = draw(st.integers(0, 8))
    entries = []
    for index in range(n):
        value = draw(st.one_of(st.just(str(index)), st.integers(0, 9).map(str), _VALUES))
        entries.append(draw(_SPACES) + draw(_RAW_KEYS) + draw(_SPACES) + ":" + draw(_SPACES) + value)
    if entries and draw(st.booleans()):  # a key repeated with another id
        entries.insert(draw(st.integers(0, len(entries))),
                       entries[draw(st.integers(0, len(entries) - 1))].split(":")[0] + ": " + draw(_VALUES))
    return ("{" + ",".join(entries) + draw(_SPACES) + "}").encode()


@settings(max_examples=800, deadline=None)
@given(_vocab_objects())
def test_the_vocabulary_read_from_its_ids_is_exactly_the_decoded_one(span: bytes) -> None:
    """When the outline answers, it is the size the whole decode gives (a repeated key can hide
    no larger id) and the same mapping; otherwise the decode decides, as before."""
    try:
        reference = json.loads(span)
    except ValueError:
        return  # not JSON: the document decode refuses it before any vocabulary is read
    outline = hf_json._vocab_outline(json_outside_strings(span, STRUCTURE_AND_NUMBERS))
    try:
        expected: dict[str, int] | None = hf_json._vocab("t", msgspec.Raw(span))
    except TokenizerFormatError:
        expected = None
    if outline is None:
        return
    assert expected is not None and expected == reference
    entries, largest = outline
    assert largest == max(reference.values(), default=-1)
    assert len(reference) <= entries <= TOKENIZER_VOCAB_LOOKUP_MAX
    assert dict(hf_json.Vocabulary(span)) == reference


@settings(max_examples=800, deadline=None)
@given(_vocab_objects())
def test_ids_read_as_in_order_only_when_they_are_zero_to_n(span: bytes) -> None:
    """The shortcut for ids listed 0, 1, ... n - 1 never says yes to anything else (a repeated
    key, another order, a float, a literal, a string, a nested value); an unusual spelling of
    those ids (``-0``) is left to the decode."""
    try:
        values = json.loads(span, object_pairs_hook=lambda pairs: [value for _, value in pairs])
    except ValueError:
        return  # not JSON: the document decode refuses it before any vocabulary is read
    outside = json_outside_strings(span, STRUCTURE_AND_NUMBERS)
    entries = outside.count(b":")
    if hf_json._in_order(hf_json._as_list(outside), entries):
        assert all(type(v) is int for v in values) and values == list(range(entries))


@settings(max_examples=200, deadline=None)
@given(st.lists(_RAW_KEYS, max_size=40), _SPACES)
def test_ids_listed_zero_to_n_take_the_shortcut(keys: list[str], space: str) -> None:
    span = ("{" + ",".join(f"{space}{key}:{space}{index}" for index, key in enumerate(keys)) + "}").encode()
    outside = json_outside_strings(span, STRUCTURE_AND_NUMBERS)
    if keys:
        assert hf_json._in_order(hf_json._as_list(outside), outside.count(b":"))
        assert hf_json._vocab_outline(outside) == (len(keys), len(keys) - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.fixed_dictionaries({"id": st.integers(-2, 9), "content": _KEYS}, optional={"special": st.booleans()}),
    st.sampled_from([{"id": True, "content": "a"}, {"content": "b"}, {"id": 1.0, "content": "c"},
                     {"id": 2, "content": None}, {"id": TOKENIZER_MAX_VOCAB, "content": "d"}, "str", 3])),
    max_size=5))
def test_typed_added_tokens_equal_the_checked_ones(entries: list[Any]) -> None:
    raw = msgspec.Raw(json.dumps(entries).encode())
    typed = hf_json._typed_added(raw)
    try:
        checked: dict[str, int] | None = hf_json._added("t", raw)
    except TokenizerFormatError:
        checked = None
    assert typed is None or typed == checked


def test_repeated_keys_in_added_tokens_read_as_json_loads_reads_them() -> None:
    raw = msgspec.Raw(b'[{"id": 3, "id": 4, "content": "a", "content": "b"}]')
    assert hf_json._typed_added(raw) == {"b": 4} == hf_json._added("t", raw)


# --- UTF-8, checked in small chunks --------------------------------------------------------------

_UTF8_PIECES = st.sampled_from([b"a", b"\xc3\xa9", b"\xe2\x96\x81", b"\xf0\x9f\x98\x80", b"\xff", b"\xc3",
                                b"\xe2\x96", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x80", b"\xf4\x90\x80\x80"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_UTF8_PIECES, max_size=40).map(b"".join), st.integers(4, 9))
def test_utf8_is_checked_across_chunk_boundaries_as_one_decode(data: bytes, chunk: int) -> None:
    """Every chunk starts where the last one's characters ended: the verdict and the byte named
    are those of one decode of the whole."""
    from etm_compat.formats.tokenizer import json_document

    saved = json_document._UTF8_CHUNK
    json_document._UTF8_CHUNK = chunk
    try:
        try:
            data.decode("utf-8")
            expected = None
        except UnicodeDecodeError as exc:
            expected = f"near byte {exc.start})"
        try:
            json_document._check_utf8(data, "t", "x")
            found = None
        except TokenizerFormatError as exc:
            found = str(exc).split("UTF-8 text (")[1]
        assert found == expected
    finally:
        json_document._UTF8_CHUNK = saved


@pytest.mark.parametrize(
    "doc",
    [
        b'{"model": {"vocab": {"a": 0, "b": 1}}}',
        b'{"added_tokens": [{"id": 2, "content": "\\"vocab\\": {\\"a\\": 0, \\"b\\": 1}"}], '
        b'"x": {"vocab": "no"}, "model" : {"vocab"\n\t:\r {"a": 0, "b": 1}}}',
        b'{"model": {"vocab": {"a": 0, "b": 1}, "vocab": {"c": 0}}, "y": {"vocab": {"c": 0}}}',
        b'{"a": {"vocab": [1]}, "model": {"vocab": {"z\\\\": 0, "\\"vocab\\"": 1}}}',
    ],
)
def test_the_vocabulary_is_read_once_with_the_nesting_check(doc: bytes) -> None:
    """The nesting check reads the vocabulary's part keeping its numbers, for hf_json: what it
    hands over is that object's outside, whatever "vocab" texts come before it."""
    document = decode_document(doc, "t")
    assert document.model is not None
    expected = json_outside_strings(bytes(document.model.vocab), STRUCTURE_AND_NUMBERS)
    assert document.vocab_outside == expected


@settings(max_examples=800, deadline=None)
@given(_vocab_objects())
def test_the_ids_read_with_the_nesting_check_are_those_every_number_byte_gives(span: bytes) -> None:
    """The nesting check reads the vocabulary's ids without a lowercase e where no digit follows
    one (token texts are full of it): the outline is the one read keeping every byte of every
    number, exponents (1e2, 1e+2, 2e-1) and literals included."""
    doc = b'{"model": {"vocab": ' + span + b"}}"
    try:
        json.loads(doc)
    except ValueError:
        return
    document = decode_document(doc, "t")
    assert document.vocab_outside is not None
    every_byte = json_outside_strings(span, STRUCTURE_AND_NUMBERS)
    assert hf_json._vocab_outline(document.vocab_outside) == hf_json._vocab_outline(every_byte)
    if b"e" not in every_byte:  # no exponent and no literal: the same bytes
        assert document.vocab_outside == every_byte


def test_an_exponent_that_drops_to_an_id_is_read_keeping_its_e() -> None:
    """``1e2`` without its e would read as the id 12: a vocabulary with an e before a digit
    keeps every number byte, and is decoded (and refused) as before."""
    doc = b'{"model": {"vocab": {"a": 0, "b": 1e2}}}'
    document = decode_document(doc, "t")
    assert document.vocab_outside == b"{:0,:1e2}"
    assert hf_json._vocab_outline(document.vocab_outside) is None
    with pytest.raises(TokenizerFormatError, match="not text -> id"):
        hf_json.read_tokens("t", document)
    signed = decode_document(b'{"model": {"vocab": {"a": 0, "b": 1e+2, "c": true}}}', "t")
    assert signed.vocab_outside == b"{:0,:1+2,:}"  # no e before a digit: dropped, still no id
    assert hf_json._vocab_outline(signed.vocab_outside) is None


@pytest.mark.parametrize(
    ("levels", "words"),
    [(TOKENIZER_JSON_MAX_DEPTH - 3, "not text -> id"), (TOKENIZER_JSON_MAX_DEPTH - 2, "nested more than")],
)
def test_nesting_inside_the_vocabulary_counts_too(tmp_path: Path, levels: int, words: str) -> None:
    """The vocabulary's part is read apart (numbers kept) and still counts for the limit: the
    document, "model" and "vocab" take three levels above the value."""
    value = b"[" * levels + b"]" * levels
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b'{"model": {"vocab": {"a": 0, "b": ' + value + b"}}}")
    with pytest.raises(TokenizerFormatError, match=words):
        read_tokenizer(path, check_runner=False)


@pytest.mark.parametrize("extra", [0, 1])
def test_nesting_among_sparse_brackets_is_measured_line_by_line(tmp_path: Path, extra: int) -> None:
    """Merges as strings (Llama 3) leave brackets sparse, and the part after the vocabulary is
    read only on the lines that hold one: a post-processor nested to the limit still reads, one
    level more is refused, whether its brackets share lines or not."""
    merges = [f"a{i} b{i}" if i % 500 else "[ {" for i in range(40_000)]
    levels = TOKENIZER_JSON_MAX_DEPTH - 1 + extra  # the document's own object is the first level
    nested: Any = "]"
    for _ in range(levels):
        nested = [nested]
    for indent in (2, None):
        document = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": merges}, "post_processor": nested}
        path = tmp_path / f"tokenizer-{indent}.json"
        path.write_text(json.dumps(document, indent=indent))
        if extra:
            with pytest.raises(TokenizerFormatError, match="nested more than"):
                read_tokenizer(path, check_runner=False)
        else:
            assert read_tokenizer(path, check_runner=False).vocab_size == 1


def test_the_content_hash_runs_beside_the_parse_and_still_keys_both_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file is hashed in a thread while it is parsed; a remembered parse of the same
    format and size makes the hash decide first. Counted in decodes, never in time."""
    monkeypatch.setattr(detect, "BACKGROUND_HASH_MIN", 0)
    data = (FIXTURES / "hf_bpe" / "tokenizer.json").read_bytes()
    digest = detect._Sha256(data, background=True)
    assert digest._thread is not None
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest() and digest._thread is None

    decodes = _count_decodes(monkeypatch)
    doc = json.loads(data)
    doc["model"]["vocab"]["zz-first"] = 100_000
    first = json.dumps(doc).encode()
    second = first.replace(b'"zz-first": 100000', b'"zz-other": 100001')
    assert len(first) == len(second)
    paths = []
    for name, content in (("a", first), ("b", first), ("c", second)):
        path = tmp_path / name / "tokenizer.json"
        path.parent.mkdir()
        path.write_bytes(content)
        paths.append(path)
    infos = [read_tokenizer(p, check_runner=False) for p in paths]
    assert decodes["n"] == 2  # the copy is served from the first parse; same size, other bytes is not
    assert [i.vocab_size for i in infos] == [100_001, 100_001, 100_002]
    assert infos[2].token_id("zz-other") == 100_001 and infos[2].token_id("zz-first") is None
    assert ("hf_json", hashlib.sha256(second).hexdigest()) in detect._PARSED
    assert not [t for t in threading.enumerate() if t.name == "etm-tokenizer-sha256"]
