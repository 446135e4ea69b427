"""Nesting is measured before parsing, ignoring brackets inside strings (escapes included)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etm_compat.jsonlimits as jsonlimits
from etm_compat.jsonlimits import json_nesting


def depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


@pytest.mark.parametrize(
    "value",
    [[], {}, [[[]]], {"a": [1, {"b": [2, [3]]}]}, {"s": "[[[{{{"}, ["\\\"[["], {"k": ['"]]]']},
     {"": ""}, ["", "[", "", "]"], {"\\": "\\\\\""}, [{"[": "]"}, {"{": ","}, {":": '"'}]],
)
def test_nesting_equals_the_parsed_depth(value):
    text = json.dumps(value)
    assert json_nesting(text) == depth(value)
    assert json_nesting(text.encode()) == depth(value)
    assert json_nesting(json.dumps(value, indent=2, ensure_ascii=False)) == depth(value)


# Strings made of what can fool a scanner: quotes, backslashes, brackets, separators.
_TRICKY_TEXT = st.text(alphabet=st.sampled_from('"\\[]{},: ab\n\u00e9\u2581'), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(_JSON, st.booleans(), st.booleans())
def test_nesting_of_any_document_equals_its_depth(value, indent, ascii_only):
    text = json.dumps(value, indent=2 if indent else None, ensure_ascii=ascii_only)
    assert json_nesting(text) == depth(value)


def test_dense_escapes_take_the_bulk_path_and_stay_exact():
    """Past the sparse-escape scan, the rest is done by bytes.replace: still exact."""
    value = [["\\" * (i % 5) + '"' * (i % 3) + "[" * (i % 4)] * (1 + i % 3) for i in range(30_000)]
    text = json.dumps(value).encode()
    assert text.count(b"\\") > jsonlimits._ESCAPE_BATCH * 2
    assert json_nesting(text) == 2


def test_deep_input_is_measured_without_recursion():
    assert json_nesting("[" * 100_000 + "]" * 100_000) == 100_000


def test_a_limit_stops_the_count_early_but_above_the_limit():
    deep = b'{"a": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}"
    assert 64 < json_nesting(deep, 64) <= 1_000_001
    assert json_nesting(b"[" * 3_000_000, 64) > 64  # never closed
    assert json_nesting(b"[[]]" * 1000, 64) == 2
    shallow = json.dumps({"a": [[1]] * 1000}).encode()
    assert json_nesting(shallow, 1) > 1 and json_nesting(shallow, 3) == 3


def _old_json_nesting(data: bytes) -> int:
    """The previous implementation (a regex over every string): the reference for any input."""
    brackets = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", data, flags=re.DOTALL)
    level = deepest = 0
    for b in brackets:
        if b in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif b in b"]}":
            level -= 1
    return deepest


@pytest.mark.parametrize(
    ("data", "parser_depth"),
    [
        (b"[" * 50 + b'"' + b"]" * 10, 50),  # unterminated string
        (b'[[["a\\"]]]', 3),  # its closing quote is escaped: unterminated too
        (b'[[[[ "abc', 4),
        (b'{"a": [}', 2),
        (b'["a" "b" [[[]]]]', 1),  # a parser stops at "b"
        (b"]]]]][[", 0),
    ],
)
def test_invalid_json_is_measured_at_least_as_deep_as_a_parser_goes(data, parser_depth):
    """A parser stops at its first error: the measure reaches the depth it had reached."""
    assert json_nesting(data) >= parser_depth


@pytest.mark.parametrize(
    "data",
    [
        b"[" + b'"[",' * 200_000 + b"1]",  # every string holds a bracket
        b'{"a": "' + b"\\\\" * 400_000 + b'"}',  # escapes everywhere
        b"[" + b'"\\"",' * 200_000 + b"1]",  # escaped quotes everywhere
        b"[]" * 400_000,
        b"[[]]" * 200_000,
    ],
)
def test_hostile_shapes_are_measured_in_linear_work(data):
    """The work is a fixed number of passes whatever the shape: counted as Python-level steps of
    the escape scan and the peeling passes, never per byte."""
    counted, calls = _counting_finds(data)
    assert json_nesting(counted) == _old_json_nesting(data)
    assert calls["find"] <= 2 * jsonlimits._ESCAPE_BATCH + 1


def _counting_finds(data: bytes) -> tuple[bytes, dict[str, int]]:
    """``data`` as bytes that count the ``find`` calls made on them (the escape scan's steps)."""
    calls = {"find": 0}
    real_find = bytes.find

    class Counting(bytes):
        def find(self, *args: Any) -> int:  # type: ignore[override]
            calls["find"] += 1
            return real_find(self, *args)

    return Counting(data), calls


def _pairing_reference(data: bytes, delete: bytes) -> bytes:
    """Escaped backslashes and quotes dropped by pairing backslashes left to right, one byte at a
    time: the definition the C-level passes implement."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 1] == b"\\" and data[i + 1 : i + 2] in (b"\\", b'"'):
            i += 2
            continue
        out += data[i : i + 1]
        i += 1
    return bytes(out).translate(None, delete)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b.translate(bytes(b'\\"[]n a'[i % 7] for i in range(256)))),
       st.sampled_from([0, 1, 3, 50]))
def test_quoting_escapes_are_paired_left_to_right_in_sparse_and_dense_modes(data, batch):
    """Any bytes (valid JSON or not, from any start), in the sparse scan and in bulk windows."""
    delete = jsonlimits._deletion(b'"[]{},:')
    expected = _pairing_reference(data, delete)

    def without_quoting_escapes(begin: int) -> bytes:
        return b"".join(jsonlimits._segments_without_quoting_escapes(data, delete, begin, len(data)))

    assert without_quoting_escapes(0) == expected
    if batch:  # bulk windows of a few bytes, then one at a time again, many times over
        saved = (jsonlimits._ESCAPE_BATCH, jsonlimits._SPARSE_ESCAPE_GAP, jsonlimits._DENSE_WINDOW)
        jsonlimits._ESCAPE_BATCH, jsonlimits._SPARSE_ESCAPE_GAP, jsonlimits._DENSE_WINDOW = batch, 2, 5
        try:
            assert without_quoting_escapes(0) == expected
            cut = len(data) // 3
            assert without_quoting_escapes(cut) == _pairing_reference(data[cut:], delete)
        finally:
            jsonlimits._ESCAPE_BATCH, jsonlimits._SPARSE_ESCAPE_GAP, jsonlimits._DENSE_WINDOW = saved


@settings(max_examples=300, deadline=None)
@given(_JSON, st.booleans())
def test_outside_strings_keeps_every_number_and_no_string_content(value, indent):
    text = json.dumps(value, indent=2 if indent else None).encode()
    keep = b'"[]{},:0123456789-+.eE'
    compact = json.dumps(value, separators=(",", ":")).encode()
    strings_removed = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", compact)
    expected = strings_removed.translate(None, jsonlimits._deletion(keep))
    assert jsonlimits.json_outside_strings(text, keep) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON, min_size=1, max_size=4), st.booleans())
def test_the_outside_of_consecutive_parts_is_the_outside_of_the_whole(values, indent):
    """Parts that begin and end outside strings (here: the elements of a list) can be read with
    different kept bytes, and their nesting still adds up to the whole's."""
    items = [json.dumps(v, indent=2 if indent else None).encode() for v in values]
    whole = b"[" + b",".join(items) + b"]"
    keep, numbers = jsonlimits.STRUCTURE, jsonlimits.STRUCTURE_AND_NUMBERS
    cuts, pos = [], 1
    for item in items:
        cuts.append((pos, pos + len(item)))
        pos += len(item) + 1
    start, end = cuts[len(cuts) // 2]
    pieces = (jsonlimits.json_outside_strings(whole, keep, 0, start)
              + jsonlimits.json_outside_strings(whole, numbers, start, end)
              + jsonlimits.json_outside_strings(whole, keep, end))
    assert pieces.translate(None, jsonlimits._deletion(keep)) == jsonlimits.json_outside_strings(whole, keep)
    assert jsonlimits.outside_nesting(pieces) == json_nesting(whole) == 1 + max(map(depth, values))
    part = jsonlimits.json_outside_strings(whole, numbers, start, end)
    assert part == jsonlimits.json_outside_strings(whole[start:end], numbers)


def test_a_cluster_of_escapes_sends_one_window_not_the_rest_through_the_bulk_passes():
    """Gemma 3's merges open with thousands of newline escapes: past that cluster, escapes are
    found one at a time again (counted in finds), and the measure stays exact."""
    cluster = b'["' + b"\\n\\\\" * 20_000 + b'", '
    tail_items = [b'"a\\"[' + b"x" * 3000 + b'"' for _ in range(2000)]
    data = b"[" + cluster + b", ".join(tail_items) + b"]]"
    counted, calls = _counting_finds(data)
    assert json_nesting(counted) == 2 == _old_json_nesting(data)
    assert len(data) > 2 * jsonlimits._DENSE_WINDOW
    # the cluster: at most two batches one at a time; the tail past the window: one per escape
    assert jsonlimits._ESCAPE_BATCH + 1000 <= calls["find"] <= 2 * jsonlimits._ESCAPE_BATCH + 2000 + 2


@settings(max_examples=300, deadline=None)
@given(_JSON, st.booleans(), st.sampled_from([1, 2, 3, 7, 1 << 18]), st.sampled_from([1, 2, 5, 1 << 15]))
def test_pieces_of_any_size_give_the_same_outside(value, indent, piece, text_piece):
    """The pass works on pieces of the input (cut anywhere between escapes, possibly inside a
    string): what lies outside strings, and the nesting from quotes and brackets alone, are the
    same whatever the cut."""
    text = json.dumps(value, indent=2 if indent else None, ensure_ascii=False).encode()
    keep = jsonlimits.STRUCTURE_AND_NUMBERS
    compact = json.dumps(value, separators=(",", ":")).encode()
    expected = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", compact).translate(None, jsonlimits._deletion(keep))
    saved = jsonlimits._PIECE, jsonlimits._PIECE_TEXT
    jsonlimits._PIECE, jsonlimits._PIECE_TEXT = piece, text_piece
    try:
        assert jsonlimits.json_outside_strings(text, keep) == expected
        brackets = jsonlimits.json_outside_strings(text, jsonlimits.QUOTES_AND_BRACKETS)
        assert brackets == expected.translate(None, jsonlimits._deletion(b"[]{}"))
        assert json_nesting(text) == depth(value)
    finally:
        jsonlimits._PIECE, jsonlimits._PIECE_TEXT = saved


def _running_depth(brackets: bytes) -> int:
    level = deepest = 0
    for b in brackets:
        level += 1 if b in b"[{" else -1
        deepest = max(deepest, level)
    return deepest


@st.composite
def _balanced(draw: Any, budget: int = 60) -> bytes:
    """A balanced sequence of both kinds of brackets, of any shape."""
    out = b""
    while budget > 0 and draw(st.booleans()):
        open_, close = draw(st.sampled_from([b"[]", b"{}"]))
        inner = draw(_balanced(budget // 2))
        out += bytes([open_]) + inner + bytes([close])
        budget -= 2 + len(inner)
    return out


@settings(max_examples=500, deadline=None)
@given(_balanced(), st.sampled_from([None, 0, 1, 2, 5]))
def test_one_replace_per_level_peels_exactly_one_level(brackets, limit):
    """Braces nest as brackets do: one kind, one bytes.replace per level, the exact depth of
    any balanced sequence (above the limit: some value above it)."""
    measured = jsonlimits.outside_nesting(brackets * 3, limit)
    if limit is None or _running_depth(brackets) <= limit:
        assert measured == _running_depth(brackets)
    else:
        assert measured > limit


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.translate(bytes(b"[]{}"[i % 4] for i in range(256)))))
def test_unbalanced_brackets_are_never_measured_shallower(brackets):
    """Invalid JSON: the measure is at least the running depth (what a parser reaches)."""
    assert jsonlimits.outside_nesting(brackets) >= _running_depth(brackets)


def test_the_peeling_takes_one_replace_per_level():
    """Counted work: ``[[[...]]]`` repeated peels in one pass per level, not one per pair."""
    calls = {"replace": 0}
    real_replace = bytes.replace

    class Counting(bytes):
        def replace(self, *args: Any) -> bytes:  # type: ignore[override]
            calls["replace"] += 1
            return Counting(real_replace(self, *args))

    nested = b"[" * 5 + b"{}" + b"]" * 5
    assert jsonlimits._bracket_depth(Counting((nested * 10_000).translate(jsonlimits._ONE_KIND)), None) == 6
    assert calls["replace"] <= 7


@settings(max_examples=300, deadline=None)
@given(_JSON, st.booleans())
def test_json_loads_gives_json_loads_values_by_either_decoder(value, big):
    """msgspec where it can (a large text, or once imported), json.loads where it refuses: the
    values and their types are json.loads's either way."""
    text = json.dumps(value)
    expected = json.loads(text)
    saved = jsonlimits.MSGSPEC_WORTH_FROM
    jsonlimits.MSGSPEC_WORTH_FROM = 0 if big else saved
    try:
        got = jsonlimits.json_loads(text)
    finally:
        jsonlimits.MSGSPEC_WORTH_FROM = saved
    assert got == expected and json.dumps(got) == json.dumps(expected)


def test_json_loads_leaves_to_json_loads_what_msgspec_refuses():
    assert jsonlimits.json_loads('{"t": "\\ud800"}') == {"t": "\ud800"}
    assert math.isnan(jsonlimits.json_loads("[NaN]")[0])
    with pytest.raises(ValueError, match="NaN"):
        jsonlimits.json_loads("[NaN]", parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


# --- valid JSON read line by line where brackets are sparse ---------------------------------------


def _outside_brackets(data: bytes) -> bytes:
    """The reference: the full pass, brackets only."""
    return jsonlimits.json_outside_strings(data, jsonlimits.QUOTES_AND_BRACKETS)


@settings(max_examples=400, deadline=None)
@given(_JSON, st.booleans(), st.booleans())
def test_valid_json_read_line_by_line_keeps_the_brackets_of_the_full_pass(value, indent, force):
    """Lines of valid JSON start outside strings (no string holds a raw line break): the lines
    that hold a bracket, read alone, keep exactly the brackets the full pass keeps. ``force``
    makes any density sparse, so small documents take the line-by-line reading too."""
    text = json.dumps(value, indent=2 if indent else None, ensure_ascii=False).encode()
    saved = jsonlimits._SPARSE_BRACKET_GAP, jsonlimits._SPARSE_BRACKETS_FIRST
    if force:
        jsonlimits._SPARSE_BRACKET_GAP, jsonlimits._SPARSE_BRACKETS_FIRST = 1, 1 << 30
    try:
        assert jsonlimits.valid_json_outside_brackets(text) == _outside_brackets(text)
        if isinstance(value, list) and value:  # a part that begins and ends outside strings
            first = json.dumps(value[0], indent=2 if indent else None, ensure_ascii=False).encode()
            whole = b"[\n" + first + b"\n]"
            part = jsonlimits.valid_json_outside_brackets(whole, 2, 2 + len(first))
            assert part == _outside_brackets(first)
    finally:
        jsonlimits._SPARSE_BRACKET_GAP, jsonlimits._SPARSE_BRACKETS_FIRST = saved


def _reading(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes the full pass is given, call by call."""
    read: list[int] = []
    full = jsonlimits.json_outside_strings

    def counted(data: bytes, keep: bytes, start: int = 0, end: int | None = None) -> bytes:
        read.append((len(data) if end is None else end) - start)
        return full(data, keep, start, end)

    monkeypatch.setattr(jsonlimits, "json_outside_strings", counted)
    return read


def test_sparse_brackets_are_read_on_their_lines_only(monkeypatch):
    """Merges as strings (Llama 3): a bracket now and then, mostly inside strings. Only the lines
    holding one are read; the brackets kept are those of the full pass."""
    merges = [f"a{i} b{i}" if i % 997 else "\u0120 [" for i in range(20_000)]
    data = json.dumps({"model": {"merges": merges}, "x": [[{"y": "]"}]]}, indent=2).encode()
    expected = _outside_brackets(data)
    read = _reading(monkeypatch)
    assert jsonlimits.valid_json_outside_brackets(data) == expected == b"{{[]}[[{}]]}"
    assert len(read) == 1 and read[0] < len(data) // 50


def test_dense_brackets_take_the_full_pass_after_few_finds(monkeypatch):
    """Merges as pairs (Gemma 3, Qwen 3): brackets on every line. The finding stops within its
    first few hundred brackets, and the whole part goes through the full pass."""
    data = json.dumps({"merges": [[f"a{i}", f"b{i}"] for i in range(20_000)]}, indent=2).encode()
    expected = _outside_brackets(data)
    finds = 0

    class Probe(bytes):
        def find(self, *args: Any) -> int:
            nonlocal finds
            finds += 1
            return bytes.find(self, *args)

    read = _reading(monkeypatch)
    assert jsonlimits.valid_json_outside_brackets(Probe(data)) == expected
    assert read == [len(data)]
    assert finds <= jsonlimits._SPARSE_BRACKETS_FIRST + 2
