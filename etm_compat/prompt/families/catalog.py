"""The family registry as people browse it: ``etm-compat families`` and ``families show ID``.

:func:`list_families` describes every family (id, aliases, special and stop tokens, where its
template was copied from and at which commit); :func:`show_family` adds the template text and one
standard conversation rendered with it, so the format can be seen before it is forced with
``--family``.

>>> [e.id for e in list_families()][:2]
['deepseek_v3', 'gemma']
>>> show_family("qwen3").rendering.startswith("<|im_start|>system")
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from etm_compat.errors import TemplateError, UsageError
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, Message, render_chat
from etm_compat.prompt.families import Family, get_family, load_registry

#: A template source's commit: ``repo path @<40 hex digits>``.
_COMMIT: Final = re.compile(r"@([0-9a-f]{40})\b")
#: The standard conversations tried for the sample, richest first (some templates refuse a
#: system message, or need the conversation to end with a user turn).
SAMPLE_CONVERSATIONS: Final = ("system_multi_turn", "multi_turn", "system_user", "user")


@dataclass(frozen=True)
class FamilyEntry:
    """One family of the registry as listed: names, tokens and the template's provenance."""

    id: str
    display_name: str
    aliases: tuple[str, ...]
    architectures: tuple[str, ...]
    bos_token: str | None
    eos_token: str | None
    end_of_turn: str | None
    stop_tokens: tuple[str, ...]
    num_bos: int
    template: str | None
    template_source: str
    template_commit: str | None
    variants: tuple[str, ...]
    group: str | None

    @classmethod
    def of(cls, family: Family) -> FamilyEntry:
        names = (*family.model_types, *family.model_classes)
        found = _COMMIT.search(family.template_source)
        return cls(
            id=family.id,
            display_name=family.display_name,
            aliases=tuple(n for n in dict.fromkeys(names) if n != family.id),
            architectures=family.architectures,
            bos_token=family.bos_token,
            eos_token=family.eos_token,
            end_of_turn=family.end_of_turn,
            stop_tokens=family.stop_tokens,
            num_bos=family.num_bos,
            template=family.template_name or None,
            template_source=family.template_source,
            template_commit=found.group(1) if found else None,
            variants=tuple(family.variants),
            group=family.group,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "aliases": list(self.aliases),
            "architectures": list(self.architectures),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "end_of_turn": self.end_of_turn,
            "stop_tokens": list(self.stop_tokens),
            "num_bos": self.num_bos,
            "template": self.template,
            "template_source": self.template_source,
            "template_commit": self.template_commit,
            "variants": list(self.variants),
            "group": self.group,
        }


@dataclass(frozen=True)
class FamilyDetail:
    """A family with its template text and a sample: ``conversation`` rendered with it.

    ``rendering`` is None for a family without a template (a base model), or when no standard
    conversation renders (``error`` says why).
    """

    entry: FamilyEntry
    chat_template: str
    conversation: str | None
    messages: Sequence[Message]
    rendering: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.entry.to_json(),
            "chat_template": self.chat_template,
            "sample": {
                "conversation": self.conversation,
                "messages": [dict(m) for m in self.messages],
                "rendering": self.rendering,
                "error": self.error,
            },
        }


def list_families() -> tuple[FamilyEntry, ...]:
    """Every registry family, by id."""
    return tuple(FamilyEntry.of(f) for f in sorted(load_registry().values(), key=lambda f: f.id))


def show_family(family_id: str, *, variant: str = "default") -> FamilyDetail:
    """One family's entry, template text and a standard conversation rendered with it.

    The sample uses the family's own bos/eos strings and a generation prompt; an unknown id is a
    :class:`~etm_compat.errors.UsageError` listing the known ones.
    """
    family = get_family(family_id)
    templates: Mapping[str, str] = family.templates()
    template = templates.get(variant, "")
    if variant != "default" and variant not in templates:
        raise UsageError(
            f"{family.id} has no template variant {variant!r}",
            hint=f"variants: {', '.join(templates) or 'none'}",
        )
    entry = FamilyEntry.of(family)
    if not template:
        return FamilyDetail(
            entry, "", None, (), None, "the family has no chat template (a base model)"
        )
    error = None
    for name in SAMPLE_CONVERSATIONS:
        messages = STANDARD_CONVERSATIONS[name]
        try:
            text = render_chat(
                template, messages, bos_token=family.bos_token, eos_token=family.eos_token
            )
        except TemplateError as exc:
            error = error or exc.message
            continue
        return FamilyDetail(entry, template, name, messages, text, None)
    return FamilyDetail(entry, template, None, (), None, error)


__all__ = ["SAMPLE_CONVERSATIONS", "FamilyDetail", "FamilyEntry", "list_families", "show_family"]
