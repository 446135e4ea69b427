"""The demo-app registry (etm_compat.prompt.apps), ``diagnose --app`` and ``unpack --for``.

The app strings below are quoted verbatim from the apps' published sources, not produced by
etm-compat: meta-pytorch/executorch-examples @ c947b033f2ba77399712835cc3bc58caa60abcde,
  Android: llm/android/LlamaDemo/app/src/main/java/com/example/executorchllamademo/PromptFormat.kt
           (Kotlin concatenations joined; ``SYSTEM_PLACEHOLDER = "{{ system_prompt }}"``,
           ``USER_PLACEHOLDER = "{{ user_prompt }}"``)
  iOS:     llm/apple/Application/Constants.swift
Rendered expectations are those strings with the placeholder replaced by hand.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.diagnosis import diagnose
from etm_compat.errors import UsageError
from etm_compat.packing import pack as etm_pack
from etm_compat.prompt.apps import (
    APP_IDS,
    app_file_names,
    app_model_type,
    build_apps,
    get_app,
    load_apps,
    render_app_prompt,
)
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS
from etm_compat.prompt.families import get_family, load_registry

COMMIT = "c947b033f2ba77399712835cc3bc58caa60abcde"
HUB_LLAMA32 = FIXTURES / "field" / "hub_llama32_et"  # Llama-3.2-1B-Instruct.pte + tiktoken, no template
TIKTOKEN_LLAMA3 = FIXTURES / "legacy" / "tiktoken_llama3"  # model.pte + tiktoken, no template
HF_QWEN = FIXTURES / "legacy" / "hf_style"  # model.pte + tokenizer.json (Qwen 2.5)
ET_LLAMA2 = FIXTURES / "legacy" / "et_example"  # model.pte + tokenizer.model (Llama 2)

# PromptFormat.kt @ c947b03, getSystemPromptTemplate / getUserPromptTemplate (LLAMA_3, QWEN_3).
ANDROID_LLAMA3_SYSTEM = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n" + "{{ system_prompt }}" + "<|eot_id|>"
ANDROID_LLAMA3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n" + "{{ user_prompt }}" + "<|eot_id|>" + "<|start_header_id|>assistant<|end_header_id|>"
)
ANDROID_QWEN3_SYSTEM = "<|im_start|>system\n{{ system_prompt }}<|im_end|>\n"
ANDROID_QWEN3_USER = "<|im_start|>user\n" + "{{ user_prompt }}" + "<|im_end|>\n" + "<|im_start|>assistant\n" + "{{ thinking_mode }}"
# Constants.swift @ c947b03.
IOS_LLAMA3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n%@<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
IOS_QWEN3 = "<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n<|im_start|>user\n%@<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n\n"
IOS_SMOLLM3 = "<|im_start|>system\n/no_think\n<|im_end|>\n<|im_start|>user\n%@<|im_end|>\n<|im_start|>assistant\n"
IOS_PHI4 = "<|user|>%@<|end|><|assistant|>"

SYSTEM = "You are a helpful assistant."
USER = "Hello! What is the capital of France?"
# ANDROID_LLAMA3_SYSTEM + ANDROID_LLAMA3_USER with the standard system + user messages, by hand.
ANDROID_LLAMA3_RENDERED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\nYou are a helpful assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\nHello! What is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>"
)
IOS_LLAMA3_RENDERED = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\nHello! What is the capital of France?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
)
# Where Android's single "\n" after the system header meets the model template's "\n\n".
HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n"


def diagnose_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(["diagnose", *args, "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, [f for d in report["deployments"] for f in d["findings"]]


def only(findings: list[dict[str, Any]], code: str) -> dict[str, Any]:
    found = [f for f in findings if f["code"] == code]
    assert len(found) == 1, [f["code"] for f in findings]
    return found[0]


def llama3(tmp_path: Path, source: Path) -> Path:
    """A copy of a Llama 3 fixture that ships the vendor Llama 3.2 template (the registry's copy
    of meta-llama's template) in tokenizer_config.json, so the model's own format does not rest
    on family inference from a tiny test tokenizer."""
    if not source.is_dir():
        pytest.skip(f"fixture {source} missing")
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    config = {"chat_template": get_family("llama3_2").chat_template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def pack(folder: Path, out: Path, family: str) -> Path:
    if not folder.is_dir():
        pytest.skip(f"fixture {folder} missing")
    return etm_pack(folder, out, default_adapters(), family=family).archive


# --- the registry ------------------------------------------------------------------------------


def test_templates_are_the_apps_strings_verbatim() -> None:
    android, ios = get_app("android").types, get_app("ios").types
    assert (android["LLAMA_3"].system, android["LLAMA_3"].user) == (ANDROID_LLAMA3_SYSTEM, ANDROID_LLAMA3_USER)
    assert android["LLAMA_GUARD_3"].user == ANDROID_LLAMA3_USER
    assert (android["QWEN_3"].system, android["QWEN_3"].user) == (ANDROID_QWEN3_SYSTEM, ANDROID_QWEN3_USER)
    assert android["LLAMA_3"].stop_tokens == ("<|eot_id|>",)
    assert ios["llama"].user == IOS_LLAMA3
    assert ios["qwen2"].user == IOS_LLAMA3  # qwen2 is formatted with the llama3 template
    assert (ios["qwen3"].user, ios["smollm3"].user, ios["phi4"].user) == (IOS_QWEN3, IOS_SMOLLM3, IOS_PHI4)
    assert (ios["llama"].seq_len, ios["phi4"].seq_len, ios["qwen3"].seq_len) == (128, 128, 768)


def test_every_entry_records_its_source_and_known_families() -> None:
    families = load_registry()
    for app in load_apps().values():
        assert (app.repo, app.commit) == ("meta-pytorch/executorch-examples", COMMIT)
        for kind in app.types.values():
            assert kind.source.repo == app.repo and kind.source.commit == COMMIT
            assert kind.source.paths and all(p.startswith(f"llm/{'android' if app.id == 'android' else 'apple'}/") for p in kind.source.paths)
            assert set(kind.families) <= set(families), kind.id
    assert tuple(load_apps()) == APP_IDS


def test_a_broken_registry_is_refused_with_every_problem() -> None:
    raw = json.loads(resources.files("etm_compat.prompt").joinpath("apps.json").read_text())
    raw["apps"]["ios"]["match_order"].remove("phi4")
    raw["apps"]["android"]["types"]["QWEN_3"]["match"]["kind"] = "regex"
    with pytest.raises(UsageError) as err:
        build_apps(json.dumps(raw))
    assert "ios: 'match_order'" in str(err.value) and "android.QWEN_3.match: bad or missing 'kind'" in str(err.value)


# --- which model type a file name selects ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "android", "ios"),
    [
        ("Llama-3.2-1B-Instruct.pte", "LLAMA_3", "llama"),
        ("llama3_2-1B.pte", "LLAMA_3", "llama"),
        ("my-llama3.pte", "LLAMA_3", None),  # substring vs prefix
        ("Llama-Guard-3-1B.pte", "LLAMA_GUARD_3", "llama"),  # Android checks the guard first
        ("llava_llama2.pte", "LLAVA_1_5", "llava"),
        ("qwen2_5-1.5b.pte", "QWEN_3", "qwen2"),
        ("Qwen3-4B-INT8-INT4.pte", "QWEN_3", "qwen3"),
        ("gemma-2b-it.pte", "GEMMA_3", None),  # iOS needs the "gemma3" prefix
        ("SmolLM3-3B.pte", None, "smollm3"),  # iOS: anywhere in the name
        ("phi4-mini.pte", None, "phi4"),
        ("/data/local/tmp/llama/model.pte", None, None),  # only the file name counts
        ("model.pte", None, None),
    ],
)
def test_file_name_selects_a_model_type(name: str, android: str | None, ios: str | None) -> None:
    picked = {app: app_model_type(app, name) for app in APP_IDS}
    assert {app: t.id if t else None for app, t in picked.items()} == {"android": android, "ios": ios}


def test_unrecognised_names_fall_back_on_android_and_exit_on_ios() -> None:
    android, ios = get_app("android"), get_app("ios")
    assert (android.on_unrecognised, android.fallback_type) == ("keep", "LLAMA_3")
    assert (ios.on_unrecognised, ios.fallback_type) == ("exit", None)


# --- rendering as the apps do ------------------------------------------------------------------------


def test_android_renders_system_then_user_and_keeps_the_context() -> None:
    system_user = render_app_prompt("android", "LLAMA_3", STANDARD_CONVERSATIONS["system_user"])
    assert system_user.text == ANDROID_LLAMA3_RENDERED and system_user.notes == ()
    multi = render_app_prompt("android", "LLAMA_3", STANDARD_CONVERSATIONS["system_multi_turn"])
    # The system template on the first turn only; the reply stays in the runner's context.
    assert multi.text == (
        ANDROID_LLAMA3_RENDERED + "The capital of France is Paris."
        "<|start_header_id|>user<|end_header_id|>\nAnd of Italy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )
    # Without a system message the app still sends its (empty) system prompt.
    assert render_app_prompt("android", "QWEN_3", [{"role": "user", "content": "Hi"}]).text == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_android_llama_guard_wraps_the_user_text_and_sends_no_system_prompt() -> None:
    out = render_app_prompt("android", "LLAMA_GUARD_3", STANDARD_CONVERSATIONS["system_user"])
    # getLlamaGuardPresetPrompt() @ c947b03, its first and last lines around the user text.
    assert out.text.startswith(
        "<|start_header_id|>user<|end_header_id|>\nTask: Check if there is unsafe content in 'User' messages"
    )
    assert f"<BEGIN CONVERSATION>\n\nUser: {USER}\n<END CONVERSATION>" in out.text
    assert out.text.endswith("list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    assert out.notes == ("system message dropped: model type LLAMA_GUARD_3 sends no system prompt",)


def test_ios_formats_single_turns_only() -> None:
    out = render_app_prompt("ios", "llama", STANDARD_CONVERSATIONS["system_multi_turn"])
    assert out.text == IOS_LLAMA3.replace("%@", "And of Italy?")
    assert len(out.notes) == 2  # earlier turns and the system message are dropped
    trimmed = render_app_prompt("ios", "qwen3", [{"role": "user", "content": "  Hi\n"}])
    assert trimmed.text == IOS_QWEN3.replace("%@", "Hi")
    thinking = render_app_prompt("ios", "qwen3", [{"role": "user", "content": "Hi"}], thinking_mode=True)
    assert thinking.text == IOS_QWEN3.replace("%@", "Hi").replace("<think>\n\n</think>\n\n\n", "")


def test_rendering_refuses_what_the_app_cannot_take() -> None:
    with pytest.raises(UsageError):
        render_app_prompt("ios", "gpt", [{"role": "user", "content": "x"}])
    with pytest.raises(UsageError):
        render_app_prompt("android", "LLAMA_3", [{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    with pytest.raises(UsageError):
        render_app_prompt("ios", "llama", [{"role": "system", "content": "x"}])


# --- diagnose --app ----------------------------------------------------------------------------------


def test_android_single_newline_after_the_header_against_the_llama3_template(tmp_path: Path, capsys) -> None:
    folder = llama3(tmp_path, HUB_LLAMA32)
    code, findings = diagnose_json(capsys, str(folder), "--app", "android")
    assert code == EXIT_OK  # a warning: below the default --fail-on error
    assert "app-model-unrecognised" not in {f["code"] for f in findings}
    differs = only(findings, "app-prompt-differs")
    assert differs["severity"] == "warning"
    message = differs["message"]
    assert "model type LLAMA_3" in message and "'Llama-3.2-1B-Instruct.pte'" in message
    assert repr(ANDROID_LLAMA3_RENDERED) in message  # the app's rendering, escapes visible
    assert "system<|end_header_id|>\\n\\nCutting Knowledge Date" in message  # the template's "\n\n"
    assert f"first difference at character {len(HEADER)}" in message
    assert "PromptFormat.kt @ c947b03" in differs["hint"]
    assert main(["diagnose", str(folder), "--app", "android", "--fail-on", "warning"]) == EXIT_FINDINGS


def test_android_unrecognised_name_is_checked_with_its_fallback(tmp_path: Path, capsys) -> None:
    code, findings = diagnose_json(capsys, str(llama3(tmp_path, TIKTOKEN_LLAMA3)), "--app", "android")
    assert code == EXIT_OK
    unrecognised = only(findings, "app-model-unrecognised")
    assert unrecognised["severity"] == "warning" and "LLAMA_3 on a fresh install" in unrecognised["message"]
    assert "'llama3_2-model.pte'" in unrecognised["hint"]
    differs = only(findings, "app-prompt-differs")
    assert "its fallback" in differs["message"] and repr(ANDROID_LLAMA3_RENDERED) in differs["message"]


def test_ios_exits_on_an_unrecognised_name_and_drops_the_system_prompt(tmp_path: Path, capsys) -> None:
    code, findings = diagnose_json(capsys, str(llama3(tmp_path, TIKTOKEN_LLAMA3)), "--app", "ios")
    assert code == EXIT_FINDINGS
    unrecognised = only(findings, "app-model-unrecognised")
    assert unrecognised["severity"] == "error" and "exit(1)" in unrecognised["message"]
    differs = only(findings, "app-prompt-differs")
    assert repr(IOS_LLAMA3_RENDERED) in differs["message"]
    assert "system message dropped" in differs["message"]


def test_ios_qwen2_type_uses_the_llama3_format_on_a_qwen_model(capsys) -> None:
    _, findings = diagnose_json(capsys, str(HF_QWEN), "--app", "ios")
    assert "e.g. 'qwen2_5-model.pte'" in only(findings, "app-model-unrecognised")["hint"]
    message = only(findings, "app-prompt-differs")["message"]
    assert "model type qwen2" in message and "first difference at character 2" in message


def test_no_app_no_app_findings_and_unknown_apps_are_refused() -> None:
    report = diagnose(TIKTOKEN_LLAMA3, default_adapters())
    assert not [f for f in report.findings if f.code.startswith("app-")]
    with pytest.raises(UsageError):
        diagnose(TIKTOKEN_LLAMA3, default_adapters(), app="windows-phone")
    assert main(["diagnose", str(TIKTOKEN_LLAMA3), "--app", "windows-phone"]) == EXIT_USAGE


def test_archive_points_at_unpack_for(tmp_path: Path, capsys) -> None:
    archive = pack(llama3(tmp_path, TIKTOKEN_LLAMA3), tmp_path / "model.etm", "llama3_2")
    code, findings = diagnose_json(capsys, str(archive), "--app", "ios")
    assert code == EXIT_OK  # the archive is fine; a plain unpack is what the app would refuse
    unrecognised = only(findings, "app-model-unrecognised")
    assert unrecognised["severity"] == "warning" and unrecognised["paths"] == ["model.pte"]
    assert "--for ios" in unrecognised["hint"] and "'llama3_2-model.pte'" in unrecognised["hint"]
    assert repr(IOS_LLAMA3_RENDERED) in only(findings, "app-prompt-differs")["message"]
    # Unpacked for the app, the same deployment is recognised.
    assert main(["unpack", str(archive), "-o", str(tmp_path / "ios"), "--for", "ios"]) == EXIT_OK
    capsys.readouterr()
    code, findings = diagnose_json(capsys, str(tmp_path / "ios"), "--app", "ios")
    assert "app-model-unrecognised" not in {f["code"] for f in findings}
    picked = only(findings, "app-model-type")
    assert picked["severity"] == "info"
    assert "picks model type llama from the file name 'llama3_2-model.pte'" in picked["message"]


def test_a_name_that_selects_another_familys_type(tmp_path: Path, capsys) -> None:
    if not HF_QWEN.is_dir():
        pytest.skip("fixtures/legacy/hf_style missing")
    folder = tmp_path / "qwen"
    shutil.copytree(HF_QWEN, folder)
    (folder / "model.pte").rename(folder / "llama_qwen.pte")  # Android tests "llama" before "qwen"
    _, findings = diagnose_json(capsys, str(folder), "--app", "android")
    picked = only(findings, "app-model-type")
    assert picked["severity"] == "warning" and "served by type QWEN_3" in picked["message"]
    assert only(findings, "app-prompt-differs")["hint"].startswith("rename the program so the app picks QWEN_3")


# --- unpack --for ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "family", "app", "program", "kind"),
    [
        (TIKTOKEN_LLAMA3, "llama3_2", "ios", "llama3_2-model.pte", "llama"),
        (TIKTOKEN_LLAMA3, "llama3_2", "android", "llama3_2-model.pte", "LLAMA_3"),
        (HF_QWEN, "qwen2_5", "ios", "qwen2_5-model.pte", "qwen2"),
        (HF_QWEN, "qwen2_5", "android", "qwen2_5-model.pte", "QWEN_3"),
    ],
)
def test_unpack_for_names_the_program_for_the_app(
    tmp_path: Path, capsys, folder: Path, family: str, app: str, program: str, kind: str
) -> None:
    archive = pack(folder, tmp_path / "model.etm", family)
    dest = tmp_path / "out"
    assert main(["unpack", str(archive), "-o", str(dest), "--for", app, "--json"]) == EXIT_OK
    written = [Path(p) for p in json.loads(capsys.readouterr().out)["written"]]
    names = sorted(p.name for p in written)
    assert program in names and "model.pte" not in names
    picked = app_model_type(app, program)
    assert picked is not None and picked.id == kind
    tokenizer = next(n for n in names if n.startswith("tokenizer"))
    assert tokenizer.endswith(get_app(app).tokenizer_extensions)
    with open_archive(archive) as etm, etm.member_view("model.pte") as view:
        assert (dest / program).read_bytes() == bytes(view)


def test_unpack_for_keeps_a_name_the_app_already_recognises(tmp_path: Path) -> None:
    archive = pack(TIKTOKEN_LLAMA3, tmp_path / "Llama-3.2-1B-Instruct.etm", "llama3_2")
    assert main(["unpack", str(archive), "-o", str(tmp_path / "a"), "--for", "android"]) == EXIT_OK
    assert (tmp_path / "a" / "Llama-3.2-1B-Instruct.pte").is_file()
    names = app_file_names("ios", "phi_4_mini", stem="model", program_member="model.pte", tokenizer_member="tokenizer.json")
    assert names == {"model.pte": "phi4-model.pte"}  # the family id is no iOS prefix: the type's is


def test_unpack_for_a_family_the_app_has_no_type_for(tmp_path: Path, capsys) -> None:
    archive = pack(ET_LLAMA2, tmp_path / "model.etm", "llama2")
    dest = tmp_path / "out"
    assert main(["unpack", str(archive), "-o", str(dest), "--for", "android"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no model type for family 'llama2'" in err and "--family ID" in err
    assert not dest.exists() or not any(dest.iterdir())


def test_unpack_for_refuses_to_overwrite_without_force(tmp_path: Path, capsys) -> None:
    archive = pack(TIKTOKEN_LLAMA3, tmp_path / "model.etm", "llama3_2")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "llama3_2-model.pte").write_bytes(b"mine")
    assert main(["unpack", str(archive), "-o", str(dest), "--for", "ios"]) == EXIT_OUTPUT
    assert (dest / "llama3_2-model.pte").read_bytes() == b"mine"
    assert main(["unpack", str(archive), "-o", str(dest), "--for", "ios", "--force"]) == EXIT_OK
    assert (dest / "llama3_2-model.pte").read_bytes() != b"mine"


@pytest.mark.parametrize(
    "rename",
    [
        {"model.pte": "../escape.pte"},
        {"model.pte": "sub/model.pte"},
        {"model.pte": ".."},
        {"model.pte": "tokenizer.model"},  # two members onto one file
        {"weights/absent.ptd": "x.ptd"},
    ],
)
def test_extract_rename_keeps_the_safety_rules(tmp_path: Path, rename: dict[str, str]) -> None:
    archive = pack(TIKTOKEN_LLAMA3, tmp_path / "model.etm", "llama3_2")
    dest = tmp_path / "out"
    with open_archive(archive) as etm, pytest.raises(UsageError):
        etm.extract(dest, rename=rename)
    assert not (tmp_path / "escape.pte").exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_messages_show_escapes_not_raw_control_characters(tmp_path: Path, capsys) -> None:
    _, findings = diagnose_json(capsys, str(llama3(tmp_path, TIKTOKEN_LLAMA3)), "--app", "android")
    message = only(findings, "app-prompt-differs")["message"]
    assert "\n" not in message and re.search(r"\\n\\n", message)
