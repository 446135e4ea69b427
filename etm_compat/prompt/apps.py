"""The ExecuTorch demo apps' hard-coded prompt formats, and how each app picks a model type.

The Android LlamaDemo and the iOS etLLM app (meta-pytorch/executorch-examples) ignore a model's
chat template: each picks a *model type* from the program's file name and formats prompts with
that type's built-in strings. ``apps.json`` beside this module holds, per app and type, those
strings copied verbatim from the apps' sources (repository, commit and file paths recorded per
entry), how a file name selects the type, the stop tokens the app watches for and the lengths it
passes to the runner. Each type's ``families`` is etm-compat's own judgement of which registry
families the type is meant for (:mod:`etm_compat.prompt.families`); the apps do not say.

How the apps assemble turns (from their code at the recorded commit):

* Android keeps the runner's context between messages and resets it only when the chat is
  cleared. The first message sends the system template (even for an empty system prompt) then
  the user template; later messages send the user template alone. A reply stays in the context
  as generated; its stop token ends generation and is not fed back.
* iOS formats every message alone and resets the runner after each reply: no history, and no
  system prompt (a type's template may carry its own). The message text is trimmed first.

>>> app_model_type("ios", "llama3_2-1B.pte").id
'llama'
>>> app_model_type("ios", "model.pte") is None   # the iOS app exits on it
True
>>> render_app_prompt("android", "QWEN_3", [{"role": "user", "content": "Hi"}]).text
'<|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from etm_compat.errors import UsageError

__all__ = [
    "APP_IDS",
    "AppId",
    "AppModelType",
    "AppRendering",
    "DemoApp",
    "Source",
    "app_file_names",
    "app_model_type",
    "app_type_for_family",
    "get_app",
    "load_apps",
    "render_app_prompt",
]

AppId = Literal["android", "ios"]
#: The apps the registry describes (``diagnose --app``, ``unpack --for``).
APP_IDS: Final[tuple[AppId, ...]] = ("android", "ios")
_DATA: Final = "apps.json"
_SAFE_STEM: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Source:
    """Where an entry was copied from: a repository, the commit read, and the files."""

    repo: str
    commit: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class AppModelType:
    """One model type of an app: how a file name selects it and how it formats a turn.

    ``preset`` is sent before the first turn; ``system``/``user`` are the templates, holding the
    app's placeholders; ``user_wrapper`` wraps the user's text before the user template (Llama
    Guard); ``think_block`` is what thinking mode removes (iOS qwen3).
    """

    id: str
    match_kind: Literal["prefix", "substring"]
    patterns: tuple[str, ...]
    preset: str | None
    system: str | None
    user: str
    user_wrapper: str | None
    uses_system: bool
    think_block: str | None
    stop_tokens: tuple[str, ...]
    seq_len: int | None
    max_new_tokens: int | None
    families: tuple[str, ...]
    notes: str
    source: Source

    def matches(self, lower_name: str) -> bool:
        """Whether a lower-cased file name selects this type."""
        if self.match_kind == "prefix":
            return any(lower_name.startswith(p) for p in self.patterns)
        return any(p in lower_name for p in self.patterns)


@dataclass(frozen=True)
class DemoApp:
    """One demo app: its model types in the order it tests them, and how it runs turns."""

    id: AppId
    display_name: str
    repo: str
    commit: str
    types: Mapping[str, AppModelType]  # in match order
    on_unrecognised: Literal["keep", "exit"]
    fallback_type: str | None
    history: Literal["context", "none"]
    trim_input: bool
    default_system_prompt: str
    placeholders: Mapping[str, str]
    thinking_mode_token: str
    program_extensions: tuple[str, ...]
    tokenizer_extensions: tuple[str, ...]


@dataclass(frozen=True)
class AppRendering:
    """The text an app feeds its runner for a conversation, and what it left out."""

    text: str
    notes: tuple[str, ...] = ()


# --- loading -----------------------------------------------------------------------------------


#: What each field of the data file holds (``?``: or null).
_RULES: Final[Mapping[str, Callable[[Any], bool]]] = {
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "int?": lambda v: v is None or (type(v) is int and v > 0),
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "bool": lambda v: isinstance(v, bool),
}
_TYPE_FIELDS: Final = {
    "preset": "str?", "system": "str?", "user": "str", "user_wrapper": "str?", "uses_system": "bool",
    "think_block": "str?", "stop_tokens": "strs", "seq_len": "int?", "max_new_tokens": "int?",
    "families": "strs", "notes": "str",
}
_APP_FIELDS: Final = {
    "display_name": "str", "repo": "str", "commit": "str", "on_unrecognised": "str",
    "fallback_type": "str?", "history": "str", "trim_input": "bool", "default_system_prompt": "str",
    "thinking_mode_token": "str", "program_extensions": "strs", "tokenizer_extensions": "strs",
}
_CHOICES: Final = {"kind": ("prefix", "substring"), "on_unrecognised": ("keep", "exit"), "history": ("context", "none")}


def _valid(raw: Any, fields: Mapping[str, str], where: str, problems: list[str]) -> bool:
    """Whether ``raw`` is an object whose fields follow their rules; append what is wrong."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: not an object")
        return False
    bad = [f"{k!r} ({rule})" for k, rule in fields.items() if not _RULES[rule](raw.get(k))]
    bad += [f"{k!r} (one of {'|'.join(c)})" for k, c in _CHOICES.items() if k in fields and raw.get(k) not in c]
    if bad:
        problems.append(f"{where}: bad or missing {', '.join(bad)}")
    return not bad


def _values(raw: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    return {k: tuple(raw[k]) if isinstance(raw[k], list) else raw[k] for k in fields}


def _parse_type(tid: str, raw: Any, where: str, problems: list[str]) -> AppModelType | None:
    if not _valid(raw, _TYPE_FIELDS, where, problems):
        return None
    match, source = raw.get("match"), raw.get("source")
    ok = _valid(match, {"kind": "str", "patterns": "strs"}, f"{where}.match", problems)
    ok = _valid(source, {"repo": "str", "commit": "str", "paths": "strs"}, f"{where}.source", problems) and ok
    if not ok:
        return None
    return AppModelType(
        id=tid,
        match_kind=match["kind"],
        patterns=tuple(match["patterns"]),
        source=Source(source["repo"], source["commit"], tuple(source["paths"])),
        **_values(raw, _TYPE_FIELDS),
    )


def _parse_app(app_id: str, raw: Any, problems: list[str]) -> DemoApp | None:
    start = len(problems)
    if app_id not in APP_IDS:
        problems.append(f"{app_id}: not one of the apps {', '.join(APP_IDS)}")
        return None
    if not _valid(raw, _APP_FIELDS, app_id, problems):
        return None
    raw_types: dict[str, Any] = raw["types"] if isinstance(raw.get("types"), dict) else {}
    order = raw.get("match_order")
    if not isinstance(order, list) or sorted(order) != sorted(raw_types):
        problems.append(f"{app_id}: 'match_order' must list every type once")
        order = []
    types = {t: _parse_type(t, raw_types[t], f"{app_id}.{t}", problems) for t in order}
    placeholders = raw.get("placeholders")
    if not isinstance(placeholders, dict) or not isinstance(placeholders.get("user"), str):
        problems.append(f"{app_id}: 'placeholders' must name at least the user placeholder")
    if (raw["on_unrecognised"] == "keep") != (raw["fallback_type"] in raw_types):
        problems.append(f"{app_id}: an app that keeps a type on unknown names needs a known 'fallback_type'")
    if len(problems) > start or not isinstance(placeholders, dict):
        return None
    return DemoApp(
        id=app_id,
        types=MappingProxyType({t: v for t, v in types.items() if v is not None}),
        placeholders=MappingProxyType(dict(placeholders)),
        **_values(raw, _APP_FIELDS),
    )


def build_apps(text: str) -> Mapping[str, DemoApp]:
    """Parse the registry's JSON text; raise once, listing every problem."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the demo-app registry is not valid JSON ({exc})") from None
    apps = raw.get("apps") if isinstance(raw, dict) else None
    problems: list[str] = []
    if not isinstance(apps, dict):
        problems.append("top level needs an 'apps' object")
        apps = {}
    parsed = {app_id: _parse_app(app_id, value, problems) for app_id, value in apps.items()}
    if problems:
        raise UsageError(
            "the demo-app registry is invalid: " + "; ".join(problems),
            hint=f"fix etm_compat/prompt/{_DATA}",
        )
    return MappingProxyType({k: v for k, v in parsed.items() if v is not None})


@lru_cache(maxsize=1)
def load_apps() -> Mapping[str, DemoApp]:
    """Every app of the registry (cached; validated on first use)."""
    # The package's folder, read as one (see etm_compat.prompt.families._DATA).
    return build_apps((Path(__file__).parent / _DATA).read_text(encoding="utf-8"))


def get_app(app_id: str) -> DemoApp:
    """The app with this id, or :class:`UsageError` naming the known ones."""
    apps = load_apps()
    try:
        return apps[app_id]
    except KeyError:
        raise UsageError(f"unknown demo app {app_id!r}", hint="choose one of: " + ", ".join(apps)) from None


# --- what the apps do --------------------------------------------------------------------------


def app_model_type(app_id: str, file_name: str) -> AppModelType | None:
    """The model type the app picks for a program file name; None when it recognises none.

    Only the last path component counts, lower-cased, tested in the app's own order. On None
    the iOS app exits and the Android app keeps the type selected before
    (:attr:`DemoApp.fallback_type` on a fresh install).

    >>> app_model_type("android", "/data/local/tmp/llama/Llama-Guard-3-1B.pte").id
    'LLAMA_GUARD_3'
    """
    name = file_name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return next((t for t in get_app(app_id).types.values() if t.matches(name)), None)


def app_type_for_family(app_id: str, family_id: str | None) -> AppModelType | None:
    """The app's model type meant for a registry family, or None when the app has none."""
    if family_id is None:
        return None
    return next((t for t in get_app(app_id).types.values() if family_id in t.families), None)


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise UsageError(f"message {index} has structured content: the demo apps take plain text only")
    return content or ""


def _user_turn(app: DemoApp, kind: AppModelType, text: str, thinking_mode: bool) -> str:
    text = text.strip() if app.trim_input else text
    if app.history == "none":
        # iOS: String(format:) with one %@; thinking mode removes the empty think block.
        prompt = kind.user.replace(app.placeholders["user"], text, 1)
        if thinking_mode and kind.think_block:
            prompt = prompt.replace(kind.think_block, "")
        return prompt
    # Android: Kotlin's String.replace, every occurrence, in the app's order.
    if kind.user_wrapper is not None:
        text = kind.user_wrapper.replace(app.placeholders["user"], text)
        return kind.user.replace(app.placeholders["user"], text)
    prompt = kind.user.replace(app.placeholders["user"], text)
    thinking = app.placeholders.get("thinking_mode")
    return prompt.replace(thinking, app.thinking_mode_token) if thinking else prompt


def render_app_prompt(
    app_id: str,
    type_id: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    thinking_mode: bool = False,
) -> AppRendering:
    """The text the app sends its runner for ``messages``, rendered the way its code does.

    Android (context kept): the preset, then the system template (a leading system message, or
    the app's default empty system prompt) and the user template for the first user message,
    each assistant reply as generated, and the user template alone for later user messages.
    iOS (single turns): only the last user message is formatted; earlier turns and system
    messages are dropped, as :attr:`AppRendering.notes` says. The generation prompt is always
    part of the app's format. Images and audio are not rendered.
    """
    app = get_app(app_id)
    kind = app.types.get(type_id)
    if kind is None:
        raise UsageError(
            f"{app.display_name} has no model type {type_id!r}",
            hint="choose one of: " + ", ".join(app.types),
        )
    notes: list[str] = []
    if app.history == "none":
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise UsageError("the conversation has no user message for the app to format")
        if len(users) > 1 or users[-1] != len(messages) - 1:
            notes.append("earlier turns dropped: the app resets its runner after every reply")
        if any(m.get("role") == "system" for m in messages):
            notes.append("system message dropped: the app has no system prompt")
        text = _user_turn(app, kind, _content(messages[users[-1]], users[-1]), thinking_mode)
        return AppRendering((kind.preset or "") + text, tuple(notes))
    parts, system, first = [kind.preset or ""], app.default_system_prompt, True
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system" and i == 0:
            system = _content(message, i)
        elif role == "user":
            if first and kind.uses_system and kind.system is not None:
                parts.append(kind.system.replace(app.placeholders["system"], system))
            parts.append(_user_turn(app, kind, _content(message, i), thinking_mode))
            first = False
        elif role == "assistant":
            parts.append(_content(message, i))
        else:
            raise UsageError(
                f"message {i} has role {role!r}: {app.display_name} takes a system prompt "
                "first, then user and assistant turns"
            )
    if not kind.uses_system and system:
        notes.append(f"system message dropped: model type {kind.id} sends no system prompt")
    return AppRendering("".join(parts), tuple(notes))


def app_file_names(
    app_id: str,
    family_id: str | None,
    *,
    stem: str,
    program_member: str,
    tokenizer_member: str | None,
) -> dict[str, str]:
    """File names for an archive's members under which the app picks the family's model type.

    Returns ``{member: file name}`` for the program: ``<stem>.pte`` if the app already picks
    the type from it, else ``<family>-<stem>.pte``, ``<pattern>-<stem>.pte`` or ``<pattern>.pte``,
    the first the app maps to the type. The tokenizer keeps its name (the apps' file pickers
    take ``.bin``, ``.model`` and ``.json``). Raises :class:`UsageError` when the app has no
    type for the family, or would not offer the tokenizer.

    >>> app_file_names("ios", "qwen3", stem="model", program_member="model.pte", tokenizer_member=None)
    {'model.pte': 'qwen3-model.pte'}
    """
    app = get_app(app_id)
    kind = app_type_for_family(app_id, family_id)
    if kind is None:
        meant = {f for t in app.types.values() for f in t.families}
        raise UsageError(
            f"the {app.display_name} app has no model type for family {family_id or 'unknown'!r}: "
            "no file name makes it format prompts for this model",
            hint="its types serve the families " + ", ".join(sorted(meant))
            + "; if the archive's family is wrong, pack it again with {family}",
        )
    if tokenizer_member is not None and not tokenizer_member.lower().endswith(app.tokenizer_extensions):
        raise UsageError(
            f"the {app.display_name} app only offers tokenizers named *"
            + ", *".join(app.tokenizer_extensions)
            + f"; this archive's tokenizer is {tokenizer_member!r}"
        )
    safe = _SAFE_STEM.sub("_", stem).lstrip(".") or "model"
    ext = app.program_extensions[0]
    candidates = [f"{safe}{ext}", f"{family_id}-{safe}{ext}"]
    candidates += [f"{p}-{safe}{ext}" for p in kind.patterns] + [f"{p}{ext}" for p in kind.patterns]
    name = next((c for c in candidates if app_model_type(app_id, c) is kind), None)
    if name is None:
        raise UsageError(
            f"no file name selects model type {kind.id} in the {app.display_name} app",
            hint=f"fix its patterns in etm_compat/prompt/{_DATA}",
        )
    return {program_member: name}
