"""What an open archive holds, as records a loader uses: the programs with their roles, each
program's weight files in load order, the processor configs, the modalities, the tokenizer's
config files. A version-1 archive reads as one program, ``model``, that loads every weights
member in archive order (what the version-1 format means).

Built from metadata that :func:`~etm_compat.archive.metadata.parse_metadata` validated and
:func:`check_members` matched against the zip's members, so every cross-reference holds.

>>> layout = read_layout({"program": {"methods": ["forward"]}, "weights": [],
...     "members": [{"name": "model.pte", "size": 1, "sha256": "0" * 64, "role": "program"}]})
>>> [(p.name, p.member, p.role, p.data) for p in layout.programs]
[('model', 'model.pte', 'model', ())]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from etm_compat.archive.names import Modality, WeightsRole, processor_name, role_of
from etm_compat.archive.programs import duplicate_weights
from etm_compat.constants import MAIN_PROGRAM_NAME, MEMBER_PROGRAM
from etm_compat.errors import UsageError

__all__ = [
    "ArchiveLayout",
    "ModalityRecord",
    "ProgramRecord",
    "WeightsRecord",
    "check_members",
    "read_layout",
]


@dataclass(frozen=True)
class WeightsRecord:
    """One weight file: its member, role, the keys it provides and the programs that load it."""

    member: str
    role: WeightsRole
    keys: tuple[str, ...]
    programs: tuple[str, ...]


@dataclass(frozen=True)
class ProgramRecord:
    """One program: ``name`` (``model`` is ``model.pte``), member, role, and ``data``: the
    weights members it loads, in load order. ``snapshot`` is its recorded head (``$.program``
    for the main program), or None when the archive records none."""

    name: str
    member: str
    role: str
    data: tuple[str, ...]
    snapshot: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ModalityRecord:
    """One input modality: its placeholder token id, other special token ids, and where its
    encoder (``program``/``method``), preprocessor program and processor config are."""

    modality: Modality
    token_id: int | None
    special_token_ids: Mapping[str, int]
    program: str
    method: str | None
    preprocessor: str | None
    processor: str | None


@dataclass(frozen=True)
class ArchiveLayout:
    """Everything an archive holds, by role. ``programs`` start with the main program.

    >>> with open_archive("voxtral.etm") as etm:   # doctest: +SKIP
    ...     [w.member for w in etm.layout.program_weights("model")]
    ['weights/foundation.ptd', 'weights/adapter_a.ptd']
    """

    format_version: int
    programs: tuple[ProgramRecord, ...]
    weights: tuple[WeightsRecord, ...]
    processors: Mapping[str, str]  # processor name -> member (processors/<name>.json)
    modalities: tuple[ModalityRecord, ...]
    tokenizer_configs: tuple[str, ...]  # tokenizer_config.json, special_tokens_map.json

    def program(self, name: str = MAIN_PROGRAM_NAME) -> ProgramRecord:
        """The program called ``name``; :class:`UsageError` naming the programs if none is."""
        for program in self.programs:
            if program.name == name:
                return program
        raise UsageError(
            f"no program {name!r} in the archive (programs: {[p.name for p in self.programs]})"
        )

    def program_weights(self, name: str = MAIN_PROGRAM_NAME) -> tuple[WeightsRecord, ...]:
        """The weight files program ``name`` loads, in load order (hand them to the runtime as
        its data maps in this order)."""
        by_member = {w.member: w for w in self.weights}
        return tuple(by_member[m] for m in self.program(name).data)

    def modality(self, modality: Modality) -> ModalityRecord | None:
        """The record of ``modality`` (``"audio"``...), or None if the archive does not take it."""
        return next((m for m in self.modalities if m.modality == modality), None)


def _members(meta: Mapping[str, Any], role: str) -> list[str]:
    return [m["name"] for m in meta["members"] if m["role"] == role]


def read_layout(meta: Mapping[str, Any]) -> ArchiveLayout:
    """The layout of an archive from its (validated) metadata."""
    weights_members = _members(meta, "weights")
    entries = {w["member"]: w for w in meta["weights"]}
    if "programs" in meta:
        programs = tuple(
            ProgramRecord(
                p["name"],
                p["member"],
                p["role"],
                tuple(p["data"]),
                meta["program"] if p["name"] == MAIN_PROGRAM_NAME else p.get("snapshot"),
            )
            for p in meta["programs"]
        )
        programs = tuple(sorted(programs, key=lambda p: p.name != MAIN_PROGRAM_NAME))
    else:
        programs = (
            ProgramRecord(
                MAIN_PROGRAM_NAME, MEMBER_PROGRAM, "model", tuple(weights_members), meta["program"]
            ),
        )
    weights = tuple(
        WeightsRecord(
            member,
            entries.get(member, {}).get("role", "weights"),
            tuple(entries.get(member, {}).get("keys", ())),
            tuple(p.name for p in programs if member in p.data),
        )
        for member in weights_members
    )
    processors = {str(processor_name(m)): m for m in _members(meta, "processor_config")}
    modalities = tuple(
        ModalityRecord(
            m["modality"],
            m["token_id"],
            MappingProxyType(dict(m.get("special_token_ids") or {})),
            m.get("program") or MAIN_PROGRAM_NAME,
            m.get("method"),
            m.get("preprocessor"),
            m.get("processor"),
        )
        for m in meta.get("modalities", [])
    )
    return ArchiveLayout(
        format_version=meta["format_version"],
        programs=programs,
        weights=weights,
        processors=MappingProxyType(processors),
        modalities=modalities,
        tokenizer_configs=tuple(_members(meta, "tokenizer_config")),
    )


def check_members(meta: Mapping[str, Any], sizes: Mapping[str, int]) -> list[str]:
    """Every way the metadata's ``members`` list disagrees with the zip's members (name -> size,
    ``metadata.json`` excluded): missing or extra members, sizes, roles, the main program; in a
    version-2 archive also weight files stored twice."""
    problems: list[str] = []
    listed: dict[str, Any] = {}
    for entry in meta["members"]:
        if entry["name"] in listed:
            problems.append(f"{entry['name']!r} listed twice")
        listed[entry["name"]] = entry
    for name in sorted(sizes.keys() - listed.keys()):
        problems.append(f"member {name!r} is in the archive but not in metadata.json")
    for name in sorted(listed.keys() - sizes.keys()):
        problems.append(f"{name!r} is listed in metadata.json but not in the archive")
    for name in sorted(sizes.keys() & listed.keys()):
        entry = listed[name]
        if entry["size"] != sizes[name]:
            problems.append(
                f"member {name!r} is {sizes[name]} bytes, metadata.json says {entry['size']}"
            )
        if entry["role"] != role_of(name):
            problems.append(f"member {name!r} has role {entry['role']!r}, expected {role_of(name)!r}")
    if MEMBER_PROGRAM not in sizes:
        problems.append(f"no {MEMBER_PROGRAM} member")
    if meta["min_reader_version"] >= 2:
        problems += duplicate_weights(meta)
    return problems
