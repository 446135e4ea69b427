"""Bounded config readers: real fixture files read, hostile files refused with InputError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etm_compat.errors import InputError, UnreadableError
from etm_compat.formats.configs import (
    json_nesting,
    read_config,
    read_json_config,
    read_template_file,
    read_yaml_config,
    template_from_config,
    value_depth,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_reads_the_fixture_params_and_export_yaml() -> None:
    params = read_config("params", FIXTURES / "llama" / "params.json")
    assert params["vocab_size"] == 512
    assert params["rope_theta"] == 500000.0
    export = read_config("export_config", FIXTURES / "llama" / "export_config.yaml")
    assert export["base"]["model_class"] == "llama3"
    assert json.loads(export["base"]["metadata"]) == {"get_bos_id": 1, "get_eos_ids": [2]}
    assert export["export"]["max_seq_length"] == 128


def test_reads_the_hf_bpe_tokenizer_config_template() -> None:
    path = FIXTURES / "tokenizers" / "hf_bpe" / "tokenizer_config.json"
    value = read_config("tokenizer_config", path)
    template = template_from_config("tokenizer_config", value)
    assert template is not None and "<|im_start|>" in template


def test_size_cap_refuses_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad": "x" * 2000}), encoding="utf-8")
    with pytest.raises(InputError, match="more than the 100 bytes"):
        read_json_config(path, max_bytes=100)


def test_depth_cap_for_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[" * 100 + "]" * 100, encoding="utf-8")
    with pytest.raises(InputError, match="nested 100 levels"):
        read_json_config(path)


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_nesting('{"t": "[[[[{{{{\\"]]"}') == 1


def test_not_json_and_nan_are_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        read_json_config(bad)
    nan = tmp_path / "nan.json"
    nan.write_text('{"temperature": NaN}', encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        read_json_config(nan)


def test_not_utf8_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(InputError, match="not UTF-8"):
        read_json_config(path)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError):
        read_config("config", tmp_path / "nope.json")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="expected a mapping"):
        read_config("config", path)


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="aliases are not accepted"):
        read_yaml_config(path)


def test_yaml_unsafe_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("x: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        read_yaml_config(path)


def test_yaml_depth_cap(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 40 + "]" * 40 + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="nested more than"):
        read_yaml_config(path)
    assert value_depth({"a": [[1]]}) == 3


def test_chat_template_roles(tmp_path: Path) -> None:
    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", "utf-8")
    text = read_config("chat_template", jinja)
    assert read_template_file(jinja) == text
    assert template_from_config("chat_template", text) == text
    as_json = tmp_path / "chat_template.json"
    as_json.write_text(json.dumps({"chat_template": "T"}), encoding="utf-8")
    assert template_from_config("chat_template", read_config("chat_template", as_json)) == "T"


def test_named_template_list_takes_default_or_the_only_one() -> None:
    both = {
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]
    }
    assert template_from_config("tokenizer_config", both) == "D"
    only = {"chat_template": [{"name": "rag", "template": "R"}]}
    assert template_from_config("tokenizer_config", only) == "R"
    several = {"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]}
    assert template_from_config("tokenizer_config", several) is None
    assert template_from_config("tokenizer_config", {"eos_token": "</s>"}) is None
    assert template_from_config("config", {"chat_template": "X"}) is None


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.booleans(), st.booleans())
def test_a_json_config_reads_as_json_loads_reads_it(value: object, ascii_only: bool, indent: bool) -> None:
    """msgspec reads it (in C), json.loads where msgspec refuses: the values are json.loads's
    either way, integers beyond 64 bits and repeated keys included."""
    import tempfile

    text = json.dumps(value, ensure_ascii=ascii_only, indent=2 if indent else None)
    if isinstance(value, dict) and value:
        key = next(iter(value))
        text = text[:1] + json.dumps(key) + ": 0, " + text[1:]  # repeated: the last one wins
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.json"
        path.write_text(text, encoding="utf-8")
        got = read_json_config(path)
    expected = json.loads(text)
    assert got == expected and json.dumps(got) == json.dumps(expected)


def test_what_msgspec_refuses_json_loads_still_decides(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"t": "\\ud800", "n": 1}', encoding="utf-8")  # a lone surrogate escape
    assert read_json_config(path) == {"t": "\ud800", "n": 1}
    path.write_text('{"n": NaN}', encoding="utf-8")
    with pytest.raises(InputError, match="NaN is not valid JSON"):
        read_json_config(path)
