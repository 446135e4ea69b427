"""etm_compat.prompt.chat: byte-identical to transformers' apply_chat_template, and a sandbox that holds."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import pytest
from conftest import hang_guard, peak_allocation

from etm_compat.errors import TemplateError, UsageError
from etm_compat.prompt import chat
from etm_compat.prompt.chat import (
    STANDARD_CONVERSATIONS,
    RenderLimits,
    compile_template,
    render_chat,
)
from etm_compat.prompt.families import load_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FROZEN = datetime(2025, 2, 3, 4, 5, 6)
CASES = [(family.id, name) for family in load_registry().values() for name in family.templates()]


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime:
        return FROZEN


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """strftime_now must give the same date in both renderers."""
    import transformers.utils.chat_template_utils as hf_utils

    monkeypatch.setattr(hf_utils, "datetime", _FrozenDatetime)
    monkeypatch.setattr(chat, "_now", lambda: FROZEN)


def hf_tokenizer(bos: str | None, eos: str | None, template: str) -> Any:
    """A real (tiny, offline) fast tokenizer carrying the template and the special tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    kwargs = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        unk_token="<unk>",
        **kwargs,
    )
    tok.chat_template = template
    return tok


def hf_render(tok: Any, messages: Any, **kwargs: Any) -> str | type[Exception]:
    try:
        return str(tok.apply_chat_template(messages, tokenize=False, **kwargs))
    except Exception as exc:  # jinja2 errors, TypeError, ValueError...: any failure is "raises"
        return type(exc)


def ours(
    template: str, messages: Any, bos: str | None, eos: str | None, **kwargs: Any
) -> str | type[Exception]:
    try:
        return render_chat(
            template,
            messages,
            bos_token=bos,
            eos_token=eos,
            special_tokens={"unk_token": "<unk>"},
            **kwargs,
        )
    except (TemplateError, UsageError) as exc:
        return type(exc)


@pytest.mark.parametrize(("family_id", "variant"), CASES)
def test_every_family_template_renders_like_transformers(family_id: str, variant: str) -> None:
    family = load_registry()[family_id]
    template = family.templates()[variant]
    tok = hf_tokenizer(family.bos_token, family.eos_token, template)
    rendered_any = False
    for name, messages in STANDARD_CONVERSATIONS.items():
        for gen in (True, False):
            expected = hf_render(tok, messages, add_generation_prompt=gen)
            actual = ours(
                template, messages, family.bos_token, family.eos_token, add_generation_prompt=gen
            )
            if isinstance(expected, str):
                rendered_any = True
                assert actual == expected, (name, gen)
            else:
                assert not isinstance(actual, str), (
                    f"{name}: transformers raised {expected}, we rendered"
                )
    assert rendered_any


@pytest.mark.parametrize("family_id", ["qwen3", "llama3_2", "llama3_1", "qwen2_5", "mistral"])
def test_tools_and_extra_variables_render_like_transformers(family_id: str) -> None:
    family = load_registry()[family_id]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city — «unicode» kept",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = STANDARD_CONVERSATIONS["system_user"]
    tok = hf_tokenizer(family.bos_token, family.eos_token, family.chat_template)
    for kwargs in ({"tools": tools}, {"enable_thinking": False}, {"date_string": "01 Jan 2030"}):
        expected = hf_render(tok, messages, add_generation_prompt=True, **kwargs)
        actual = ours(family.chat_template, messages, family.bos_token, family.eos_token, **kwargs)
        assert actual == expected, kwargs


@pytest.mark.parametrize("family_id", ["llama3", "qwen2_5", "phi_3_5", "gemma2", "deepseek_v3"])
def test_continue_final_message_like_transformers(family_id: str) -> None:
    family = load_registry()[family_id]
    messages = [
        *STANDARD_CONVERSATIONS["user"],
        {"role": "assistant", "content": "The capital is "},
    ]
    tok = hf_tokenizer(family.bos_token, family.eos_token, family.chat_template)
    expected = hf_render(tok, messages, continue_final_message=True)
    actual = ours(
        family.chat_template,
        messages,
        family.bos_token,
        family.eos_token,
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert isinstance(expected, str)
    assert actual == expected


def test_none_values_dropped_and_reasoning_aliased_like_transformers() -> None:
    template = "{% for m in messages %}[{{ m.role }}|{{ m.tool_calls }}|{{ m.reasoning_content }}]{% endfor %}"
    messages = [{"role": "assistant", "content": "x", "tool_calls": None, "thinking": "hmm"}]
    tok = hf_tokenizer("<s>", "</s>", template)
    assert ours(template, messages, "<s>", "</s>") == hf_render(
        tok, messages, add_generation_prompt=True
    )


def test_null_values_as_transformers_5_else_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}]
    # transformers 5.x drops the null key, so a template telling null from missing sees it missing.
    shows = "{% for m in messages %}{% if m.content is none %}null{% elif m.content is defined %}" \
        "{{ m.content }}{% else %}missing{% endif %}{% endfor %}"  # fmt: skip
    assert ours(shows, messages, None, None) == hf_render(hf_tokenizer(None, None, shows), messages) == "missing"
    # One that needs the key fails on that form; transformers' own renderer, given the messages
    # as they are, renders them, and so do we instead of failing.
    needs = "{% for m in messages %}{{ m.content | tojson }}{% endfor %}"
    assert hf_render(hf_tokenizer(None, None, needs), messages) is TypeError
    (as_given,), _ = render_jinja_template([messages], chat_template=needs)
    assert ours(needs, messages, None, None) == as_given == "null"
    # Without a null value nothing is rendered twice: the first failure is the error.
    renders: list[int] = []
    generate = chat._generate
    monkeypatch.setattr(chat, "_generate", lambda *a: renders.append(1) or generate(*a))
    assert ours(needs, [{"role": "user"}], None, None) is TemplateError and len(renders) == 1
    assert ours(needs, messages, None, None) == "null" and len(renders) == 3


def test_tojson_matches_transformers_filter() -> None:
    template = "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2, sort_keys=True) }}"
    messages = [{"role": "user", "content": "é <b>&'"}]
    tok = hf_tokenizer(None, None, template)
    assert ours(template, messages, None, None) == hf_render(
        tok, messages, add_generation_prompt=True
    )


def test_generation_block_and_loop_controls_render_transparently() -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert (
        render_chat(template, STANDARD_CONVERSATIONS["multi_turn"])
        == STANDARD_CONVERSATIONS["multi_turn"][0]["content"]
    )


def test_raise_exception_becomes_template_error() -> None:
    with pytest.raises(TemplateError, match="no system here"):
        render_chat("{{ raise_exception('no system here') }}", STANDARD_CONVERSATIONS["user"])


def test_syntax_error_is_template_error() -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        compile_template("{% for m in messages %}")


def test_empty_conversation_and_conflicting_flags_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        render_chat("x", [])
    with pytest.raises(UsageError):
        render_chat(
            "{{ messages[-1].content }}",
            STANDARD_CONVERSATIONS["user"],
            continue_final_message=True,
        )


ESCAPES = [
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ messages.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self._TemplateReference__context }}",
    "{{ raise_exception.__globals__ }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{{ '{0.__globals__}'.format(raise_exception) }}",
    "{{ messages[0]['__class__'] }}",
    "{% set ns = namespace() %}{% set ns._private = 1 %}",
    "{{ namespace(__dict__=1) }}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update(role='x') }}",
    "{{ dict.__class__ }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_fail_with_template_error(template: str) -> None:
    with pytest.raises(TemplateError):
        render_chat(template, STANDARD_CONVERSATIONS["user"])


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(0) }}",
    ],
)
def test_runaway_loops_are_stopped_in_bounded_time(template: str) -> None:
    limits = RenderLimits(max_seconds=0.5, max_output_chars=50_000_000)
    with hang_guard(60), pytest.raises(TemplateError):  # the refusal is the proof it was stopped
        render_chat(template, STANDARD_CONVERSATIONS["user"], limits=limits)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 100000000 }}",
        "{{ messages * 10000000 }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'ab' | replace('a', 'a' * 900000) | replace('a', 'a' * 900000) }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
        "{{ 7 ** 1000000000 }}",
    ],
)
def test_huge_output_is_refused_before_it_is_built(template: str) -> None:
    with peak_allocation() as peak, pytest.raises(TemplateError, match=r"limit|too large"):
        render_chat(
            template,
            STANDARD_CONVERSATIONS["user"],
            limits=RenderLimits(max_output_chars=1_000_000),
        )
    assert peak[0] < 64 * 1024 * 1024  # counted, not timed: the output was never built
