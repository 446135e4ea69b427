"""Lookups in a vocabulary object read from its bytes (etm_compat/formats/tokenizer/vocab_index.py)
answer what ``json.loads`` of the same bytes answers, however the keys are spelled."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etm_compat.formats.tokenizer import vocab_index
from etm_compat.formats.tokenizer.vocab_index import Vocabulary

#: Texts that stress spelling: quotes, backslashes, controls, "/", non-ASCII, the ambiguous first
#: bytes (space, ":"), and look-alikes of structure ("<", '":', '\\"<').
ALPHABET = st.sampled_from(['<', '|', '"', "\\", "/", ":", " ", "\n", "\x01", "a", "b", "▁", "é", "\uff5c", "[", "}", "0"])  # \uff5c: DeepSeek's bar
TEXTS = st.text(ALPHABET, max_size=6)


def spell(text: str, rng: random.Random) -> str:
    """One JSON spelling of ``text``, chosen at random among the valid ones: any character may
    be a \\u escape (either case of hex), "/" may be escaped, the short escapes are used or not."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        forced = ch in '"\\' or code < 0x20
        choice = rng.random()
        if choice < 0.2 and code < 0x10000:
            hexa = f"{code:04x}"
            out.append("\\u" + (hexa.upper() if rng.random() < 0.5 else hexa))
        elif ch == "/" and choice < 0.5:
            out.append("\\/")
        elif forced:
            out.append(json.dumps(ch)[1:-1])
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def document(entries: list[tuple[str, int]], rng: random.Random) -> bytes:
    blank = lambda: rng.choice(["", " ", "\n  ", "\t"])  # noqa: E731
    items = [f"{blank()}{spell(text, rng)}{blank()}:{blank()}{'-0' if value == 0 and rng.random() < 0.3 else value}"
             for text, value in entries]
    return ("{" + ",".join(items) + blank() + "}").encode("utf-8")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXTS, st.integers(0, 9999)), max_size=25), st.lists(TEXTS, max_size=8), st.randoms(),
       st.sampled_from([0, 1, 3, vocab_index._SPARSE_STEPS]))
def test_a_lookup_answers_what_json_loads_answers(
    entries: list[tuple[str, int]], probes: list[str], rng: random.Random, sparse: int
) -> None:
    """Whatever the spelling, and whether a bucket's keys are read one find at a time, by the
    regex pass, or by both (after ``sparse`` steps)."""
    span = document(entries, rng)
    reference = json.loads(span)
    saved, vocab_index._SPARSE_STEPS = vocab_index._SPARSE_STEPS, sparse
    try:
        vocab = Vocabulary(span)
        for text in [*probes, *(t for t, _ in entries)]:  # absent texts, and every key (repeats too)
            assert vocab.get(text) == reference.get(text), (text, span)
            assert (text in vocab) == (text in reference)
    finally:
        vocab_index._SPARSE_STEPS = saved
    assert dict(vocab) == reference


def test_a_quote_escaped_inside_a_key_opens_nothing() -> None:
    # The key 'x"<eos>"' is spelled with '"<eos>\\"": 7' in it, which reads like a key '<eos>"'
    # to a byte search that does not count the backslash before its quote.
    span = b'{"x\\"<eos>\\"": 7, "a\\\\": 1, "<eos>x": 2}'
    assert json.loads(span) == {'x"<eos>"': 7, "a\\": 1, "<eos>x": 2}
    vocab = Vocabulary(span)
    assert vocab.get('<eos>"') is None and vocab.get("<eos>") is None
    assert vocab.get("<eos>x") == 2 and vocab.get('x"<eos>"') == 7 and vocab.get("a\\") == 1


def test_a_repeated_key_keeps_its_last_value_whatever_its_spelling() -> None:
    span = b'{"<s>": 1, "\\u003cs>": 2, "b": 3}'
    assert Vocabulary(span)["<s>"] == 2 == json.loads(span)["<s>"]
    span = b'{"\\u003cs>": 2, "<s>": 1}'
    assert Vocabulary(span)["<s>"] == 1


def test_lookups_read_one_bucket_each_and_never_build_the_dict() -> None:
    vocab = Vocabulary(json.dumps({f"<t{i}>": i for i in range(3000)} | {"[INST]": 3000, "▁a": 3001}).encode())
    built, read = vocab_index.vocabularies_built, vocab_index.buckets_read
    assert vocab.get("<t17>") == 17 and vocab.get("<|im_start|>") is None and "<t2999>" in vocab
    assert vocab.get("[INST]") == 3000 and vocab.get("▁a") == 3001 and vocab.get("zz") is None
    assert vocab_index.buckets_read == read + 4 and vocab_index.vocabularies_built == built  # <, [, ▁, z
    assert len(vocab) == 3002 and vocab_index.vocabularies_built == built + 1


def test_a_large_bucket_or_an_ambiguous_first_byte_builds_the_dict() -> None:
    keys = {f"<{i}>": i for i in range(vocab_index.BUCKET_MAX + 1)}
    vocab = Vocabulary(json.dumps(keys | {" x": -1 % 7}).encode())
    built = vocab_index.vocabularies_built
    assert vocab[" x"] == 6 and vocab_index.vocabularies_built == built + 1  # a space may follow a key
    vocab = Vocabulary(json.dumps(keys).encode())
    assert vocab["<5>"] == 5 and vocab_index.vocabularies_built == built + 2  # more keys than a bucket holds
