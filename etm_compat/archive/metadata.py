"""The ``metadata.json`` model of an ``.etm`` archive: types, defaults, validation, parsing.

``metadata.json`` is untrusted input. :func:`parse_metadata` caps its size and nesting, decodes
strict UTF-8 JSON (no duplicate keys, no NaN), checks the version and then the shape with
:func:`validate_metadata` (in :mod:`etm_compat.archive.metadata_check`, re-exported here), a small
checker kept in sync with ``schemas/metadata.schema.json`` (the schema is for other tools;
``jsonschema`` is not a runtime dependency).

Forward compatibility: readers of the same major version ignore unknown keys, at the top level
and inside each section. A writer that adds something an old reader must not ignore raises
``min_reader_version``: several programs, weight roles, processors and modalities need 2
(:func:`~etm_compat.archive.programs.format2_features`).

>>> meta = new_metadata(tool_version="0.1.0")
>>> validate_metadata(meta)
[]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from etm_compat.archive.checker import describe_kind, is_kind
from etm_compat.archive.metadata_check import validate_metadata
from etm_compat.archive.names import Role, WeightsRole
from etm_compat.archive.programs import ModalityEntry, ProgramEntry
from etm_compat.constants import (
    ETM_FORMAT,
    ETM_FORMAT_VERSION,
    ETM_MAX_METADATA_BYTES,
    ETM_MAX_METADATA_DEPTH,
    ETM_SUPPORTED_VERSIONS,
)
from etm_compat.errors import MetadataError, UnsupportedVersionError, escape_control
from etm_compat.findings import Confidence, Severity
from etm_compat.jsonlimits import json_nesting

#: The placeholder a writer puts where a member's sha256 goes before it is known (same length).
SHA256_PLACEHOLDER = "0" * 64


class Evidence(TypedDict):
    source: str
    field: str
    value: Any
    detail: str | None


class Family(TypedDict):
    id: str | None
    confidence: Confidence
    evidence: list[Evidence]


class _ProgramRequired(TypedDict):
    constant_methods: dict[str, Any]
    methods: list[str]
    backends: list[str]
    external_keys: list[str]
    size: int


class ProgramInfo(_ProgramRequired, total=False):
    dialects: list[str]  # the constant-method dialects the program speaks (formats/dialects.py)


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


class _WeightsEntryRequired(TypedDict):
    member: str
    keys: list[str]


class WeightsEntry(_WeightsEntryRequired, total=False):
    role: WeightsRole  # format 2: required (weights, foundation, adapter, backend_blob)


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


class RunnerValue(TypedDict):
    value: Any
    source: str
    ignored: dict[str, Any]


class Runner(TypedDict):
    """What the ExecuTorch 1.x LLM runner takes from the program and tokenizer (infer/runner.py)."""

    runner: str
    loads: bool
    refusal: str | None
    bos_id: RunnerValue
    eos_ids: RunnerValue
    vocab_size: RunnerValue
    max_seq_len: RunnerValue
    max_context_len: RunnerValue
    use_kv_cache: RunnerValue
    use_sdpa_with_kv_cache: RunnerValue
    enable_dynamic_shape: RunnerValue


class _MetadataRequired(TypedDict):
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


class Metadata(_MetadataRequired, total=False):
    runner: Runner  # optional: added in format_version 1 without a bump (readers ignore it)
    programs: list[ProgramEntry]  # format 2: every program, its role and data (required there)
    modalities: list[ModalityEntry]  # format 2: the input modalities and their token ids


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


def tokenizer_member(meta: Mapping[str, Any]) -> str | None:
    """The member holding the tokenizer: the one ``tokenizer.member`` names, else the first
    member whose role is ``tokenizer``; None when there is none."""
    tokenizer = meta.get("tokenizer") or {}
    member = tokenizer.get("member")
    if isinstance(member, str):
        return member
    found = [m["name"] for m in meta.get("members") or [] if m.get("role") == "tokenizer"]
    return found[0] if found else None


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


def _finite(text: str) -> float:
    """A JSON number as a float; ``1e400`` (infinity once parsed) is refused like ``Infinity``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) holding a lone surrogate (a ``\\udXXX`` escape without its
    pair): not Unicode text, it cannot be printed or written as UTF-8. Iterative, like :func:`_depth`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


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
    if json_nesting(text) > ETM_MAX_METADATA_DEPTH:
        raise MetadataError(
            f"metadata.json nests deeper than {ETM_MAX_METADATA_DEPTH} levels", path=name, hint=hint
        )
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite
        )
    except (ValueError, RecursionError) as exc:
        raise MetadataError(
            f"metadata.json is not valid JSON: {exc}", path=name, hint=hint
        ) from None
    # The bracket count above is an upper bound, so this is a second line of defence.
    if _depth(obj) > ETM_MAX_METADATA_DEPTH:
        raise MetadataError("metadata.json nests too deeply", path=name, hint=hint)
    bad = _lone_surrogate(obj)
    if bad is not None:
        raise MetadataError(
            f'metadata.json holds a lone surrogate escape (not Unicode text) in "{escape_control(bad[:60])}"',
            path=name,
            hint=hint,
        )
    if not isinstance(obj, dict):
        raise MetadataError(
            f"metadata.json must hold an object, not {describe_kind(obj)}", path=name, hint=hint
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


def check_version(
    obj: Mapping[str, Any], *, name: str, supported: Sequence[int] = ETM_SUPPORTED_VERSIONS
) -> None:
    """Refuse metadata whose ``min_reader_version`` is newer than this reader.

    ``supported`` is the reader's set of versions (a test plays a version-1 reader with ``(1,)``).

    >>> check_version({"min_reader_version": 2}, name="m", supported=(1,))
    Traceback (most recent call last):
    ...
    etm_compat.errors.UnsupportedVersionError: m: archive needs reader version 2 (format_version None); this etm-compat reads format versions 1 (hint: upgrade etm-compat (pip install -U etm-compat))
    """
    mrv: Any = obj.get("min_reader_version")
    if not is_kind(mrv, "uint"):
        return  # reported by validate_metadata
    if mrv > max(supported):
        listed = ", ".join(str(v) for v in supported)
        raise UnsupportedVersionError(
            f"archive needs reader version {mrv} (format_version {obj.get('format_version')!r}); "
            f"this etm-compat reads format versions {listed}",
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
    "SHA256_PLACEHOLDER",
    "Diagnostic",
    "Evidence",
    "Family",
    "Generation",
    "MemberEntry",
    "Metadata",
    "ProgramInfo",
    "Provenance",
    "Runner",
    "RunnerValue",
    "Source",
    "TokenizerMeta",
    "WeightsEntry",
    "check_version",
    "new_metadata",
    "parse_metadata",
    "serialize_metadata",
    "tokenizer_member",
    "validate_metadata",
]
