"""The model-family registry: one JSON data file and vendor chat template(s) per family.

Each ``<id>.json`` next to this module describes a family (special tokens, stop set, BOS/EOS
counts, generation defaults, tokenizer facts and fingerprints) and names its template files in
``templates/``; ``SOURCES.md`` records where every template was copied from. Adding a family is
adding a JSON file and a template: no code changes. A family whose vendor publishes no chat
template (a base model such as ``stories110m``) has ``"template": null``: its ``chat_template``
is ``""`` and :meth:`Family.templates` is empty.

Detection from template text is ordered substring matching, like llama.cpp's
``llm_chat_detect_template``: families are tried in ``detect_order``, markers in order, and the
first match is the best guess. Families that cannot be told apart (Llama 3 / 3.1 / 3.2 share a
tokenizer) share a ``group`` whose ``group_default`` member is the documented pick; the command
line's ``--family`` overrides it.

>>> get_family("qwen3").eos_token
'<|im_end|>'
>>> detect_family_from_template("{{ '<start_of_turn>user' }}")[0][0]
'gemma2'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from etm_compat.constants import TIKTOKEN_NUM_SPECIAL_TOKENS
from etm_compat.errors import UsageError

__all__ = [
    "VOCAB_TOLERANCE",
    "Family",
    "detect_family_from_template",
    "get_family",
    "load_registry",
    "match_template",
]

#: The package's own folder, which holds its data files. Read as a folder (pip installs packages
#: as files): importlib.resources costs more in imports and readers (about 8 ms per run, tempfile
#: and zipfile among them) than reading the 46 small files does.
_DATA: Final = Path(__file__).parent
_STR_LISTS: Final = (
    "stop_tokens",
    "tokenizer_formats",
    "special_token_fingerprint",
    "template_markers",
    "model_types",
    "architectures",
    "model_classes",
)
_OPTIONAL_STR: Final = ("bos_token", "eos_token", "end_of_turn", "group")
_GENERATION_KEYS: Final = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}
)
#: How far (relative) a tokenizer's size may be from a family's published vocabulary size and
#: still fit it: HF configs pad the embedding (Qwen2.5: 151665 tokens, 151936 rows), vision
#: models add a few tokens. OpenAI's cl100k (100k) against Llama 3's 128k is far.
VOCAB_TOLERANCE: Final = 0.1


@dataclass(frozen=True)
class Family:
    """What the toolkit knows about one model family (see the module docstring)."""

    id: str
    display_name: str
    chat_template: str
    template_name: str
    template_source: str
    variants: Mapping[str, str]
    bos_token: str | None
    eos_token: str | None
    end_of_turn: str | None
    stop_tokens: tuple[str, ...]
    num_bos: int
    num_eos: int
    generation: Mapping[str, float | int]
    tokenizer_formats: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    special_token_fingerprint: tuple[str, ...]
    template_markers: tuple[str, ...]
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    model_classes: tuple[str, ...]
    group: str | None
    group_default: bool

    def templates(self) -> dict[str, str]:
        """The default template under ``"default"`` plus every named variant.

        A family without a published chat template (a base model) has none: ``{}``.
        """
        default = {"default": self.chat_template} if self.chat_template else {}
        return {**default, **self.variants}

    def token_texts(self) -> frozenset[str]:
        """Every token text the family names: fingerprint, bos, eos, end of turn, stops."""
        named = (self.bos_token, self.eos_token, self.end_of_turn)
        return frozenset(
            [*self.special_token_fingerprint, *self.stop_tokens, *(t for t in named if t)]
        )

    def vocabulary_misfit(self, tokenizer_format: str, vocab_size: int) -> str | None:
        """Why a tokenizer of this format and size cannot be the family's, or None if it can.

        A tiktoken rank file must have exactly the family's rank count (a published size less
        the runner's special tokens, which pytorch-tokenizers adds to any rank file); any other
        tokenizer must be within :data:`VOCAB_TOLERANCE` of a published size.

        >>> get_family("llama3").vocabulary_misfit("tiktoken", 100256 + 256)
        "a tiktoken rank file of 100256 ranks; llama3's has [128000]"
        """
        if tokenizer_format == "tiktoken" and "tiktoken" in self.tokenizer_formats:
            ranks = vocab_size - TIKTOKEN_NUM_SPECIAL_TOKENS
            theirs = [size - TIKTOKEN_NUM_SPECIAL_TOKENS for size in self.vocab_sizes]
            return (
                None
                if ranks in theirs
                else f"a tiktoken rank file of {ranks} ranks; {self.id}'s has {theirs}"
            )
        if any(abs(vocab_size - size) <= size * VOCAB_TOLERANCE for size in self.vocab_sizes):
            return None
        return f"vocabulary size {vocab_size}, far from {self.id}'s {list(self.vocab_sizes)}"


def _read_template(name: str, problems: list[str], where: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        problems.append(f"{where}: template name {name!r} is not a plain file name")
        return ""
    resource = _DATA / "templates" / f"{name}.jinja"
    try:
        return resource.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: template {name}.jinja unreadable ({exc})")
        return ""


def _parse(raw: Any, where: str, problems: list[str]) -> tuple[int, Family] | None:
    """Validate one data file; append every problem found, return None if any."""
    start = len(problems)
    if not isinstance(raw, dict):
        problems.append(f"{where}: top level must be an object")
        return None
    for key in ("id", "display_name", "template_source"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(f"{where}: '{key}' must be a non-empty string")
    template = raw.get("template")
    if template is not None and (not isinstance(template, str) or not template):
        problems.append(f"{where}: 'template' must be a non-empty string or null (no template)")
    for key in _OPTIONAL_STR:
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            problems.append(f"{where}: '{key}' must be a string or null")
    for key in _STR_LISTS:
        value = raw.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: '{key}' must be a list of strings")
    sizes = raw.get("vocab_sizes")
    if not isinstance(sizes, list) or not all(type(v) is int and v > 0 for v in sizes):
        problems.append(f"{where}: 'vocab_sizes' must be a list of positive integers")
    for key in ("num_bos", "num_eos", "detect_order"):
        if type(raw.get(key)) is not int or raw[key] < 0:
            problems.append(f"{where}: '{key}' must be a non-negative integer")
    if not isinstance(raw.get("group_default"), bool):
        problems.append(f"{where}: 'group_default' must be true or false")
    generation = raw.get("generation")
    if not isinstance(generation, dict) or not all(
        k in _GENERATION_KEYS and type(v) in (int, float) for k, v in generation.items()
    ):
        problems.append(f"{where}: 'generation' must map {sorted(_GENERATION_KEYS)} to numbers")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variants.items()
    ):
        problems.append(f"{where}: 'variants' must map names to template names")
    if len(problems) > start or not isinstance(generation, dict) or not isinstance(variants, dict):
        return None
    family = Family(
        id=raw["id"],
        display_name=raw["display_name"],
        chat_template=_read_template(template, problems, where) if template else "",
        template_name=template or "",
        template_source=raw["template_source"],
        variants=MappingProxyType(
            {k: _read_template(v, problems, where) for k, v in variants.items()}
        ),
        bos_token=raw.get("bos_token"),
        eos_token=raw.get("eos_token"),
        end_of_turn=raw.get("end_of_turn"),
        num_bos=raw["num_bos"],
        num_eos=raw["num_eos"],
        generation=MappingProxyType(dict(generation)),
        vocab_sizes=tuple(raw["vocab_sizes"]),
        group=raw.get("group"),
        group_default=raw["group_default"],
        **{key: tuple(raw[key]) for key in _STR_LISTS},
    )
    if len(problems) > start:
        return None
    return raw["detect_order"], family


def _build(files: Mapping[str, str]) -> Mapping[str, Family]:
    """Build a registry from ``{file name: JSON text}``; raise once listing every problem."""
    problems: list[str] = []
    parsed: list[tuple[int, Family]] = []
    for name, text in sorted(files.items()):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}: not valid JSON ({exc})")
            continue
        entry = _parse(raw, name, problems)
        if entry is not None:
            if f"{entry[1].id}.json" != name:
                problems.append(f"{name}: id {entry[1].id!r} does not match the file name")
            parsed.append(entry)
    ids = [family.id for _, family in parsed]
    problems.extend(
        f"duplicate family id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})
    )
    groups: dict[str, int] = {}
    for _, family in parsed:
        if family.group is not None:
            groups[family.group] = groups.get(family.group, 0) + int(family.group_default)
    problems.extend(
        f"group {g!r} must have exactly one group_default member, has {n}"
        for g, n in sorted(groups.items())
        if n != 1
    )
    if problems:
        raise UsageError(
            "the family registry is invalid: " + "; ".join(problems),
            hint="fix the data files in etm_compat/prompt/families/",
        )
    parsed.sort(key=lambda entry: (entry[0], entry[1].id))
    return MappingProxyType({family.id: family for _, family in parsed})


@lru_cache(maxsize=1)
def load_registry() -> Mapping[str, Family]:
    """Every known family, in detection order (cached; validated on first use).

    >>> "llama3_2" in load_registry()
    True
    """
    files = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in _DATA.iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    }
    return _build(files)


def get_family(family_id: str) -> Family:
    """The family with this id, or :class:`UsageError` listing the known ids."""
    registry = load_registry()
    try:
        return registry[family_id]
    except KeyError:
        raise UsageError(
            f"unknown model family {family_id!r}",
            hint="choose one of: " + ", ".join(sorted(registry)),
        ) from None


def detect_family_from_template(text: str) -> list[tuple[str, str]]:
    """Families whose template markers occur in ``text``: ``[(family_id, marker)]``, best first.

    Families are tried in detection order and each contributes its first matching marker.

    >>> detect_family_from_template("<|start_header_id|>x<|end_header_id|>")
    [('llama3', '<|start_header_id|>')]
    """
    found: list[tuple[str, str]] = []
    for family in load_registry().values():
        marker = next((m for m in family.template_markers if m in text), None)
        if marker is not None:
            found.append((family.id, marker))
    return found


def _normalize(text: str) -> str:
    return " ".join(text.split())


def match_template(text: str) -> str | None:
    """The id of the family whose published template (or a variant) equals ``text``.

    Whitespace differences are ignored. Families sharing one template (gemma, gemma2) resolve
    to the first in detection order.
    """
    wanted = _normalize(text)
    for family in load_registry().values():
        if any(_normalize(t) == wanted for t in family.templates().values()):
            return family.id
    return None
