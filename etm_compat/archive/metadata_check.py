"""Validate a ``metadata.json`` object against the schema: every problem, with its JSON path.

A small checker kept in sync with ``schemas/metadata.schema.json`` (the schema is for other
tools; ``jsonschema`` is not a runtime dependency). Unknown keys are allowed everywhere (forward
compatibility). The version-2 sections and their cross-references are checked by
:func:`~etm_compat.archive.programs.check_format2`. :mod:`etm_compat.archive.metadata`
re-exports :func:`validate_metadata`.

>>> validate_metadata({"format": "etm"})[0]
"$: missing required key 'format_version'"
"""

from __future__ import annotations

from typing import Any, Final

from etm_compat.archive.checker import Checker, is_kind
from etm_compat.archive.names import ROLES, role_of
from etm_compat.archive.programs import check_format2, check_program_info
from etm_compat.constants import (
    ETM_FORMAT,
    MEMBER_PROGRAM,
    TOKENIZER_FORMATS,
    TOKENIZER_MEMBER_BY_FORMAT,
)
from etm_compat.findings import CONFIDENCES, SEVERITIES

__all__ = ["validate_metadata"]

#: The HF ``tokenizer.json``: the only tokenizer its configs may travel with (docs/FORMAT.md 1).
_HF_TOKENIZER: Final = TOKENIZER_MEMBER_BY_FORMAT["hf_json"]

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
    c = Checker()
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

    if "program" in obj:
        check_program_info(c, obj["program"], "$.program")

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
                elif isinstance(path, str) and (not path or "\0" in path):
                    c.bad(f"{p}.path", "must be a non-empty path without NUL characters")
                c.field(s, "size", p, "uint")
                c.sha(s, "sha256", p)
                c.field(s, "mtime_ns", p, "int")
    check_format2(c, obj)
    _check_references(c, obj)
    return c.problems


def _listed_roles(obj: dict[str, Any]) -> dict[str, Any]:
    """``$.members`` as name -> the role its name implies (None for a name no archive may hold).

    The role a member's *name* implies: whether the recorded role agrees is checked against the
    zip by ``layout.check_members``, and is not reported twice here."""
    members: Any = obj.get("members")
    return {
        m["name"]: role_of(m["name"])
        for m in (members if isinstance(members, list) else [])
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    }


def _check_references(c: Checker, obj: dict[str, Any]) -> None:
    """The cross-references inside metadata.json: what ``tokenizer.member`` and ``weights[].member``
    name, how many tokenizers there are, and that tokenizer configs travel with an HF
    tokenizer. (``members`` itself is matched against the zip by ``layout.check_members``.)"""
    roles = _listed_roles(obj)
    tokenizers = sorted(n for n, r in roles.items() if r == "tokenizer")
    if len(tokenizers) > 1:
        c.bad("$.members", f"more than one tokenizer member ({', '.join(map(repr, tokenizers))}); "
              "an archive holds at most one")  # fmt: skip
    configs = sorted(n for n, r in roles.items() if r == "tokenizer_config")
    if configs and _HF_TOKENIZER not in roles:
        c.bad("$.members", f"{', '.join(map(repr, configs))} without {_HF_TOKENIZER!r}: "
              "tokenizer configs travel only with an HF tokenizer")  # fmt: skip
    tok = obj.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("member"), str):
        member = tok["member"]
        if member not in roles:
            c.bad("$.tokenizer.member", f"{member!r} is not a member of the archive")
        elif roles[member] != "tokenizer":
            c.bad("$.tokenizer.member", f"{member!r} is not a tokenizer member (it is "
                  f"{'the program' if member == MEMBER_PROGRAM else repr(roles[member])})")  # fmt: skip
        fmt = tok.get("format")
        expected = TOKENIZER_MEMBER_BY_FORMAT.get(fmt) if isinstance(fmt, str) else None
        if expected is not None and roles.get(member) == "tokenizer" and member != expected:
            c.bad("$.tokenizer.member", f"{member!r} does not hold a {tok['format']!r} tokenizer "
                  f"(that one is named {expected!r})")  # fmt: skip
    mrv: Any = obj.get("min_reader_version")
    if is_kind(mrv, "uint") and mrv >= 2:
        return  # version 2: weights entries are checked with the programs (check_format2)
    seen: set[str] = set()
    entries: Any = obj.get("weights")
    for i, w in enumerate(entries if isinstance(entries, list) else []):
        member = w.get("member") if isinstance(w, dict) else None
        if not isinstance(member, str):
            continue  # reported by the shape checks
        if member in seen:
            c.bad(f"$.weights[{i}].member", f"{member!r} has two entries in $.weights")
        elif roles.get(member) != "weights":
            c.bad(f"$.weights[{i}].member", f"{member!r} is not a weights member of the archive")
        seen.add(member)
    if isinstance(entries, list):
        for member in sorted(n for n, r in roles.items() if r == "weights" and n not in seen):
            c.bad("$.weights", f"weights member {member!r} has no entry (its keys are not recorded)")


def _check_tokenizer(c: Checker, obj: dict[str, Any]) -> None:
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


def _check_generation(c: Checker, obj: dict[str, Any]) -> None:
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


def _check_runner(c: Checker, obj: dict[str, Any]) -> None:
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
