"""The diagnose checks on a deployment's further programs and their data: an audio preprocessor
whose mel bins the model does not take, media placeholder tokens outside the tokenizer, and
programs (the main one or a part: a LoRA sibling, a preprocessor) whose data keys no ``.ptd``
provides, or whose adapter belongs to another program.

Unlike the :class:`~etm_compat.checks.subject.Subject` checks these read the deployment's files
themselves (program heads, delegate payload keys, ``.ptd`` headers; no runtime), since they
compare several programs. ``describe`` calls :func:`check_multimodal`. Codes are listed in
docs/DIAGNOSTICS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etm_compat.checks.subject import finding
from etm_compat.constants import MEDIA_TOKEN_KEYS, METHOD_AUDIO_ENCODER, METHOD_ENCODER
from etm_compat.errors import EtmError
from etm_compat.fileio import display_path
from etm_compat.findings import Finding
from etm_compat.formats.program_kinds import ProgramKind, read_program_kind
from etm_compat.formats.ptd import PtdInfo, is_ptd_file, ptd_content, read_ptd
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.formats.weights_pairing import ProgramKeys, read_program_keys
from etm_compat.legacy.deployment import Deployment, ProgramPart

_PREPROCESSOR = "preprocessor"


def check_multimodal(dep: Deployment, tokenizer: TokenizerInfo | None) -> list[Finding]:
    """Every check of this module on one deployment, in a stable order."""
    main = _kind(dep.program)
    out: list[Finding] = []
    if main is not None:
        out += check_preprocessor_bins(dep, main)
        if tokenizer is not None:
            out += check_media_tokens(dep, main, tokenizer)
    out += check_program_data(dep)
    return out


# --- preprocessor and media tokens -------------------------------------------------------------


def check_preprocessor_bins(dep: Deployment, main: ProgramKind) -> list[Finding]:
    """An audio preprocessor part must return the mel bin count the model's encoder takes."""
    if main.n_mels is None:
        return []
    encoder = METHOD_AUDIO_ENCODER if METHOD_AUDIO_ENCODER in main.encoders else METHOD_ENCODER
    model = display_path(dep.program, dep.root)
    out: list[Finding] = []
    for part in dep.parts:
        if part.role != _PREPROCESSOR:
            continue
        pre = _kind(part.path)
        if pre is None or pre.kind != "audio_preprocessor" or pre.n_mels is None:
            continue
        if pre.n_mels == main.n_mels:
            continue
        label = display_path(part.path, dep.root)
        out.append(
            finding(
                "preprocessor-bins-mismatch",
                "error",
                f"{label} makes {pre.n_mels} mel bins, but {model}'s {encoder} takes "
                f"{main.n_mels} ({main.encoders.get(encoder)}): the model cannot take its mels",
                f"pack the preprocessor exported for this model (executorch.extension.audio."
                f"mel_spectrogram with --feature_size {main.n_mels})",
                label,
                model,
            )
        )
    return out


def check_media_tokens(
    dep: Deployment, main: ProgramKind, tokenizer: TokenizerInfo
) -> list[Finding]:
    """``audio_token_id``/``vision_token_id`` must be tokens of the tokenizer. bos/eos are
    :func:`~etm_compat.checks.tokens.check_special_ids`'s (``special-id-out-of-range``)."""
    n = tokenizer.vocab_size
    model = display_path(dep.program, dep.root)
    tok_label = display_path(Path(tokenizer.path), dep.root)
    key_of = {modality: key for key, modality in MEDIA_TOKEN_KEYS.items()}
    return [
        finding(
            "media-token-out-of-vocab",
            "error",
            f"{model} gives {key_of.get(modality, modality)}={token_id}, the {modality} "
            f"placeholder token, outside the tokenizer's vocabulary (0..{n - 1}, {tok_label}): "
            f"the runner cannot place the {modality} embeddings in the prompt",
            "pair the program with its own tokenizer (the one with the placeholder token), or "
            f"re-export with the right {key_of.get(modality, modality)}",
            model,
            tok_label,
        )
        for modality, token_id in sorted(main.media_token_ids.items())
        if not 0 <= token_id < n
    ]


# --- data keys of every program -----------------------------------------------------------------


def check_program_data(dep: Deployment) -> list[Finding]:
    """Each program's needed data keys (head and delegate payloads) against its ``.ptd`` files.

    The main program's missing head keys are ``weights-missing-key``'s (checks/program.py);
    here: its missing delegate keys, and every missing key of a part. When the program does use
    a foundation and a ``.ptd`` beside it that no program uses holds none of the missing keys,
    that file is an adapter written for another program: ``adapter-foundation-mismatch``;
    otherwise ``program-data-missing``.
    """
    ptds: dict[Path, PtdInfo | None] = {}
    programs: list[tuple[Path, tuple[Path, ...], ProgramPart | None]] = [
        (dep.program, dep.weights, None)
    ]
    programs += [(part.path, part.weights, part) for part in dep.parts]
    used = {p.resolve() for _, weights, _ in programs for p in weights}
    strays = [p for p in _folder_ptds(dep.program.parent) if p.resolve() not in used]
    out: list[Finding] = []
    for path, weights, part in programs:
        keys = _keys(path)
        if keys is None:
            continue
        needed = keys.needed
        infos = {w: _ptd(w, ptds) for w in weights}
        provided = frozenset().union(*(i.keys for i in infos.values() if i is not None))
        missing = needed - provided
        if part is None:
            missing -= frozenset(keys.external)
        if not missing:
            continue
        label = display_path(path, dep.root)
        role = f" ({part.role} part {part.name})" if part is not None else ""
        found = [w for w, i in infos.items() if i is not None and i.keys & needed]
        others = [
            s for s in strays
            if (i := _ptd(s, ptds)) is not None and ptd_content(i) == "weights" and not i.keys & needed
        ]  # fmt: skip
        shown = _shown(missing)
        if found and others:
            used_by = ", ".join(display_path(w, dep.root) for w in found)
            stray = ", ".join(display_path(s, dep.root) for s in others)
            out.append(
                finding(
                    "adapter-foundation-mismatch",
                    "error",
                    f"{label}{role} needs {len(missing)} data key(s) that neither its foundation "
                    f"({used_by}) nor an adapter provides: {shown}; {stray} beside it holds none "
                    f"of the keys {label} needs: an adapter exported for another program",
                    f"ship the adapter .ptd exported with {label} (export_llm "
                    "export.lora_weights_file), or pack the program that adapter belongs to",
                    label,
                    *(display_path(w, dep.root) for w in found),
                    *(display_path(s, dep.root) for s in others),
                )
            )
            continue
        given = ", ".join(display_path(w, dep.root) for w in weights) or "no .ptd"
        out.append(
            finding(
                "program-data-missing",
                "error",
                f"{label}{role} needs {len(missing)} data key(s) that no .ptd of the deployment "
                f"provides (it has {given}): {shown}; its methods will not load",
                "ship the .ptd written with that program (for a LoRA program: its adapter .ptd "
                "beside the foundation)",
                label,
            )
        )
    return out


def _shown(keys: frozenset[str]) -> str:
    ordered = sorted(keys)
    return ", ".join(repr(k) for k in ordered[:6]) + (" ..." if len(ordered) > 6 else "")


def _folder_ptds(folder: Path) -> Sequence[Path]:
    try:
        return sorted(
            p for p in folder.iterdir() if p.suffix == ".ptd" and p.is_file() and is_ptd_file(p)
        )
    except OSError:
        return ()


def _kind(path: Path) -> ProgramKind | None:
    try:
        return read_program_kind(path)
    except (EtmError, OSError):
        return None  # describe already read the main program; a bad part is reported elsewhere


def _keys(path: Path) -> ProgramKeys | None:
    try:
        return read_program_keys(path)
    except (EtmError, OSError):
        return None


def _ptd(path: Path, cache: dict[Path, PtdInfo | None]) -> PtdInfo | None:
    if path not in cache:
        try:
            cache[path] = read_ptd(path)
        except (EtmError, OSError):
            cache[path] = None
    return cache[path]


__all__ = [
    "check_media_tokens",
    "check_multimodal",
    "check_preprocessor_bins",
    "check_program_data",
]
