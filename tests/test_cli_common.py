"""``--json`` output (``cli/common.py``): the same text as ``json.dumps(indent=2)`` always wrote,
indented in C when msgspec is at hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec  # loaded, as after reading any JSON tokenizer: json_text takes the C way
import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from etm_compat.cli.common import json_text
from etm_compat.errors import escape_json_text
from etm_compat.inspection import inspect


def reference(obj: object) -> str:
    """What ``--json`` printed before msgspec indented it: the pure-Python indenting encoder."""
    return escape_json_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


class Named:
    """An object json.dumps knows only through ``default=str``."""

    def __str__(self) -> str:
        return "named\u202e\x1b[31m"


# Text made of what the escaping and the encoders treat differently: controls, bidi marks,
# lone surrogates (file names that are not UTF-8), non-ASCII, quotes and backslashes.
_TEXT = st.text(alphabet=st.sampled_from('a"\\/\n\t\x00\x1b\x7f\x85\u00e9\u2028\u202e\ufeff\udcff\U0001f600'),
                max_size=8)
_NUMBERS = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
_SCALARS = st.none() | st.booleans() | _NUMBERS | _TEXT | st.just(Named())
_KEYS = _TEXT | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) | st.none() | st.booleans()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(_VALUES)
def test_the_text_is_the_one_json_dumps_indent_2_wrote(value: Any) -> None:
    assert "msgspec" in sys.modules
    assert json_text(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": [], "b": {}, "c": [[]], "d": [{}], "e": {"f": [1, {"g": {}}]}},
        {"x": float("nan"), "y": [float("inf"), -float("inf")]},  # not JSON: the pure-Python way
        {"name": "model\udcff.pte", "mark": "\u202e", "esc": "\x1b[2J"},
        {"big": 2**200, "neg": -(2**64), "float": 1e-7, "exp": 1e22, "round": 0.1 + 0.2, "zero": -0.0},
        {3: "int key", 2.5: "float key", None: "null key", True: "bool key"},
        {"path": Path("/a/b"), "obj": Named(), "tuple": (1, "2")},
    ],
    ids=["empties", "nan", "names", "numbers", "keys", "default-str"],
)
def test_every_kind_of_value_the_cli_emits_reads_the_same(value: object) -> None:
    assert json_text(value) == reference(value)
    if not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(value)):
        assert json.loads(json_text(value)) == json.loads(reference(value))


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


#: Every tokenizer, program and weights fixture (a tokenizer_config.json is no tokenizer).
_INSPECTABLE = sorted(
    p for p in (FIXTURES / "tokenizers").rglob("*")
    if p.is_file() and p.suffix != ".txt" and p.name != "tokenizer_config.json"
) + sorted((FIXTURES / "programs").glob("*.pt[ed]")) + sorted((FIXTURES / "llama").glob("*.pt[ed]"))


@pytest.mark.parametrize("path", _INSPECTABLE, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_inspect_json_of_every_fixture_reads_the_same(path: Path) -> None:
    info = inspect(path, []).to_json()
    assert json_text(info) == reference(info)


_PROBE = """
import json, sys
from etm_compat.cli.common import json_text
small = json_text({"a": [1, 2]})
after_small = "msgspec" in sys.modules
large = json_text({"tokens": {f"<tok{i}>\\u202e": i for i in range(8000)}})
print(json.dumps([after_small, "msgspec" in sys.modules, small, large]))
"""


def test_only_large_output_loads_msgspec_to_indent_it() -> None:
    """A small output (a program's inspect) never pays for msgspec's import; a large one does,
    and both read as before."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    after_small, after_large, small, large = json.loads(proc.stdout)
    assert (after_small, after_large) == (False, True)
    assert small == reference({"a": [1, 2]})
    big = {"tokens": {f"<tok{i}>\u202e": i for i in range(8000)}}
    assert len(json.dumps(big)) > 64 * 1024 and large == reference(big)
    assert msgspec.json.decode(large) == big
