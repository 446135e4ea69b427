"""Render chat templates exactly as Hugging Face ``apply_chat_template`` does, in a bounded sandbox.

Chat templates arrive inside untrusted archives, so rendering is sandboxed (Jinja's
``ImmutableSandboxedEnvironment``, no underscore attributes, no mutation of inputs) and bounded:
every attribute access, call, loop step over ``range`` and operator checks a deadline, and
operations that grow strings or lists (``*``, ``+``, ``~``, ``**``, padding filters and methods)
are refused before they allocate more than the output limit. No threads are used.

The environment mirrors ``transformers.utils.chat_template_utils`` (5.x): ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, a transparent ``{% generation %}`` block, ``tojson`` without
HTML escaping, ``raise_exception``, ``strftime_now``, a restricted ``dict`` and ``namespace``.

>>> render_chat("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
...             [{"role": "user", "content": "hi"}])
'<user>hi'
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from etm_compat.errors import TemplateError, UsageError

Message = Mapping[str, Any]

__all__ = [
    "STANDARD_CONVERSATIONS",
    "CompiledTemplate",
    "Message",
    "RenderLimits",
    "compile_template",
    "render_chat",
]

#: Largest ``range()`` a template may build (Jinja's sandbox default).
MAX_RANGE: Final = 100_000
_CONTINUE_TAG: Final = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS: Final = ("reasoning_content", "thinking", "reasoning")
_PADDING_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one rendering: wall-clock seconds and characters of output (or of any string)."""

    max_seconds: float = 2.0
    max_output_chars: int = 1_000_000


@dataclass(frozen=True)
class _Budget:
    deadline: float
    max_chars: int


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "etm_chat_budget", default=None
)


def _limit(message: str) -> NoReturn:
    raise TemplateError(message, hint="the template may be hostile or broken; check its source")


def _check_time() -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        _limit("chat template rendering exceeded its time limit")
    return budget


def _check_size(size: int, what: str) -> None:
    budget = _check_time()
    if budget is not None and size > budget.max_chars:
        _limit(
            f"chat template {what} would be {size} characters, over the limit of {budget.max_chars}"
        )


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


class _GuardedRange(Sequence[int]):
    """``range`` whose iteration checks the deadline, so nested loops cannot run away."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        if len(self._range) > MAX_RANGE:
            _limit(f"range() of {len(self._range)} items exceeds the limit of {MAX_RANGE}")

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        for value in self._range:
            _check_time()
            yield value

    def __reversed__(self) -> Iterator[int]:
        return iter(_GuardedRange(self._range.start, self._range.stop, self._range.step)[::-1])

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


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


class _GuardedCodeGenerator(CodeGenerator):
    """Routes the ``~`` operator through a size check (Jinja compiles it to a plain join)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF replaces Jinja's tojson: no HTML escaping, non-ASCII kept, json.dumps defaults.
    if indent:  # every line is indented up to depth * indent: bound it before json builds it
        compact = json.dumps(x, ensure_ascii=ensure_ascii, separators=separators)
        lines = 1 + sum(compact.count(c) for c in ",[{")
        width = len(indent) if isinstance(indent, str) else max(int(indent), 0)
        _check_size(len(compact) + lines * (1 + width * _bracket_depth(compact)), "tojson output")
    text = json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    _check_size(len(text), "tojson output")
    return text


def _raise_exception(message: Any) -> NoReturn:
    raise jinja2.exceptions.TemplateError(str(message))


def _now() -> datetime:
    """The clock behind ``strftime_now`` (a seam so tests can freeze the date)."""
    return datetime.now()


def _strftime_now(fmt: str) -> str:
    return _now().strftime(fmt)


class _TemplateDict:
    """``dict`` as templates see it: construction only, no class attributes to walk."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` refusing underscore-prefixed names (no route to internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"templates cannot store underscore-prefixed names on a namespace: {name!r}"
            )


def _refuse_unsafe(value: Any) -> Any:
    """Jinja's sandbox answers an unsafe attribute with a silent Undefined; we fail loudly."""
    if isinstance(value, jinja2.Undefined) and getattr(value, "_undefined_exception", None) is (
        jinja2.exceptions.SecurityError
    ):
        hint = getattr(value, "_undefined_hint", None) or "unsafe attribute"
        raise TemplateError(
            f"chat template tried an unsafe operation: {hint}",
            hint="the template may be hostile; do not use it",
        )
    return value


#: A printf width or precision of 7+ digits (``'%1000000000s'``): refused before Python pads.
_PERCENT_WIDTH: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d{7,}|\d*\.\d{7,})")


def _bracket_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text (an upper bound: brackets in strings count)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_percent_format(fmt: str, values: Sequence[Any]) -> None:
    """Refuse printf formatting whose width or precision would build a huge string."""
    budget = _BUDGET.get()
    limit = budget.max_chars if budget is not None else RenderLimits().max_output_chars
    stars = "*" in fmt and any(isinstance(v, int) and abs(v) > limit for v in values)
    if stars or _PERCENT_WIDTH.search(fmt):
        _limit("printf-style format with an oversized width or precision")


def _check_format_spec(fmt: str, values: Sequence[Any]) -> None:
    """Refuse ``str.format`` fields whose width or precision would build a huge string.

    ``'{:>1000000000}'.format(x)`` and ``'{0:{1}}'.format(x, 10**9)`` allocate before any
    result-size check could run. Nested specs take their numbers from the arguments.
    """
    budget = _BUDGET.get()
    limit = budget.max_chars if budget is not None else RenderLimits().max_output_chars
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # malformed: the sandbox's own formatter raises, and that becomes a TemplateError
    for _, _, spec, _ in fields:
        if not spec:
            continue
        numbers = re.findall(r"\d+", spec)
        if "{" in spec:
            numbers += [n for v in values for n in re.findall(r"\d+", str(v))]
        if any(len(n) > 9 or int(n) > limit for n in numbers):
            _limit("str.format with an oversized width or precision")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if name in {"center", "indent"}:
            width = args[1] if len(args) > 1 else kwargs.get("width", 0)
            if isinstance(width, int):
                _check_size(width, f"'{name}' width")
        elif name == "join":
            items = list(args[1]) if len(args) > 1 else []
            _check_size(sum(len(str(item)) for item in items), "'join' output")
        elif name == "replace" and len(args) > 3:
            text, old, new = (str(a) for a in args[1:4])
            count = text.count(old) if old else len(text) + 1
            _check_size(len(text) + count * max(0, len(new) - len(old)), "'replace' output")
        elif name == "format" and len(args) > 1 and re.search(r"\d{7,}", str(args[1])):
            _limit("'format' filter with an oversized width or precision")
        elif name == "format" and args:
            _check_percent_format(str(args[0]), [*args[1:], *kwargs.values()])
        elif name == "wordwrap" and len(args) > 1:  # (environment, text, width, ...)
            # textwrap splits a long word by re-slicing it: quadratic in the word / width.
            width = args[2] if len(args) > 2 else kwargs.get("width", 79)
            if isinstance(width, int) and len(str(args[1])) ** 2 // max(width, 1) > 2 * 10**9:
                _limit("'wordwrap' of a long text at a tiny width")
        result = func(*args, **kwargs)
        if isinstance(result, str):
            _check_size(len(result), f"'{name}' output")
        return result

    for attr in ("jinja_pass_arg",):
        if hasattr(func, attr):
            setattr(guarded, attr, getattr(func, attr))
    return guarded


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template sandbox plus time and size checks on every operation it mediates."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str):
            if name in _PADDING_METHODS:
                width = args[0] if args else 0
                if isinstance(width, int):
                    _check_size(width * (8 if name == "expandtabs" else 1), f"str.{name} result")
            elif name == "join" and args:
                items = list(args[0])
                size = sum(len(str(i)) for i in items) + len(__obj.__self__) * len(items)
                _check_size(size, "str.join result")
                args = (items, *args[1:])
            elif name == "replace" and len(args) >= 2:
                text, old, new = __obj.__self__, str(args[0]), str(args[1])
                count = text.count(old) if old else len(text) + 1
                _check_size(len(text) + count * max(0, len(new) - len(old)), "str.replace result")
        result = super().call(__context, __obj, *args, **kwargs)
        result_size = _sized(result)
        if result_size is not None:
            _check_size(result_size, "call result")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            mapped = list(args[0].values()) if args and isinstance(args[0], Mapping) else []
            _check_format_spec(fmt, [*args, *mapped, *kwargs.values()])
            return wrapped(*args, **kwargs)

        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return _refuse_unsafe(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return _refuse_unsafe(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _sized(seq)
                if size is not None and isinstance(times, int):
                    _check_size(size * max(times, 0), "repetition")
        elif operator == "+":
            lsize, rsize = _sized(left), _sized(right)
            if lsize is not None and rsize is not None:
                _check_size(lsize + rsize, "concatenation")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * max(abs(left).bit_length(), 1) > 100_000
        ):
            _limit("integer power too large")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            _check_percent_format(left, values)
        return super().call_binop(context, operator, left, right)

    def guarded_concat(self, parts: Sequence[Any]) -> str:
        strings = [str(part) for part in parts]
        _check_size(sum(len(s) for s in strings), "'~' concatenation")
        return "".join(strings)


@lru_cache(maxsize=1)
def _environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationExtension, jinja2.ext.loopcontrols],
    )
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    env.globals["range"] = _GuardedRange
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
    token = _BUDGET.set(
        _Budget(time.monotonic() + RenderLimits().max_seconds, RenderLimits().max_output_chars)
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
        _BUDGET.reset(token)


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


def _prepare_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise UsageError("messages must be a list of {'role', 'content'} mappings")
    if len(messages) == 0:
        raise UsageError("cannot render an empty conversation", hint="give at least one message")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise UsageError(f"chat messages must be mappings, got {type(message).__name__}")
        # Like apply_chat_template: keys whose value is None are dropped before rendering.
        chat.append(_plain({k: v for k, v in message.items() if v is not None}))
    return _alias_reasoning(chat)


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
    budget = _Budget(time.monotonic() + limits.max_seconds, limits.max_output_chars)
    token = _BUDGET.set(budget)
    pieces: list[str] = []
    total = 0
    try:
        for piece in compiled.template.generate(**variables):
            total += len(piece)
            if total > limits.max_output_chars:
                _limit(
                    f"chat template output exceeds the limit of {limits.max_output_chars} characters"
                )
            _check_time()
            pieces.append(piece)
    except TemplateError:
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template tried an unsafe operation: {exc}") from exc
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"chat template raised an error: {exc}") from exc
    except (RecursionError, MemoryError) as exc:
        raise TemplateError(f"chat template exhausted resources: {type(exc).__name__}") from exc
    except Exception as exc:  # a template can fail in any builtin; report it as template failure
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _BUDGET.reset(token)
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
    limits: RenderLimits = RenderLimits(),
    **extra: Any,
) -> str:
    """Render ``messages`` with a chat template, byte-identical to transformers.

    ``special_tokens`` plays the role of the tokenizer's ``special_tokens_map``; ``bos_token``
    and ``eos_token`` override it, and ``extra`` keyword variables override both.

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
    chat = _prepare_messages(messages)
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise UsageError("documents must be a list of mappings with 'title' and 'text'")
    variables: dict[str, Any] = dict(special_tokens or {})
    if bos_token is not None:
        variables["bos_token"] = bos_token
    if eos_token is not None:
        variables["eos_token"] = eos_token
    variables.update(extra)
    variables = _plain(variables)
    final = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final = _tag_final_message(chat, field, compiled.source)
    variables.update(
        messages=chat,
        tools=_plain(list(tools)) if tools is not None else None,
        documents=_plain(list(documents)) if documents is not None else None,
        add_generation_prompt=add_generation_prompt,
    )
    rendered = _generate(compiled, variables, limits)
    return _cut_at_tag(rendered, final) if final is not None else rendered


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
