"""Fuzz the chat-template sandbox with random templates: every run must finish or be refused in time.

A generator writes random templates over the Jinja that chat templates use: loops (nested, with
``loop.*``, filtered, recursive, ``break``/``continue``), ifs, ``set`` (plain, namespace
attributes, blocks), macros (recursive ones too), filter blocks, filters and tests with
arguments, string and list operators, method calls, literals and the variables a chat template
gets (``messages``, ``tools``, ``bos_token``...). Numbers are mostly small and sometimes huge, so
a share of the templates runs into every limit of the sandbox.

Each template is compiled (``compile_template``) and rendered (``render_chat``) with the given
limits. An execution passes when it finishes or raises an ``EtmError`` (a refusal), and

- the rendering took at most its deadline + 0.5 s (compiling: the compile deadline + 0.5 s);
- the output is within the output limit;
- the budget's counted steps and built characters stayed within their maximums.

Unless ``--no-compare``, a rendering that finished is also rendered by transformers' own
``render_jinja_template`` and must be byte-identical. Transformers' environment is unbounded and
folds constants while compiling (``[0] * (1000 * 1000 * 1000)`` in a branch never taken is 24
GB there), so it runs in a child process limited in memory and time; what it cannot finish is
counted, not compared. Templates printing an object address or using randomness or the clock
are not compared either.

Anything else (an exception that is not an ``EtmError``, a late answer, a limit overrun, a
different rendering) is a failure. The run prints a summary: runs, finished, refused by class and reason, the slowest
execution, peak RSS and the failures::

    python tools/fuzz_templates.py --runs 100000 --seed 1
    python tools/fuzz_templates.py --runs 2000 --seed 7 --max-seconds 2 --max-output-chars 1000000

The exit status is 1 when there were failures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etm_compat.errors import EtmError  # noqa: E402
from etm_compat.prompt.bounds import RECORD, Budget, RenderLimits  # noqa: E402
from etm_compat.prompt.chat import (  # noqa: E402
    STANDARD_CONVERSATIONS,
    compile_template,
    render_chat,
)

#: Slack allowed beyond a deadline before an execution counts as late.
GRACE_SECONDS = 0.5
#: The deadline of compiling (``compile_template`` uses the default limits).
COMPILE_SECONDS = RenderLimits().max_seconds
#: The limits of the long run: a short deadline keeps 100,000 executions to about an hour.
FUZZ_LIMITS = RenderLimits(max_seconds=0.5, max_output_chars=200_000, max_steps=1_000_000)

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
]  # fmt: skip
CONVERSATIONS: list[Sequence[Mapping[str, Any]]] = [
    *STANDARD_CONVERSATIONS.values(),
    [
        {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny"},
    ],
]  # fmt: skip

SMALL = (0, 1, 2, 3, 5, -1)
BIG = (64, 1000, 99_999, 1_000_000, 10**9)
STRINGS = ("''", "'a'", "'ab'", "'x y z'", "'<|im_start|>'", "'%s'", "'{}'", "'{:>9}'",
           "'\\n'", "'role'", "'content'", "'user'", "'é\\t'", "'%05d'", "'a,b,c'")  # fmt: skip
TEXT_FILTERS = ("trim", "upper", "title", "capitalize", "striptags", "escape", "urlize",
                "wordcount", "urlencode", "string", "reverse", "pprint", "safe")  # fmt: skip
WIDTH_FILTERS = ("center", "indent", "wordwrap", "truncate")
STR_METHODS = ("upper()", "strip()", "title()", "lstrip('<')", "replace('a', 'bb')",
               "center({n})", "ljust({n})", "zfill({n})", "expandtabs(4)", "split()[0]")  # fmt: skip
PERCENT_FORMATS = ("'%s'", "'%r|%s'", "'%5s'", "'%-9s.'", "'%d'", "'%(a)s'", "'%%'")
SPLITS = ("", "'\\n'", "','", "' '")
REORDERS = ("list", "sort", "unique", "reverse")
MAP_ARGS = ("'upper'", "'string'", "attribute='role'", "'length'", "'tojson'")
SELECTS = ("select('defined')", "reject('string')", "select('odd')", "reject('none')")
TESTS = ("defined", "undefined", "string", "number", "none", "mapping", "sequence", "iterable",
         "lower", "upper", "even", "odd", "callable", "boolean", "true", "false", "integer",
         "float", "escaped", "divisibleby(3)", "in([1, 'a'])", "eq('a')")  # fmt: skip


class TemplateGenerator:
    """Random templates over the Jinja subset chat templates use (one per :meth:`template`).

    Expressions are generated by the type they should have (text, number, list, anything), so
    most templates run deep instead of failing at their first operation; one choice in twenty
    is of any type, so type errors are exercised too.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: list[str] = []
        self.macros: list[str] = []
        self.loops: list[str] = []
        self.recursive = 0
        self.namespace = False

    def template(self) -> str:
        rng = self.rng
        self.names, self.macros, self.loops, self.recursive = ["m0"], [], [], 0
        self.namespace = rng.random() < 0.7
        head = "{% set m0 = messages[0] %}"
        if self.namespace:
            head += "{% set ns = namespace(a='', n=0, l=[]) %}"
        return head + "".join(self.block(0) for _ in range(rng.randint(1, 6)))

    def pick(self, *options: Callable[[], str]) -> str:
        return self.rng.choice(options)()

    # --- expressions by type ------------------------------------------------------------------

    def number(self) -> str:
        return str(self.rng.choice(BIG if self.rng.random() < 0.1 else SMALL))

    def integer(self, d: int = 0) -> str:
        if d > 2 or self.rng.random() < 0.5:
            return self.number()
        s = d + 1
        return self.pick(
            lambda: f"({self.integer(s)} {self.rng.choice('+-*%')} {self.integer(s)})",
            lambda: f"({self.integer(s)} // {self.rng.choice(('1', '2', '7'))})",
            lambda: f"({self.integer(s)} ** {self.rng.choice(('2', '3', '64', '1000'))})",
            lambda: f"({self.sequence(s)} | length)",
            lambda: "loop.index" if self.loops else "ns.n" if self.namespace else "7",
            lambda: f"({self.sequence(s)} | sum)" if self.rng.random() < 0.3 else "1",
        )

    def text(self, d: int = 0) -> str:
        rng = self.rng
        if d > 2 or rng.random() < 0.3:
            return self.pick(
                lambda: rng.choice(STRINGS), lambda: "bos_token", lambda: "m0.content",
                lambda: "m0['role']", lambda: f"{self.loops[-1]}" if self.loops else "eos_token",
                lambda: "ns.a" if self.namespace else "'ns'", lambda: "messages[-1].content",
            )  # fmt: skip
        s = d + 1
        n = self.integer(s)
        return self.pick(
            lambda: f"({self.text(s)} ~ {self.anything(s)})",
            lambda: f"({self.text(s)} + {self.text(s)})",
            lambda: f"({self.text(s)} * {n})",
            lambda: f"({self.text(s)} | {rng.choice(TEXT_FILTERS)})",
            lambda: f"({self.text(s)} | {rng.choice(WIDTH_FILTERS)}({n}))",
            lambda: f"({self.text(s)} | replace({rng.choice(STRINGS)}, {self.text(s)}))",
            lambda: f"({self.text(s)} | format({self.anything(s)}))",
            lambda: f"({self.sequence(s)} | join({self.text(s)}))",
            lambda: f"({self.anything(s)} | tojson{rng.choice(('', '(indent=2)', f'(indent={n})'))})",
            lambda: f"({self.anything(s)} | string)",
            lambda: f"({self.text(s)}).{rng.choice(STR_METHODS).format(n=n)}",
            lambda: f"({self.text(s)}).join({self.sequence(s)})",
            lambda: f"({rng.choice(PERCENT_FORMATS)} % {self.anything(s)})",
            lambda: f"{rng.choice(STRINGS)}.format({self.anything(s)}, {self.anything(s)})",
            lambda: f"{rng.choice(self.macros)}({self.anything(s)})" if self.macros else "'m'",
            lambda: "blk" if "blk" in self.names else "''",
            lambda: f"lipsum({rng.choice(('1', '2', n))}, false)",
            lambda: f"({self.text(s)} if {self.condition(s)} else {self.text(s)})",
            lambda: f"{self.text(s)}[{rng.choice(('::-1', '1:', ':3', '0', '-1'))}]",
        )

    def sequence(self, d: int = 0) -> str:
        rng = self.rng
        if d > 2 or rng.random() < 0.3:
            return self.pick(
                lambda: "messages", lambda: f"range({self.number()})", lambda: "[]",
                lambda: "ns.l" if self.namespace else "[1]", lambda: "tools or []",
                lambda: "(m0.items() | list)", lambda: "[1, 'a', none]",
            )  # fmt: skip
        s = d + 1
        n = self.integer(s)
        return self.pick(
            lambda: f"[{', '.join(self.anything(s) for _ in range(rng.randrange(4)))}]",
            lambda: f"({self.sequence(s)} + {self.sequence(s)})",
            lambda: f"({self.sequence(s)} * {n})",
            lambda: f"({self.text(s)}).split({rng.choice(SPLITS)})",
            lambda: f"({self.text(s)} | list)",
            lambda: f"({self.sequence(s)} | {rng.choice(REORDERS)} | list)",
            lambda: f"({self.sequence(s)} | map({rng.choice(MAP_ARGS)}) | list)",
            lambda: f"({self.sequence(s)} | {rng.choice(SELECTS)} | list)",
            lambda: f"({self.sequence(s)} | selectattr('role', 'equalto', 'user') | list)",
            lambda: f"({self.sequence(s)} | batch({n}) | list)",
            lambda: f"({self.sequence(s)} | batch({n}, fill_with={self.anything(s)}) | list)",
            lambda: f"({self.sequence(s)} | slice({n}) | list)",
            lambda: f"({self.sequence(s)} | sum(start=[]))",
            lambda: f"({self.sequence(s)} | groupby('role') | list)",
            lambda: f"({self.sequence(s)}[{rng.choice(('::-1', '1:', ':2', '::2'))}])",
            lambda: f"(range({n}) | list)",
            lambda: f"(dict.fromkeys({self.sequence(s)}, {self.anything(s)}).items() | list)",
        )

    def condition(self, d: int = 0) -> str:
        rng = self.rng
        s = d + 1
        return self.pick(
            lambda: f"({self.anything(s)} is {'not ' if rng.random() < 0.3 else ''}{rng.choice(TESTS)})",
            lambda: f"({self.anything(s)} {rng.choice(('==', '!=', 'in', 'not in'))} {self.anything(s)})",
            lambda: f"({self.integer(s)} {rng.choice(('<', '>', '>=', '=='))} {self.integer(s)})",
            lambda: f"({self.text(s)}).startswith({rng.choice(STRINGS)})",
            lambda: "add_generation_prompt", lambda: "loop.first" if self.loops else "true",
            lambda: f"(not {self.condition(s)})",
            lambda: f"({self.condition(s)} {rng.choice(('and', 'or'))} {self.condition(s)})",
        )  # fmt: skip

    def anything(self, d: int = 0) -> str:
        rng = self.rng
        s = d + 1
        if rng.random() < 0.05:  # anything at all: type errors, undefined names, odd calls
            return rng.choice((
                "undefined_name", "m0.missing.attr", "none.x", "messages[99]", "(1 / 0)",
                "raise_exception('boom')", "cycler(1, 2).next()", "joiner(',')()",
                "namespace(a=1)", "dict(a=1) + 1", "loop.cycle(1, 2)", "self",
                f"{self.sequence(s)}.index(1)", f"({self.text(s)} - 1)",
            ))  # fmt: skip
        return self.pick(
            lambda: self.text(d), lambda: self.text(d), lambda: self.integer(d),
            lambda: self.sequence(d), lambda: self.condition(d), lambda: "m0",
            lambda: f"{{'k': {self.anything(s)}, 'n': {self.integer(s)}}}",
            lambda: "ns" if self.namespace else "none",
            lambda: f"dict(a={self.anything(s)})",
        )

    # --- statements ---------------------------------------------------------------------------

    def body(self, depth: int) -> str:
        return "".join(self.block(depth + 1) for _ in range(self.rng.randint(1, 3)))

    def block(self, depth: int) -> str:
        rng = self.rng
        if depth > 3:
            return f"{{{{ {self.anything()} }}}}"
        kind = rng.randrange(15)
        if kind in (0, 1):
            return rng.choice(("text ", "<|im_start|>", "\n", "{# c #}", " "))
        if kind in (2, 3):
            return f"{{{{ {self.anything()} }}}}"
        if kind == 4:
            elif_ = f"{{% elif {self.condition()} %}}{self.body(depth)}" if rng.random() < 0.3 else ""
            else_ = f"{{% else %}}{self.body(depth)}" if rng.random() < 0.4 else ""
            return f"{{% if {self.condition()} %}}{self.body(depth)}{elif_}{else_}{{% endif %}}"
        if kind in (5, 6, 7):
            return self.for_loop(depth)
        if kind == 8:
            var = rng.choice(("x", "y"))
            value = self.anything()
            self.names.append(var)
            return f"{{% set {var} = {value} %}}"
        if kind == 9 and self.namespace:
            attr, make = rng.choice((("a", self.text), ("n", self.integer), ("l", self.sequence)))
            op = {"a": "~", "n": "+", "l": "+"}[attr] if rng.random() < 0.7 else "*"
            return f"{{% set ns.{attr} = ns.{attr} {op} {make()} %}}"
        if kind == 10:
            block = f"{{% set blk %}}{self.body(depth)}{{% endset %}}"
            self.names.append("blk")
            return block
        if kind == 11:
            return self.macro(depth)
        if kind == 12:
            head = rng.choice(("upper", "trim", "center(40)", "indent(2)", "replace('a', 'bb')"))
            return f"{{% filter {head} %}}{self.body(depth)}{{% endfilter %}}"
        if kind == 13 and self.loops:
            return rng.choice(("{% break %}", "{% continue %}"))
        if kind == 13 and self.recursive:
            return f"{{{{ loop({self.sequence()}) }}}}"
        return f"{{% generation %}}{self.body(depth)}{{% endgeneration %}}"

    def for_loop(self, depth: int) -> str:
        rng = self.rng
        var = rng.choice(("m", "c", "i", "item"))
        iterable = self.pick(
            lambda: "messages", lambda: f"range({self.integer()})", self.sequence, self.text,
            lambda: "m0.content", lambda: f"({rng.choice(STRINGS)} * {self.integer()})",
        )  # fmt: skip
        recursive = rng.random() < 0.1
        cond = f" if {self.condition()}" if rng.random() < 0.15 else ""
        self.loops.append(var)
        self.recursive += recursive
        inner = self.body(depth)
        if recursive:
            inner += f"{{{{ loop({var} if {var} is iterable and {var} is not string else []) }}}}"
        self.loops.pop()
        self.recursive -= recursive
        else_ = f"{{% else %}}{self.body(depth)}" if rng.random() < 0.1 else ""
        rec = " recursive" if recursive else ""
        return f"{{% for {var} in {iterable}{cond}{rec} %}}{inner}{else_}{{% endfor %}}"

    def macro(self, depth: int) -> str:
        rng = self.rng
        name = f"mac{len(self.macros)}"
        outer_loops, self.loops = self.loops, []  # break/loop() do not reach into a macro
        self.names.append("arg")
        self.macros.append(name)  # visible in its own body: recursion
        body = self.body(depth)
        if rng.random() < 0.3:
            body += f"{{{{ {name}(arg ~ {rng.choice(STRINGS)}) }}}}"
        self.names.remove("arg")
        self.loops = outer_loops
        call = f"{{{{ {name}({self.anything()}) }}}}"
        return f"{{% macro {name}(arg, b=1) %}}{body}{{% endmacro %}}{call}"


@dataclass(frozen=True)
class Failure:
    """``kind``: exception (not an EtmError), late, limit (output or meter over) or differs."""

    kind: str
    template: str
    detail: str


@dataclass
class Summary:
    runs: int = 0
    finished: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    slowest: float = 0.0
    slowest_template: str = ""
    slowest_compile: float = 0.0
    slowest_cpu: float = 0.0
    late_on_wall_clock_only: int = 0  # over deadline + grace in wall time, not in CPU time
    compared: int = 0
    reference_failed: int = 0  # transformers ran out of memory or time (folding huge constants)
    max_steps_seen: int = 0
    max_built_seen: int = 0
    max_output_seen: int = 0
    seconds: float = 0.0

    def peak_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reason(exc: EtmError) -> str:
    text = exc.message
    for needle, reason in (
        ("time limit", "time"), ("steps of work", "steps"), ("memory limit", "memory"),
        ("does not compile", "syntax"), ("unsafe", "unsafe"), ("raised an error", "raised"),
        ("exhausted resources", "recursion"), ("range()", "range"), ("too large", "int size"),
        ("oversized", "format width"), ("limit", "size"),
    ):  # fmt: skip
        if needle in text:
            return reason
    if text.startswith("chat template failed: "):
        return "error " + text.split(": ")[1]
    return "other"


#: Templates holding these are not compared: they give different text (randomness, the clock)
#: or make transformers' unbounded environment fold a huge constant while compiling.
NOT_COMPARED = ("99999", "1000000", "lipsum", "strftime_now", "random")
#: The reference renderer runs in a child process with this much address space and time: it
#: folds constants while compiling, so ``[0] * (1000 * 1000 * 1000)`` in a branch that never
#: runs allocates 24 GB there (our sandbox leaves ``*`` to the rendering, which skips it).
REFERENCE_BYTES = 4 * 2**30
REFERENCE_SECONDS = 20.0


def reference(source: str, conversation: Sequence[Mapping[str, Any]], tools: Any) -> str:
    """What transformers renders (its ``render_jinja_template``, unbounded)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(  # annotated as str, returns (texts, indices)
        [[dict(m) for m in conversation]], chat_template=source, tools=tools,
        add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
    )  # fmt: skip
    return str(result[0][0])


def _reference_worker(conn: Connection) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (REFERENCE_BYTES, REFERENCE_BYTES))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", reference(*request)))
        except MemoryError:
            conn.send(("resources", "MemoryError"))
        except ValueError as exc:  # a folded integer too long to write into the code
            huge = "integer string conversion" in str(exc)
            conn.send(("resources" if huge else "error", f"ValueError: {exc}"[:300]))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))


class Reference:
    """transformers' renderer in a child process, bounded in memory and time, restarted after
    it runs out of either."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def render(self, source: str, conversation: Any, tools: Any) -> tuple[str, str]:
        """``("ok", text)``, ``("error", what)`` or ``("resources", what)``."""
        if self._process is None or not self._process.is_alive() or self._conn is None:
            self.close()
            context = multiprocessing.get_context("fork")
            self._conn, child = context.Pipe()
            self._process = context.Process(target=_reference_worker, args=(child,), daemon=True)
            self._process.start()
            child.close()
        try:
            self._conn.send((source, [dict(m) for m in conversation], tools))
            if self._conn.poll(REFERENCE_SECONDS):
                status, text = self._conn.recv()
                return str(status), str(text)
        except (EOFError, OSError):
            pass
        self.close()
        return "resources", "the reference ran out of time or memory"

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = self._conn = None


def _compare(
    source: str, conversation: Any, tools: Any, output: str, summary: Summary, ref: Reference
) -> None:
    if any(s in source for s in NOT_COMPARED) or " at 0x" in output:
        return
    if any(v is None for message in conversation for v in message.values()):
        return  # transformers' render_jinja_template keeps None values; apply_chat_template drops them
    status, expected = ref.render(source, conversation, tools)
    if status == "resources":
        summary.reference_failed += 1
        return
    summary.compared += 1
    if status != "ok":
        detail = f"transformers raised {expected}"
        summary.failures.append(Failure("differs", source, detail))
    elif expected != output:
        detail = f"differs from transformers: {output[:200]!r} != {expected[:200]!r}"
        summary.failures.append(Failure("differs", source, detail))


def execute(
    source: str,
    limits: RenderLimits,
    rng: random.Random,
    summary: Summary,
    ref: Reference | None = None,
) -> None:
    """Compile and render one template; record its outcome and any failure in ``summary``."""
    conversation = rng.choice(CONVERSATIONS)
    tools = TOOLS if rng.random() < 0.3 else None
    budgets: list[Budget] = []
    token = RECORD.set(budgets)
    output = ""
    finished = False
    started, cpu_started = time.perf_counter(), time.process_time()
    compiled_at = cpu_compiled = None
    try:
        compiled = compile_template(source)
        compiled_at, cpu_compiled = time.perf_counter(), time.process_time()
        output = render_chat(compiled, conversation, bos_token="<s>", eos_token="</s>",
                             tools=tools, limits=limits)  # fmt: skip
        summary.finished += 1
        finished = True
    except EtmError as exc:
        summary.refused[f"{type(exc).__name__}: {_reason(exc)}"] += 1
        if "MemoryError" in exc.message:  # a bound that did not hold: Python ran out first
            summary.failures.append(Failure("limit", source, exc.message))
    except Exception:  # a failure: anything that is not a refusal
        summary.failures.append(Failure("exception", source, traceback.format_exc(limit=-4)))
    finally:
        RECORD.reset(token)
    ended, cpu_ended = time.perf_counter(), time.process_time()
    summary.runs += 1
    # Wall-clock times, and the CPU times that tell a slow execution from a loaded machine.
    compiling = (compiled_at or ended) - started
    cpu_compiling = (cpu_compiled or cpu_ended) - cpu_started
    rendering = ended - compiled_at if compiled_at is not None else 0.0
    cpu_rendering = cpu_ended - cpu_compiled if cpu_compiled is not None else 0.0
    if ended - started > summary.slowest:
        summary.slowest, summary.slowest_template = ended - started, source
    summary.slowest_cpu = max(summary.slowest_cpu, cpu_ended - cpu_started)
    summary.slowest_compile = max(summary.slowest_compile, compiling)
    summary.max_output_seen = max(summary.max_output_seen, len(output))
    problems = []
    for what, wall, cpu, deadline in (
        ("rendering", rendering, cpu_rendering, limits.max_seconds),
        ("compiling", compiling, cpu_compiling, COMPILE_SECONDS),
    ):
        if cpu > deadline + GRACE_SECONDS:
            problems.append(Failure("late", source, f"{what} took {wall:.2f} s ({cpu:.2f} s CPU)"))
        elif wall > deadline + GRACE_SECONDS:
            summary.late_on_wall_clock_only += 1
    if len(output) > limits.max_output_chars:
        problems.append(Failure("limit", source, f"output of {len(output)} characters"))
    for budget in budgets:
        summary.max_steps_seen = max(summary.max_steps_seen, budget.meter.steps)
        summary.max_built_seen = max(summary.max_built_seen, budget.meter.built)
        if budget.meter.steps > budget.max_steps or budget.meter.built > budget.max_built:
            detail = f"meter over its limits: {budget.meter.steps} steps, {budget.meter.built} built"
            problems.append(Failure("limit", source, detail))
    summary.failures += problems
    if ref is not None and finished and not problems:
        _compare(source, conversation, tools, output, summary, ref)


def fuzz(
    runs: int,
    seed: int,
    limits: RenderLimits = FUZZ_LIMITS,
    progress: Callable[[Summary], None] | None = None,
    compare: bool = False,
) -> Summary:
    """Generate and execute ``runs`` templates from ``seed``; the same seed gives the same run."""
    rng = random.Random(seed)
    generator = TemplateGenerator(rng)
    summary = Summary()
    ref = Reference() if compare else None
    started = time.perf_counter()
    try:
        for i in range(runs):
            execute(generator.template(), limits, rng, summary, ref)
            if progress is not None and (i + 1) % 5000 == 0:
                progress(summary)
    finally:
        if ref is not None:
            ref.close()
    summary.seconds = time.perf_counter() - started
    return summary


def report(summary: Summary, limits: RenderLimits, show: int = 5) -> str:
    lines = [
        f"runs: {summary.runs}  finished: {summary.finished}  "
        f"refused: {sum(summary.refused.values())}  failures: {len(summary.failures)}  "
        f"compared with transformers: {summary.compared} "
        f"(not compared, transformers ran out of memory or time: {summary.reference_failed})",
        f"limits: {limits.max_seconds} s, {limits.max_output_chars} characters, "
        f"{limits.max_steps} steps, {limits.built_limit} built",
        f"wall time: {summary.seconds:.0f} s  peak RSS: {summary.peak_rss_mib():.0f} MiB",
        f"slowest execution: {summary.slowest:.3f} s wall, {summary.slowest_cpu:.3f} s CPU "
        f"(compiling at most {summary.slowest_compile:.3f} s wall)",
        f"late on the wall clock only (machine load, not the template): "
        f"{summary.late_on_wall_clock_only}",
        f"most steps: {summary.max_steps_seen}  most built: {summary.max_built_seen}  "
        f"longest output: {summary.max_output_seen}",
        f"slowest template: {summary.slowest_template[:300]!r}",
        "refused by class and reason:",
        *(f"  {count:7d}  {what}" for what, count in summary.refused.most_common()),
    ]
    kinds = Counter(failure.kind for failure in summary.failures)
    lines += [f"failures by kind: {dict(kinds) or 'none'}"]
    for failure in summary.failures[:show]:
        detail = failure.detail.strip().replace("\n", "\n  ")
        lines += [f"FAILURE ({failure.kind}): {detail}", f"  template: {failure.template!r}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=FUZZ_LIMITS.max_seconds)
    parser.add_argument("--max-output-chars", type=int, default=FUZZ_LIMITS.max_output_chars)
    parser.add_argument("--max-steps", type=int, default=FUZZ_LIMITS.max_steps)
    parser.add_argument("--show", type=int, default=5, help="failures to print in full")
    parser.add_argument("--no-compare", action="store_true", help="do not render with transformers")
    args = parser.parse_args(argv)
    limits = RenderLimits(args.max_seconds, args.max_output_chars, args.max_steps)

    def progress(summary: Summary) -> None:
        print(f"... {summary.runs} runs, {len(summary.failures)} failures, "
              f"peak RSS {summary.peak_rss_mib():.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip

    summary = fuzz(args.runs, args.seed, limits, progress, compare=not args.no_compare)
    print(report(summary, limits, args.show))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
