"""The program sections of ``metadata.json``: the main program's snapshot (``$.program``, every
version) and, from format version 2, every program with its role and data files, the weight files'
roles, and the modalities (docs/FORMAT.md, "Version 2").

:func:`format2_features` is the version rule (what a version-1 reader cannot use);
:func:`check_format2` checks the version-2 sections and every cross-reference between them, for
:func:`~etm_compat.archive.metadata_check.validate_metadata`.

>>> format2_features({"members": [{"name": "programs/preprocessor.pte", "role": "program"}]})
["member 'programs/preprocessor.pte'"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from etm_compat.archive.checker import Checker, is_kind
from etm_compat.archive.names import (
    Modality,
    check_program_name,
    check_program_role,
    check_weights_role,
    member_version,
    program_member,
    role_of,
)
from etm_compat.constants import ETM_MAX_DATA_KEY_REFS, ETM_MODALITIES, MAIN_PROGRAM_NAME

__all__ = [
    "ModalityEntry",
    "ProgramEntry",
    "check_format2",
    "check_program_info",
    "duplicate_weights",
    "format2_features",
]


class _ProgramEntryRequired(TypedDict):
    name: str
    member: str
    role: str
    data: list[str]  # weights members, in load order


class ProgramEntry(_ProgramEntryRequired, total=False):
    snapshot: dict[str, Any]  # the program's head, shaped as $.program (not on the main program)


class _ModalityRequired(TypedDict):
    modality: Modality
    token_id: int | None


class ModalityEntry(_ModalityRequired, total=False):
    special_token_ids: dict[str, int]
    program: str | None  # null: the main program
    method: str | None
    preprocessor: str | None  # a program whose role is "preprocessor"
    processor: str | None  # a processors/<name>.json member


def check_program_info(c: Checker, value: Any, path: str) -> None:
    """The shape of a program snapshot (``$.program``, ``$.programs[i].snapshot``)."""
    if c.obj(value, path, ("constant_methods", "methods", "backends", "external_keys", "size")):
        c.field(value, "constant_methods", path, "object")
        for key in ("methods", "backends", "external_keys", "dialects"):
            c.array_of(value, key, path, "str")
        c.field(value, "size", path, "uint")


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def format2_features(meta: Mapping[str, Any]) -> list[str]:
    """What in ``meta`` a version-1 reader cannot use: empty for a version-1 archive.

    Members named ``programs/...``, ``processors/...`` or ``special_tokens_map.json``, the
    ``programs`` or ``modalities`` sections, a ``role`` on a weights entry.
    """
    found = [
        f"member {m['name']!r}"
        for m in _dicts(meta.get("members"))
        if isinstance(m.get("name"), str) and role_of(m["name"]) and member_version(m["name"]) > 1
    ]
    found += [f"$.{key}" for key in ("programs", "modalities") if key in meta]
    if any("role" in w for w in _dicts(meta.get("weights"))):
        found.append("$.weights[].role")
    return found


def duplicate_weights(meta: Mapping[str, Any]) -> list[str]:
    """Weights members with the same bytes (sha256 and size): a version-2 archive stores a file
    that several programs load (a LoRA foundation) once, listed in each program's ``data``."""
    first: dict[tuple[str, str], str] = {}
    found: list[str] = []
    for m in _dicts(meta.get("members")):
        if m.get("role") != "weights":
            continue
        key = (str(m.get("sha256")), str(m.get("size")))
        if key in first:
            found.append(
                f"{m.get('name')!r} holds the same bytes as {first[key]!r}: store a shared file "
                "once and list it in the data of each program that loads it"
            )
        else:
            first[key] = str(m.get("name"))
    return found


def check_format2(c: Checker, obj: dict[str, Any]) -> None:
    """The version rule, then (for ``min_reader_version`` >= 2) the version-2 sections."""
    mrv: Any = obj.get("min_reader_version")
    if not is_kind(mrv, "uint"):
        return  # reported by the caller
    if mrv < 2:
        features = format2_features(obj)
        if features:
            listed = ", ".join(features[:4]) + (" ..." if len(features) > 4 else "")
            c.bad(
                "$.min_reader_version",
                f"is {mrv}, but the archive uses format-2 features ({listed}) that a "
                "version-1 reader cannot use: format_version and min_reader_version must be 2",
            )
        return
    members = {
        m["name"]: m.get("role") for m in _dicts(obj.get("members")) if isinstance(m.get("name"), str)
    }
    keys = _check_weight_roles(c, obj, members)
    programs = _check_programs(c, obj, members, keys)
    _check_modalities(c, obj, members, programs)


def _check_weight_roles(
    c: Checker, obj: dict[str, Any], members: Mapping[str, Any]
) -> dict[str, list[str]]:
    """Each weights member has one ``$.weights`` entry with a valid role; returns member -> keys."""
    keys: dict[str, list[str]] = {}
    entries: Any = obj.get("weights")
    for i, w in enumerate(entries if isinstance(entries, list) else []):
        p = f"$.weights[{i}]"
        if not isinstance(w, dict):
            continue  # reported by the version-1 checks
        role, member = w.get("role"), w.get("member")
        if "role" not in w:
            c.bad(p, "missing required key 'role' (format 2 gives every weight file a role)")
        elif not isinstance(role, str) or check_weights_role(role):
            c.bad(f"{p}.role", f"{role!r} is {check_weights_role(str(role))}")
        if not isinstance(member, str):
            continue
        if member in keys:
            c.bad(f"{p}.member", f"{member!r} has two entries in $.weights")
        elif members.get(member) != "weights":
            c.bad(f"{p}.member", f"{member!r} is not a weights member of the archive")
        keys[member] = _strings(w.get("keys"))
    for name, role in members.items():
        if role == "weights" and name not in keys:
            c.bad("$.weights", f"weights member {name!r} has no entry (its role and keys)")
    return keys


def _check_programs(
    c: Checker, obj: dict[str, Any], members: Mapping[str, Any], keys: Mapping[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """Every program listed once, under its member, with a valid role and existing data files;
    every weights member loaded by some program. Returns the programs by name."""
    if "programs" not in obj:
        c.bad("$", "missing required key 'programs' (format 2 lists every program)")
        return {}
    by_name: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[str]] = {}  # JSON path of a program's data -> its data members
    for i, entry in enumerate(c.array(obj, "programs", "$")):
        p = f"$.programs[{i}]"
        if not c.obj(entry, p, ("name", "member", "role", "data")):
            continue
        for key in ("name", "member", "role"):
            c.field(entry, key, p, "str")
        name, member, role = entry.get("name"), entry.get("member"), entry.get("role")
        if isinstance(name, str):
            why = check_program_name(name)
            if why:
                c.bad(f"{p}.name", f"{name!r} is {why}")
            elif name in by_name:
                c.bad(f"{p}.name", f"program {name!r} is listed twice")
            else:
                by_name[name] = entry
                if isinstance(member, str) and member != program_member(name):
                    c.bad(f"{p}.member", f"{member!r}: program {name!r} is stored as "
                          f"{program_member(name)!r}")  # fmt: skip
                elif isinstance(member, str) and members.get(member) != "program":
                    c.bad(f"{p}.member", f"no program member {member!r} in the archive")
        if isinstance(role, str) and check_program_role(role):
            c.bad(f"{p}.role", f"{role!r} is {check_program_role(role)}")
        elif name == MAIN_PROGRAM_NAME and isinstance(role, str) and role != "model":
            c.bad(f"{p}.role", f"{role!r}: the main program's role is 'model'")
        data: list[str] = []
        for j, d in enumerate(c.array(entry, "data", p)):
            if not isinstance(d, str):
                c.typed(d, f"{p}.data[{j}]", "str")
            elif members.get(d) != "weights":
                c.bad(f"{p}.data[{j}]", f"{d!r} is not a weights member of the archive")
            elif d in data:
                c.bad(f"{p}.data[{j}]", f"{d!r} is listed twice")
            else:
                data.append(d)
        if "snapshot" in entry:
            if name == MAIN_PROGRAM_NAME:
                c.bad(f"{p}.snapshot", "the main program's snapshot is $.program")
            else:
                check_program_info(c, entry["snapshot"], f"{p}.snapshot")
        if isinstance(name, str) and by_name.get(name) is entry:
            loads[f"{p}.data"] = data
    # A member counts as listed when an entry names it by name or by member: one bad field of an
    # entry is one problem, not two.
    entries_: Any = obj.get("programs")
    listed = {program_member(n) for n in by_name} | {
        e["member"] for e in _dicts(entries_) if isinstance(e.get("member"), str)
    }
    for name, role in members.items():
        if role == "program" and name not in listed:
            c.bad("$.programs", f"program member {name!r} is not listed")
    loaded = {d for data in loads.values() for d in data}
    for name, role in members.items():
        if role == "weights" and name not in loaded:
            c.bad("$.programs", f"weights member {name!r} is loaded by no program")
    _check_disjoint_keys(c, loads, keys)
    return by_name


def _check_disjoint_keys(
    c: Checker, loads: Mapping[str, list[str]], keys: Mapping[str, list[str]]
) -> None:
    """No key in two of one program's data files: ExecuTorch's MergedDataMap refuses that
    (extension/named_data_map/merged_data_map.cpp, "Duplicate key ... in named data maps")."""
    refs = sum(len(keys.get(d, ())) for data in loads.values() for d in data)
    if refs > ETM_MAX_DATA_KEY_REFS:
        c.bad("$.programs", f"the programs' data files list {refs} keys in all, more than the "
              f"{ETM_MAX_DATA_KEY_REFS} a reader compares")  # fmt: skip
        return
    for path, data in loads.items():
        clash = _first_clash(data, keys)
        if clash is not None:
            key, first, second = clash
            c.bad(path, f"key {key!r} is in both {first!r} and {second!r} (ExecuTorch "
                  "refuses a key found in two data files)")  # fmt: skip


def _first_clash(data: list[str], keys: Mapping[str, list[str]]) -> tuple[str, str, str] | None:
    owner: dict[str, str] = {}
    for member in data:
        for key in keys.get(member, ()):
            first = owner.setdefault(key, member)
            if first != member:
                return key, first, member
    return None


def _methods(obj: dict[str, Any], programs: Mapping[str, dict[str, Any]], name: str) -> Any:
    """The method names recorded for program ``name``, or None when no snapshot records them."""
    snapshot = obj.get("program") if name == MAIN_PROGRAM_NAME else programs[name].get("snapshot")
    return snapshot.get("methods") if isinstance(snapshot, dict) else None


def _check_modalities(
    c: Checker, obj: dict[str, Any], members: Mapping[str, Any], programs: Mapping[str, Any]
) -> None:
    """Each modality once, its token ids inside the vocabulary, its references existing."""
    if "modalities" not in obj:
        return
    tokenizer = obj.get("tokenizer")
    vocab = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    seen: set[str] = set()
    for i, m in enumerate(c.array(obj, "modalities", "$")):
        p = f"$.modalities[{i}]"
        if not c.obj(m, p, ("modality", "token_id")):
            continue
        c.enum(m, "modality", p, ETM_MODALITIES)
        modality = m.get("modality")
        if isinstance(modality, str) and modality in seen:
            c.bad(f"{p}.modality", f"{modality!r} is listed twice")
        seen.add(str(modality))
        ids = {"token_id": m.get("token_id")}
        c.field(m, "token_id", p, "uint|null")
        if "special_token_ids" in m and c.obj(m["special_token_ids"], f"{p}.special_token_ids", ()):
            for key, value in m["special_token_ids"].items():
                c.typed(value, f"{p}.special_token_ids.{key}", "uint")
                ids[f"special_token_ids.{key}"] = value
        for key, value in ids.items():
            if is_kind(value, "uint") and is_kind(vocab, "uint") and value >= vocab:
                c.bad(f"{p}.{key}", f"{value} is outside the tokenizer's vocabulary ({vocab})")
        for key in ("program", "method", "preprocessor", "processor"):
            c.field(m, key, p, "str|null")
        program = m.get("program")
        if isinstance(program, str) and program not in programs:
            c.bad(f"{p}.program", f"no program {program!r}")
        target = program if isinstance(program, str) else MAIN_PROGRAM_NAME
        method = m.get("method")
        known = _methods(obj, programs, target) if target in programs else None
        if isinstance(method, str) and isinstance(known, list) and method not in known:
            c.bad(f"{p}.method", f"program {target!r} has no method {method!r}")
        pre = m.get("preprocessor")
        if isinstance(pre, str) and pre not in programs:
            c.bad(f"{p}.preprocessor", f"no program {pre!r}")
        elif isinstance(pre, str) and programs[pre].get("role") != "preprocessor":
            c.bad(f"{p}.preprocessor", f"program {pre!r} has role {programs[pre].get('role')!r}, "
                  "not 'preprocessor'")  # fmt: skip
        processor = m.get("processor")
        if isinstance(processor, str) and members.get(processor) != "processor_config":
            c.bad(f"{p}.processor", f"{processor!r} is not a processor config member")
