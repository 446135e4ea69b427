"""What every layout shares: pairing programs with tokenizers and weights, by content.

File names never decide a pairing: a program is paired with the tokenizer whose vocabulary and
special-token ids fit its own metadata, and with the ``.ptd`` files that provide its external
keys. A tokenizer a folder lacks is searched in its ``tokenizer/`` subfolder, then up the tree
to the scan root (a tree of variants sharing one tokenizer), and the choice is noted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from etm_compat.errors import EtmError, InputError
from etm_compat.formats.program_kinds import read_program_kind
from etm_compat.formats.ptd import PtdInfo, is_ptd_file, read_ptd
from etm_compat.formats.pte import is_pte_file, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.formats.weights_pairing import WeightsRole, read_program_keys
from etm_compat.formats.weights_pairing import pair_weights as match_weights
from etm_compat.legacy.deployment import ConfigRole, Deployment, ProgramPart
from etm_compat.legacy.files import (
    find_configs,
    left_out,
    list_files,
    tokenizer_candidates,
    tokenizer_in,
)

YAML_SUFFIXES = (".yaml", ".yml")


def programs_in(files: Sequence[Path]) -> list[Path]:
    return [p for p in files if p.suffix == ".pte" and is_pte_file(p)]


def has_program(folder: Path) -> bool:
    return bool(programs_in(list_files(folder)))


def shared_tokenizer(folder: Path, root: Path | None) -> tuple[Path | None, dict[ConfigRole, Path]]:
    """The tokenizer of ``folder/tokenizer``, else of the nearest folder above ``folder`` (up to
    ``root``; not above a folder read on its own) that has one."""
    if root is None:
        return tokenizer_in(folder / "tokenizer") if (folder / "tokenizer").is_dir() else (None, {})
    here, top = folder.resolve(), root.resolve()
    if here != top and top not in here.parents:
        return None, {}
    for ancestor in [folder / "tokenizer", *folder.parents]:
        if ancestor.resolve() != top and top not in ancestor.resolve().parents:
            break
        tokenizer, configs = tokenizer_in(ancestor)
        if tokenizer is not None:
            return tokenizer, configs
    return None, {}


def _ids(constant_methods: Mapping[str, object]) -> list[int]:
    ids: list[int] = []
    for key in ("get_bos_id", "get_eos_ids", "get_eos_id"):
        value = constant_methods.get(key)
        values = value if isinstance(value, list) else [value]
        ids += [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return ids


def fits(constant_methods: Mapping[str, object], tok: TokenizerInfo) -> bool:
    """Whether a program's own metadata is consistent with a tokenizer: the same vocabulary size
    (when the program records one), and every bos/eos id it names is a special token there."""
    vocab = constant_methods.get("get_vocab_size")
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab != tok.vocab_size:
        return False
    specials = set(tok.special_tokens.values()) | {i for i in (tok.bos_id, tok.eos_id) if i is not None}
    return all(i in specials for i in _ids(constant_methods))


def pair_tokenizers(
    programs: Sequence[Path], candidates: Sequence[Path]
) -> dict[Path, tuple[Path | None, str]]:
    """Each program's tokenizer and why: the only candidate, or the only one its metadata fits."""
    if len(candidates) <= 1:
        only = candidates[0] if candidates else None
        return {p: (only, "" if only else "no tokenizer file found beside the program") for p in programs}
    infos: dict[Path, TokenizerInfo] = {}
    for path in candidates:
        try:
            infos[path] = read_tokenizer(path, check_runner=False)
        except EtmError:
            continue
    names = ", ".join(p.name for p in infos)
    out: dict[Path, tuple[Path | None, str]] = {}
    for program in programs:
        try:
            cm = read_pte(program).constant_methods
        except EtmError as exc:
            out[program] = (None, f"unreadable program: {exc.message}")
            continue
        fitting = [path for path, info in infos.items() if fits(cm, info)]
        if len(fitting) == 1:
            out[program] = (fitting[0], f"paired with {fitting[0].name} by vocabulary and special-token ids (tokenizers here: {names})")
        elif not fitting:
            out[program] = (None, f"no tokenizer here fits its vocabulary and special-token ids ({names})")
        else:
            fit_names = ", ".join(p.name for p in fitting[:-1]) + f" and {fitting[-1].name}"
            out[program] = (None, f"ambiguous: {fit_names} each fit its vocabulary and special-token ids; name its tokenizer explicitly")
    return out


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


def pair_weights(
    programs: Sequence[Path], ptds: Sequence[Path]
) -> tuple[dict[Path, list[Path]], list[str], dict[Path, WeightsRole]]:
    """Give each program the ``.ptd`` files whose keys it needs, and name each file's role.

    File names are never used: a ``.pte`` does not record its ``.ptd``'s name. The keys come
    from the program head and from the delegate payloads that can be read (XNNPACK); see
    :mod:`etm_compat.formats.weights_pairing`. A program that needs no key it can show (an
    opaque delegate) gets the ``.ptd`` files no other program claims, when it is the only such
    program; the note says so.
    """
    notes: list[str] = []
    if not ptds:
        return {p: [] for p in programs}, notes, {}
    infos: list[PtdInfo] = []
    for ptd in ptds:
        try:
            infos.append(read_ptd(ptd))
        except InputError as exc:
            notes.append(f"ignored {ptd.name}: {exc.message}")
    keys = [read_program_keys(p) for p in programs]
    pairing = match_weights(keys, infos)
    paired = {p: [Path(f) for f in pw.files] for p, pw in zip(programs, pairing.programs, strict=True)}
    roles = {Path(f.path): f.role for f in pairing.files if f.role is not None}
    unclaimed = [Path(f.path) for f in pairing.files if f.role is None]
    keyless = [p for p, k in zip(programs, keys, strict=True) if not k.needed and read_pte(p).backends]
    if unclaimed and len(keyless) == 1:
        paired[keyless[0]].extend(unclaimed)
        roles.update({p: "weights" for p in unclaimed})
        notes.append(
            f"{keyless[0].name}: delegate-owned weights cannot be matched by key; "
            f"took the unclaimed {', '.join(p.name for p in unclaimed)}"
        )
    elif unclaimed:
        notes.append(f"no program uses {', '.join(p.name for p in unclaimed)}")
    notes += list(pairing.notes)
    return paired, notes, roles


def read_folder(
    folder: Path,
    layout: str,
    *,
    root: Path | None = None,
    extra_configs: Mapping[ConfigRole, Path] | None = None,
) -> list[Deployment]:
    """One deployment per program in ``folder``; variants share tokenizer and configs."""
    files = list_files(folder)
    programs = programs_in(files)
    configs, stubs = find_configs(files)
    notes = [f"{s.name} is a stub config (only model_type): not used as evidence" for s in stubs]
    if extra_configs:
        configs.update(extra_configs)
    candidates = tokenizer_candidates(files)
    if not candidates:
        shared, shared_configs = shared_tokenizer(folder, root)
        if shared is not None:
            candidates = [shared]
            for role, path in shared_configs.items():
                configs.setdefault(role, path)
            notes.append(f"tokenizer {os.path.relpath(shared, folder)}: the nearest one up the tree")
    ptds = [p for p in files if p.suffix == ".ptd" and is_ptd_file(p)]
    paired, pair_notes, weight_roles = pair_weights(programs, ptds)
    groups, preprocessors, group_notes = group_programs(programs, paired, weight_roles)
    heads = [group[0] for group in groups]
    tokenizers = pair_tokenizers(heads, candidates)
    used = {*programs, *candidates, *ptds, *configs.values(), *stubs}
    ignored = tuple(left_out(files, used))
    deployments = []
    for group in groups:
        program = group[0]
        tokenizer, why = tokenizers[program]
        own = [why] if why and tokenizer is not None else []
        parts = tuple(ProgramPart(p.stem, "model", p, tuple(paired[p])) for p in group[1:])
        parts += tuple(ProgramPart(p.stem, "preprocessor", p) for p in preprocessors)
        group_weights = dict.fromkeys(w for p in group for w in paired[p])
        deployments.append(
            Deployment(
                root=folder,
                program=program,
                layout=layout,
                tokenizer=tokenizer,
                weights=tuple(paired[program]),
                weight_roles={w: weight_roles[w] for w in group_weights if weight_roles.get(w, "weights") != "weights"},
                configs=dict(configs),
                notes=tuple(notes + own + pair_notes + group_notes),
                left_out=ignored,
                problem=None if tokenizer is not None else why,
                parts=parts,
            )
        )
    return deployments


def _kind(program: Path) -> str:
    """The program's kind, or "unknown" when it cannot be read: a damaged program then fails on
    its own when packed, and does not take its folder's good programs with it."""
    try:
        return read_program_kind(program).kind
    except EtmError:
        return "unknown"


def group_programs(
    programs: Sequence[Path], paired: Mapping[Path, Sequence[Path]], roles: Mapping[Path, str]
) -> tuple[list[list[Path]], list[Path], list[str]]:
    """Which programs of a folder make one deployment, decided by content.

    Audio preprocessors (a waveform in, mel features out) belong with the folder's models, not
    on their own; models that load the same foundation weights (LoRA) are one deployment, so the
    foundation is packed once. Returns the groups (main program first), the preprocessors and
    notes. A folder of preprocessors only keeps them as they are.
    """
    if len(programs) < 2:
        return [[p] for p in programs], [], []
    kinds = {p: _kind(p) for p in programs}
    preprocessors = [p for p in programs if kinds[p] == "audio_preprocessor"]
    models = [p for p in programs if p not in preprocessors]
    if not models:
        return [[p] for p in programs], [], []
    notes = [f"{p.name} is an audio preprocessor: packed with the model" for p in preprocessors]
    by_foundation: dict[frozenset[Path], list[Path]] = {}
    groups: list[list[Path]] = []
    for model in models:
        foundation = frozenset(w for w in paired[model] if roles.get(w) == "foundation")
        if foundation:
            by_foundation.setdefault(foundation, []).append(model)
        else:
            groups.append([model])
    for shared, members in by_foundation.items():
        groups.append(members)
        if len(members) > 1:
            names = ", ".join(p.name for p in members)
            notes.append(f"{names} share {', '.join(sorted(w.name for w in shared))}: packed as one deployment")
    groups.sort(key=lambda g: g[0].name)
    return groups, preprocessors, notes
