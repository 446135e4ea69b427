"""What one legacy deployment is made of, independent of the layout it was found in.

Adapters (``etm_compat.adapters``) turn a folder into :class:`Deployment` records; everything
downstream (inference, packing, diagnostics, the loader) takes those records, never a layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args, runtime_checkable

#: Roles of the configuration files a deployment may carry besides program/tokenizer/weights.
ConfigRole = Literal[
    "tokenizer_config",  # HF tokenizer_config.json (bos/eos, chat_template)
    "generation_config",  # HF generation_config.json (eos_token_id, sampling defaults)
    "config",  # HF config.json (model_type, architectures, vocab_size)
    "chat_template",  # chat_template.jinja or chat_template.json
    "export_config",  # export_llm config yaml
    "params",  # Meta params.json
    "special_tokens_map",  # HF special_tokens_map.json
    "processor_config",  # HF preprocessor_config.json (image/audio feature extraction)
]


@dataclass(frozen=True)
class ProgramPart:
    """A further program of a deployment: an audio preprocessor, or another model that shares
    the main program's foundation weights (LoRA). ``name`` is its name in an archive."""

    name: str
    role: str
    path: Path
    weights: tuple[Path, ...] = ()

    def to_json(self, root: Path) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "path": os.path.relpath(self.path, root),
            "weights": [os.path.relpath(p, root) for p in self.weights],
        }


@dataclass(frozen=True)
class Deployment:
    """One program and everything that belongs with it.

    A folder with several ``.pte`` variants yields one deployment per program; they share the
    tokenizer and the configuration files.
    """

    root: Path
    program: Path
    layout: str
    tokenizer: Path | None = None
    weights: tuple[Path, ...] = ()
    configs: Mapping[ConfigRole, Path] = field(default_factory=dict)
    #: Why the adapter chose what it chose, or what it could not find.
    notes: tuple[str, ...] = ()
    #: Files beside the program that are never packed (checkpoints, notebooks), with the reason.
    left_out: tuple[tuple[Path, str], ...] = ()
    #: Why the deployment cannot be packed as found (no tokenizer, an ambiguous pairing...).
    problem: str | None = None
    #: The role of each weights file that is not plain weights: foundation, adapter, backend_blob.
    weight_roles: Mapping[Path, str] = field(default_factory=dict)
    #: Programs packed together with the main one (preprocessors, LoRA siblings).
    parts: tuple[ProgramPart, ...] = ()

    @property
    def name(self) -> str:
        """A short display name: the folder, plus the program when it is not the only one."""
        return f"{self.root.name}/{self.program.name}"

    @property
    def sources(self) -> tuple[Path, ...]:
        """Every file this deployment is built from, program first."""
        files: list[Path] = [self.program]
        if self.tokenizer is not None:
            files.append(self.tokenizer)
        files.extend(self.weights)
        files.extend(self.configs.values())
        for part in self.parts:
            files.append(part.path)
            files.extend(part.weights)
        # Deduplicated by spelling (what Path equality compares here): hashing a Path costs
        # more than the rest of an upgrade re-run's check of a deployment.
        seen: set[str] = set()
        unique = []
        for path in files:
            text = str(path)
            if text not in seen:
                seen.add(text)
                unique.append(path)
        return tuple(unique)

    def to_json(self) -> dict[str, object]:
        def rel(p: Path) -> str:
            return os.path.relpath(p, self.root)

        return {
            "root": str(self.root),
            "layout": self.layout,
            "program": rel(self.program),
            "tokenizer": rel(self.tokenizer) if self.tokenizer else None,
            "weights": [rel(p) for p in self.weights],
            "weight_roles": {rel(p): role for p, role in self.weight_roles.items()},
            "parts": [part.to_json(self.root) for part in self.parts],
            "configs": {role: rel(p) for role, p in self.configs.items()},
            "notes": list(self.notes),
            "left_out": [{"path": rel(p), "reason": why} for p, why in self.left_out],
            "problem": self.problem,
        }


def deployment_record(dep: Deployment, rel: Callable[[Path], str]) -> dict[str, Any]:
    """``dep`` as plain JSON data, every path spelled by ``rel`` (relative to a scan root):
    what an upgrade remembers of a folder it read (see :func:`deployment_from_record`)."""
    return {
        "root": rel(dep.root),
        "program": rel(dep.program),
        "layout": dep.layout,
        "tokenizer": rel(dep.tokenizer) if dep.tokenizer is not None else None,
        "weights": [rel(p) for p in dep.weights],
        "configs": {role: rel(p) for role, p in dep.configs.items()},
        "notes": list(dep.notes),
        "left_out": [[rel(p), why] for p, why in dep.left_out],
        "problem": dep.problem,
        "weight_roles": [[rel(p), role] for p, role in dep.weight_roles.items()],
        "parts": [[part.name, part.role, rel(part.path), [rel(p) for p in part.weights]] for part in dep.parts],
    }


_CONFIG_ROLES: frozenset[str] = frozenset(get_args(ConfigRole))


def deployment_from_record(data: Any, path: Callable[[Any], Path]) -> Deployment:
    """The :class:`Deployment` a :func:`deployment_record` describes; ``path`` turns each
    recorded path back into a :class:`~pathlib.Path` (and refuses one it does not accept).

    The record is untrusted (it is read from a file): a wrong type raises TypeError,
    ValueError or KeyError, never builds a half-checked deployment.
    """

    def text(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, found {type(value).__name__}")
        return value

    def optional(value: Any, convert: Callable[[Any], Any]) -> Any:
        return None if value is None else convert(value)

    configs = {}
    for role, where in dict(data["configs"]).items():
        if role not in _CONFIG_ROLES:
            raise ValueError(f"unknown config role {role!r}")
        configs[cast(ConfigRole, role)] = path(where)
    return Deployment(
        root=path(data["root"]),
        program=path(data["program"]),
        layout=text(data["layout"]),
        tokenizer=optional(data["tokenizer"], path),
        weights=tuple(path(p) for p in data["weights"]),
        configs=configs,
        notes=tuple(text(n) for n in data["notes"]),
        left_out=tuple((path(p), text(why)) for p, why in data["left_out"]),
        problem=optional(data["problem"], text),
        weight_roles={path(p): text(role) for p, role in data["weight_roles"]},
        parts=tuple(
            ProgramPart(text(name), text(role), path(where), tuple(path(p) for p in weights))
            for name, role, where, weights in data["parts"]
        ),
    )


@runtime_checkable
class Adapter(Protocol):
    """Reads one legacy layout. ``detect`` is cheap; ``read`` may read file heads.

    ``root`` is the top of the tree being scanned (None for a folder on its own): files a
    program needs but its folder lacks (a tokenizer shared by a tree) are searched up to it.
    Both read only files found through :func:`etm_compat.legacy.files.list_files`: an upgrade
    re-run reuses what was read from a folder while the folders listed then are unchanged.
    """

    name: str

    def detect(self, folder: Path) -> bool: ...

    def read(self, folder: Path, root: Path | None = None) -> Sequence[Deployment]: ...


@dataclass(frozen=True)
class Skipped:
    """A program or folder that could not become a deployment, and why; or (``ignored``) a file
    published beside programs that is never packed (a checkpoint, a notebook)."""

    path: Path
    reason: str
    ignored: bool = False
    #: a file of it could not be read (a corrupt or truncated program): an error, not a warning
    unreadable: bool = False
    hint: str = ""
