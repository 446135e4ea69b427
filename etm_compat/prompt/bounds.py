"""The work budget of one chat-template rendering, and measures that never build what they measure.

A rendering gets a :class:`Budget` (in :data:`BUDGET`): a deadline, a size limit for every
value, a number of steps of work and a number of characters and items it may build in all. The
sandbox charges it as the work happens, and the deadline is checked at every step.

The measures answer "how large would this be" without building it and stop once the answer is
over the limit: :func:`text_size` is ``len(str(value))``; :func:`deep_size` counts the items and
characters a value holds (a million references to one long string are as large as a million
strings: that is what comparing, sorting or printing them costs).

>>> text_size([1, "a", (None,)], 100)
20
>>> len(str([1, "a", (None,)]))
20
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import jinja2
import jinja2.utils

from etm_compat.errors import TemplateError

__all__ = [
    "BUDGET", "RECORD", "Budget", "CountedIterator", "RenderLimits", "WorkMeter", "bounded_json",
    "bounded_text", "charge", "check_built", "check_format_spec", "check_percent_format",
    "check_size", "check_text_size", "check_texts", "check_time", "current_limit", "deep_size", "over_limit",
    "shared_budget", "step", "text_size",
]  # fmt: skip

#: Characters (or items) copied that count as one step of work.
CHARS_PER_STEP: Final = 1024
#: The measures charge their walks to the budget in batches of this many visits.
_VISITS_PER_STEP: Final = 64
_HINT: Final = "the template may be hostile or broken; check its source"
_SCALARS: Final = (str, int, float, bool, type(None))
#: A printf width or precision of 7+ digits (``'%1000000000s'``): refused before Python pads.
_PERCENT_WIDTH: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d{7,}|\d*\.\d{7,})")


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one rendering.

    ``max_seconds`` of wall-clock time; ``max_output_chars`` characters of output, and of any one
    value the template builds (a string's characters, a list's items and characters within);
    ``max_steps`` steps of work (loop iterations, calls, lookups, operators, filters, outputs);
    ``max_built_chars`` characters and items built in all (``None``: 16 times the output limit),
    which bounds the memory a rendering can hold.
    """

    max_seconds: float = 2.0
    max_output_chars: int = 1_000_000
    max_steps: int = 1_000_000
    max_built_chars: int | None = None

    @property
    def built_limit(self) -> int:
        if self.max_built_chars is not None:
            return self.max_built_chars
        return 16 * self.max_output_chars


_DEFAULT: Final = RenderLimits()


class WorkMeter:
    """What one rendering has done so far: steps of work, characters and items built."""

    __slots__ = ("built", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.built = 0


def over_limit(message: str) -> NoReturn:
    raise TemplateError(message, hint=_HINT)


@dataclass(frozen=True)
class Budget:
    """The limits of the rendering in progress and its meter (the one mutable part)."""

    deadline: float
    max_chars: int
    max_steps: int = _DEFAULT.max_steps
    max_built: int = _DEFAULT.built_limit
    meter: WorkMeter = field(default_factory=WorkMeter, compare=False)

    @classmethod
    def start(cls, limits: RenderLimits, within: Budget | None = None) -> Budget:
        """A fresh budget whose deadline is ``limits.max_seconds`` from now.

        ``within``: an enclosing budget (:func:`shared_budget`) whose deadline, steps and
        memory this one also counts against: it shares its meter and never outlasts it.
        """
        deadline = time.monotonic() + limits.max_seconds
        steps, built = limits.max_steps, limits.built_limit
        if within is None:
            budget = cls(deadline, limits.max_output_chars, steps, built)
        else:
            meter = within.meter
            budget = cls(
                min(deadline, within.deadline), min(limits.max_output_chars, within.max_chars),
                min(meter.steps + steps, within.max_steps), min(meter.built + built, within.max_built),
                meter,
            )  # fmt: skip
        if (record := RECORD.get()) is not None:
            record.append(budget)
        return budget

    def step(self, count: int = 1) -> None:
        """Charge ``count`` steps; refuse, before counting them, past the step limit or deadline."""
        meter = self.meter
        if meter.steps + count > self.max_steps:
            over_limit(
                f"chat template did more than {self.max_steps} steps of work (loop iterations, "
                "calls, lookups, operations), over its step limit"
            )
        meter.steps += count
        if time.monotonic() > self.deadline:
            over_limit("chat template rendering exceeded its time limit")

    def build(self, size: int) -> None:
        """Charge a value of ``size`` characters or items that was just built."""
        meter = self.meter
        if meter.built + size > self.max_built:
            over_limit(
                f"chat template built more than {self.max_built} characters and items in all, "
                "over its memory limit"
            )
        meter.built += size
        self.step(1 + size // CHARS_PER_STEP)


BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "etm_chat_budget", default=None
)
#: Set to a list to receive the budget of every rendering started (tests, the fuzz harness).
RECORD: contextvars.ContextVar[list[Budget] | None] = contextvars.ContextVar(
    "etm_chat_budget_record", default=None
)


@contextlib.contextmanager
def shared_budget(limits: RenderLimits) -> Iterator[Budget]:
    """One budget for several renderings: each also counts against it (and its deadline).

    A check that renders one template over many conversations bounds the whole check::

        with shared_budget(RenderLimits(max_seconds=2.0)):
            for conversation in conversations:
                render_chat(template, conversation)

    Inside another shared budget it also counts against that one, and never outlasts it.
    """
    budget = Budget.start(limits, within=BUDGET.get())
    token = BUDGET.set(budget)
    try:
        yield budget
    finally:
        BUDGET.reset(token)


def check_time() -> Budget | None:
    """Refuse if the rendering in progress is past its deadline; return its budget."""
    budget = BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        over_limit("chat template rendering exceeded its time limit")
    return budget


def step(count: int = 1) -> None:
    """Charge steps to the rendering in progress (nothing outside one)."""
    budget = BUDGET.get()
    if budget is not None:
        budget.step(count)


def current_limit() -> int:
    """The size limit of one value: the budget's, or the default outside a rendering."""
    budget = BUDGET.get()
    return budget.max_chars if budget is not None else _DEFAULT.max_output_chars


def check_size(size: int, what: str) -> None:
    """Refuse a value of ``size`` characters (or items) before it is built."""
    step()
    limit = current_limit()
    if size > limit:
        over_limit(f"chat template {what} would be {size} characters, over the limit of {limit}")


def charge(size: int) -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.build(size)


def check_built(value: Any, what: str, *, measured: bool = False) -> None:
    """Refuse a value the template just built if it holds more than one value may; charge it.

    ``measured``: the value's items were counted before it was built (no second walk).
    """
    if isinstance(value, str):
        check_size(len(value), what)
        charge(len(value))
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        limit = current_limit()
        if not measured and deep_size(value, limit) > limit:
            over_limit(f"chat template {what} would hold over {limit} items and characters")
        charge(len(value))


class CountedIterator(Iterator[Any]):
    """Iterates ``source`` charging one step per item, so no loop runs unbounded.

    Keeps the source's length (``loop.length`` stays cheap) and truthiness (filters test it).
    """

    __slots__ = ("_budget", "_it", "_source")

    def __init__(self, source: Any) -> None:
        self._source = source
        self._it = iter(source)
        self._budget = BUDGET.get()

    def __iter__(self) -> CountedIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        if self._budget is not None:
            self._budget.step()
        return item

    def __len__(self) -> int:
        return len(self._source)

    def __bool__(self) -> bool:
        try:
            return len(self._source) > 0
        except TypeError:
            return True


# --- measures ---------------------------------------------------------------------------------

_OVER: Final = object()  # an exhausted iterator
_DICT_VIEWS: Final[tuple[type, ...]] = (type({}.keys()), type({}.values()), type({}.items()))
_ITEMS_VIEW: Final[type] = type({}.items())
_WALKED: Final = (list, tuple, dict, set, frozenset, *_DICT_VIEWS)
_NUMBERS: Final = frozenset({int, float, bool, type(None)})
_TEXT_AND_NUMBERS: Final = _NUMBERS | {str}


def _parts(container: Any) -> tuple[Any, ...]:
    """The groups of items a container holds (a dict: its keys and its values)."""
    if isinstance(container, dict):
        return (container.keys(), container.values())
    if isinstance(container, _ITEMS_VIEW):
        mapping = getattr(container, "mapping")  # noqa: B009 - typeshed's view lacks it
        return (mapping.keys(), mapping.values())
    return (container,)


def deep_size(value: Any, cap: int) -> int:
    """Items and characters ``value`` holds, counting shared references each time; stops past cap.

    Containers (lists, tuples, dicts, sets, dict views) are walked: each item counts one, a
    string also its length; anything else counts one (namespaces and iterators are not opened).

    >>> deep_size(["ab", ["c"] * 3], 100)
    11
    """
    if not isinstance(value, _WALKED):
        return 1 + (len(value) if isinstance(value, (str, bytes)) else 0)
    total = 1
    pending = [value]
    while pending and total <= cap:
        container = pending.pop()
        for items in _parts(container):
            total += len(items)
            kinds = set(map(type, items))
            if kinds <= _NUMBERS:
                pass
            elif kinds == {str}:
                total += sum(map(len, items))
            elif kinds <= _TEXT_AND_NUMBERS:
                total += sum(len(x) for x in items if type(x) is str)
            else:
                for item in items:
                    if isinstance(item, (str, bytes)):
                        total += len(item)
                    elif isinstance(item, _WALKED):
                        pending.append(item)
            step(1 + len(items) // _VISITS_PER_STEP)
    return total


def _leaf_repr_size(item: Any, room: int) -> int:
    """``len(repr(item))`` for a leaf, or more than ``room`` without building a long repr."""
    if isinstance(item, (str, bytes)):
        if len(item) + 2 > room:
            return room + 1
        return len(repr(item))
    if type(item) is int and item.bit_length() * 0.30103 > room + 1:
        return room + 1
    return len(repr(item))


def _shape(item: Any) -> tuple[int, int] | None:
    """For a container Python prints from its items: its own characters (brackets, separators,
    name) and the placeholder it prints when met inside itself; ``None`` for anything else."""
    kind = type(item)
    if kind is list or (isinstance(item, tuple) and getattr(kind, "__repr__") is tuple.__repr__):  # noqa: B009
        n = len(item)
        if kind is not list and n == 1:
            return 3, 5  # "(x,)"
        return 2 + 2 * max(n - 1, 0), 5
    if kind is dict:
        n = len(item)
        return 2 + 2 * max(n - 1, 0) + 2 * n, 5
    if kind in (set, frozenset):
        n, name = len(item), kind.__name__
        if n == 0:
            return len(name) + 2, 0
        return 2 + 2 * (n - 1) + (0 if kind is set else len(name) + 2), len(name) + 5
    if kind in _DICT_VIEWS:
        n = len(item)
        pairs = 4 * n if kind is _ITEMS_VIEW else 0  # each item prints as "(k, v)"
        return len(kind.__name__) + 4 + 2 * max(n - 1, 0) + pairs, 3
    if isinstance(item, jinja2.utils.Namespace):
        return len("<Namespace >"), 0
    return None


def _leaves_size(items: Any, room: int) -> tuple[int, list[Any]]:
    """Characters the leaves of ``items`` print as, and the nested containers to open."""
    kinds = set(map(type, items))
    if kinds <= _TEXT_AND_NUMBERS:
        if str in kinds:
            chars = sum(len(x) + 2 for x in items if type(x) is str)
            if chars > room:
                return room + 1, []
        if int in kinds and any(type(x) is int and x.bit_length() > 16_000 for x in items):
            return room + 1, []  # would print as over 4,800 digits: Python refuses such ints
        return sum(map(len, map(repr, items))), []
    total = 0
    nested = []
    for item in items:
        if _shape(item) is not None:
            nested.append(item)
        else:
            total += _leaf_repr_size(item, room - total)
            if total > room:
                break
    return total, nested


def text_size(value: Any, cap: int) -> int:
    """``len(str(value))``, computed without building the text; any answer over ``cap`` only
    means "too large". Exact for strings, numbers, lists, tuples, dicts, sets, dict views and
    Jinja namespaces (recursive references included); other objects are asked for their text.

    >>> text_size({"a": [1, 2]}, 100) == len(str({"a": [1, 2]}))
    True
    """
    if isinstance(value, str):
        return len(value)
    if isinstance(value, jinja2.Undefined):
        return len(str(value))
    if _shape(value) is None:
        return _leaf_repr_size(value, cap)
    total = 0
    # A stack of (nested containers still to open, the container they are in); ``open_ids``
    # holds the containers being printed, as Python's repr tracks them to print "[...]".
    stack: list[tuple[Iterator[Any], int]] = [(iter((value,)), 0)]
    open_ids: set[int] = set()
    while stack and total <= cap:
        todo, owner = stack[-1]
        item = next(todo, _OVER)
        if item is _OVER:
            stack.pop()
            open_ids.discard(owner)
            continue
        shape = _shape(item)
        assert shape is not None
        if id(item) in open_ids:
            total += shape[1]
            continue
        total += shape[0]
        nested: list[Any] = []
        if isinstance(item, jinja2.utils.Namespace):
            nested = [object.__getattribute__(item, "_Namespace__attrs")]
        else:
            for items in _parts(item):
                size, inner = _leaves_size(items, cap - total)
                total += size
                nested += inner
                step(1 + len(items) // _VISITS_PER_STEP)
            open_ids.add(id(item))
        stack.append((iter(nested), id(item)))
    return total


def check_text_size(value: Any, what: str) -> int:
    """Refuse a value whose text would be over the size limit; charge and return its size."""
    limit = current_limit()
    size = text_size(value, limit)
    if size > limit:
        over_limit(f"chat template {what} would print as over {limit} characters")
    charge(size)
    return size


def bounded_text(value: Any, what: str = "value printed") -> str:
    """``str(value)``, refused before it is built if it would be over the size limit."""
    if type(value) is str:
        return value
    check_text_size(value, what)
    return str(value)


def bounded_json(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)``, encoded piece by piece and refused past the size limit."""
    limit = current_limit()
    pieces: list[str] = []
    total = 0
    budget = BUDGET.get()
    for piece in json.JSONEncoder(**options).iterencode(value):
        total += len(piece)
        if total > limit:
            over_limit(f"chat template tojson output would be over {limit} characters")
        if budget is not None:
            budget.step()
        pieces.append(piece)
    text = "".join(pieces)
    charge(len(text))
    return text


def check_texts(values: Any, what: str) -> None:
    """Refuse before values are converted to text if their text would be over the limit."""
    limit = current_limit()
    total = 0
    for value in values:
        if not isinstance(value, _SCALARS):
            total += text_size(value, limit - total)
            if total > limit:
                over_limit(f"chat template {what} would convert over {limit} characters to text")


def check_percent_format(fmt: str, values: Any) -> None:
    """Refuse printf formatting whose width, precision or arguments would build a huge string."""
    limit = current_limit()
    stars = "*" in fmt and any(isinstance(v, int) and abs(v) > limit for v in values)
    if stars or _PERCENT_WIDTH.search(fmt):
        over_limit("printf-style format with an oversized width or precision")
    check_texts(values, "printf-style format")


def check_format_spec(fmt: str, values: Any) -> None:
    """Refuse ``str.format`` fields whose width or precision would build a huge string.

    ``'{:>1000000000}'.format(x)`` and ``'{0:{1}}'.format(x, 10**9)`` allocate before any
    result-size check could run. Nested specs take their numbers from the arguments.
    """
    limit = current_limit()
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # malformed: the sandbox's own formatter raises, and that becomes a TemplateError
    for _, _, spec, _ in fields:
        numbers = re.findall(r"\d+", spec or "")
        if spec and "{" in spec:
            numbers += [
                n for v in values if isinstance(v, _SCALARS) for n in re.findall(r"\d+", str(v))
            ]
        if any(len(n) > 9 or int(n) > limit for n in numbers):
            over_limit("str.format with an oversized width or precision")
    check_texts(values, "str.format")
