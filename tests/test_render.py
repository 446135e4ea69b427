"""`etm-compat render`: the same prompt from an archive and from its legacy folder, equal to HF's."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FIXTURES

from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main

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
        ('[{"role": "wizard", "content": "x"}]', "unknown role"),
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
