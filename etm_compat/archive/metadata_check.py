"""Validate a ``metadata.json`` object against the schema: every problem, with its JSON path.

A small checker kept in sync with ``schemas/metadata.schema.json`` (the schema is for other
tools; ``jsonschema`` is not a runtime dependency). Unknown keys are allowed everywhere (forward
compatibility). :mod:`etm_compat.archive.metadata` re-exports :func:`validate_metadata`.

>>> validate_metadata({"format": "etm"})[0]
"$: missing required key 'format_version'"
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from etm_compat.archive.names import ROLES
from etm_compat.constants import ETM_FORMAT, TOKENIZER_FORMATS
from etm_compat.findings import CONFIDENCES, SEVERITIES

__all__ = ["describe_kind", "is_kind", "validate_metadata"]

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class _Checker:
    """Collects every problem as ``<json path>: <what is wrong>``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def obj(self, value: Any, path: str, required: Sequence[str]) -> bool:
        if not isinstance(value, dict):
            self.bad(path, f"expected an object, got {describe_kind(value)}")
            return False
        for key in required:
            if key not in value:
                self.bad(path, f"missing required key {key!r}")
        return True

    def typed(self, value: Any, path: str, kinds: str) -> None:
        """Check ``value`` against ``kinds``: '|'-joined of str, int, uint, number, bool, null."""
        for kind in kinds.split("|"):
            if is_kind(value, kind):
                return
        self.bad(path, f"expected {kinds.replace('|', ' or ')}, got {describe_kind(value)}")

    def field(self, parent: Any, key: str, path: str, kinds: str) -> None:
        if isinstance(parent, dict) and key in parent:
            self.typed(parent[key], f"{path}.{key}", kinds)

    def enum(self, parent: Any, key: str, path: str, allowed: Sequence[Any]) -> None:
        if isinstance(parent, dict) and key in parent and parent[key] not in allowed:
            self.bad(f"{path}.{key}", f"{parent[key]!r} is not one of {list(allowed)}")

    def array(self, parent: Any, key: str, path: str) -> list[Any]:
        if not isinstance(parent, dict) or key not in parent:
            return []
        value = parent[key]
        if not isinstance(value, list):
            self.bad(f"{path}.{key}", f"expected an array, got {describe_kind(value)}")
            return []
        return value

    def array_of(self, parent: Any, key: str, path: str, kinds: str) -> None:
        for i, item in enumerate(self.array(parent, key, path)):
            self.typed(item, f"{path}.{key}[{i}]", kinds)

    def sha(self, parent: Any, key: str, path: str) -> None:
        if isinstance(parent, dict) and key in parent:
            value = parent[key]
            if not isinstance(value, str) or not _SHA256.match(value):
                self.bad(f"{path}.{key}", "expected 64 lowercase hex digits (sha256)")


def is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "uint":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(kind)


def describe_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_TOP_REQUIRED = (
    "format",
    "format_version",
    "min_reader_version",
    "family",
    "program",
    "tokenizer",
    "chat_template",
    "chat_template_source",
    "prompt_format",
    "generation",
    "weights",
    "members",
    "diagnostics",
    "provenance",
)


def validate_metadata(obj: object) -> list[str]:
    """Every way ``obj`` departs from the metadata schema, as ``"<path>: <problem>"`` lines.

    An empty list means valid. Unknown keys are allowed everywhere (forward compatibility).

    >>> validate_metadata({"format": "etm"})[0]
    "$: missing required key 'format_version'"
    """
    c = _Checker()
    if not c.obj(obj, "$", _TOP_REQUIRED):
        return c.problems
    assert isinstance(obj, dict)
    if "format" in obj and obj["format"] != ETM_FORMAT:
        c.bad("$.format", f"expected {ETM_FORMAT!r}, got {obj['format']!r}")
    for key in ("format_version", "min_reader_version"):
        c.field(obj, key, "$", "uint")
        if is_kind(obj.get(key), "uint") and obj[key] < 1:
            c.bad(f"$.{key}", "must be at least 1")
    fv: Any = obj.get("format_version")
    mrv: Any = obj.get("min_reader_version")
    if is_kind(fv, "uint") and is_kind(mrv, "uint") and mrv > fv:
        c.bad("$.min_reader_version", f"{mrv} is greater than format_version {fv}")

    family = obj.get("family")
    if "family" in obj and c.obj(family, "$.family", ("id", "confidence", "evidence")):
        c.field(family, "id", "$.family", "str|null")
        c.enum(family, "confidence", "$.family", CONFIDENCES)
        for i, ev in enumerate(c.array(family, "evidence", "$.family")):
            p = f"$.family.evidence[{i}]"
            if c.obj(ev, p, ("source", "field", "value")):
                c.field(ev, "source", p, "str")
                c.field(ev, "field", p, "str")
                c.field(ev, "detail", p, "str|null")

    program = obj.get("program")
    keys = ("constant_methods", "methods", "backends", "external_keys", "size")
    if "program" in obj and c.obj(program, "$.program", keys):
        c.field(program, "constant_methods", "$.program", "object")
        for key in ("methods", "backends", "external_keys", "dialects"):
            c.array_of(program, key, "$.program", "str")
        c.field(program, "size", "$.program", "uint")

    _check_tokenizer(c, obj)
    c.field(obj, "chat_template", "$", "str|null")
    c.field(obj, "chat_template_source", "$", "str|null")
    c.field(obj, "prompt_format", "$", "object|null")
    _check_generation(c, obj)
    _check_runner(c, obj)

    for i, w in enumerate(c.array(obj, "weights", "$")):
        p = f"$.weights[{i}]"
        if c.obj(w, p, ("member", "keys")):
            c.field(w, "member", p, "str")
            c.array_of(w, "keys", p, "str")

    for i, m in enumerate(c.array(obj, "members", "$")):
        p = f"$.members[{i}]"
        if c.obj(m, p, ("name", "size", "sha256", "role")):
            c.field(m, "name", p, "str")
            c.field(m, "size", p, "uint")
            c.sha(m, "sha256", p)
            c.enum(m, "role", p, ROLES)

    for i, d in enumerate(c.array(obj, "diagnostics", "$")):
        p = f"$.diagnostics[{i}]"
        if c.obj(d, p, ("code", "severity", "message", "hint", "paths")):
            c.field(d, "code", p, "str")
            c.enum(d, "severity", p, SEVERITIES)
            c.field(d, "message", p, "str")
            c.field(d, "hint", p, "str|null")
            c.array_of(d, "paths", p, "str")

    prov = obj.get("provenance")
    if "provenance" in obj and c.obj(prov, "$.provenance", ("tool", "tool_version", "sources")):
        c.field(prov, "tool", "$.provenance", "str")
        c.field(prov, "tool_version", "$.provenance", "str")
        for i, s in enumerate(c.array(prov, "sources", "$.provenance")):
            p = f"$.provenance.sources[{i}]"
            if c.obj(s, p, ("path", "size", "sha256", "mtime_ns")):
                c.field(s, "path", p, "str")
                path = s.get("path")
                if isinstance(path, str) and (path.startswith(("/", "\\")) or ":" in path[:2]):
                    c.bad(f"{p}.path", "must be relative")
                c.field(s, "size", p, "uint")
                c.sha(s, "sha256", p)
                c.field(s, "mtime_ns", p, "int")
    return c.problems


def _check_tokenizer(c: _Checker, obj: dict[str, Any]) -> None:
    tok = obj.get("tokenizer")
    if tok is None:
        return
    p = "$.tokenizer"
    required = (
        "member",
        "format",
        "variant",
        "vocab_size",
        "bos_id",
        "bos_token",
        "eos_ids",
        "eos_tokens",
    )
    if not c.obj(tok, p, required):
        return
    c.field(tok, "member", p, "str")
    c.enum(tok, "format", p, TOKENIZER_FORMATS)
    c.field(tok, "variant", p, "str|null")
    c.field(tok, "vocab_size", p, "uint|null")
    c.field(tok, "bos_id", p, "int|null")
    c.field(tok, "bos_token", p, "str|null")
    c.array_of(tok, "eos_ids", p, "int")
    c.array_of(tok, "eos_tokens", p, "str|null")
    c.field(tok, "converted_from", p, "str|null")


def _check_generation(c: _Checker, obj: dict[str, Any]) -> None:
    gen = obj.get("generation")
    p = "$.generation"
    required = ("num_bos", "num_eos", "stop_token_ids", "max_seq_len", "max_context_len")
    if "generation" not in obj or not c.obj(gen, p, required):
        return
    c.field(gen, "num_bos", p, "uint")
    c.field(gen, "num_eos", p, "uint")
    c.array_of(gen, "stop_token_ids", p, "int")
    c.field(gen, "max_seq_len", p, "uint|null")
    c.field(gen, "max_context_len", p, "uint|null")
    c.field(gen, "temperature", p, "number|null")
    c.field(gen, "top_p", p, "number|null")
    c.field(gen, "top_k", p, "uint|null")
    c.field(gen, "max_new_tokens", p, "uint|null")


#: The optional ``runner`` section (infer/runner.py): each value's kinds, or None for "array".
_RUNNER_VALUES = {
    "bos_id": "int|null",
    "eos_ids": None,
    "vocab_size": "uint|null",
    "max_seq_len": "uint|null",
    "max_context_len": "uint|null",
    "use_kv_cache": "bool",
    "use_sdpa_with_kv_cache": "bool",
    "enable_dynamic_shape": "bool",
}


def _check_runner(c: _Checker, obj: dict[str, Any]) -> None:
    """The optional ``runner`` section: what the ExecuTorch 1.x runner takes from the files."""
    p = "$.runner"
    if "runner" not in obj or not c.obj(obj["runner"], p, ("loads", *_RUNNER_VALUES)):
        return
    runner = obj["runner"]
    c.field(runner, "runner", p, "str")
    c.field(runner, "loads", p, "bool")
    c.field(runner, "refusal", p, "str|null")
    for name, kinds in _RUNNER_VALUES.items():
        q = f"{p}.{name}"
        entry = runner.get(name)
        if name not in runner or not c.obj(entry, q, ("value", "source")):
            continue
        if kinds is not None:
            c.field(entry, "value", q, kinds)
        elif entry["value"] is not None:
            c.array_of(entry, "value", q, "int")
        c.field(entry, "source", q, "str")
        c.field(entry, "ignored", q, "object")
