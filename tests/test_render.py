"""`etm-compat render`: the same prompt from an archive and from its legacy folder, equal to HF's,
with the options apply_chat_template has (tools, documents, template variables, prefill)."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from conftest import FIXTURES

from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.errors import UsageError
from etm_compat.prompt.families import get_family

HF = FIXTURES / "legacy" / "hf_style"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2? «ünïcødé»"},
]


def render_json(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["render", "--json", *args]) == EXIT_OK
    return json.loads(capsys.readouterr().out)["prompt"]


@pytest.fixture
def messages(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(CONVERSATION, ensure_ascii=False), encoding="utf-8")
    return path


def test_archive_and_folder_render_identically_and_like_transformers(tmp_path, messages, capsys):
    archive = tmp_path / "m.etm"
    assert main(["pack", str(HF), "-o", str(archive)]) == EXIT_OK
    from_folder = render_json(capsys, str(HF), "--messages", str(messages))
    from_archive = render_json(capsys, str(archive), "--messages", str(messages))
    assert from_folder == from_archive
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(HF / "tokenizer.json"))
    tok.chat_template = json.loads((HF / "tokenizer_config.json").read_text())["chat_template"]
    expected = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert from_archive == expected
    no_gen = render_json(capsys, str(archive), "--messages", str(messages), "--no-generation-prompt")
    assert no_gen == tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert from_archive.startswith(no_gen) and from_archive != no_gen


def test_family_override_changes_the_format(messages, capsys):
    qwen = render_json(capsys, str(FIXTURES / "legacy" / "et_example"), "--messages", str(messages), "--family", "qwen3")
    assert "<|im_start|>user" in qwen


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty"),
        ('[{"content": "x"}]', "role"),
        ('[{"role": "user", "content": 3}]', "content must be a string"),
        ('[{"role": "user", "content": NaN}]', "not a JSON number"),
        ('[{"role": "user", "content": "x", "n": 1e999}]', "out of range"),
        ('[{"role": "user", "content": "x", "n": ' + "9" * 200 + "}]", "digits"),
        ("[" * 100 + "]" * 100, "nested 100 levels"),
    ],
)
def test_bad_messages_file(tmp_path, capsys, content, needle):
    path = tmp_path / "m.json"
    path.write_text(content)
    assert main(["render", str(HF), "--messages", str(path)]) == EXIT_BAD_INPUT
    assert needle in capsys.readouterr().err


def test_unknown_family_is_usage_error(messages, capsys):
    assert main(["render", str(HF), "--messages", str(messages), "--family", "nope"]) == EXIT_USAGE
    assert "qwen3" in capsys.readouterr().err  # the error lists the known families


# --- the options apply_chat_template has -------------------------------------------------------

QWEN3 = get_family("qwen3").chat_template
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture
def qwen3_folder(tmp_path):
    """hf_style with Qwen3's template in its tokenizer_config.json (a real Qwen3-style folder)."""
    folder = tmp_path / "qwen3"
    shutil.copytree(HF, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN3
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_any_role_reaches_the_template(tmp_path, capsys):
    path = tmp_path / "m.json"
    roles = ["system", "user", "observation", "function", "tool_response", "ipython", "developer"]
    path.write_text(json.dumps([{"role": r, "content": f"<{r}>"} for r in roles]))
    prompt = render_json(capsys, str(HF), "--messages", str(path), "--family", "llama3")
    for role in roles:
        assert f"<|start_header_id|>{role}<|end_header_id|>\n\n<{role}><|eot_id|>" in prompt


def test_one_user_message_and_stdin(capsys, monkeypatch):
    quick = render_json(capsys, str(HF), "--user", "What is 2+2? «ünïcødé»")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(CONVERSATION[3:]).encode())))
    piped = render_json(capsys, str(HF), "--messages", "-")
    assert quick == piped and quick.endswith("What is 2+2? «ünïcødé»<|im_end|>\n<|im_start|>assistant\n")


def test_tools_vars_and_continue_final_message(qwen3_folder, tmp_path, capsys):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    base = ["--user", "Weather in Paris?"]
    plain = render_json(capsys, str(qwen3_folder), *base)
    with_tools = render_json(capsys, str(qwen3_folder), *base, "--tools", str(tools))
    assert "<tools>" not in plain and '"name": "get_weather"' in with_tools
    no_think = render_json(capsys, str(qwen3_folder), *base, "--var", "enable_thinking=false")
    assert no_think == plain + "<think>\n\n</think>\n\n"
    # The template's own default applies when the variable is not given.
    assert render_json(capsys, str(qwen3_folder), *base, "--var", "enable_thinking=true") == plain
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]))
    cont = render_json(capsys, str(qwen3_folder), "--messages", str(messages), "--continue-final-message")
    assert cont.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHel")  # Qwen3's own form


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--var", "enable_thinking=False"], EXIT_USAGE, "the value is JSON"),
        (["--var", "enable-thinking=false"], EXIT_USAGE, "NAME=JSON"),
        (["--var", "messages=[]"], EXIT_USAGE, "its own option"),
        (["--var", "family=1"], EXIT_USAGE, "its own option"),
        (["--tools", "-", "--documents", "-"], EXIT_USAGE, "can read stdin"),
        (["--tools", "{bad"], EXIT_BAD_INPUT, "tools file"),
        (["--documents", "NOTJSON"], EXIT_BAD_INPUT, "not valid JSON"),
        (["--tools", "LIST_OF_STRINGS"], EXIT_BAD_INPUT, "list of objects"),
        (["--tools", "DEEP"], EXIT_BAD_INPUT, "nested 200 levels"),
        (["--no-generation-prompt", "--continue-final-message"], EXIT_USAGE, "not allowed with"),
    ],
)
def test_bad_render_options(tmp_path, capsys, args, code, needle):
    files = {"NOTJSON": "{", "LIST_OF_STRINGS": '["a"]', "DEEP": "[" * 200 + "]" * 200}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files else a for a in args]
    assert main(["render", str(HF), "--user", "hi", *args]) == code
    assert needle in capsys.readouterr().err


def test_library_takes_the_same_options(qwen3_folder):
    import etm_compat

    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with etm_compat.load(qwen3_folder) as bundle:
        prompt = bundle.render(messages, tools=TOOLS, enable_thinking=False)
        assert prompt == etm_compat.render(qwen3_folder, messages, tools=TOOLS, enable_thinking=False)
        assert "<tools>" in prompt and prompt.endswith("<think>\n\n</think>\n\n")
        prefill = [*messages, {"role": "assistant", "content": "It is"}]
        assert bundle.render(prefill, continue_final_message=True).endswith("</think>\n\nIt is")
        with pytest.raises(UsageError, match="not compatible"):
            bundle.render(prefill, True, continue_final_message=True)


def test_archives_without_a_special_tokens_map_render_with_their_bos_and_eos() -> None:
    from etm_compat.prompt.render import render_prompt, template_tokens

    meta = {
        "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}",
        "tokenizer": {"bos_token": "<s>", "eos_tokens": [None, "</s>"]},
    }
    assert template_tokens(meta) == {"bos_token": "<s>", "eos_token": "</s>"}
    assert render_prompt(meta, [{"role": "user", "content": "x"}]) == "<s>|</s>|"
    meta["tokenizer"]["special_tokens_map"] = {"eos_token": "<|im_end|>", "pad_token": "<pad>", "x": 1}
    assert render_prompt(meta, [{"role": "user", "content": "x"}]) == "|<|im_end|>|<pad>"
    # --family swaps the template; the deployment's strings stay, the family's fill a gap.
    llama2 = render_prompt(meta, [{"role": "user", "content": "x"}], family="llama2")
    assert llama2 == "<s>[INST] x [/INST]"
