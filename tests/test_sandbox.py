"""etm_compat.prompt.sandbox and .bounds: every kind of template work is bounded as it happens.

Each class of unbounded work is refused with a TemplateError naming the bound it hit, and the
work done before the refusal is counted (the budget's steps, or the bytes Python allocated),
never timed: the deadline is long in these tests, so a refusal proves a counted bound held.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
import pytest
from conftest import hang_guard, peak_allocation
from markupsafe import Markup

from etm_compat.errors import TemplateError
from etm_compat.prompt.bounds import (
    BUDGET,
    RECORD,
    Budget,
    RenderLimits,
    bounded_json,
    deep_size,
    text_size,
)
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat
from etm_compat.prompt.sandbox import BoundedEnvironment, TemplateNamespace

CHAT = STANDARD_CONVERSATIONS["system_multi_turn"]
#: A deadline no test reaches: what stops a template here is a counted bound.
STEPS = RenderLimits(max_seconds=120, max_output_chars=1_000_000, max_steps=50_000)
SIZE = RenderLimits(max_seconds=120, max_output_chars=100_000)


def refusal(template: str, limits: RenderLimits) -> tuple[TemplateError, Budget]:
    """Render, expecting a refusal; return it and the rendering's budget (its meter)."""
    budgets: list[Budget] = []
    token = RECORD.set(budgets)
    try:
        with hang_guard(60), pytest.raises(TemplateError) as info:
            render_chat(template, CHAT, limits=limits)
    finally:
        RECORD.reset(token)
    (budget,) = budgets
    return info.value, budget


# --- loops: every iteration is a step -----------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        # for over a long string nested in a for over a list (only range() was counted before)
        "{% for m in range(99999) | list %}{% for c in 'x' * 900000 %}{% endfor %}{% endfor %}",
        "{% for m in messages * 1000 %}{% for c in m.content * 1000 %}{% endfor %}{% endfor %}",
        "{% set w = ('x ' * 400000).split() %}{% for a in w %}{% for b in w %}{% endfor %}{% endfor %}",
        # a filtered loop counts the items it skips
        "{% for a in range(99999) %}{% for b in range(99999) if false %}{% endfor %}{% endfor %}",
        # the iterating filters walk one step per item
        "{% set s = 'x' * 99999 %}{% for a in range(99999) %}{{ s | select('eq', 'y') | list }}{% endfor %}",
        "{% set s = 'x' * 99999 %}{% for a in range(99999) %}{{ s | unique | list }}{% endfor %}",
        # loop.cycle and loop.length on a long loop
        "{% for c in 'x' * 900000 %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    ],
)
def test_loops_over_anything_are_counted_and_stopped(template: str) -> None:
    error, budget = refusal(template, STEPS)
    assert "step limit" in str(error)
    assert budget.meter.steps <= STEPS.max_steps  # refused before the step over the limit


def test_recursive_macro_is_stopped_by_steps_or_by_depth() -> None:
    wide = "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}"
    error, budget = refusal(wide, STEPS)  # 2**40 calls
    assert "step limit" in str(error) and budget.meter.steps <= STEPS.max_steps
    deep = "{% macro f(n) %}{{ f(n ~ 'x') }}{% endmacro %}{{ f('a') }}"
    error, budget = refusal(deep, STEPS)
    assert "RecursionError" in str(error) and budget.meter.steps < STEPS.max_steps


def test_recursive_loop_is_counted() -> None:
    # Six levels of 30 children each: 30**6 iterations through loop().
    template = "{% for x in [0] recursive %}{% if loop.depth < 7 %}{{ loop([x] * 30) }}{% endif %}{% endfor %}"
    error, budget = refusal(template, STEPS)
    assert "step limit" in str(error) and budget.meter.steps <= STEPS.max_steps
    # Endless recursion ends at Python's recursion limit, also a refusal.
    error, _ = refusal("{% for x in [[0]] recursive %}{{ loop([x]) }}{% endfor %}", STEPS)
    assert "RecursionError" in str(error)


def test_step_limit_counts_real_work_of_a_legitimate_template() -> None:
    budgets: list[Budget] = []
    token = RECORD.set(budgets)
    try:
        text = render_chat("{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}", CHAT)
    finally:
        RECORD.reset(token)
    assert text.count("\n") == len(CHAT)
    # 4 messages: an iteration, two lookups and three outputs each, plus the loop's start.
    assert 4 * 6 <= budgets[0].meter.steps < 100


# --- sizes: refused before the value is built -----------------------------------------------------


DOUBLING = "{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}"
SQUARING = "{% set ns = namespace(n=2) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{{ 'x' * 100000000 }}", "repetition would be"),  # string multiplication
        ("{{ [[0] * 9999] * 9999 }}", "repetition would hold"),  # the 60-byte nested list
        ("{{ ([[0] * 9999] * 9999) | tojson }}", "repetition would hold"),
        ("{% set l = [0] * 9999 %}{{ [l, l, l, l, l, l, l, l, l, l, l, l] }}", "literal would hold"),
        (DOUBLING, "concatenation would hold"),
        ("{{ range(99999) | map('string') | join('y' * 50) }}", "'join' output would be"),
        ("{{ ('x' * 9999) | join('y' * 9999) }}", "'join' output would be"),
        ("{{ ('x' * 99999) | replace('x', 'yy') }}", "'replace' output would be"),
        ("{{ ('x\\n' * 40000) | indent(40) }}", "'indent' output would be"),
        ("{{ ('a ' * 40000) | wordwrap(10, wrapstring='y' * 99) }}", "'wordwrap' output would be"),
        ("{{ ('\\t' * 1000).expandtabs(100000) }}", "expandtabs result would be"),
        ("{{ ('a' * 1000).translate({97: 'b' * 1000}) }}", "translate result would be"),
        ("{{ dict.fromkeys(range(9999), 'x' * 99) }}", "call result would hold"),
        ("{{ [1] | batch(10 ** 9, fill_with=0) | list }}", "'batch' padding would be"),
        ("{{ [1] | slice(10 ** 9) | list }}", "'slice' count would be"),
        ("{{ lipsum(1, max=10 ** 9) }}", "lipsum output would be"),
        ("{{ messages | tojson(indent=10 ** 9) }}", "tojson output indent would be"),
        (SQUARING, "integer product too large"),
        # sorting compares in C without a deadline check: the items are measured first
        ("{% set ns = namespace(a='x' * 99999) %}{{ ([ns] * 999) | map(attribute='a') | sort }}",
         "'sort' input would hold"),
        # sum(start=[]) builds every partial sum
        ("{% set ns = namespace(l=[0] * 9999) %}{{ ([ns] * 999) | map(attribute='l') | sum(start=[]) }}",
         "'sum' output would be"),
    ],
)
def test_growth_is_refused_before_it_is_built(template: str, needle: str) -> None:
    with peak_allocation() as peak:
        error, budget = refusal(template, SIZE)
    assert needle in str(error)
    assert peak[0] < 16 * 1024 * 1024  # the refused values would be 10 MB to 100 GB
    # The work before the refusal is a few steps per input item (join walks 99,999 numbers).
    assert budget.meter.steps < 1_000_000


@pytest.mark.parametrize(
    "template",
    [
        # printing: a value small as a structure but huge as text is measured, not converted
        "{% set ns = namespace(x='y' * 9000) %}{{ [ns] * 1000 }}",
        "{% set l = ['\\x00' * 30] * 1000 %}{{ l }}",  # each item prints as 122 characters
        "{% set ns = namespace(x='y' * 9000) %}{{ ([ns] * 1000) | string }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ 'a' ~ [ns] * 1000 }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ '%s' % ([ns] * 1000,) }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ '{}'.format([ns] * 1000) }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ [[ns] * 1000] | join }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ raise_exception([ns] * 1000) }}",
        "{% set ns = namespace(x='y' * 9000) %}{{ messages[[ns] * 1000].x }}",
        "{% set ns = namespace(x='y' * 9000) %}{% if ([ns] * 1000) is lower %}{% endif %}",
    ],
)
def test_text_of_a_large_structure_is_measured_before_it_is_built(template: str) -> None:
    with peak_allocation() as peak:
        error, budget = refusal(template, SIZE)
    assert "over 100000 characters" in str(error)
    assert peak[0] < 4 * 1024 * 1024  # the text would be 9 MB and more
    assert budget.meter.steps < 10_000


def test_block_output_is_bounded_while_it_is_collected() -> None:
    template = "{% set y = 'y' * 90000 %}{% set x %}{% for i in range(1000) %}{{ y }}{% endfor %}{% endset %}"
    error, _ = refusal(template, SIZE)
    assert "output exceeds the limit of 100000" in str(error)
    macro = "{% set y = 'y' * 90000 %}{% macro m() %}{% for i in range(1000) %}{{ y }}{% endfor %}{% endmacro %}{{ m() | length }}"
    error, _ = refusal(macro, SIZE)
    assert "output exceeds the limit of 100000" in str(error)


def test_memory_built_in_all_is_bounded() -> None:
    # Each value is under the limit; what the rendering builds in all is not.
    template = "{% for i in range(1000) %}{% set x = 'x' * 90000 %}{% endfor %}"
    error, budget = refusal(template, SIZE)
    assert "memory limit" in str(error)
    assert budget.meter.built <= SIZE.built_limit


def test_constant_folding_is_bounded_while_compiling() -> None:
    # Jinja folds constant expressions at compile time; a fold is small or left to the renderer.
    with hang_guard(60), peak_allocation() as peak:
        error, _ = refusal("{% set l = 'x' | center(99999) | list %}{{ l | length }}", SIZE)
    assert "'list' output would hold" in str(error)
    assert peak[0] < 32 * 1024 * 1024


# --- what is allowed still renders as transformers does ------------------------------------------


def test_join_of_a_generator_joins_its_items() -> None:
    # The check consumed the generator before joining: transformers gives "system,user,...".
    template = "{{ messages | map(attribute='role') | join(',') }}|{{ messages | join(', ', attribute='role') }}"
    roles = ",".join(m["role"] for m in CHAT)
    assert render_chat(template, CHAT) == f"{roles}|{roles.replace(',', ', ')}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "<Namespace {'me': <Namespace {...}>}>"),
        ("{{ range(3) | list }}|{{ [1, 'a', none, 2.5, true] }}", "[0, 1, 2]|[1, 'a', None, 2.5, True]"),
        ("{{ {'a': (1,), 'b': dict(c=[])} }}", "{'a': (1,), 'b': {'c': []}}"),
        ("{{ messages[0].items() | list | length }}{{ messages[0].keys() }}", "2dict_keys(['role', 'content'])"),
        ("{% for x in [[1, [2]]] recursive %}{{ x if x is number else loop(x) }}{% endfor %}", "12"),
        ("{{ [0] * 3 + [1] }}{{ 'ab' * 2 }}{{ ('a', 'b') | join('-') }}", "[0, 0, 0, 1]abab" + "a-b"),
        ("{% for c in 'abc' %}{{ loop.index }}/{{ loop.length }}{% endfor %}", "1/32/33/3"),
        ("{{ [3, 1, 2] | sort | first }}{{ ([[1], [2]] | sum(start=[])) }}", "1[1, 2]"),
    ],
)
def test_allowed_work_renders_unchanged(template: str, expected: str) -> None:
    assert render_chat(template, CHAT) == expected


def test_generated_code_routes_loops_output_and_literals_through_the_budget() -> None:
    code = BoundedEnvironment().compile(
        "{% for m in messages %}{{ [m, 1] }}{% endfor %}{{ x ~ y }}", raw=True
    )
    assert "in environment.iterate(" in code
    assert "environment.finalize(environment.built_literal([" in code
    assert "environment.guarded_concat((" in code


# --- the measures -----------------------------------------------------------------------------------


def _values(rng: random.Random, depth: int = 0) -> Any:
    leaves = [0, -5, 10**30, 1.5, float("nan"), True, None, "", "it's", 'say "hi"',
              "\x00\n\u2028é\U0001f600", b"x\x00", Markup("<b>"), jinja2.Undefined(), range(3)]  # fmt: skip
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    items = [_values(rng, depth + 1) for _ in range(rng.randrange(4))]
    mapping = {rng.choice(["a", 1, None, 2.5]): v for v in items}
    namespace = TemplateNamespace(x=items)
    if rng.random() < 0.3:
        namespace["me"] = namespace  # Python prints the inner reference as {...}
    plain = [x for x in items if isinstance(x, (int, str, bytes)) or x is None]
    return rng.choice([items, tuple(items), mapping, mapping.keys(), mapping.values(),
                       mapping.items(), set(plain), frozenset(plain), namespace, [namespace] * 2])  # fmt: skip


def test_text_size_is_the_length_of_str() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        value = _values(rng)
        assert text_size(value, 10**9) == len(str(value)), repr(value)[:200]


def test_text_size_stops_past_its_cap_without_building() -> None:
    shared = ["x" * 1_000_000] * 1_000_000  # prints as 10**12 characters
    with peak_allocation() as peak:
        assert text_size(shared, 1000) > 1000
        assert deep_size(shared, 1000) > 1000
    assert peak[0] < 1024 * 1024


def test_deep_size_counts_shared_references_and_nesting() -> None:
    assert deep_size("ab", 100) == 3
    assert deep_size(["ab", ["c"] * 3], 100) == 1 + 3 + 1 + 3 * 2
    assert deep_size({"k": [1, 2]}, 100) == 1 + (1 + 1) + 1 + 2  # the dict, "k", the list, 1, 2
    namespace = TemplateNamespace(x="y" * 1000)
    assert deep_size([namespace] * 3, 100) == 4  # namespaces are not compared by content


def test_bounded_json_is_json_dumps_or_refused_piece_by_piece() -> None:
    value: Mapping[str, Any] = {"a": [1, "é", None, {"b": True}], "c": 2.5}
    assert bounded_json(value, ensure_ascii=False, indent=2, sort_keys=True) == __import__(
        "json"
    ).dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
    shared = [["x" * 900] * 10**6] * 10**6  # encodes as 9 * 10**14 characters
    token = BUDGET.set(Budget.start(RenderLimits(max_output_chars=1000)))
    try:
        with peak_allocation() as peak, pytest.raises(TemplateError, match="tojson output"):
            bounded_json(shared)
    finally:
        BUDGET.reset(token)
    assert peak[0] < 1024 * 1024


def _iterate_twice(values: Iterator[int]) -> list[int]:
    return list(values) + list(values)


def test_counted_iterator_keeps_length_and_truthiness() -> None:
    from etm_compat.prompt.bounds import CountedIterator

    budget = Budget.start(RenderLimits())
    token = BUDGET.set(budget)
    try:
        counted = CountedIterator([1, 2, 3])
        assert len(counted) == 3 and bool(counted)
        assert not CountedIterator([]) and bool(CountedIterator(iter([])))
        assert _iterate_twice(counted) == [1, 2, 3]
    finally:
        BUDGET.reset(token)
    assert budget.meter.steps == 3  # one per item


def test_a_shared_budget_bounds_several_renderings() -> None:
    from etm_compat.prompt.bounds import shared_budget

    loop = "{% for i in range(99999) %}{% endfor %}"  # 100,000 steps each time
    with shared_budget(RenderLimits(max_seconds=120, max_steps=250_000)) as shared:
        render_chat(loop, CHAT)
        render_chat(loop, CHAT)
        with pytest.raises(TemplateError, match="step limit"):
            render_chat(loop, CHAT)  # each rendering alone is within its own limits
    assert 200_000 < shared.meter.steps <= 250_000


def test_a_call_that_renders_twice_is_bounded_as_one_rendering() -> None:
    # A null value makes render_chat try the messages without it, then as given: both
    # renderings count against the call's one budget (steps here; the deadline alike).
    chat = [{"role": "assistant", "content": None, "tool_calls": []}]
    work_then_fail = "{% for i in range(99999) %}{% endfor %}{{ messages[0].content.upper() }}"
    limits = RenderLimits(max_seconds=120, max_steps=150_000)
    budgets: list[Budget] = []
    token = RECORD.set(budgets)
    try:
        with pytest.raises(TemplateError, match="has no attribute 'content'"):  # the first failure
            render_chat(work_then_fail, chat, limits=limits)
    finally:
        RECORD.reset(token)
    (meter,) = {id(budget.meter): budget.meter for budget in budgets}.values()
    assert len({budget.deadline for budget in budgets}) == 1
    # 100,000 steps each: the second rendering was stopped at the call's limit.
    assert 100_000 < meter.steps <= 150_000


def test_python_warnings_about_generated_code_are_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    # Jinja writes a slice as Python (``5[1:]``), which Python's compiler warns about; under
    # this suite's warnings-as-errors the template would not even compile.
    assert render_chat("{{ 5[1:] }}x", CHAT) == "x"
    assert capfd.readouterr().err == ""


def test_a_long_error_message_is_cut() -> None:
    with pytest.raises(TemplateError) as info:
        render_chat("{{ raise_exception('x' * 100000) }}", CHAT)
    assert "raised an error: xxx" in str(info.value) and len(str(info.value)) < 1000
