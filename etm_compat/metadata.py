"""The ``metadata.json`` model of an ``.etm`` archive: types, defaults, validation, parsing.

``metadata.json`` is untrusted input. :func:`parse_metadata` caps its size and nesting, decodes
strict UTF-8 JSON (no duplicate keys, no NaN), checks the version and then the shape with
:func:`validate_metadata`, a small checker kept in sync with ``schemas/metadata.schema.json``
(the schema is for other tools; ``jsonschema`` is not a runtime dependency).

Forward compatibility: readers of the same major version ignore unknown keys, at the top level
and inside each section. A writer that adds something an old reader must not ignore raises
``min_reader_version``.

>>> meta = new_metadata(tool_version="0.1.0")
>>> validate_metadata(meta)
[]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from etm_compat.constants import (
    ETM_FORMAT,
    ETM_FORMAT_VERSION,
    ETM_MAX_METADATA_BYTES,
    ETM_MAX_METADATA_DEPTH,
    ETM_SUPPORTED_VERSIONS,
    TOKENIZER_FORMATS,
)
from etm_compat.errors import MetadataError, UnsupportedVersionError

Confidence = Literal["high", "medium", "low", "none"]
Severity = Literal["error", "warning", "info"]
Role = Literal["program", "tokenizer", "tokenizer_config", "weights"]

CONFIDENCES: tuple[Confidence, ...] = ("high", "medium", "low", "none")
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
ROLES: tuple[Role, ...] = ("program", "tokenizer", "tokenizer_config", "weights")
#: The placeholder a writer puts where a member's sha256 goes before it is known (same length).
SHA256_PLACEHOLDER = "0" * 64
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class Evidence(TypedDict):
    source: str
    field: str
    value: Any
    detail: str | None


class Family(TypedDict):
    id: str | None
    confidence: Confidence
    evidence: list[Evidence]


class ProgramInfo(TypedDict):
    constant_methods: dict[str, Any]
    methods: list[str]
    backends: list[str]
    external_keys: list[str]
    size: int


class _TokenizerRequired(TypedDict):
    member: str
    format: str
    variant: str | None
    vocab_size: int | None
    bos_id: int | None
    bos_token: str | None
    eos_ids: list[int]
    eos_tokens: list[str | None]


class TokenizerMeta(_TokenizerRequired, total=False):
    converted_from: str | None


class _GenerationRequired(TypedDict):
    num_bos: int
    num_eos: int
    stop_token_ids: list[int]
    max_seq_len: int | None
    max_context_len: int | None


class Generation(_GenerationRequired, total=False):
    temperature: float | None
    top_p: float | None
    top_k: int | None
    max_new_tokens: int | None


class WeightsEntry(TypedDict):
    member: str
    keys: list[str]


class MemberEntry(TypedDict):
    name: str
    size: int
    sha256: str
    role: Role


class Diagnostic(TypedDict):
    code: str
    severity: Severity
    message: str
    hint: str | None
    paths: list[str]


class Source(TypedDict):
    path: str
    size: int
    sha256: str
    mtime_ns: int


class Provenance(TypedDict):
    tool: str
    tool_version: str
    sources: list[Source]


class Metadata(TypedDict):
    format: str
    format_version: int
    min_reader_version: int
    family: Family
    program: ProgramInfo
    tokenizer: TokenizerMeta | None
    chat_template: str | None
    chat_template_source: str | None
    prompt_format: dict[str, Any] | None
    generation: Generation
    weights: list[WeightsEntry]
    members: list[MemberEntry]
    diagnostics: list[Diagnostic]
    provenance: Provenance


def new_metadata(*, tool_version: str) -> dict[str, Any]:
    """A complete, valid metadata object with empty defaults, for a packer to fill in.

    >>> new_metadata(tool_version="0.1.0")["generation"]["stop_token_ids"]
    []
    """
    meta: Metadata = {
        "format": ETM_FORMAT,
        "format_version": ETM_FORMAT_VERSION,
        "min_reader_version": 1,
        "family": {"id": None, "confidence": "none", "evidence": []},
        "program": {
            "constant_methods": {},
            "methods": [],
            "backends": [],
            "external_keys": [],
            "size": 0,
        },
        "tokenizer": None,
        "chat_template": None,
        "chat_template_source": None,
        "prompt_format": None,
        "generation": {
            "num_bos": 0,
            "num_eos": 0,
            "stop_token_ids": [],
            "max_seq_len": None,
            "max_context_len": None,
        },
        "weights": [],
        "members": [],
        "diagnostics": [],
        "provenance": {"tool": "etm-compat", "tool_version": tool_version, "sources": []},
    }
    return dict(meta)


# --- the checker -------------------------------------------------------------------------------


class _Checker:
    """Collects every problem as ``<json path>: <what is wrong>``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def obj(self, value: Any, path: str, required: Sequence[str]) -> bool:
        if not isinstance(value, dict):
            self.bad(path, f"expected an object, got {_kind(value)}")
            return False
        for key in required:
            if key not in value:
                self.bad(path, f"missing required key {key!r}")
        return True

    def typed(self, value: Any, path: str, kinds: str) -> None:
        """Check ``value`` against ``kinds``: '|'-joined of str, int, uint, number, bool, null."""
        for kind in kinds.split("|"):
            if _is_kind(value, kind):
                return
        self.bad(path, f"expected {kinds.replace('|', ' or ')}, got {_kind(value)}")

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
            self.bad(f"{path}.{key}", f"expected an array, got {_kind(value)}")
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


def _is_kind(value: Any, kind: str) -> bool:
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


def _kind(value: Any) -> str:
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
        if _is_kind(obj.get(key), "uint") and obj[key] < 1:
            c.bad(f"$.{key}", "must be at least 1")
    fv: Any = obj.get("format_version")
    mrv: Any = obj.get("min_reader_version")
    if _is_kind(fv, "uint") and _is_kind(mrv, "uint") and mrv > fv:
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
        for key in ("methods", "backends", "external_keys"):
            c.array_of(program, key, "$.program", "str")
        c.field(program, "size", "$.program", "uint")

    _check_tokenizer(c, obj)
    c.field(obj, "chat_template", "$", "str|null")
    c.field(obj, "chat_template_source", "$", "str|null")
    c.field(obj, "prompt_format", "$", "object|null")
    _check_generation(c, obj)

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


# --- parsing and serializing -------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a hostile document must not exhaust the Python stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _bracket_depth(text: str) -> int:
    """Upper bound of JSON nesting found by counting brackets outside strings, before parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_metadata(raw: bytes, *, name: str) -> dict[str, Any]:
    """Decode and check an archive's ``metadata.json``; ``name`` is used in error messages.

    Raises :class:`MetadataError` (too large, not UTF-8 JSON, too deep, invalid: every problem is
    listed) or :class:`UnsupportedVersionError` (written for a newer reader).

    >>> parse_metadata(serialize_metadata(new_metadata(tool_version="0")), name="m")["format"]
    'etm'
    """
    hint = "repack the folder with `etm-compat pack`"
    if len(raw) > ETM_MAX_METADATA_BYTES:
        raise MetadataError(
            f"metadata.json is {len(raw)} bytes, more than the {ETM_MAX_METADATA_BYTES} allowed",
            path=name,
            hint=hint,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(
            f"metadata.json is not UTF-8 ({exc.reason} at byte {exc.start})", path=name, hint=hint
        ) from None
    if _bracket_depth(text) > ETM_MAX_METADATA_DEPTH:
        raise MetadataError(
            f"metadata.json nests deeper than {ETM_MAX_METADATA_DEPTH} levels", path=name, hint=hint
        )
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(
            f"metadata.json is not valid JSON: {exc}", path=name, hint=hint
        ) from None
    # The bracket count above is an upper bound, so this is a second line of defence.
    if _depth(obj) > ETM_MAX_METADATA_DEPTH:
        raise MetadataError("metadata.json nests too deeply", path=name, hint=hint)
    if not isinstance(obj, dict):
        raise MetadataError(
            f"metadata.json must hold an object, not {_kind(obj)}", path=name, hint=hint
        )
    if obj.get("format") != ETM_FORMAT:
        raise MetadataError(
            f"metadata.json says format {obj.get('format')!r}, expected {ETM_FORMAT!r}",
            path=name,
            hint="this is not an .etm archive",
        )
    check_version(obj, name=name)
    problems = validate_metadata(obj)
    if problems:
        listed = "; ".join(problems[:20]) + (
            f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise MetadataError(f"metadata.json is invalid: {listed}", path=name, hint=hint)
    return obj


def check_version(obj: Mapping[str, Any], *, name: str) -> None:
    """Refuse metadata whose ``min_reader_version`` is newer than this reader."""
    mrv: Any = obj.get("min_reader_version")
    if not _is_kind(mrv, "uint"):
        return  # reported by validate_metadata
    if mrv > max(ETM_SUPPORTED_VERSIONS):
        supported = ", ".join(str(v) for v in ETM_SUPPORTED_VERSIONS)
        raise UnsupportedVersionError(
            f"archive needs reader version {mrv} (format_version {obj.get('format_version')!r}); "
            f"this etm-compat reads format versions {supported}",
            path=name,
            hint="upgrade etm-compat (pip install -U etm-compat)",
        )


def serialize_metadata(meta: Mapping[str, Any]) -> bytes:
    """The canonical bytes of ``meta``: sorted keys, two-space indent, UTF-8, final newline.

    Canonical so that the same metadata always gives the same bytes (deterministic archives).
    """
    text = json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


__all__ = [
    "CONFIDENCES",
    "ROLES",
    "SEVERITIES",
    "SHA256_PLACEHOLDER",
    "Diagnostic",
    "Evidence",
    "Family",
    "Generation",
    "MemberEntry",
    "Metadata",
    "ProgramInfo",
    "Provenance",
    "Source",
    "TokenizerMeta",
    "WeightsEntry",
    "check_version",
    "new_metadata",
    "parse_metadata",
    "serialize_metadata",
    "validate_metadata",
]
