"""``etm-compat families`` and ``families show ID``, and the library verbs under them."""

from __future__ import annotations

import json

import pytest

from etm_compat.cli.exit_codes import EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.errors import UsageError
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat
from etm_compat.prompt.families import load_registry
from etm_compat.prompt.families.catalog import list_families, show_family


def test_the_list_is_the_registry() -> None:
    entries = list_families()
    assert [e.id for e in entries] == sorted(load_registry())
    by_id = {e.id: e for e in entries}
    qwen3 = by_id["qwen3"]
    assert qwen3.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    assert "qwen3_0_6b" in qwen3.aliases and "qwen3" not in qwen3.aliases
    assert qwen3.template == "Qwen-Qwen3-0.6B"
    assert qwen3.template_commit == "b354d7c9ecb76c97c07098617cdebbdfffa2583e"
    assert qwen3.template_commit in qwen3.template_source
    # A template copied from a model repository names no commit; a base model has no template.
    assert by_id["llama3"].template_commit is None
    assert by_id["stories110m"].template is None
    assert by_id["mistral"].variants == ("v0.2-legacy", "nemo")


def test_show_renders_a_standard_conversation() -> None:
    detail = show_family("llama2")
    family = load_registry()["llama2"]
    assert detail.chat_template == family.chat_template
    assert detail.conversation == "system_multi_turn"
    expected = render_chat(
        family.chat_template,
        STANDARD_CONVERSATIONS["system_multi_turn"],
        bos_token=family.bos_token,
        eos_token=family.eos_token,
    )
    assert detail.rendering == expected and "<<SYS>>" in expected
    # Gemma refuses a system message: the sample falls back to a conversation it renders.
    assert show_family("gemma2").conversation == "multi_turn"
    base = show_family("stories110m")
    assert base.rendering is None and "no chat template" in (base.error or "")
    assert show_family("mistral", variant="nemo").chat_template == family_variant("mistral", "nemo")
    with pytest.raises(UsageError, match="no template variant"):
        show_family("mistral", variant="nope")


def family_variant(family_id: str, name: str) -> str:
    return load_registry()[family_id].variants[name]


def test_command_line_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["families", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)["families"]
    assert [f["id"] for f in listed] == sorted(load_registry())
    assert listed == [e.to_json() for e in list_families()]
    assert main(["families"]) == EXIT_OK
    table = capsys.readouterr().out
    for family_id in load_registry():
        assert family_id in table
    assert "@b354d7c9ec" in table and "use an id with --family" in table


def test_command_line_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["families", "show", "qwen3", "--json"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["chat_template"] == load_registry()["qwen3"].chat_template
    assert shown["sample"]["rendering"] == show_family("qwen3").rendering
    assert shown["sample"]["messages"] == STANDARD_CONVERSATIONS["system_multi_turn"]
    assert main(["families", "--json", "show", "qwen3"]) == EXIT_OK  # --json before the action
    assert json.loads(capsys.readouterr().out)["id"] == "qwen3"
    assert main(["families", "show", "qwen3"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "enable_thinking is defined" in text  # the template, line by line
    assert "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant" in text
    assert main(["families", "show", "nope"]) == EXIT_USAGE
    assert "qwen3" in capsys.readouterr().err  # the error lists the known ids


def test_family_help_points_here(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("pack", "render"):
        assert main([command, "--help"]) == EXIT_OK
        assert "etm-compat families" in " ".join(capsys.readouterr().out.split())
