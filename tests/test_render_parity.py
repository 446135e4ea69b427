"""Rendering at parity with transformers' ``apply_chat_template`` (the installed 5.x).

Three classes of difference were found on a public corpus of real chat templates; each is checked
here against transformers itself, end to end through a deployment folder (and its archive):

* special-token strings: the template sees the deployment's own (tokenizer_config.json,
  special_tokens_map.json: bos, eos, unk, pad, image_token, ...), never a registry family's;
* roles: any role reaches the template, which decides what it accepts;
* null content: ``{"content": null, "tool_calls": [...]}`` renders as transformers 5.x renders it
  (None-valued keys dropped), and where that breaks the template, as transformers' own renderer
  renders the messages as given.

Then Qwen3 and Llama 3.1 (the registry's templates) with and without tools and with
``enable_thinking=False``, byte for byte. Every expected string is made by transformers here, from
the same files (``PreTrainedTokenizerFast.from_pretrained`` on the deployment folder: the real
tokenizer.json of the fixture and the tokenizer_config.json the test writes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

import etm_compat
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import main
from etm_compat.errors import TemplateError
from etm_compat.prompt.families import get_family

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: parity with apply_chat_template is not checked"
)
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

HF = FIXTURES / "legacy" / "hf_style"
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
ASK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris? «ünïcødé»"},
]


def deployment(tmp_path: Path, template: str, **config: Any) -> Path:
    """hf_style (a real byte-level BPE tokenizer.json and tiny llama) with this template and
    these tokenizer_config.json entries instead of its own."""
    folder = tmp_path / "deploy"
    shutil.copytree(HF, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


def hf_render(folder: Path, messages: Any, **kwargs: Any) -> str:
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    kwargs.setdefault("add_generation_prompt", True)
    return str(tok.apply_chat_template(messages, tokenize=False, **kwargs))


def ours(folder: Path, messages: Any, **kwargs: Any) -> str:
    """Rendered from the folder and from its archive, which must agree."""
    archive = folder.parent / "packed.etm"
    if not archive.exists():
        assert main(["pack", str(folder), "-o", str(archive)]) == EXIT_OK
    from_folder = etm_compat.render(folder, messages, **kwargs)
    assert etm_compat.render(archive, messages, **kwargs) == from_folder
    return from_folder


# --- special-token strings -------------------------------------------------------------------


def test_a_zephyr_style_template_gets_the_configs_eos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The config's "</s>" is not an added token of this tokenizer: the runner's eos is another
    # token (<|im_end|>, from the program). The template still gets the config's string.
    folder = deployment(tmp_path, ZEPHYR, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = hf_render(folder, messages)
    assert expected == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert ours(folder, messages) == expected
    with etm_compat.load(folder.parent / "packed.etm") as bundle:
        tokenizer = bundle.metadata["tokenizer"]
    assert tokenizer["special_tokens_map"] == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert tokenizer["eos_tokens"][0] != "</s>"  # what the runner stops at is another matter


SHOW = (
    "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ sep_token }}|{{ image_token }}|"
    "{{ boi_token }}|{{ audio_token }}|{% for m in messages %}{{ m.content }}{% endfor %}"
)


@pytest.mark.parametrize(
    ("config", "special_map"),
    [
        ({"bos_token": "<s>", "eos_token": {"__type": "AddedToken", "content": "</s>"}, "image_token": "<img>",
          "boi_token": {"content": "<boi>"}, "add_bos_token": True, "extra_special_tokens": {"audio_token": "<aud>"}},
         None),
        ({"bos_token": "", "eos_token": None, "pad_token": "<pad>", "additional_special_tokens": ["<a>"]}, None),
        ({"eos_token": "</s>", "bos_token": "<s>"}, {"eos_token": "<|im_end|>", "unk_token": {"content": "<unk>"}}),
        ({"eos_token": "</s>", "added_tokens_decoder": {}}, {"eos_token": "<|im_end|>", "unk_token": "<unk>"}),
        ({"sep_token": "<sep>", "image_token": "<image>"}, {"image_token": "<picture>"}),
    ],
)  # fmt: skip
def test_every_special_token_transformers_exposes(
    tmp_path: Path, config: dict[str, Any], special_map: dict[str, Any] | None
) -> None:
    folder = deployment(tmp_path, SHOW, **config)
    if special_map is not None:
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    messages = [{"role": "user", "content": "x"}]
    assert ours(folder, messages) == hf_render(folder, messages)


def test_without_configs_the_tokenizers_own_strings(tmp_path: Path) -> None:
    # A SentencePiece deployment has no config: the template gets the tokenizer's <s> and </s>.
    folder = tmp_path / "sp"
    shutil.copytree(FIXTURES / "legacy" / "et_example", folder)
    shown = etm_compat.render(folder, [{"role": "user", "content": "x"}], family="phi_3_5")
    assert shown.endswith("<|user|>\nx<|end|>\n<|assistant|>\n")
    with etm_compat.load(folder) as bundle:
        assert bundle.metadata["tokenizer"]["special_tokens_map"] == {"bos_token": "<s>", "eos_token": "</s>"}


# --- roles ------------------------------------------------------------------------------------

ROLES = ["system", "developer", "user", "assistant", "function", "observation", "tool_response", "ipython"]


def test_any_role_reaches_the_template(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{{ eos_token }}"
    folder = deployment(tmp_path, template, eos_token="<|im_end|>")
    messages = [{"role": role, "content": f"({role})"} for role in ROLES]
    expected = hf_render(folder, messages)
    assert "<|observation|>(observation)" in expected
    assert ours(folder, messages) == expected


# --- null content -----------------------------------------------------------------------------

TOOL_TURN = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "22C", "name": "get_weather"},
]


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "llama3_1", "llama3_2_vision"])
def test_null_content_renders_as_transformers_renders_it(tmp_path: Path, family: str) -> None:
    folder = deployment(tmp_path, get_family(family).chat_template, bos_token="<s>", eos_token="</s>")
    expected = hf_render(folder, TOOL_TURN)
    assert "None" not in expected  # transformers 5.x drops the null key: no literal "None"
    assert ours(folder, TOOL_TURN) == expected


def test_null_content_that_only_the_messages_as_given_render(tmp_path: Path) -> None:
    # LFM2's template serialises every message key, content included: with the null key dropped
    # (apply_chat_template 5.x) it fails; transformers' own renderer, given the messages as they
    # are, renders them. So do we, rather than fail.
    template = get_family("lfm2").chat_template
    folder = deployment(tmp_path, template, bos_token="<|startoftext|>", eos_token="<|im_end|>")
    with pytest.raises(TypeError):
        hf_render(folder, TOOL_TURN)
    (as_given,), _ = render_jinja_template(
        [TOOL_TURN], chat_template=template, add_generation_prompt=True,
        bos_token="<|startoftext|>", eos_token="<|im_end|>",
    )  # fmt: skip
    assert ours(folder, TOOL_TURN) == as_given


def test_a_template_that_fails_both_ways_reports_transformers_failure(tmp_path: Path) -> None:
    folder = deployment(tmp_path, get_family("qwen3").chat_template, eos_token="<|im_end|>")
    with pytest.raises(Exception, match="no attribute 'content'"):
        hf_render(folder, TOOL_TURN)
    with pytest.raises(TemplateError, match="no attribute 'content'"):
        etm_compat.render(folder, TOOL_TURN)


# --- Qwen3 and Llama 3.1, with and without tools ------------------------------------------------

QWEN3_TOOL_CONVERSATION = [
    *ASK,
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temperature": 22}'},
]
LLAMA_TOOL_CONVERSATION = [
    *ASK,
    {"role": "assistant", "tool_calls": [CALL]},
    {"role": "ipython", "content": '{"temperature": 22}'},
]


@pytest.mark.parametrize(
    ("family", "config", "conversation"),
    [
        ("qwen3", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, QWEN3_TOOL_CONVERSATION),
        ("llama3_1", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA_TOOL_CONVERSATION),
    ],
)
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("variables", [{}, {"enable_thinking": False}], ids=["defaults", "no-thinking"])
def test_qwen3_and_llama31_match_transformers(
    tmp_path: Path,
    family: str,
    config: dict[str, str],
    conversation: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    variables: dict[str, Any],
) -> None:
    folder = deployment(tmp_path, get_family(family).chat_template, **config)
    for messages in (ASK, conversation if tools else ASK):
        expected = hf_render(folder, messages, tools=tools, **variables)
        assert ours(folder, messages, tools=tools, **variables) == expected
    if family == "qwen3" and variables:
        assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    if tools:
        assert "get_weather" in expected


def test_the_command_line_gives_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = deployment(tmp_path, get_family("qwen3").chat_template, eos_token="<|im_end|>")
    tools, messages = tmp_path / "tools.json", tmp_path / "messages.json"
    tools.write_text(json.dumps(TOOLS))
    messages.write_text(json.dumps(QWEN3_TOOL_CONVERSATION, ensure_ascii=False))
    capsys.readouterr()
    args = ["render", str(folder), "--messages", str(messages), "--tools", str(tools)]
    assert main([*args, "--var", "enable_thinking=false", "--json"]) == EXIT_OK
    prompt = json.loads(capsys.readouterr().out)["prompt"]
    assert prompt == hf_render(folder, QWEN3_TOOL_CONVERSATION, tools=TOOLS, enable_thinking=False)
