"""Render chat templates exactly as Hugging Face ``apply_chat_template`` does, in a bounded sandbox.

Chat templates arrive inside untrusted archives, so rendering is sandboxed and bounded by
:mod:`etm_compat.prompt.sandbox` (deadline, output-size budget, width checks, guarded filters).
This module is the public API: compiling, message preparation, rendering, the standard
conversations.

The environment mirrors ``transformers.utils.chat_template_utils`` (5.x): ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, a transparent ``{% generation %}`` block, ``tojson`` without
HTML escaping, ``raise_exception``, ``strftime_now``, a restricted ``dict`` and ``namespace``.

>>> render_chat("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
...             [{"role": "user", "content": "hi"}])
'<user>hi'
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser

from etm_compat.errors import TemplateError, UsageError
from etm_compat.prompt.bounds import shared_budget
from etm_compat.prompt.sandbox import (
    BUDGET,
    MAX_RANGE,
    BoundedEnvironment,
    Budget,
    GuardedRange,
    RenderLimits,
    TemplateDict,
    TemplateNamespace,
    check_time,
    guard_filter,
    over_limit,
    tojson,
)

Message = Mapping[str, Any]

__all__ = [
    "MAX_RANGE",
    "STANDARD_CONVERSATIONS",
    "CompiledTemplate",
    "Message",
    "RenderLimits",
    "check_messages",
    "compile_template",
    "render_chat",
]

_CONTINUE_TAG: Final = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS: Final = ("reasoning_content", "thinking", "reasoning")
_DEFAULT_LIMITS: Final = RenderLimits()


class _GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged (as HF does)."""

    tags = {"generation"}  # noqa: RUF012 - Jinja reads this class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: Any) -> NoReturn:
    raise jinja2.exceptions.TemplateError(str(message))


def _now() -> datetime:
    """The clock behind ``strftime_now`` (a seam so tests can freeze the date)."""
    return datetime.now()


def _strftime_now(fmt: str) -> str:
    return _now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> BoundedEnvironment:
    env = BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationExtension, jinja2.ext.loopcontrols],
    )
    for name, func in list(env.filters.items()):
        env.filters[name] = guard_filter(name, func)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    env.globals["range"] = GuardedRange
    return env


@dataclass(frozen=True, eq=False)
class CompiledTemplate:
    """A chat template compiled once in the bounded sandbox; reuse it across renders."""

    source: str
    template: jinja2.Template = dataclasses.field(repr=False)


@lru_cache(maxsize=64)
def compile_template(source: str) -> CompiledTemplate:
    """Compile template text, or raise :class:`TemplateError` naming the syntax problem.

    >>> compile_template("{{ messages[0].content }}").source
    '{{ messages[0].content }}'
    """
    # Jinja folds constant expressions while compiling, so compiling runs template code too.
    token = BUDGET.set(
        Budget(time.monotonic() + RenderLimits().max_seconds, RenderLimits().max_output_chars)
    )
    try:
        return CompiledTemplate(source, _environment().from_string(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat template does not compile: {exc.message} (line {exc.lineno})",
            hint="fix the Jinja syntax of the template",
        ) from exc
    except SyntaxError as exc:  # Python refuses Jinja's generated code: {% break %} outside a loop
        raise TemplateError(
            f"chat template does not compile: {exc.msg}",
            hint="fix the Jinja syntax of the template",
        ) from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateError("chat template is too deeply nested to compile") from exc
    finally:
        BUDGET.reset(token)


def _plain(value: Any) -> Any:
    """Rebuild template inputs from JSON types; anything else becomes an inert placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _alias_reasoning(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in chat:
        reasoning = next(
            (message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None
        )
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def check_messages(messages: object) -> None:
    """A conversation is a non-empty list of mappings; roles and keys are the template's business.

    >>> check_messages([{"role": "observation", "content": None}])
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise UsageError(
            f"messages must be a list of {{role, content}} mappings, not {type(messages).__name__}",
            hint='pass [{"role": "user", "content": "Hello"}]',
        )
    if len(messages) == 0:
        raise UsageError("cannot render an empty conversation", hint="give at least one message")
    for message in messages:
        if not isinstance(message, Mapping):
            raise UsageError(
                f"chat messages must be mappings, got {type(message).__name__}",
                hint='pass [{"role": "user", "content": "Hello"}]',
            )


def _prepare_messages(messages: Sequence[Message], *, drop_none: bool) -> list[dict[str, Any]]:
    """The messages as the template sees them: plain JSON types, reasoning fields aliased.

    ``drop_none`` removes the keys whose value is None first, as transformers 5.x
    ``apply_chat_template`` does (``_normalize_chat_messages``); without it the messages reach
    the template as given, as ``render_jinja_template`` (and transformers 4.x) has them.
    """
    chat = []
    for message in messages:
        if drop_none:
            message = {k: v for k, v in message.items() if v is not None}
        chat.append(_plain(message))
    return _alias_reasoning(chat)


def _has_none(messages: Sequence[Message]) -> bool:
    return any(value is None for message in messages for value in message.values())


def _tag_final_message(chat: list[dict[str, Any]], field: str, source: str) -> str:
    """Mark the text to continue, as HF does; return the untagged text."""
    final = chat[-1].get(field)
    if final is None:
        raise UsageError(f'continue_final_message is set but the final message has no "{field}"')
    fields = [field]
    if field in _REASONING_FIELDS:
        fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
    if not any(f in source for f in fields):
        raise UsageError(
            f'continue_final_message is set to "{field}", which the template never reads'
        )
    if isinstance(final, (list, tuple)):
        for block in reversed(final):
            if isinstance(block, dict) and "text" in block:
                text = block["text"]
                block["text"] = text + _CONTINUE_TAG
                return str(text)
        raise UsageError("continue_final_message is set but the final message has no text block")
    for f in fields:
        chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    return str(final)


def _cut_at_tag(rendered: str, final: str) -> str:
    if final.strip() not in rendered or _CONTINUE_TAG.strip() not in rendered:
        raise TemplateError(
            "continue_final_message is set but the template drops part of the final message"
        )
    at = rendered.rindex(_CONTINUE_TAG.strip())
    if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()


def _generate(compiled: CompiledTemplate, variables: dict[str, Any], limits: RenderLimits) -> str:
    # One budget (deadline, steps, sizes, memory) that every operation of the template charges,
    # inside the caller's shared budget if there is one (bounds.shared_budget).
    budget = Budget.start(limits, within=BUDGET.get())
    token = BUDGET.set(budget)
    pieces: list[str] = []
    total = 0
    try:
        check_time()  # a shared budget may have run out in an earlier rendering
        for piece in compiled.template.generate(**variables):
            total += len(piece)
            if total > limits.max_output_chars:
                over_limit(
                    f"chat template output exceeds the limit of {limits.max_output_chars} characters"
                )
            budget.step()
            pieces.append(piece)
    except TemplateError:
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template tried an unsafe operation: {str(exc)[:500]}") from exc
    except jinja2.exceptions.TemplateError as exc:  # raise_exception's message, at most 500 chars
        raise TemplateError(f"chat template raised an error: {str(exc)[:500]}") from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateError(f"chat template exhausted resources: {type(exc).__name__}") from exc
    except Exception as exc:  # a template can fail in any builtin; report it as template failure
        text = str(exc)[:500]
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {text}") from exc
    finally:
        BUDGET.reset(token)
    return "".join(pieces)


def render_chat(
    template: str | CompiledTemplate,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    special_tokens: Mapping[str, str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    continue_final_message: bool | str = False,
    limits: RenderLimits = _DEFAULT_LIMITS,
    **extra: Any,
) -> str:
    """Render ``messages`` with a chat template, byte-identical to transformers.

    ``special_tokens`` plays the role of the tokenizer's ``special_tokens_map``; ``bos_token``
    and ``eos_token`` override it, and ``extra`` keyword variables (``enable_thinking``...)
    override both; a variable not given is undefined, so the template's own default applies.
    Messages may have any role and any keys. A message key whose value is None is dropped, as
    transformers 5.x does; when the template then fails, it renders the messages as given (a
    template that reads ``message.content`` of ``{"content": null, "tool_calls": [...]}``).

    >>> render_chat("{{ bos_token }}{{ messages[-1].content }}", [{"role": "user", "content": "x"}],
    ...             bos_token="<s>")
    '<s>x'
    """
    compiled = template if isinstance(template, CompiledTemplate) else compile_template(template)
    if continue_final_message and add_generation_prompt:
        raise UsageError(
            "continue_final_message and add_generation_prompt are not compatible",
            hint="pass add_generation_prompt=False to continue the final message",
        )
    check_messages(messages)
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise UsageError("documents must be a list of mappings with 'title' and 'text'")
    variables: dict[str, Any] = dict(special_tokens or {})
    if bos_token is not None:
        variables["bos_token"] = bos_token
    if eos_token is not None:
        variables["eos_token"] = eos_token
    variables.update(extra)
    variables = _plain(variables)
    variables.update(
        tools=_plain(list(tools)) if tools is not None else None,
        documents=_plain(list(documents)) if documents is not None else None,
        add_generation_prompt=add_generation_prompt,
    )
    # transformers 5.x drops None-valued keys ("content": null) before rendering; where that
    # breaks the template (it reads message.content of a tool call), the messages as given
    # render it, as transformers' own renderer and 4.x apply_chat_template do.
    variants = (True, False) if _has_none(messages) else (True,)
    failure: TemplateError | None = None
    # Two renderings may run: both count against one budget, so the call is bounded as one.
    with shared_budget(limits) if len(variants) > 1 else contextlib.nullcontext():
        for drop_none in variants:
            chat = _prepare_messages(messages, drop_none=drop_none)
            final = None
            if continue_final_message:
                field = (
                    continue_final_message if isinstance(continue_final_message, str) else "content"
                )
                final = _tag_final_message(chat, field, compiled.source)
            try:
                rendered = _generate(compiled, {**variables, "messages": chat}, limits)
                return _cut_at_tag(rendered, final) if final is not None else rendered
            except TemplateError as exc:
                failure = failure or exc
    assert failure is not None
    raise failure


def _conversations() -> dict[str, list[Message]]:
    system = {"role": "system", "content": "You are a helpful assistant."}
    u1 = {"role": "user", "content": "Hello! What is the capital of France?"}
    a1 = {"role": "assistant", "content": "The capital of France is Paris."}
    u2 = {"role": "user", "content": "And of Italy?"}
    return {
        "user": [u1],
        "system_user": [system, u1],
        "multi_turn": [u1, a1, u2],
        "system_multi_turn": [system, u1, a1, u2],
        "assistant_last": [u1, a1],
        "system_assistant_last": [system, u1, a1],
    }


#: The standard conversations every family is checked with (tests, prompt_format, diagnostics).
STANDARD_CONVERSATIONS: Final[Mapping[str, list[Message]]] = _conversations()
