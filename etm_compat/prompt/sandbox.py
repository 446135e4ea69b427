"""The bounded Jinja sandbox behind :mod:`etm_compat.prompt.chat`: deadline, size budget, guards.

Chat templates arrive inside untrusted archives, so rendering is sandboxed (Jinja's
``ImmutableSandboxedEnvironment``, no underscore attributes, no mutation of inputs) and bounded:
every attribute access, call, loop step over ``range`` and operator checks a deadline, and
operations that grow strings or lists (``*``, ``+``, ``~``, ``**``, padding filters and methods)
are refused before they allocate more than the output limit. No threads are used.

The budget of the rendering in progress lives in :data:`BUDGET` (a context variable set by
:mod:`etm_compat.prompt.chat` around compiling and rendering); outside it only the width guards apply.

>>> env = BoundedEnvironment()
>>> env.from_string("{{ 'ab' * 2 }}").render()
'abab'
"""

from __future__ import annotations

import contextvars
import json
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import jinja2
import jinja2.nodes
import jinja2.utils
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from etm_compat.errors import TemplateError

__all__ = [
    "BUDGET",
    "MAX_RANGE",
    "BoundedEnvironment",
    "Budget",
    "GuardedRange",
    "RenderLimits",
    "TemplateDict",
    "TemplateNamespace",
    "check_time",
    "guard_filter",
    "over_limit",
    "tojson",
]

#: Largest ``range()`` a template may build (Jinja's sandbox default).
MAX_RANGE: Final = 100_000
_PADDING_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one rendering: wall-clock seconds and characters of output (or of any string)."""

    max_seconds: float = 2.0
    max_output_chars: int = 1_000_000


@dataclass(frozen=True)
class Budget:
    deadline: float
    max_chars: int


BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "etm_chat_budget", default=None
)


def over_limit(message: str) -> NoReturn:
    raise TemplateError(message, hint="the template may be hostile or broken; check its source")


def check_time() -> Budget | None:
    budget = BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        over_limit("chat template rendering exceeded its time limit")
    return budget


def _check_size(size: int, what: str) -> None:
    budget = check_time()
    if budget is not None and size > budget.max_chars:
        over_limit(
            f"chat template {what} would be {size} characters, over the limit of {budget.max_chars}"
        )


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


class GuardedRange(Sequence[int]):
    """``range`` whose iteration checks the deadline, so nested loops cannot run away."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        if len(self._range) > MAX_RANGE:
            over_limit(f"range() of {len(self._range)} items exceeds the limit of {MAX_RANGE}")

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        for value in self._range:
            check_time()
            yield value

    def __reversed__(self) -> Iterator[int]:
        return iter(GuardedRange(self._range.start, self._range.stop, self._range.step)[::-1])

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


class _GuardedCodeGenerator(CodeGenerator):
    """Routes the ``~`` operator through a size check (Jinja compiles it to a plain join)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def tojson(
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


class TemplateDict:
    """``dict`` as templates see it: construction only, no class attributes to walk."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` refusing underscore-prefixed names (no route to internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        TemplateNamespace._check(name)
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
    budget = BUDGET.get()
    limit = budget.max_chars if budget is not None else RenderLimits().max_output_chars
    stars = "*" in fmt and any(isinstance(v, int) and abs(v) > limit for v in values)
    if stars or _PERCENT_WIDTH.search(fmt):
        over_limit("printf-style format with an oversized width or precision")


def _check_format_spec(fmt: str, values: Sequence[Any]) -> None:
    """Refuse ``str.format`` fields whose width or precision would build a huge string.

    ``'{:>1000000000}'.format(x)`` and ``'{0:{1}}'.format(x, 10**9)`` allocate before any
    result-size check could run. Nested specs take their numbers from the arguments.
    """
    budget = BUDGET.get()
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
            over_limit("str.format with an oversized width or precision")


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_time()
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
            over_limit("'format' filter with an oversized width or precision")
        elif name == "format" and args:
            _check_percent_format(str(args[0]), [*args[1:], *kwargs.values()])
        elif name == "wordwrap" and len(args) > 1:  # (environment, text, width, ...)
            # textwrap splits a long word by re-slicing it: quadratic in the word / width.
            width = args[2] if len(args) > 2 else kwargs.get("width", 79)
            if isinstance(width, int) and len(str(args[1])) ** 2 // max(width, 1) > 2 * 10**9:
                over_limit("'wordwrap' of a long text at a tiny width")
        result = func(*args, **kwargs)
        if isinstance(result, str):
            _check_size(len(result), f"'{name}' output")
        return result

    for attr in ("jinja_pass_arg",):
        if hasattr(func, attr):
            setattr(guarded, attr, getattr(func, attr))
    return guarded


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template sandbox plus time and size checks on every operation it mediates."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_time()
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
        check_time()
        return _refuse_unsafe(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_time()
        return _refuse_unsafe(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_time()
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
            over_limit("integer power too large")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            _check_percent_format(left, values)
        return super().call_binop(context, operator, left, right)

    def guarded_concat(self, parts: Sequence[Any]) -> str:
        strings = [str(part) for part in parts]
        _check_size(sum(len(s) for s in strings), "'~' concatenation")
        return "".join(strings)
