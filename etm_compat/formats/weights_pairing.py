"""Which ``.ptd`` files a program needs, and what role each file plays, from data keys alone.

A program needs a key when the runtime will look it up in its merged NamedDataMap: an EXTERNAL
tensor's ``fully_qualified_name`` in the program head, or a key a delegate payload names (read
by :mod:`etm_compat.formats.delegates`), unless the program's own ``named_data`` holds it. File
names never count. The rules:

* a program **uses** every ``.ptd`` whose keys meet the keys it needs;
* a file used by several programs is their **foundation**; a file used by one program that also
  uses a foundation is that program's **adapter**; a file used by one program alone is its
  **weights**; a file whose content is a backend's own artifact (see
  :func:`~etm_compat.formats.ptd.ptd_content`) is a **backend_blob** whoever uses it;
* when a program's delegate payloads cannot all be read (an opaque backend), its needed keys are
  a lower bound: it uses the files its known keys meet, plus every file that meets the known
  keys of *all* programs (the shared foundation); the result says it is incomplete.

>>> pairing = pair_weights([read_program_keys(p) for p in programs], [read_ptd(f) for f in ptds])  # doctest: +SKIP
>>> {f.path: f.role for f in pairing.files}  # doctest: +SKIP
{'foundation.ptd': 'foundation', 'adapter_a.ptd': 'adapter', 'adapter_b.ptd': 'adapter'}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from etm_compat.formats.delegates import read_delegate_keys
from etm_compat.formats.ptd import PtdContent, PtdInfo, ptd_content
from etm_compat.formats.pte import ProgramHead, PteInfo, describe_program, open_program

WeightsRole = Literal["weights", "foundation", "adapter", "backend_blob"]


@dataclass(frozen=True)
class ProgramKeys:
    """The data keys a program names: in its head, in its delegate payloads, in itself.

    ``unread`` lists the delegates whose payload keys are unknown (``"forward.delegates[0]
    (CoreMLBackend): ..."``); when it is empty the needed keys are exact.
    """

    path: str
    external: tuple[str, ...]
    delegate: tuple[str, ...]
    internal: tuple[str, ...]
    unread: tuple[str, ...]

    @property
    def needed(self) -> frozenset[str]:
        """Keys the program needs from ``.ptd`` files (its own named_data excluded)."""
        return frozenset(self.external).union(self.delegate) - frozenset(self.internal)

    @property
    def complete(self) -> bool:
        """True when every delegate payload was read, so :attr:`needed` is exact."""
        return not self.unread

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "external": list(self.external),
            "delegate": list(self.delegate),
            "internal": list(self.internal),
            "needed": sorted(self.needed),
            "complete": self.complete,
            "unread": list(self.unread),
        }


@dataclass(frozen=True)
class WeightsFile:
    """One ``.ptd``: its content, its role (None if no program uses it) and who uses it."""

    path: str
    content: PtdContent
    role: WeightsRole | None
    used_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "content": self.content,
            "role": self.role,
            "used_by": list(self.used_by),
        }


@dataclass(frozen=True)
class ProgramWeights:
    """The files one program uses, the needed keys none provides, and keys several provide."""

    program: str
    files: tuple[str, ...]
    missing: tuple[str, ...]
    duplicated: tuple[str, ...]
    complete: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "files": list(self.files),
            "missing": list(self.missing),
            "duplicated": list(self.duplicated),
            "complete": self.complete,
        }


@dataclass(frozen=True)
class WeightsPairing:
    """Every program's files and every file's role; ``notes`` say where the answer is partial."""

    programs: tuple[ProgramWeights, ...]
    files: tuple[WeightsFile, ...]
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "programs": [p.to_json() for p in self.programs],
            "files": [f.to_json() for f in self.files],
            "notes": list(self.notes),
        }


def read_program_keys(path: str | os.PathLike[str]) -> ProgramKeys:
    """The data keys of the ``.pte`` at ``path`` (head and readable delegate payloads)."""
    head = open_program(path)
    return program_keys(head, describe_program(head))


def program_keys(head: ProgramHead, info: PteInfo) -> ProgramKeys:
    """Like :func:`read_program_keys` for an opened program and its :class:`PteInfo`."""
    delegate: dict[str, None] = {}
    unread = []
    for payload in read_delegate_keys(head):
        delegate.update(dict.fromkeys(payload.keys))
        if not payload.readable:
            unread.append(
                f"{payload.method}.delegates[{payload.index}] ({payload.backend}): {payload.note}"
            )
    return ProgramKeys(
        path=info.path,
        external=info.external_keys,
        delegate=tuple(delegate),
        internal=info.named_data_keys,
        unread=tuple(unread),
    )


def pair_weights(programs: Sequence[ProgramKeys], ptds: Sequence[PtdInfo]) -> WeightsPairing:
    """Pair programs with the ``.ptd`` files whose keys they need, and name each file's role.

    Programs and files are matched by position, so equal paths (``"<bytes>"``) do not collide.
    """
    notes: list[str] = []
    shared = {  # the fallback foundation: a file that meets the known keys of every program
        i
        for i, f in enumerate(ptds)
        if len(programs) > 1 and all(f.keys & p.needed for p in programs)
    }
    uses: list[list[int]] = []
    for program in programs:
        chosen = {i for i, f in enumerate(ptds) if f.keys & program.needed}
        if not program.complete:
            chosen |= shared
            notes.append(
                f"{program.path}: {len(program.unread)} delegate payload(s) not read, so it may "
                f"need keys of other files too: {'; '.join(program.unread[:3])}"
            )
        uses.append(sorted(chosen))
    users = [[j for j, chosen in enumerate(uses) if i in chosen] for i in range(len(ptds))]
    foundations = {i for i, u in enumerate(users) if len(u) > 1}
    files = tuple(
        WeightsFile(
            f.path,
            ptd_content(f),
            _role(f, i in foundations, [foundations & set(uses[j]) for j in users[i]]),
            tuple(programs[j].path for j in users[i]),
        )
        for i, f in enumerate(ptds)
    )
    if any(not p.complete for p in programs):
        unused = [f.path for f in files if f.role is None]
        if unused:
            notes.append(f"not shown to be unused (some payloads are unread): {', '.join(unused)}")
    return WeightsPairing(
        programs=tuple(
            _program_weights(p, [ptds[i] for i in uses[j]]) for j, p in enumerate(programs)
        ),
        files=files,
        notes=tuple(notes),
    )


def _role(ptd: PtdInfo, shared: bool, user_foundations: list[set[int]]) -> WeightsRole | None:
    """``user_foundations``: for each program using ``ptd``, the foundations it uses."""
    if not user_foundations:
        return None
    if ptd_content(ptd) == "backend_blob":
        return "backend_blob"
    if shared:
        return "foundation"
    return "adapter" if user_foundations[0] else "weights"


def _program_weights(program: ProgramKeys, chosen: list[PtdInfo]) -> ProgramWeights:
    needed = program.needed
    provided: dict[str, int] = {}
    for ptd in chosen:
        for key in ptd.keys & needed:
            provided[key] = provided.get(key, 0) + 1
    return ProgramWeights(
        program=program.path,
        files=tuple(f.path for f in chosen),
        missing=tuple(sorted(needed - provided.keys())),
        duplicated=tuple(sorted(k for k, n in provided.items() if n > 1)),
        complete=program.complete,
    )


__all__ = [
    "ProgramKeys",
    "ProgramWeights",
    "WeightsFile",
    "WeightsPairing",
    "WeightsRole",
    "pair_weights",
    "program_keys",
    "read_program_keys",
]
