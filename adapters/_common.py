"""What every layout shares: listing a folder, finding the tokenizer, pairing weights by keys."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from etm_compat.constants import TOKENIZER_SUFFIXES
from etm_compat.errors import InputError
from etm_compat.formats.ptd import is_ptd_file, read_ptd
from etm_compat.formats.pte import is_pte_file, read_pte
from etm_compat.formats.tokenizer.detect import looks_like_tokenizer
from etm_compat.legacy.deployment import ConfigRole, Deployment

#: Fixed file names of configuration files, by role.
CONFIG_NAMES: Mapping[str, ConfigRole] = {
    "tokenizer_config.json": "tokenizer_config",
    "generation_config.json": "generation_config",
    "config.json": "config",
    "chat_template.jinja": "chat_template",
    "chat_template.json": "chat_template",
    "params.json": "params",
    "special_tokens_map.json": "special_tokens_map",
}

#: Tokenizer file names in the order the ExecuTorch runner's loader prefers them.
TOKENIZER_NAMES = ("tekken.json", "tokenizer.json", "tokenizer.model", "tokenizer.bin")
#: Files never taken for a tokenizer even if they sniff like one.
NOT_TOKENIZERS = frozenset(CONFIG_NAMES) | {"metadata.json", "vocab.json", "merges.txt"}

YAML_SUFFIXES = (".yaml", ".yml")


def list_files(folder: Path) -> list[Path]:
    """Regular files directly in ``folder``, sorted by name (symlinks to files count)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list folder: {exc.strerror}", path=folder) from exc
    files = []
    for entry in entries:
        try:
            if entry.is_file():
                files.append(Path(entry.path))
        except OSError:
            continue
    return files


def programs_in(files: Sequence[Path]) -> list[Path]:
    return [p for p in files if p.suffix == ".pte" and is_pte_file(p)]


def has_program(folder: Path) -> bool:
    return bool(programs_in(list_files(folder)))


def find_tokenizer(files: Sequence[Path]) -> tuple[Path | None, str | None]:
    """The tokenizer file of a folder, decided by content; and a note when the choice is not obvious."""
    by_name = {p.name: p for p in files}
    for name in TOKENIZER_NAMES:
        path = by_name.get(name)
        if path is not None and looks_like_tokenizer(path):
            return path, None
    candidates = [
        p
        for p in files
        if p.suffix in TOKENIZER_SUFFIXES and p.name not in NOT_TOKENIZERS and looks_like_tokenizer(p)
    ]
    if not candidates:
        return None, "no tokenizer file found"
    note = None
    if len(candidates) > 1:
        note = f"several tokenizer candidates ({', '.join(p.name for p in candidates)}); took {candidates[0].name}"
    return candidates[0], note


def find_configs(files: Sequence[Path]) -> dict[ConfigRole, Path]:
    configs: dict[ConfigRole, Path] = {}
    for path in files:
        role = CONFIG_NAMES.get(path.name)
        if role is not None and role not in configs:
            configs[role] = path
    return configs


def find_export_config(files: Sequence[Path]) -> Path | None:
    """An export_llm config yaml: a YAML file with a top-level ``base:`` section naming a model."""
    for path in files:
        if path.suffix not in YAML_SUFFIXES:
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(64 * 1024)
        except OSError:
            continue
        text = head.decode("utf-8", "replace")
        if any(line.startswith("base:") for line in text.splitlines()) and (
            "model_class" in text or "checkpoint" in text or "params" in text
        ):
            return path
    return None


def pair_weights(programs: Sequence[Path], ptds: Sequence[Path]) -> tuple[dict[Path, list[Path]], list[str]]:
    """Give each program the ``.ptd`` files that provide its external tensor keys.

    File names are never used: a ``.pte`` does not record its ``.ptd``'s name. A program whose
    weights live inside a delegate payload (keys absent from its head) gets the ``.ptd`` files
    no other program claims, when it is the only such program; the note says so.
    """
    notes: list[str] = []
    if not ptds:
        return {p: [] for p in programs}, notes
    ptd_keys: dict[Path, frozenset[str]] = {}
    for ptd in ptds:
        try:
            ptd_keys[ptd] = read_ptd(ptd).keys
        except InputError as exc:
            notes.append(f"ignored {ptd.name}: {exc.message}")
    paired: dict[Path, list[Path]] = {p: [] for p in programs}
    claimed: set[Path] = set()
    keyless: list[Path] = []
    for program in programs:
        info = read_pte(program)
        wanted = set(info.external_keys)
        if not wanted:
            if info.backends:
                keyless.append(program)
            continue
        for ptd, keys in ptd_keys.items():
            if wanted & keys:
                paired[program].append(ptd)
                claimed.add(ptd)
    unclaimed = [p for p in ptd_keys if p not in claimed]
    if unclaimed and len(keyless) == 1:
        paired[keyless[0]].extend(unclaimed)
        notes.append(
            f"{keyless[0].name}: delegate-owned weights cannot be matched by key; "
            f"took the unclaimed {', '.join(p.name for p in unclaimed)}"
        )
    elif unclaimed:
        notes.append(f"no program uses {', '.join(p.name for p in unclaimed)}")
    return paired, notes


def read_folder(folder: Path, layout: str, *, extra_configs: Mapping[ConfigRole, Path] | None = None) -> list[Deployment]:
    """One deployment per program in ``folder``; variants share tokenizer and configs."""
    files = list_files(folder)
    programs = programs_in(files)
    tokenizer, tok_note = find_tokenizer(files)
    configs = find_configs(files)
    if extra_configs:
        configs.update(extra_configs)
    ptds = [p for p in files if p.suffix == ".ptd" and is_ptd_file(p)]
    paired, pair_notes = pair_weights(programs, ptds)
    base_notes = [n for n in (tok_note,) if n] + pair_notes
    return [
        Deployment(
            root=folder,
            program=program,
            layout=layout,
            tokenizer=tokenizer,
            weights=tuple(paired[program]),
            configs=dict(configs),
            notes=tuple(base_notes),
        )
        for program in programs
    ]
