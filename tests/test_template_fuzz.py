"""tools/fuzz_templates.py, short: random templates finish or are refused, within every counted limit.

The long run (100,000 executions) is recorded in docs/FUZZING.md. This variant runs 300 with a
fixed seed and asserts what is counted, never what is timed: no exception other than an
EtmError escapes, no output is over the limit, no budget's steps or built characters are over
their maximum, and every finished rendering that can be compared is byte-identical to
transformers' own renderer.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conftest import hang_guard

ROOT = Path(__file__).resolve().parent.parent


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_templates", ROOT / "tools" / "fuzz_templates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_templates", module)
    spec.loader.exec_module(module)
    return module


def test_random_templates_finish_or_are_refused_within_their_limits() -> None:
    harness = _harness()
    with hang_guard(600):  # a hang guard, not a speed check
        summary = harness.fuzz(300, seed=20261130, compare=True)
    counted = [f for f in summary.failures if f.kind != "late"]  # timing is for the long run
    assert counted == [], harness.report(summary, harness.FUZZ_LIMITS)
    assert summary.runs == 300
    # The run exercises both outcomes and the limits themselves, not only template errors.
    assert summary.finished >= 30 and summary.compared >= 10
    reasons = " ".join(summary.refused)
    assert "steps" in reasons or "time" in reasons or "size" in reasons
    assert summary.max_steps_seen <= harness.FUZZ_LIMITS.max_steps
    assert summary.max_output_seen <= harness.FUZZ_LIMITS.max_output_chars


def test_the_generator_is_deterministic_and_varied() -> None:
    harness = _harness()
    first = [harness.TemplateGenerator(harness.random.Random(5)).template() for _ in range(3)]
    again = [harness.TemplateGenerator(harness.random.Random(5)).template() for _ in range(3)]
    assert first == again
    many = harness.TemplateGenerator(harness.random.Random(6))
    sources = "".join(many.template() for _ in range(200))
    for construct in ("{% for ", " recursive %}", "{% macro ", "{% set ns.", "{% filter ",
                      "{% if ", "{% break %}", " | join(", " * ", " ~ ", "loop.", "messages"):  # fmt: skip
        assert construct in sources, construct
