"""etm_compat.prompt.substitution: the substitution form equals the Jinja rendering wherever it is stored."""

from __future__ import annotations

import os
from typing import Any

import pytest

from etm_compat.errors import MetadataError, UsageError
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat
from etm_compat.prompt.families import get_family, load_registry
from etm_compat.prompt.substitution import PromptFormat, apply_prompt_format, derive_prompt_format

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CASES = [(f.id, name) for f in load_registry().values() for name in f.templates()]
# Families whose template is plain per-role substitution: the form must be found.
STORED = {
    ("llama3", "default"),
    ("llama3_1", "default"),
    ("qwen2_5", "default"),
    ("smollm2", "default"),
    ("phi_3_5", "default"),
    ("phi_4_mini", "default"),
    ("gemma2", "default"),
    ("gemma", "default"),
    ("mistral", "v0.2-legacy"),
}
# Templates that treat messages by position or by date: no exact substitution form exists.
NOT_STORED = {
    ("mistral", "default"),
    ("llama2", "default"),
    ("llama3_2", "default"),
    ("gemma3", "default"),
}


def derive(family_id: str, variant: str) -> PromptFormat | None:
    family = get_family(family_id)
    return derive_prompt_format(
        family.templates()[variant], bos_token=family.bos_token, eos_token=family.eos_token
    )


def hf_render(family_id: str, variant: str, messages: Any, gen: bool) -> str:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    family = get_family(family_id)
    kwargs = {
        k: v for k, v in (("bos_token", family.bos_token), ("eos_token", family.eos_token)) if v
    }
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), **kwargs
    )
    tok.chat_template = family.templates()[variant]
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


@pytest.mark.parametrize(("family_id", "variant"), CASES)
def test_stored_form_equals_jinja_and_transformers(family_id: str, variant: str) -> None:
    fmt = derive(family_id, variant)
    if (family_id, variant) in STORED:
        assert fmt is not None
    if (family_id, variant) in NOT_STORED:
        assert fmt is None
    if fmt is None:
        return
    family = get_family(family_id)
    for name, messages in STANDARD_CONVERSATIONS.items():
        for gen in (True, False):
            try:
                expected = render_chat(
                    family.templates()[variant],
                    messages,
                    add_generation_prompt=gen,
                    bos_token=family.bos_token,
                    eos_token=family.eos_token,
                )
            except Exception:
                with pytest.raises(UsageError):
                    apply_prompt_format(fmt, messages, add_generation_prompt=gen)
                continue
            actual = apply_prompt_format(fmt, messages, add_generation_prompt=gen)
            assert actual == expected, (name, gen)
            assert actual == hf_render(family_id, variant, messages, gen)


def test_qwen_form_keeps_the_default_system_prompt() -> None:
    fmt = derive("qwen2_5", "default")
    assert fmt is not None and fmt.default_system is not None
    assert "Alibaba Cloud" in fmt.default_system
    assert fmt.bos is None


def test_bos_is_recognised_only_when_the_template_emits_bos_token() -> None:
    llama3 = derive("llama3", "default")
    smollm = derive("smollm2", "default")  # BOS text <|im_start|> is literal role markup, not BOS
    assert llama3 is not None and llama3.bos == "<|begin_of_text|>"
    assert smollm is not None and smollm.bos is None


def test_form_without_generation_prompt_ends_like_the_template() -> None:
    fmt = derive("phi_3_5", "default")
    assert fmt is not None and fmt.end == "<|endoftext|>"  # the template appends eos_token


def test_position_dependent_template_is_not_reduced() -> None:
    template = (
        "{% for m in messages %}{% if loop.first %}FIRST:{% endif %}{{ m.role }}:{{ m.content }};"
        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    assert derive_prompt_format(template, bos_token=None, eos_token=None) is None


def test_template_that_transforms_content_is_not_reduced() -> None:
    template = "{% for m in messages %}[{{ m.role }}]{{ m.content | upper }}{% endfor %}"
    assert derive_prompt_format(template, bos_token=None, eos_token=None) is None


def test_json_round_trip_and_validation() -> None:
    fmt = derive("llama3", "default")
    assert fmt is not None
    assert PromptFormat.from_json(fmt.to_json()) == fmt
    bad = fmt.to_json()
    bad["roles"]["tool"] = {"prefix": "x", "suffix": "y"}
    bad["roles"]["user"] = {"prefix": 3, "suffix": "y"}
    bad["generation_prompt"] = "x" * 5000
    bad["evil"] = 1
    with pytest.raises(MetadataError) as info:
        PromptFormat.from_json(bad)
    message = str(info.value)
    for needle in ("tool", "roles.user.prefix", "generation_prompt", "evil"):
        assert needle in message
    with pytest.raises(MetadataError):
        PromptFormat.from_json(["not", "an", "object"])


def test_apply_refuses_unknown_roles_and_empty_conversations() -> None:
    fmt = derive("gemma2", "default")
    assert fmt is not None
    with pytest.raises(UsageError):
        apply_prompt_format(fmt, STANDARD_CONVERSATIONS["system_user"])
    with pytest.raises(UsageError):
        apply_prompt_format(fmt, [])
