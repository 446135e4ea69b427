"""The bounded Jinja sandbox behind :mod:`etm_compat.prompt.chat`: every kind of work is charged.

Chat templates arrive inside untrusted archives, so rendering is sandboxed (Jinja's
``ImmutableSandboxedEnvironment``: no underscore attributes, no mutation of inputs) and charged
to the :class:`~etm_compat.prompt.bounds.Budget` of the rendering in progress as it happens:
every loop iteration (``for`` over anything, recursive ``loop()``, filters walking a sequence),
call, lookup, operator, filter, test and output is a step, with the deadline checked at each;
a string, list or dict the template builds is refused before it is built when it would hold
more than the limit, nested items counted; a value turned into text (``{{ x }}``, ``~``,
``join``, ``%``, ``format``...) is measured first; all that is built counts against a memory
limit. The generated code sends loops through :meth:`BoundedEnvironment.iterate`, output through
``finalize``, block output through ``concat`` and literals through ``built_literal``.

>>> env = BoundedEnvironment()
>>> env.from_string("{{ 'ab' * 2 }}").render()
'abab'
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import CodeType
from typing import Any, Final

import jinja2
import jinja2.filters
import jinja2.nodes
import jinja2.utils
from jinja2.compiler import CodeGenerator, Frame
from jinja2.optimizer import Optimizer
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from etm_compat.errors import TemplateError
from etm_compat.prompt.bounds import (
    BUDGET,
    Budget,
    CountedIterator,
    RenderLimits,
    bounded_json,
    bounded_text,
    check_built,
    check_format_spec,
    check_percent_format,
    check_size,
    check_text_size,
    check_texts,
    check_time,
    current_limit,
    deep_size,
    over_limit,
    step,
    text_size,
)

__all__ = [
    "BUDGET", "MAX_RANGE", "BoundedEnvironment", "Budget", "GuardedRange", "RenderLimits",
    "TemplateDict", "TemplateNamespace", "check_time", "guard_filter", "over_limit", "tojson",
]  # fmt: skip

#: Largest ``range()`` a template may build (Jinja's sandbox default).
MAX_RANGE: Final = 100_000
#: Filters and tests that turn their value and arguments into text.
_TEXT_TESTS: Final = frozenset({"lower", "upper"})
_TEXT_FILTERS: Final = frozenset(
    {"capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "pprint",
     "replace", "safe", "string", "striptags", "title", "trim", "truncate", "upper", "urlencode",
     "urlize", "wordcount", "wordwrap", "xmlattr"}
)  # fmt: skip
#: Filters that walk their value item by item: the walk is charged one step per item.
_ITERATING_FILTERS: Final = frozenset(
    {"batch", "first", "groupby", "list", "map", "max", "min", "reject", "rejectattr", "select",
     "selectattr", "slice", "sort", "sum", "unique"}
)  # fmt: skip
_PADDING_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill"})
_SCALARS: Final = (str, int, float, bool, type(None))
_LINE_BREAKS: Final = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
#: Largest container (items and characters) that constant folding may write into the code,
#: and the steps and seconds one fold may take.
_MAX_FOLDED: Final = 4096
_FOLD_STEPS: Final = 20_000
_FOLD_SECONDS: Final = 0.05


def _bounded_range(*args: int) -> range:
    """``range`` of at most :data:`MAX_RANGE` numbers (as Jinja's sandbox); loops over it and
    filters walking it are charged per number like any other iterable."""
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        over_limit(f"range() of {len(numbers)} items exceeds the limit of {MAX_RANGE}")
    return numbers


#: The ``range`` global (chat.py installs it under this name).
GuardedRange: Final = _bounded_range


class _FoldBudget(Budget):
    """The budget of folding one constant expression while compiling."""


class _BoundedOptimizer(Optimizer):
    """Jinja's constant folding (template code run while compiling), kept small: a fold gets a
    few thousand steps and makes no container of more than a few thousand items (it becomes a
    literal in the generated Python, which compiles a million-item literal in seconds and
    hundreds of MB). What is not folded runs when rendering, under the rendering's budget."""

    def generic_visit(self, node: jinja2.nodes.Node, *args: Any, **kwargs: Any) -> Any:
        outer = BUDGET.get()
        token = None
        if not isinstance(outer, _FoldBudget):  # the outermost fold of an expression
            outer = outer or Budget.start(RenderLimits())
            deadline = min(outer.deadline, time.monotonic() + _FOLD_SECONDS)
            token = BUDGET.set(_FoldBudget(deadline, outer.max_chars, _FOLD_STEPS, outer.max_built))
        try:
            folded = super().generic_visit(node, *args, **kwargs)
            large = isinstance(folded, jinja2.nodes.Const) and folded is not node and (
                deep_size(folded.value, _MAX_FOLDED) > _MAX_FOLDED
            )
            return node if large else folded
        except TemplateError:  # over the fold's budget: not folded
            return node
        finally:
            if token is not None:
                BUDGET.reset(token)


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator with loops, ``~`` and container literals routed through checks."""

    def __init__(self, environment: jinja2.Environment, *args: Any, **kwargs: Any) -> None:
        super().__init__(environment, *args, **kwargs)
        if self.optimizer is not None:
            self.optimizer = _BoundedOptimizer(environment)
        self._loop_iterables: set[int] = set()  # ids of the nodes that for loops walk

    def visit(self, node: jinja2.nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.iterate(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_For(self, node: jinja2.nodes.For, frame: Frame) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _checked_literal(self, node: Any, frame: Frame, visit: Callable[..., None]) -> None:
        if getattr(node, "ctx", "load") != "load" or all(_is_const(item) for item in node.items):
            visit(node, frame)  # assignment targets and constants are bounded by the source
            return
        self.write("environment.built_literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: jinja2.nodes.List, frame: Frame) -> None:
        self._checked_literal(node, frame, super().visit_List)

    def visit_Tuple(self, node: jinja2.nodes.Tuple, frame: Frame) -> None:
        self._checked_literal(node, frame, super().visit_Tuple)

    def visit_Dict(self, node: jinja2.nodes.Dict, frame: Frame) -> None:
        self._checked_literal(node, frame, super().visit_Dict)


def _is_const(node: jinja2.nodes.Node) -> bool:
    if isinstance(node, jinja2.nodes.Pair):
        return _is_const(node.key) and _is_const(node.value)
    return isinstance(node, jinja2.nodes.Const)


def tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF replaces Jinja's tojson: no HTML escaping, non-ASCII kept, json.dumps defaults.
    step()
    if isinstance(indent, int):
        check_size(indent, "tojson output indent")  # json builds ' ' * indent first
    options = {"indent": indent, "separators": separators, "sort_keys": sort_keys}
    return bounded_json(x, ensure_ascii=ensure_ascii, **options)


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


def _arg(args: Sequence[Any], kwargs: Mapping[str, Any], at: int, name: str, default: Any) -> Any:
    return args[at] if len(args) > at else kwargs.get(name, default)


def _replace_size(text: str, old: str, new: str) -> int:
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * max(0, len(new) - len(old))


def _check_text_filter(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """The filters whose output can outgrow their input (``args[0]`` is the value)."""
    check_texts([*args, *kwargs.values()], f"'{name}' filter")
    value = args[0] if args else ""
    text = bounded_text(value) if not isinstance(value, jinja2.Undefined) else ""
    if name == "center" and isinstance(width := _arg(args, kwargs, 1, "width", 80), int):
        check_size(width, "'center' width")
    elif name == "indent":
        width = _arg(args, kwargs, 1, "width", 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        lines = 2 + sum(text.count(c) for c in _LINE_BREAKS)
        check_size(len(text) + lines * (pad + 1), "'indent' output")
    elif name == "replace" and len(args) > 2:
        check_size(_replace_size(text, str(args[1]), str(args[2])), "'replace' output")
    elif name == "format":
        check_percent_format(text, [*args[1:], *kwargs.values()])
    elif name == "wordwrap" and isinstance(width := _arg(args, kwargs, 1, "width", 79), int):
        # textwrap splits a long word by re-slicing it: quadratic in the word / width.
        if len(text) ** 2 // max(width, 1) > 2 * 10**9:
            over_limit("'wordwrap' of a long text at a tiny width")
        lines = 2 * len(text) // max(width, 1) + text.count("\n") + 2
        wrap = str(_arg(args, kwargs, 3, "wrapstring", None) or "\n")
        check_size(len(text) + lines * len(wrap), "'wordwrap' output")
    elif name == "urlize":  # every word may become a link carrying target= and rel=
        extra = sum(len(str(_arg(args, kwargs, at, k, "") or "")) for at, k in ((3, "target"), (4, "rel")))
        check_size(3 * len(text) + (len(text) // 2 + 1) * (60 + extra), "'urlize' output")


def _join(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """``join``: the items are taken one step each and measured as text before joining."""
    eval_ctx, value = args[0], args[1]
    sep = _arg(args, kwargs, 2, "d", "")
    items = list(CountedIterator(value))
    if (attribute := _arg(args, kwargs, 3, "attribute", None)) is not None:
        getter = jinja2.filters.make_attrgetter(eval_ctx.environment, attribute)
        items = [getter(item) for item in items]
    limit = current_limit()
    total = text_size(sep, limit) * max(len(items) - 1, 0)
    for item in items:
        if total > limit:
            break
        total += text_size(item, limit - total)
    if total > limit:
        over_limit(f"chat template 'join' output would be over {limit} characters")
    return func(eval_ctx, items, sep)


def _addends(items: Any, start: Sequence[Any]) -> Iterator[Any]:
    """The items ``sum`` adds to a list, refused once the sum would be over the size limit."""
    size = len(start)
    for item in items:
        size += len(item) if isinstance(item, (list, tuple)) else 0
        check_size(size, "'sum' output")
        yield item


def _check_counts(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """``batch`` pads with a list of ``linecount`` items; ``slice`` loops ``slices`` times."""
    if name == "batch" and _arg(args, kwargs, 2, "fill_with", None) is not None:
        if isinstance(count := _arg(args, kwargs, 1, "linecount", 0), int):
            check_size(count, "'batch' padding")
    elif name == "slice" and isinstance(count := _arg(args, kwargs, 1, "slices", 0), int):
        check_size(count, "'slice' count")


def guard_filter(name: str, func: Callable[..., Any], *, test: bool = False) -> Callable[..., Any]:
    """A filter (or test) with its work charged and its output measured before it is built."""
    if getattr(func, "etm_guarded", False):
        return func
    at = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # where the value is
    texts = name in _TEXT_TESTS if test else name in _TEXT_FILTERS

    def guarded(*args: Any, **kwargs: Any) -> Any:
        step()
        own = args[at:]  # the value and the filter's arguments
        if test:
            if texts:
                check_texts(own, f"'{name}' test")
            return func(*args, **kwargs)
        if name == "join" and at and own:
            result = _join(func, args, kwargs)
        else:
            if texts:
                _check_text_filter(name, own, kwargs)
            elif name in _ITERATING_FILTERS and own:
                _check_counts(name, own, kwargs)
                items: Any = CountedIterator(own[0])
                if name in {"sort", "groupby"}:  # C's sort compares without a deadline check:
                    items = list(items)  # what it compares must be bounded first
                    check_built(items, f"'{name}' input")
                elif name == "sum" and isinstance(_arg(own, kwargs, 2, "start", 0), (list, tuple)):
                    items = _addends(items, _arg(own, kwargs, 2, "start", 0))
                args = (*args[:at], items, *own[1:])
            elif name == "reverse" and own and not hasattr(own[0], "__len__"):
                args = (*args[:at], CountedIterator(own[0]), *own[1:])  # it lists an iterator
            result = func(*args, **kwargs)
        check_built(result, f"'{name}' output")
        return result

    guarded.etm_guarded = True  # type: ignore[attr-defined]
    if at:
        guarded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


def _lipsum(*args: Any, **kwargs: Any) -> str:
    """Jinja's ``lipsum``, refused before it writes more words than the size limit."""
    bound = inspect.signature(jinja2.utils.generate_lorem_ipsum).bind(*args, **kwargs)
    bound.apply_defaults()
    n, low, high = (bound.arguments[k] for k in ("n", "min", "max"))
    if all(isinstance(v, int) for v in (n, low, high)):
        check_size(max(n, 0) * (max(low, high, 0) * 14 + 16), "lipsum output")
    return jinja2.utils.generate_lorem_ipsum(*args, **kwargs)


def _check_str_method(text: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The ``str`` methods whose result can outgrow their string; returns the arguments."""
    if name in _PADDING_METHODS and args and isinstance(args[0], int):
        check_size(args[0], f"str.{name} result")
    elif name == "expandtabs" and isinstance(size := _arg(args, {}, 0, "", 8), int):
        check_size(len(text) + text.count("\t") * max(size, 0), "str.expandtabs result")
    elif name == "join" and args:
        items = list(CountedIterator(args[0]))
        strings = sum(len(i) for i in items if isinstance(i, str))
        check_size(strings + len(text) * max(len(items) - 1, 0), "str.join result")
        return (items, *args[1:])
    elif name == "replace" and len(args) >= 2:
        check_size(_replace_size(text, str(args[0]), str(args[1])), "str.replace result")
    elif name == "translate" and args:
        table = args[0].values() if isinstance(args[0], Mapping) else args[0]
        widest = max((len(v) for v in CountedIterator(table) if isinstance(v, str)), default=1)
        check_size(len(text) * max(widest, 1), "str.translate result")
    return args


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template sandbox with every operation it mediates charged to the budget."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finalize = self.bounded_output
        for name, func in list(self.filters.items()):
            self.filters[name] = guard_filter(name, func)
        for name, func in list(self.tests.items()):
            self.tests[name] = guard_filter(name, func, test=True)  # type: ignore[arg-type]
        self.filters["tojson"] = tojson
        self.globals.update(range=GuardedRange, lipsum=_lipsum)

    def _compile(self, source: str, filename: str) -> CodeType:
        # Python warns about code like ``5[1:]`` (Jinja writes slices as Python): the library
        # never prints, and a template's oddities are not the user's console's business.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return compile(source, filename, "exec")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        step()
        if isinstance(__obj, LoopContext) and args:  # loop(children) of a recursive loop
            args = (CountedIterator(args[0]), *args[1:])
        elif isinstance(getattr(__obj, "__self__", None), str):
            args = _check_str_method(__obj.__self__, getattr(__obj, "__name__", ""), args)
        elif __obj is __self.globals.get("raise_exception"):
            check_texts([*args, *kwargs.values()], "raise_exception message")
        result = super().call(__context, __obj, *args, **kwargs)
        if getattr(__obj, "__name__", "") != "get":  # get() returns what a mapping holds
            check_built(result, "call result")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            mapped = list(args[0].values()) if args and isinstance(args[0], Mapping) else []
            check_format_spec(fmt, [*args, *mapped, *kwargs.values()])
            return wrapped(*args, **kwargs)

        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        step()
        return _refuse_unsafe(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        step()
        if not isinstance(argument, (*_SCALARS, slice)):  # a failed lookup prints the key
            check_texts([argument], "subscript")
        return _refuse_unsafe(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        step()
        limit = current_limit()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    check_size(len(seq) * max(times, 0), "repetition")
                    # Every copy refers to the same items: a list of lists is as big as its copies.
                    inner = deep_size(seq, limit // max(times, 1) + 1) - 1
                    if not isinstance(seq, str) and times > 0 and inner * times + 1 > limit:
                        over_limit(f"chat template repetition would hold over {limit} items")
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and left.bit_length() + right.bit_length() > 100_000:
                over_limit("integer product too large")
        elif operator == "+" and isinstance(left, str) and isinstance(right, str):
            check_size(len(left) + len(right), "concatenation")
        elif operator == "+" and isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            size = deep_size(left, limit)
            if size + deep_size(right, limit - size + 1) - 1 > limit:
                over_limit(f"chat template concatenation would hold over {limit} items")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 100_000:
                over_limit("integer power too large")
        elif operator == "%" and isinstance(left, str):
            check_percent_format(left, right if isinstance(right, tuple) else (right,))
        result = super().call_binop(context, operator, left, right)
        check_built(result, "operator result", measured=True)
        return result

    def guarded_concat(self, parts: Sequence[Any]) -> str:
        """``a ~ b``: every part measured as text before any is converted."""
        check_texts(parts, "'~' concatenation")
        text = "".join(bounded_text(part, "'~' operand") for part in parts)
        check_built(text, "'~' concatenation")
        return text

    def concat(self, parts: Any) -> str:
        """The output of a block, macro or recursive loop, refused past the size limit."""
        limit = current_limit()
        pieces = []
        total = 0
        for piece in parts:
            total += len(piece)
            if total > limit:
                over_limit(f"chat template output exceeds the limit of {limit} characters")
            pieces.append(piece)
        text = "".join(pieces)
        check_built(text, "block output")
        return text

    def iterate(self, iterable: Any) -> CountedIterator:
        """The iterable of a ``for`` loop, charged one step per item."""
        return CountedIterator(iterable)

    def built_literal(self, value: Any) -> Any:
        """A list, tuple or dict literal, refused if it holds more than one value may."""
        check_built(value, "literal")
        return value

    def bounded_output(self, value: Any) -> Any:
        """``{{ value }}``: measured before Jinja converts it (``finalize``; ``escape`` in an
        autoescape block still sees the value itself)."""
        step()
        if not isinstance(value, str):
            check_text_size(value, "value printed")
        return value
