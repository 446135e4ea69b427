"""Nesting is measured before parsing, ignoring brackets inside strings (escapes included)."""

from __future__ import annotations

import json

import pytest

from etm_compat.jsonlimits import json_nesting


@pytest.mark.parametrize(
    "value",
    [[], {}, [[[]]], {"a": [1, {"b": [2, [3]]}]}, {"s": "[[[{{{"}, ["\\\"[["], {"k": ['"]]]']}],
)
def test_nesting_equals_the_parsed_depth(value):
    def depth(v):
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    text = json.dumps(value)
    assert json_nesting(text) == depth(value)
    assert json_nesting(text.encode()) == depth(value)


def test_deep_input_is_measured_without_recursion():
    assert json_nesting("[" * 100_000 + "]" * 100_000) == 100_000
