"""The substitution form of a chat template, for runners without a Jinja engine.

A :class:`PromptFormat` is per-role prefix/suffix strings, an optional BOS, the generation
prompt, the text that ends a prompt rendered without one, and an optional default system
message (like MediaPipe's ``PromptTemplates``). It is derived by rendering probe conversations
with sentinel contents and splitting the output, then kept only if it reproduces the Jinja
rendering exactly on every standard conversation, with and without the generation prompt.

>>> fmt = derive_prompt_format(
...     "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
...     "{% if add_generation_prompt %}<assistant>{% endif %}", bos_token=None, eos_token=None)
>>> apply_prompt_format(fmt, [{"role": "user", "content": "hi"}])
'<user>hi</s><assistant>'
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from etm_compat.errors import MetadataError, TemplateError, UsageError
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, Message, compile_template, render_chat

__all__ = [
    "PromptFormat",
    "RoleAffixes",
    "apply_prompt_format",
    "derive_prompt_format",
]

ROLES: Final = ("system", "user", "assistant")
#: Longest string a stored prompt_format may hold (metadata is untrusted input).
MAX_AFFIX_CHARS: Final = 4096
_S, _U1, _A1, _U2 = "ETMSENTINELSYS", "ETMSENTINELUSR1", "ETMSENTINELAST1", "ETMSENTINELUSR2"
_BOS = "ETMSENTINELBOS"


@dataclass(frozen=True)
class RoleAffixes:
    """The text around one message of a role."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class PromptFormat:
    """A chat template reduced to string substitution (see the module docstring)."""

    bos: str | None
    roles: Mapping[str, RoleAffixes]
    generation_prompt: str
    default_system: str | None
    end: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``prompt_format`` object stored in metadata.json."""
        return {
            "bos": self.bos,
            "roles": {
                role: {"prefix": a.prefix, "suffix": a.suffix} for role, a in self.roles.items()
            },
            "generation_prompt": self.generation_prompt,
            "default_system": self.default_system,
            "end": self.end,
        }

    @classmethod
    def from_json(cls, obj: object) -> PromptFormat:
        """Validate an untrusted ``prompt_format`` object; :class:`MetadataError` lists every problem."""
        problems: list[str] = []

        def text(value: object, where: str, nullable: bool = False) -> str | None:
            if value is None and nullable:
                return None
            if not isinstance(value, str):
                problems.append(f"{where} must be a string{' or null' if nullable else ''}")
                return None
            if len(value) > MAX_AFFIX_CHARS:
                problems.append(f"{where} is longer than {MAX_AFFIX_CHARS} characters")
            return value

        if not isinstance(obj, dict):
            raise MetadataError("prompt_format must be an object")
        known = {"bos", "roles", "generation_prompt", "default_system", "end"}
        problems.extend(f"unknown key {key!r}" for key in sorted(set(obj) - known, key=str))
        bos = text(obj.get("bos"), "bos", nullable=True)
        generation_prompt = text(obj.get("generation_prompt"), "generation_prompt")
        default_system = text(obj.get("default_system"), "default_system", nullable=True)
        end = text(obj.get("end", ""), "end")
        roles: dict[str, RoleAffixes] = {}
        raw_roles = obj.get("roles")
        if not isinstance(raw_roles, dict) or not {"user", "assistant"} <= set(raw_roles):
            problems.append("roles must be an object with at least 'user' and 'assistant'")
        else:
            for role, affixes in raw_roles.items():
                if role not in ROLES:
                    problems.append(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
                elif not isinstance(affixes, dict) or set(affixes) != {"prefix", "suffix"}:
                    problems.append(f"roles.{role} must be an object with 'prefix' and 'suffix'")
                else:
                    prefix = text(affixes["prefix"], f"roles.{role}.prefix")
                    suffix = text(affixes["suffix"], f"roles.{role}.suffix")
                    if prefix is not None and suffix is not None:
                        roles[role] = RoleAffixes(prefix, suffix)
        if default_system is not None and "system" not in roles:
            problems.append("default_system is set but roles has no 'system'")
        if problems or generation_prompt is None or end is None:
            raise MetadataError(
                "invalid prompt_format: " + "; ".join(problems or ["missing fields"]),
                hint="re-derive it from the chat template, or drop it",
            )
        return cls(bos, MappingProxyType(roles), generation_prompt, default_system, end)


def apply_prompt_format(
    fmt: PromptFormat, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> str:
    """Format ``messages`` by substitution; equal to the Jinja rendering where ``fmt`` was stored."""
    if not messages:
        raise UsageError("cannot format an empty conversation")
    out = [fmt.bos or ""]
    if messages[0].get("role") != "system" and fmt.default_system is not None:
        system = fmt.roles["system"]
        out.append(system.prefix + fmt.default_system + system.suffix)
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in fmt.roles:
            raise UsageError(f"this prompt format has no role {role!r}")
        if not isinstance(content, str):
            raise UsageError("the substitution form only formats text content")
        affixes = fmt.roles[str(role)]
        out.append(affixes.prefix + content + affixes.suffix)
    out.append(fmt.generation_prompt if add_generation_prompt else fmt.end)
    return "".join(out)


def _between(text: str, left: str, right: str) -> str:
    start = text.index(left) + len(left)
    return text[start : text.index(right, start)]


def _strip_start(text: str, head: str) -> str:
    if not text.startswith(head):
        raise ValueError("segments do not line up")
    return text[len(head) :]


def _strip_end(text: str, tail: str) -> str:
    if not text.endswith(tail):
        raise ValueError("segments do not line up")
    return text[: len(text) - len(tail)]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


Probe = Callable[[Sequence[tuple[str, str]], bool], str]


def _candidates(render: Probe) -> list[str]:
    """Possible user suffixes, longest first: the rendered text after a user turn is
    ``user_suffix + generation_prompt`` or ``user_suffix + end``; where they split is unknown."""
    u, u_gen = render([("user", _U1)], False), render([("user", _U1)], True)
    tail_u = u[u.index(_U1) + len(_U1) :]
    common = _common_prefix(tail_u, u_gen[u_gen.index(_U1) + len(_U1) :])
    return [common[:k] for k in range(len(common), -1, -1)]


def _split(render: Probe, user_suffix: str) -> PromptFormat:
    """Split probe renderings into affixes (ValueError if they do not line up)."""
    u, u_gen = render([("user", _U1)], False), render([("user", _U1)], True)
    end = _strip_start(u[u.index(_U1) + len(_U1) :], user_suffix)
    generation_prompt = _strip_start(u_gen[u_gen.index(_U1) + len(_U1) :], user_suffix)
    ua = render([("user", _U1), ("assistant", _A1)], False)
    assistant_suffix = _strip_end(ua[ua.index(_A1) + len(_A1) :], end)
    assistant_prefix = _strip_start(_between(ua, _U1, _A1), user_suffix)
    multi = render([("user", _U1), ("assistant", _A1), ("user", _U2)], True)
    user_prefix = _strip_start(_between(multi, _A1, _U2), assistant_suffix)
    head = _strip_end(u[: u.index(_U1)], user_prefix)
    bos = _BOS if head.startswith(_BOS) else None
    head = head[len(bos or "") :]
    roles = {
        "user": RoleAffixes(user_prefix, user_suffix),
        "assistant": RoleAffixes(assistant_prefix, assistant_suffix),
    }
    default_system = None
    try:
        su = render([("system", _S), ("user", _U1)], False)
    except TemplateError:
        su = None
    if su is not None and _S in su:
        system_prefix = _strip_start(su[: su.index(_S)], bos or "")
        system_suffix = _strip_end(_between(su, _S, _U1), user_prefix)
        roles["system"] = RoleAffixes(system_prefix, system_suffix)
        if head:
            default_system = _strip_end(_strip_start(head, system_prefix), system_suffix)
    elif head:
        raise ValueError("text before the first message that is not BOS")
    return PromptFormat(bos, MappingProxyType(roles), generation_prompt, default_system, end)


def _with_bos(fmt: PromptFormat, bos_token: str) -> PromptFormat:
    """Put the real BOS text where the probes used the sentinel."""

    def sub(text: str) -> str:
        return text.replace(_BOS, bos_token)

    return PromptFormat(
        bos_token if fmt.bos is not None else None,
        MappingProxyType(
            {r: RoleAffixes(sub(a.prefix), sub(a.suffix)) for r, a in fmt.roles.items()}
        ),
        sub(fmt.generation_prompt),
        sub(fmt.default_system) if fmt.default_system is not None else None,
        sub(fmt.end),
    )


def _agrees(fmt: PromptFormat, expected: Mapping[tuple[str, bool], str | None]) -> bool:
    for (name, gen), text in expected.items():
        try:
            actual: str | None = apply_prompt_format(
                fmt, STANDARD_CONVERSATIONS[name], add_generation_prompt=gen
            )
        except UsageError:
            actual = None
        if actual != text:
            return False
    return True


def derive_prompt_format(
    template: str,
    *,
    bos_token: str | None,
    eos_token: str | None,
    special_tokens: Mapping[str, str] | None = None,
) -> PromptFormat | None:
    """The substitution form of ``template``, or None where it cannot be exact.

    None for templates that fail to render the probes, depend on the date (``strftime_now``),
    or treat messages by position (e.g. a system prompt folded into the first user turn).
    The result depends only on the arguments, so it is cached: a bulk upgrade derives each
    family's form once, not once per deployment.
    """
    specials = tuple(sorted(special_tokens.items())) if special_tokens else ()
    return _derive_cached(template, bos_token, eos_token, specials)


@functools.lru_cache(maxsize=64)
def _derive_cached(
    template: str,
    bos_token: str | None,
    eos_token: str | None,
    specials: tuple[tuple[str, str], ...],
) -> PromptFormat | None:
    special_tokens = dict(specials) or None
    try:
        compiled = compile_template(template)
    except TemplateError:
        return None
    if "strftime_now" in template:
        return None

    def render(messages: Sequence[Message], gen: bool, bos: str | None = bos_token) -> str:
        return render_chat(
            compiled,
            messages,
            add_generation_prompt=gen,
            bos_token=bos,
            eos_token=eos_token,
            special_tokens=special_tokens,
        )

    def probe(pairs: Sequence[tuple[str, str]], gen: bool) -> str:
        # BOS is a sentinel too, so a literal text equal to it is never mistaken for it.
        return render([{"role": r, "content": c} for r, c in pairs], gen, _BOS)

    expected: dict[tuple[str, bool], str | None] = {}
    for name, conversation in STANDARD_CONVERSATIONS.items():
        for gen in (True, False):
            try:
                expected[name, gen] = render(conversation, gen)
            except TemplateError:
                expected[name, gen] = None  # the template refuses it; the form must too
    if all(text is None for text in expected.values()):
        return None
    try:
        candidates = _candidates(probe)
    except (ValueError, TemplateError):
        return None
    for user_suffix in candidates:
        try:
            fmt = _split(probe, user_suffix)
        except (ValueError, TemplateError):
            continue
        fmt = _with_bos(fmt, bos_token or "")
        if _agrees(fmt, expected):
            return fmt
    return None
