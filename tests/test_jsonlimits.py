"""Nesting is measured before parsing, ignoring brackets inside strings (escapes included)."""

from __future__ import annotations

import json
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
    calls = {"find": 0}
    real_find = bytes.find

    class Counting(bytes):
        def find(self, *args: Any) -> int:  # type: ignore[override]
            calls["find"] += 1
            return real_find(self, *args)

    assert json_nesting(Counting(data)) == _old_json_nesting(data)
    assert calls["find"] <= 2 * jsonlimits._ESCAPE_BATCH + 1
