"""The member plan a writer follows: what to pack (:class:`MemberSpec`), the checks on it, the
archive order, the format version it needs, and the metadata sections the writer fills from it.

Pure: nothing here reads or writes a file.

>>> specs = [MemberSpec("model.pte", Path("m.pte"), "program"),
...          MemberSpec("programs/preprocessor.pte", Path("p.pte"), "program", kind="preprocessor")]
>>> required_version({}, specs), version_features({}, specs)
(2, ["member 'programs/preprocessor.pte'"])
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etm_compat.archive.names import (
    Role,
    check_member_name,
    check_program_role,
    check_weights_role,
    member_rank,
    member_version,
    program_name,
    role_of,
)
from etm_compat.constants import (
    ETM_FORMAT_VERSION,
    ETM_LATEST_FORMAT_VERSION,
    MEMBER_METADATA,
    MEMBER_PROCESSORS_DIR,
    MEMBER_PROGRAM,
    MEMBER_PROGRAMS_DIR,
    MEMBER_SPECIAL_TOKENS_MAP,
    MEMBER_TOKENIZER_CONFIG,
    MEMBER_TOKENIZER_NAMES,
    MEMBER_WEIGHTS_DIR,
)
from etm_compat.errors import UsageError

__all__ = [
    "MemberSpec",
    "fill_metadata",
    "order_specs",
    "program_data",
    "required_version",
    "version_features",
]

#: The role a program or weights member has when its spec names none.
_DEFAULT_KIND: Mapping[str, str] = {"program": "model", "weights": "weights"}


@dataclass(frozen=True)
class MemberSpec:
    """One file to pack: its archive ``name``, the ``source`` path, its ``role``.

    ``keys`` lists the named-data keys a ``weights`` member provides (recorded in metadata).
    ``provenance`` is the index of the ``metadata["provenance"]["sources"]`` entry this file
    came from unchanged: the writer fills that entry's sha256 with the digest it computes while
    copying, so a packer never reads a multi-GB source twice just to record its hash.

    Format version 2 (the writer switches to it only when one of these is used):

    * ``kind``: a program's role (``model``, ``preprocessor``, ``encoder``, ``decoder`` or
      ``x-<name>``; None is ``model``) or a weights member's role (``weights``, ``foundation``,
      ``adapter``, ``backend_blob``; None is ``weights``).
    * ``data``: for a program, the weights members it loads, in load order. None keeps the
      version-1 rule: ``model.pte`` loads every weights member, another program none.
    * ``snapshot``: for a program other than ``model.pte``, its head as ``metadata["program"]``
      records the main program's (constant methods, methods, backends, external keys, size).

    >>> MemberSpec("model.pte", Path("legacy/model.pte"), "program").name
    'model.pte'
    """

    name: str
    source: Path
    role: Role
    keys: tuple[str, ...] = ()
    provenance: int | None = None
    kind: str | None = None
    data: tuple[str, ...] | None = None
    snapshot: Mapping[str, Any] | None = field(default=None, compare=False)


def program_data(members: Sequence[MemberSpec]) -> dict[str, tuple[str, ...]]:
    """Each program member's data (weights members in load order), ``data=None`` resolved."""
    weights = sorted((s.name for s in members if s.role == "weights"), key=member_rank)
    return {
        s.name: s.data if s.data is not None else tuple(weights if s.name == MEMBER_PROGRAM else ())
        for s in members
        if s.role == "program"
    }


def _spec_problem(spec: MemberSpec, weights: set[str]) -> str | None:
    problem = check_member_name(spec.name)
    if problem is None and spec.name == MEMBER_METADATA:
        problem = "metadata.json is written by the archive writer itself"
    if problem is None and role_of(spec.name) != spec.role:
        problem = f"role {spec.role!r} does not fit the name (expected {role_of(spec.name)!r})"
    if problem is None and spec.kind is not None:
        if spec.role == "program":
            problem = check_program_role(spec.kind)
            if problem is None and spec.name == MEMBER_PROGRAM and spec.kind != "model":
                problem = f"kind {spec.kind!r}: the main program's role is 'model'"
        elif spec.role == "weights":
            problem = check_weights_role(spec.kind)
        else:
            problem = "kind applies to programs and weights only"
    if problem is None and spec.data is not None:
        if spec.role != "program":
            problem = "data applies to programs only"
        else:
            odd = [d for d in spec.data if d not in weights]
            twice = sorted({d for d in spec.data if spec.data.count(d) > 1})
            if odd:
                problem = f"data names {odd}, which are not weights members being packed"
            elif twice:
                problem = f"data lists {twice} twice"
    if problem is None and spec.snapshot is not None and program_name(spec.name) in (None, "model"):
        problem = "snapshot applies to programs other than model.pte (that one is metadata['program'])"
    return problem


def order_specs(members: Sequence[MemberSpec]) -> list[MemberSpec]:
    """Check every spec, then return them in archive order; :class:`UsageError` lists every
    problem (bad or duplicate names, roles, kinds, data, a weights member no program loads)."""
    problems: list[str] = []
    seen: set[str] = set()
    weights = {s.name for s in members if s.role == "weights"}
    for spec in members:
        problem = _spec_problem(spec, weights)
        if spec.name in seen:
            problem = "given twice" if problem is None else f"{problem}; given twice"
        seen.add(spec.name)
        if problem:
            problems.append(f"{spec.name!r}: {problem}")
    if MEMBER_PROGRAM not in seen:
        problems.append(f"no {MEMBER_PROGRAM!r} member")
    if sum(1 for name in seen if name in MEMBER_TOKENIZER_NAMES) > 1:
        problems.append("more than one tokenizer member")
    if not problems:
        loaded = {d for data in program_data(members).values() for d in data}
        problems += [f"{w!r}: loaded by no program" for w in sorted(weights - loaded)]
    if problems:
        raise UsageError(
            "cannot pack these members: " + "; ".join(problems),
            hint=f"members are {MEMBER_PROGRAM}, {MEMBER_PROGRAMS_DIR}<name>.pte, one of "
            f"{list(MEMBER_TOKENIZER_NAMES)}, {MEMBER_TOKENIZER_CONFIG}, "
            f"{MEMBER_SPECIAL_TOKENS_MAP}, {MEMBER_PROCESSORS_DIR}<name>.json and "
            f"{MEMBER_WEIGHTS_DIR}<name>.ptd; a program's data names weights members",
        )
    return sorted(members, key=lambda s: member_rank(s.name))


def version_features(metadata: Mapping[str, Any], members: Sequence[MemberSpec]) -> list[str]:
    """What in these members and metadata needs a version-2 reader (empty: version 1 will do).

    New member names (``programs/``, ``processors/``, ``special_tokens_map.json``), a role other
    than the default, a main program that loads other than every weights member in archive
    order, a ``modalities`` section.
    """
    found = [f"member {s.name!r}" for s in members if member_version(s.name) > 1]
    found += [
        f"member {s.name!r} has role {s.kind!r}"
        for s in members
        if s.kind is not None and s.kind != _DEFAULT_KIND.get(s.role)
    ]
    data = program_data(members).get(MEMBER_PROGRAM)
    weights = sorted((s.name for s in members if s.role == "weights"), key=member_rank)
    if data is not None and list(data) != weights:
        found.append(f"{MEMBER_PROGRAM} loads {list(data)}, not every weights member")
    if "modalities" in metadata:
        found.append("$.modalities")
    return found


def required_version(metadata: Mapping[str, Any], members: Sequence[MemberSpec]) -> int:
    """The format version an archive of these members and metadata needs: 1 unless a version-2
    feature is used (:func:`version_features`), then 2. Pure; the writer calls it.

    >>> required_version({}, [MemberSpec("model.pte", Path("m.pte"), "program")])
    1
    """
    return ETM_LATEST_FORMAT_VERSION if version_features(metadata, members) else ETM_FORMAT_VERSION


def fill_metadata(
    meta: dict[str, Any], ordered: Sequence[MemberSpec], sizes: Mapping[str, int], placeholder: str
) -> None:
    """Fill what the writer owns: ``members`` (digests as ``placeholder``), ``weights`` and, for
    a version-2 archive, ``programs``, the weights roles and the two version fields (raised to 2,
    never lowered). A version-1 archive gets exactly its version-1 metadata."""
    meta["members"] = [
        {"name": s.name, "size": sizes[s.name], "sha256": placeholder, "role": s.role}
        for s in ordered
    ]
    meta.pop("programs", None)
    version = required_version(meta, ordered)
    if version < 2:
        meta["weights"] = [
            {"member": s.name, "keys": list(s.keys)} for s in ordered if s.role == "weights"
        ]
        return
    for key in ("format_version", "min_reader_version"):
        current = meta.get(key)
        meta[key] = max(current, version) if isinstance(current, int) else version
    meta["weights"] = [
        {"member": s.name, "keys": list(s.keys), "role": s.kind or "weights"}
        for s in ordered
        if s.role == "weights"
    ]
    data = program_data(ordered)
    meta["programs"] = []
    for s in ordered:
        if s.role != "program":
            continue
        entry: dict[str, Any] = {
            "name": program_name(s.name),
            "member": s.name,
            "role": s.kind or "model",
            "data": list(data[s.name]),
        }
        if s.snapshot is not None:
            entry["snapshot"] = copy.deepcopy(dict(s.snapshot))
        meta["programs"].append(entry)
