"""metadata.json: the own checker, the shipped JSON Schema (kept in sync), and parsing limits."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import pytest

from etm_compat.archive.metadata import (
    new_metadata,
    parse_metadata,
    serialize_metadata,
    validate_metadata,
)
from etm_compat.errors import MetadataError, UnsupportedVersionError

SHA_A = "a" * 64


def full_metadata() -> dict[str, Any]:
    """A metadata object with every section filled, as a packer of a Llama 3 folder would."""
    meta = new_metadata(tool_version="0.1.0")
    meta["family"] = {
        "id": "llama3",
        "confidence": "high",
        "evidence": [
            {
                "source": "chat_template",
                "field": "template",
                "value": "<|start_header_id|>",
                "detail": None,
            },
            {"source": "pte", "field": "get_vocab_size", "value": 128256, "detail": "matches"},
        ],
    }
    meta["program"] = {
        "constant_methods": {
            "get_max_seq_len": 128,
            "get_eos_ids": [128009, 128001],
            "use_kv_cache": True,
        },
        "methods": ["forward"],
        "backends": ["XnnpackBackend"],
        "external_keys": ["linear.weight"],
        "size": 2304,
    }
    meta["tokenizer"] = {
        "member": "tokenizer.model",
        "format": "tiktoken",
        "variant": "llama3",
        "vocab_size": 128256,
        "bos_id": 128000,
        "bos_token": "<|begin_of_text|>",
        "eos_ids": [128009, 128001],
        "eos_tokens": ["<|eot_id|>", None],
        "converted_from": None,
    }
    meta["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    meta["chat_template_source"] = "inferred:llama3"
    meta["prompt_format"] = {"anything": ["the prompt engineer defines it"]}
    meta["generation"].update(
        num_bos=0, stop_token_ids=[128009, 128001], temperature=0.6, top_p=0.9, top_k=40,
        max_new_tokens=256, max_seq_len=128, max_context_len=128,
    )  # fmt: skip
    meta["weights"] = [{"member": "weights/model.ptd", "keys": ["linear.weight"]}]
    meta["members"] = [
        {"name": "model.pte", "size": 2304, "sha256": SHA_A, "role": "program"},
        {"name": "weights/model.ptd", "size": 524, "sha256": "b" * 64, "role": "weights"},
        {"name": "tokenizer.model", "size": 2183, "sha256": "c" * 64, "role": "tokenizer"},
    ]
    meta["diagnostics"] = [
        {
            "code": "E101",
            "severity": "warning",
            "message": "bos differs",
            "hint": None,
            "paths": ["model.pte"],
        }
    ]
    meta["provenance"]["sources"] = [
        {
            "path": "legacy/model.pte",
            "size": 2304,
            "sha256": SHA_A,
            "mtime_ns": 1_700_000_000_000_000_000,
        }
    ]
    return meta


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    text = resources.files("etm_compat").joinpath("schemas/metadata.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(obj)]


def test_new_metadata_is_valid_for_both_checkers(schema: dict[str, Any]) -> None:
    meta = new_metadata(tool_version="9.9")
    assert validate_metadata(meta) == []
    assert schema_errors(schema, meta) == []
    assert (
        meta["format"] == "etm" and meta["format_version"] == 1 and meta["min_reader_version"] == 1
    )
    assert meta["provenance"]["tool_version"] == "9.9"


def test_full_metadata_is_valid_for_both_checkers(schema: dict[str, Any]) -> None:
    meta = full_metadata()
    assert validate_metadata(meta) == []
    assert schema_errors(schema, meta) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = meta
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()

# Each mutation breaks one rule; both the own checker and the JSON Schema must reject it.
MUTATIONS = {
    "format": _set("format", "gguf"),
    "format_version_zero": _set("format_version", 0),
    "format_version_string": _set("format_version", "1"),
    "min_reader_bool": _set("min_reader_version", True),
    "no_family": _set("family", _DELETE),
    "confidence": _set("family.confidence", "certain"),
    "evidence_not_list": _set("family.evidence", {}),
    "program_size_negative": _set("program.size", -1),
    "methods_not_strings": _set("program.methods", [1]),
    "tokenizer_format": _set("tokenizer.format", "bpe"),
    "eos_ids_strings": _set("tokenizer.eos_ids", ["2"]),
    "tokenizer_missing_member": _set("tokenizer.member", _DELETE),
    "chat_template_number": _set("chat_template", 3),
    "prompt_format_list": _set("prompt_format", []),
    "num_bos_negative": _set("generation.num_bos", -1),
    "stop_ids_missing": _set("generation.stop_token_ids", _DELETE),
    "temperature_string": _set("generation.temperature", "hot"),
    "weights_keys_not_list": _set("weights.0.keys", "linear.weight"),
    "member_role": _set("members.0.role", "config"),
    "member_sha_upper": _set("members.0.sha256", "A" * 64),
    "member_sha_short": _set("members.0.sha256", "a" * 63),
    "diagnostic_severity": _set("diagnostics.0.severity", "fatal"),
    "provenance_absolute": _set("provenance.sources.0.path", "/home/me/model.pte"),
    "provenance_mtime_float": _set("provenance.sources.0.mtime_ns", 1.5),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_checker_and_schema_reject_the_same_mutations(schema: dict[str, Any], case: str) -> None:
    meta = full_metadata()
    MUTATIONS[case](meta)
    assert validate_metadata(meta), f"own checker accepted {case}"
    assert schema_errors(schema, meta), f"JSON Schema accepted {case}"


def test_unknown_keys_are_tolerated_everywhere(schema: dict[str, Any]) -> None:
    meta = full_metadata()
    meta["added_in_1_1"] = {"x": 1}
    meta["generation"]["repetition_penalty"] = 1.1
    meta["members"][0]["mode"] = "mmap"
    assert validate_metadata(meta) == []
    assert schema_errors(schema, meta) == []
    assert parse_metadata(serialize_metadata(meta), name="m")["added_in_1_1"] == {"x": 1}


def test_validate_collects_every_problem() -> None:
    meta = full_metadata()
    meta["format_version"] = "x"
    meta["generation"]["num_eos"] = -2
    meta["members"][1]["role"] = "other"
    problems = validate_metadata(meta)
    assert len(problems) == 3
    assert any(p.startswith("$.format_version:") for p in problems)
    assert any(p.startswith("$.generation.num_eos:") for p in problems)
    assert any(p.startswith("$.members[1].role:") for p in problems)


def test_validate_non_object() -> None:
    assert validate_metadata([]) == ["$: expected an object, got an array"]


def test_serialize_is_canonical() -> None:
    a = full_metadata()
    b = dict(reversed(list(copy.deepcopy(a).items())))
    assert serialize_metadata(a) == serialize_metadata(b)
    assert serialize_metadata(a).endswith(b"\n")


def test_parse_roundtrip() -> None:
    meta = full_metadata()
    assert parse_metadata(serialize_metadata(meta), name="m") == meta


BAD_DOCUMENTS = {
    "not_utf8": (b'{"format": "\xff"}', "not UTF-8"),
    "not_json": (b'{"format": "etm",', "not valid JSON"),
    "duplicate_key": (b'{"format": "etm", "format": "etm"}', "duplicate key"),
    "nan": (b'{"format": "etm", "x": NaN}', "NaN"),
    "array": (b"[1, 2]", "must hold an object"),
    "other_format": (b'{"format": "gguf"}', "expected 'etm'"),
    "deep": (b'{"format": "etm", "x": ' + b"[" * 200 + b"]" * 200 + b"}", "nests deeper"),
    "invalid": (
        b'{"format": "etm", "format_version": 1, "min_reader_version": 1}',
        "missing required key 'family'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_parse_rejects(case: str) -> None:
    raw, needle = BAD_DOCUMENTS[case]
    with pytest.raises(MetadataError) as info:
        parse_metadata(raw, name="x.etm!metadata.json")
    assert needle in str(info.value)
    assert "x.etm!metadata.json" in str(info.value)
    assert info.value.hint


def test_parse_size_cap() -> None:
    meta = full_metadata()
    meta["chat_template"] = "x" * (4 * 1024 * 1024)
    with pytest.raises(MetadataError, match="more than the 4194304 allowed"):
        parse_metadata(serialize_metadata(meta), name="m")


def test_parse_unsupported_version_lists_supported_and_hints_upgrade() -> None:
    meta = full_metadata()
    meta["format_version"] = 4
    meta["min_reader_version"] = 3
    with pytest.raises(UnsupportedVersionError) as info:
        parse_metadata(serialize_metadata(meta), name="m")
    assert "needs reader version 3" in info.value.message
    assert info.value.message.endswith("reads format versions 1, 2")
    assert info.value.hint is not None and "upgrade etm-compat" in info.value.hint


def test_newer_minor_version_readable_by_old_reader() -> None:
    meta = full_metadata()
    meta["format_version"] = 2  # a newer writer, but one a v1 reader can still read
    meta["min_reader_version"] = 1
    assert parse_metadata(serialize_metadata(meta), name="m")["format_version"] == 2


def full_metadata_v2() -> dict[str, Any]:
    """A format-2 metadata object: two LoRA programs over one foundation, a preprocessor program,
    a tokenizer folder's special_tokens_map.json, a processor config, an audio modality."""
    meta = full_metadata()
    meta["format_version"] = meta["min_reader_version"] = 2
    meta["members"] = [
        {"name": "model.pte", "size": 2304, "sha256": SHA_A, "role": "program"},
        {"name": "programs/adapter_b.pte", "size": 2304, "sha256": "b" * 64, "role": "program"},
        {"name": "programs/preprocessor.pte", "size": 99, "sha256": "c" * 64, "role": "program"},
        {"name": "tokenizer.json", "size": 9, "sha256": "f" * 64, "role": "tokenizer"},
        {"name": "special_tokens_map.json", "size": 9, "sha256": "d" * 64, "role": "tokenizer_config"},
        {"name": "processors/preprocessor_config.json", "size": 9, "sha256": "e" * 64, "role": "processor_config"},
        {"name": "weights/adapter_a.ptd", "size": 7, "sha256": "1" * 64, "role": "weights"},
        {"name": "weights/adapter_b.ptd", "size": 7, "sha256": "2" * 64, "role": "weights"},
        {"name": "weights/foundation.ptd", "size": 7, "sha256": "3" * 64, "role": "weights"},
    ]  # fmt: skip
    meta["tokenizer"].update(member="tokenizer.json", format="hf_json", variant=None)
    meta["weights"] = [
        {"member": "weights/adapter_a.ptd", "keys": ["a"], "role": "adapter"},
        {"member": "weights/adapter_b.ptd", "keys": ["b"], "role": "adapter"},
        {"member": "weights/foundation.ptd", "keys": ["linear.weight"], "role": "foundation"},
    ]
    meta["programs"] = [
        {"name": "model", "member": "model.pte", "role": "model",
         "data": ["weights/foundation.ptd", "weights/adapter_a.ptd"]},
        {"name": "adapter_b", "member": "programs/adapter_b.pte", "role": "model",
         "data": ["weights/foundation.ptd", "weights/adapter_b.ptd"]},
        {"name": "preprocessor", "member": "programs/preprocessor.pte", "role": "preprocessor",
         "data": [], "snapshot": {"constant_methods": {}, "methods": ["forward"],
                                  "backends": ["XnnpackBackend"], "external_keys": [], "size": 99}},
    ]  # fmt: skip
    meta["modalities"] = [
        {"modality": "text", "token_id": None},
        {"modality": "audio", "token_id": 517, "special_token_ids": {"begin_audio": 516},
         "program": "model", "method": "forward", "preprocessor": "preprocessor",
         "processor": "processors/preprocessor_config.json"},
    ]  # fmt: skip
    return meta


def test_format_2_metadata_is_valid_for_both_checkers(schema: dict[str, Any]) -> None:
    meta = full_metadata_v2()
    assert validate_metadata(meta) == []
    assert schema_errors(schema, meta) == []
    assert parse_metadata(serialize_metadata(meta), name="m") == meta


# Each breaks one version-2 rule the JSON Schema can express; both checkers must reject it.
MUTATIONS_V2 = {
    "programs_missing": _set("programs", _DELETE),
    "weights_role_missing": _set("weights.0.role", _DELETE),
    "weights_role": _set("weights.0.role", "lora"),
    "program_role": _set("programs.2.role", "modle"),
    "program_named_role_upper": _set("programs.2.role", "x-VAD"),
    "program_name_traversal": _set("programs.2.name", "../x"),
    "program_member": _set("programs.2.member", "programs/../x.pte"),
    "program_data_not_list": _set("programs.0.data", "weights/foundation.ptd"),
    "program_data_twice": _set("programs.0.data", ["weights/foundation.ptd"] * 2),
    "program_snapshot_size": _set("programs.2.snapshot.size", -1),
    "modality": _set("modalities.1.modality", "smell"),
    "modality_token_negative": _set("modalities.1.token_id", -1),
    "modality_special_string": _set("modalities.1.special_token_ids.begin_audio", "516"),
    "modality_no_token_id": _set("modalities.0.token_id", _DELETE),
    "member_role": _set("members.4.role", "processor"),
    "reader_1_with_programs": _set("min_reader_version", 1),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS_V2))
def test_checker_and_schema_reject_the_same_format_2_mutations(schema: dict[str, Any], case: str) -> None:
    meta = full_metadata_v2()
    MUTATIONS_V2[case](meta)
    assert validate_metadata(meta), f"own checker accepted {case}"
    assert schema_errors(schema, meta), f"JSON Schema accepted {case}"


@pytest.mark.parametrize(
    ("feature", "mutate"),
    [
        ("member 'programs/p.pte'", lambda m: m["members"].append(
            {"name": "programs/p.pte", "size": 1, "sha256": SHA_A, "role": "program"})),
        ("$.modalities", lambda m: m.__setitem__("modalities", [])),
        ("$.weights[].role", lambda m: m["weights"][0].__setitem__("role", "weights")),
    ],
)  # fmt: skip
def test_a_version_1_archive_may_not_use_format_2_features(
    schema: dict[str, Any], feature: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    meta = full_metadata()
    mutate(meta)
    problems = validate_metadata(meta)
    assert len(problems) == 1 and feature in problems[0] and "must be 2" in problems[0]
    assert schema_errors(schema, meta)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON value."""
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


@pytest.mark.parametrize("odd", [[], {}, ["x"], {"a": [1]}, -1, 2.5, None, "x", True])
def test_any_odd_value_anywhere_in_format_2_metadata_is_reported_not_raised(odd: Any) -> None:
    base = full_metadata_v2()
    for path in _paths(base):
        meta = copy.deepcopy(base)
        node: Any = meta
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = copy.deepcopy(odd)
        assert isinstance(validate_metadata(meta), list), path  # never an exception
