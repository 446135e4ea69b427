"""Regression tests for crashes the fuzzers found (docs/FUZZING.md lists each finding).

Each test replays the smallest input that escaped as a non-EtmError, through the public API.
"""

from __future__ import annotations

import pytest

from etm_compat.chat import STANDARD_CONVERSATIONS, render_chat
from etm_compat.errors import TemplateError


@pytest.mark.parametrize(
    "template",
    [
        "{% break %}",
        "{% if messages %}{% continue %}{% endif %}",
        "{% macro f() %}{% break %}{% endmacro %}{{ f() }}",
    ],
)
def test_loop_control_outside_a_loop_is_a_template_error(template: str) -> None:
    # Finding 1 (template fuzzer): Jinja's loopcontrols extension emits Python `break` for
    # `{% break %}` anywhere, and Python's compile() raised a bare SyntaxError.
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat(template, STANDARD_CONVERSATIONS["user"])
