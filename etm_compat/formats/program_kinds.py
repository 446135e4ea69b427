"""What a ``.pte`` is, by content: a text LLM, a multimodal LLM, a seq2seq/ASR model, an audio
preprocessor, or unknown. Never by file name.

The rules, first match wins (methods are the non-constant execution plans):

1. **multimodal_llm**: methods ``token_embedding`` and ``text_decoder``, and ``vision_encoder``
   and/or ``audio_encoder`` (ExecuTorch's MultimodalRunner, optimum-executorch). The modalities
   are the encoders present; each encoder's first input is recorded (``uint8[1,3,H,W]`` for
   vision, ``float32[...,n_mels,frames]`` for audio).
2. **seq2seq**: methods ``encoder`` and ``text_decoder`` (optimum's whisper/T5 layout, the ASR
   runner). The modality is ``audio`` when the encoder takes a float tensor of rank >= 2
   (mel frames), ``text`` when it takes integer token ids.
3. **audio_preprocessor**: a single method ``forward`` from one 1-D float tensor (a waveform) to
   a float tensor of rank >= 2 shaped ``[..., n_mels, frames]`` (``executorch.extension.audio``'s
   mel spectrogram). ``n_mels`` is the second-to-last output size.
4. **text_llm**: ``forward``, or ``prefill`` and ``decode``, with evidence: the method takes
   integer token ids, or the program has LLM metadata (a constant method a known dialect
   defines, e.g. ``get_max_seq_len``). Stand-in programs whose ``forward`` takes floats but carry
   LLM metadata are text LLMs by metadata; the evidence says which.
5. **unknown** otherwise; the evidence lists what was found.

Optimum's multimodal metadata (``modality``, ``audio_token_id``/``vision_token_id``, and every
``preprocessor_config.json`` key such as ``feature_size``) is exposed as found: ``modality``,
``media_token_ids`` and ``other_constants`` (constant methods no known dialect defines).

>>> kind = read_program_kind("fixtures/multimodal/voxtral_like/model.pte")  # doctest: +SKIP
>>> kind.kind, kind.modalities, kind.n_mels, str(kind.encoders["audio_encoder"])  # doctest: +SKIP
('multimodal_llm', ('audio',), 128, 'float32[<=2,128,3000]')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from etm_compat.constants import (
    KEY_FEATURE_SIZE,
    KEY_MODALITY,
    KEY_VOCAB_SIZE,
    MEDIA_TOKEN_KEYS,
    METHOD_AUDIO_ENCODER,
    METHOD_DECODE,
    METHOD_ENCODER,
    METHOD_FORWARD,
    METHOD_PREFILL,
    METHOD_TEXT_DECODER,
    METHOD_TOKEN_EMBEDDING,
    METHOD_VISION_ENCODER,
    SCALAR_TYPE_FLOATS,
    SCALAR_TYPE_INTEGERS,
)
from etm_compat.formats.dialects import KEYS
from etm_compat.formats.pte import (
    ConstantValue,
    ProgramHead,
    PteInfo,
    describe_program,
    open_program,
    open_program_bytes,
)
from etm_compat.formats.signatures import MethodSpec, ValueSpec, read_signatures
from etm_compat.remembered import by_stamp

Kind = Literal["text_llm", "multimodal_llm", "seq2seq", "audio_preprocessor", "unknown"]
Modality = Literal["text", "vision", "audio"]

_ENCODERS: dict[str, Modality] = {METHOD_VISION_ENCODER: "vision", METHOD_AUDIO_ENCODER: "audio"}


@dataclass(frozen=True)
class ProgramKind:
    """What a program is and why. Built by :func:`read_program_kind`.

    ``methods``: every non-constant method's signature. ``encoders``: encoder method -> its first
    input. ``n_mels``: mel bins an audio preprocessor returns or an audio encoder takes.
    ``modality``, ``media_token_ids`` (modality -> placeholder token id) and ``other_constants``
    come from the constant methods. ``evidence``: one line per fact the decision used.
    """

    path: str
    kind: Kind
    methods: Mapping[str, MethodSpec]
    modalities: tuple[Modality, ...] = ()
    encoders: Mapping[str, ValueSpec] = field(default_factory=lambda: MappingProxyType({}))
    n_mels: int | None = None
    modality: str | None = None
    media_token_ids: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    other_constants: Mapping[str, ConstantValue] = field(
        default_factory=lambda: MappingProxyType({})
    )
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{"kind": "text_llm", "methods": {...}, "modalities": [...], ...}``."""
        return {
            "path": self.path,
            "kind": self.kind,
            "methods": {n: m.to_json() for n, m in self.methods.items()},
            "modalities": list(self.modalities),
            "encoders": {n: v.to_json() for n, v in self.encoders.items()},
            "n_mels": self.n_mels,
            "modality": self.modality,
            "media_token_ids": dict(self.media_token_ids),
            "other_constants": dict(self.other_constants),
            "evidence": list(self.evidence),
        }


def read_program_kind(path: str | os.PathLike[str]) -> ProgramKind:
    """Read the head of the ``.pte`` at ``path`` and say what program it is.

    >>> read_program_kind("fixtures/multimodal/whisper_like/whisper_preprocessor.pte").n_mels  # doctest: +SKIP
    80

    Read once per unchanged file (:func:`~etm_compat.remembered.by_stamp`): the checks and the
    packer both ask.
    """

    def read() -> ProgramKind:
        head = open_program(path)
        return classify_program(head, describe_program(head))

    return by_stamp(path, ("program kind", os.fspath(path)), read)  # its path is in it


def read_program_kind_bytes(data: bytes | memoryview, *, name: str = "<bytes>") -> ProgramKind:
    """Like :func:`read_program_kind` for a ``.pte`` held in memory."""
    head = open_program_bytes(data, name=name)
    return classify_program(head, describe_program(head))


def classify_program(head: ProgramHead, info: PteInfo) -> ProgramKind:
    """Apply the module's rules to an opened program and its :class:`PteInfo`."""
    methods = read_signatures(head, info.methods)
    constants = info.constant_methods
    media = {
        MEDIA_TOKEN_KEYS[k]: v
        for k, v in constants.items()
        if k in MEDIA_TOKEN_KEYS and isinstance(v, int) and not isinstance(v, bool)
    }
    raw_modality = constants.get(KEY_MODALITY)
    common: dict[str, Any] = {
        "path": info.path,
        "methods": methods,
        "modality": raw_modality if isinstance(raw_modality, str) else None,
        "media_token_ids": MappingProxyType(media),
        "other_constants": MappingProxyType({k: v for k, v in constants.items() if k not in KEYS}),
    }
    for rule in (_multimodal, _seq2seq, _audio_preprocessor, _text_llm):
        found = rule(methods, constants)
        if found is not None:
            return ProgramKind(**common, **found)
    listed = ", ".join(methods) or "none"
    return ProgramKind(**common, kind="unknown", evidence=(f"methods: {listed}; no rule matched",))


def _multimodal(
    methods: Mapping[str, MethodSpec], constants: Mapping[str, ConstantValue]
) -> dict[str, Any] | None:
    if not {METHOD_TOKEN_EMBEDDING, METHOD_TEXT_DECODER} <= methods.keys():
        return None
    present = [m for m in _ENCODERS if m in methods]
    if not present:
        return None
    encoders = {m: spec for m in present if (spec := _first_input(methods[m])) is not None}
    evidence = [f"methods {METHOD_TOKEN_EMBEDDING}, {METHOD_TEXT_DECODER}, {', '.join(present)}"]
    evidence += [f"{m} takes {spec}" for m, spec in encoders.items()]
    audio = encoders.get(METHOD_AUDIO_ENCODER)
    n_mels = _mel_bins(audio) if audio is not None else None
    evidence += _feature_size_check(n_mels, constants)
    declared = constants.get(KEY_MODALITY)
    modalities = tuple(_ENCODERS[m] for m in present)
    if isinstance(declared, str) and declared not in modalities:
        evidence.append(f"constant {KEY_MODALITY}={declared!r} names no encoder of the program")
    return {
        "kind": "multimodal_llm",
        "modalities": modalities,
        "encoders": MappingProxyType(encoders),
        "n_mels": n_mels,
        "evidence": tuple(evidence),
    }


def _seq2seq(
    methods: Mapping[str, MethodSpec], constants: Mapping[str, ConstantValue]
) -> dict[str, Any] | None:
    if not {METHOD_ENCODER, METHOD_TEXT_DECODER} <= methods.keys():
        return None
    spec = _first_input(methods[METHOD_ENCODER])
    evidence = [f"methods {METHOD_ENCODER}, {METHOD_TEXT_DECODER}"]
    modalities: tuple[Modality, ...] = ()
    n_mels = None
    if spec is not None:
        evidence.append(f"{METHOD_ENCODER} takes {spec}")
        n_mels = _mel_bins(spec)
        if n_mels is not None:
            modalities = ("audio",)
        elif spec.scalar_type in SCALAR_TYPE_INTEGERS:
            modalities = ("text",)
    evidence += _feature_size_check(n_mels, constants)
    return {
        "kind": "seq2seq",
        "modalities": modalities,
        "encoders": MappingProxyType({METHOD_ENCODER: spec} if spec else {}),
        "n_mels": n_mels,
        "evidence": tuple(evidence),
    }


def _audio_preprocessor(
    methods: Mapping[str, MethodSpec], constants: Mapping[str, ConstantValue]
) -> dict[str, Any] | None:
    if set(methods) != {METHOD_FORWARD}:
        return None
    forward = methods[METHOD_FORWARD]
    if len(forward.inputs) != 1 or not forward.outputs:
        return None
    wave, mel = forward.inputs[0], forward.outputs[0]
    if not (_is_float(wave) and wave.sizes is not None and len(wave.sizes) == 1):
        return None
    if not (_is_float(mel) and mel.sizes is not None and len(mel.sizes) >= 2):
        return None
    n_mels = mel.sizes[-2]
    return {
        "kind": "audio_preprocessor",
        "modalities": ("audio",),
        "n_mels": n_mels,
        "evidence": (
            f"single method {METHOD_FORWARD}: 1-D waveform {wave} -> {mel}",
            f"{n_mels} mel bins x {mel.sizes[-1]} frames",
        ),
    }


def _text_llm(
    methods: Mapping[str, MethodSpec], constants: Mapping[str, ConstantValue]
) -> dict[str, Any] | None:
    if METHOD_FORWARD in methods:
        entry = methods[METHOD_FORWARD]
        shape = f"method {METHOD_FORWARD}"
    elif {METHOD_PREFILL, METHOD_DECODE} <= methods.keys():
        entry = methods[METHOD_PREFILL]
        shape = f"methods {METHOD_PREFILL}, {METHOD_DECODE}"
    else:
        return None
    evidence = [shape]
    first = _first_input(entry)
    tokens = first is not None and first.scalar_type in SCALAR_TYPE_INTEGERS
    if tokens:
        evidence.append(f"{entry.name} takes token ids {first}")
    logits = entry.outputs[0] if entry.outputs else None
    vocab = constants.get(KEY_VOCAB_SIZE)
    if logits is not None and logits.sizes and _is_float(logits) and logits.sizes[-1] == vocab:
        evidence.append(f"{entry.name} returns logits {logits} over {KEY_VOCAB_SIZE}={vocab}")
    metadata = sorted(k for k in constants if k in KEYS)
    if metadata:
        evidence.append(
            f"LLM metadata: {', '.join(metadata[:4])}{', ...' if len(metadata) > 4 else ''}"
        )
    if not tokens and not metadata:
        return None
    return {"kind": "text_llm", "modalities": ("text",), "evidence": tuple(evidence)}


def _first_input(method: MethodSpec) -> ValueSpec | None:
    return method.inputs[0] if method.inputs and method.inputs[0].is_tensor else None


def _is_float(spec: ValueSpec) -> bool:
    return spec.scalar_type in SCALAR_TYPE_FLOATS


def _mel_bins(spec: ValueSpec) -> int | None:
    """``sizes[-2]`` of a float tensor of rank >= 2 (``[..., n_mels, frames]``), else None."""
    if _is_float(spec) and spec.sizes is not None and len(spec.sizes) >= 2:
        return spec.sizes[-2]
    return None


def _feature_size_check(n_mels: int | None, constants: Mapping[str, ConstantValue]) -> list[str]:
    size = constants.get(KEY_FEATURE_SIZE)
    if n_mels is None or size is None:
        return []
    if size == n_mels:
        return [f"constant {KEY_FEATURE_SIZE}={size} agrees with the encoder input"]
    return [f"constant {KEY_FEATURE_SIZE}={size!r} disagrees with the encoder's {n_mels} mel bins"]


__all__ = [
    "Kind",
    "Modality",
    "ProgramKind",
    "classify_program",
    "read_program_kind",
    "read_program_kind_bytes",
]
