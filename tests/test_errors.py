"""errors: the escapers are C-level regex passes, and escape exactly what the per-character
definition they replaced escaped (that definition is kept here as the reference)."""

from __future__ import annotations

import json
import random
import re

import pytest

from etm_compat import errors
from etm_compat.errors import escape_control, escape_json_text

_REFERENCE_BIDI = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def _reference_needs_escape(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x20
        or 0x7F <= code < 0xA0
        or 0xD800 <= code < 0xE000
        or ch in "\u2028\u2029"
        or ch in _REFERENCE_BIDI
    )


def _reference_escape_control(text: str) -> str:
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if _reference_needs_escape(ch) else ch
        for ch in text
    )


def _reference_escape_json_text(text: str) -> str:
    return "".join(
        f"\\u{ord(ch):04x}" if ord(ch) >= 0x20 and _reference_needs_escape(ch) else ch for ch in text
    )


#: Every class the definition names, its edges, and neighbours that must stay as they are.
_EDGES = (
    "\x00\x09\x0a\x0d\x1b\x1f\x20\x7e\x7f\x80\x9b\x9f\xa0\xff"
    "\u061b\u061c\u061d\u200a\u200b\u200f\u2010\u2027\u2028\u2029\u202a\u202e\u202f"
    "\u205f\u2060\u2061\u2065\u2066\u2069\u206a\ud7ff\ud800\udbff\udc00\udcff\udfff\ue000"
    "\ufefe\ufeff\uffff\U00010000\U0001f600\U0010ffff"
)
_ALPHABET = _EDGES + "aZ09 \"\\{}[]é中文▁"


def _random_text(rng: random.Random, length: int) -> str:
    return "".join(
        rng.choice(_ALPHABET) if rng.random() < 0.7 else chr(rng.randrange(0x110000))
        for _ in range(length)
    )


def test_the_escaped_set_is_the_reference_set_over_every_code_point() -> None:
    everything = "".join(map(chr, range(0x110000)))
    escaped = {m.group() for m in errors._escaped(False).finditer(everything)}
    assert escaped == {ch for ch in everything if _reference_needs_escape(ch)}
    in_json = {m.group() for m in errors._escaped(True).finditer(everything)}
    assert in_json == {ch for ch in escaped if ord(ch) >= 0x20}


@pytest.mark.parametrize("seed", range(20))
def test_escapers_equal_the_per_character_definition_on_random_text(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng, rng.choice((0, 1, 7, 300, 5000)))
    assert escape_control(text) == _reference_escape_control(text)
    assert escape_json_text(text) == _reference_escape_json_text(text)


def test_large_json_output_is_escaped_like_the_reference_and_stays_the_same_value() -> None:
    rng = random.Random(14)

    def lone(text: str) -> str:  # an escaped surrogate pair would read back as one character
        return re.sub("([\ud800-\udfff])", "\\1a", text)

    obj = {lone(_random_text(rng, 12)): lone(_random_text(rng, 40)) for _ in range(4000)}
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    escaped = escape_json_text(text)
    assert escaped == _reference_escape_json_text(text)
    assert json.loads(escaped) == obj
    escaped.encode("utf-8")  # no lone surrogate left raw
    assert not errors._escaped(False).search(escaped.replace("\n", ""))


def test_text_without_anything_to_escape_comes_back_unchanged() -> None:
    text = "modèle 中文 ▁ok 🙂 " * 1000
    assert escape_control(text) == text
    assert escape_json_text(text) == text
