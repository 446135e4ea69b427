"""etm_compat.prompt.families: the registry data, its validation, detection and matching."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest

from etm_compat.errors import UsageError
from etm_compat.prompt import families
from etm_compat.prompt.families import (
    detect_family_from_template,
    get_family,
    load_registry,
    match_template,
)

EXPECTED_IDS = {
    "llama2",
    "llama3",
    "llama3_1",
    "llama3_2",
    "qwen2_5",
    "qwen3",
    "phi_3_5",
    "phi_4_mini",
    "smollm2",
    "gemma",
    "gemma2",
    "gemma3",
    "mistral",
    "deepseek_v3",
    # issue 12: every export_llm 1.5.1 model_class and the demo apps' model types
    "qwen3_5",
    "lfm2",
    "lfm2_5",
    "smollm3",
    "granite",
    "gemma4",
    "llava",
    "llama3_2_vision",
    "stories110m",
}
#: Families with no published chat template (base models): identified by names only.
NO_TEMPLATE = {"stories110m"}
ALL_TEMPLATES = [
    (family.id, name, text)
    for family in load_registry().values()
    for name, text in family.templates().items()
]


def same_group(a: str, b: str) -> bool:
    fa, fb = get_family(a), get_family(b)
    return a == b or (fa.group is not None and fa.group == fb.group)


def test_registry_has_every_required_family() -> None:
    assert set(load_registry()) == EXPECTED_IDS


def test_mistral_carries_its_variants() -> None:
    assert set(get_family("mistral").variants) == {"v0.2-legacy", "nemo"}
    assert "[AVAILABLE_TOOLS]" in get_family("mistral").variants["nemo"]


def test_unknown_family_lists_known_ids() -> None:
    with pytest.raises(UsageError) as info:
        get_family("llama9")
    assert "llama3_2" in str(info.value) and "qwen3" in str(info.value)


@pytest.mark.parametrize("family", load_registry().values(), ids=lambda f: f.id)
def test_family_facts_are_consistent(family: families.Family) -> None:
    assert family.template_source
    assert family.stop_tokens, "a family without a stop set never stops"
    assert family.vocab_sizes and family.tokenizer_formats
    if family.id in NO_TEMPLATE:  # a base model: no turns, and names are all that identify it
        assert family.chat_template == "" and family.templates() == {}
        assert family.end_of_turn is None and not family.template_markers
        assert "no template" in family.template_source
        return
    assert family.chat_template.strip()
    assert family.end_of_turn in family.stop_tokens
    assert family.special_token_fingerprint and family.template_markers
    # num_bos is 0 exactly when the template itself emits BOS (or there is no BOS to add).
    emits_bos = "bos_token" in family.chat_template or (
        family.bos_token is not None and family.bos_token in family.chat_template
    )
    if emits_bos:
        assert family.num_bos == 0


def test_llama3_group_has_one_documented_default() -> None:
    members = [f for f in load_registry().values() if f.group == "llama3"]
    assert {f.id for f in members} == {"llama3", "llama3_1", "llama3_2", "llama3_2_vision"}
    assert [f.id for f in members if f.group_default] == ["llama3_2"]
    assert len({f.tokenizer_formats for f in members}) == 1  # indistinguishable by a rank file


@pytest.mark.parametrize(("family_id", "variant", "text"), ALL_TEMPLATES, ids=lambda v: str(v)[:20])
def test_detection_puts_the_family_first(family_id: str, variant: str, text: str) -> None:
    found = detect_family_from_template(text)
    assert found, "no marker matched"
    best, marker = found[0]
    assert same_group(best, family_id)
    assert marker in text


@pytest.mark.parametrize(("family_id", "variant", "text"), ALL_TEMPLATES, ids=lambda v: str(v)[:20])
def test_match_template_finds_published_templates(family_id: str, variant: str, text: str) -> None:
    matched = match_template(text)
    assert matched is not None and same_group(matched, family_id)
    reflowed = "\n".join(text.split(" "))  # whitespace-only changes still match
    assert match_template(reflowed) == matched


def test_match_template_rejects_edited_and_unknown_templates() -> None:
    text = get_family("qwen2_5").chat_template.replace("Alibaba Cloud", "Someone Else")
    assert match_template(text) is None
    assert match_template("{{ messages }}") is None
    assert detect_family_from_template("{{ messages }}") == []


def test_gemma2_template_bytes_match_the_recorded_lfs_digest() -> None:
    # SOURCES.md: the LFS pointer of google-gemma-2-2b-it.jinja gives size 591 and this sha256.
    data = (
        resources.files("etm_compat.prompt.families")
        .joinpath("templates", "google-gemma-2-2b-it.jinja")
        .read_bytes()
    )
    assert len(data) == 591
    assert (
        hashlib.sha256(data).hexdigest()
        == "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6"
    )


def test_sources_md_records_every_template_file() -> None:
    root = resources.files("etm_compat.prompt.families")
    sources = root.joinpath("SOURCES.md").read_text(encoding="utf-8")
    names = [e.name for e in root.joinpath("templates").iterdir() if e.name.endswith(".jinja")]
    assert names
    for name in names:
        assert name in sources


def _good_files() -> dict[str, str]:
    root = resources.files("etm_compat.prompt.families")
    return {
        e.name: e.read_text(encoding="utf-8") for e in root.iterdir() if e.name.endswith(".json")
    }


def test_build_from_the_shipped_files_round_trips() -> None:
    assert list(families._build(_good_files())) == list(load_registry())


def test_invalid_data_files_are_reported_together() -> None:
    files = _good_files()
    bad = json.loads(files["qwen3.json"])
    bad["num_bos"] = -1
    bad["stop_tokens"] = "<|im_end|>"
    bad["generation"] = {"temperature": "hot"}
    files["qwen3.json"] = json.dumps(bad)
    files["broken.json"] = "{not json"
    llama = json.loads(files["llama3.json"])
    llama["group_default"] = True
    files["llama3.json"] = json.dumps(llama)
    with pytest.raises(UsageError) as info:
        families._build(files)
    message = str(info.value)
    for needle in ("num_bos", "stop_tokens", "generation", "broken.json", "group 'llama3'"):
        assert needle in message


def test_template_names_cannot_escape_the_templates_folder() -> None:
    files = _good_files()
    bad = json.loads(files["phi_3_5.json"])
    bad["template"] = "../../errors"
    files["phi_3_5.json"] = json.dumps(bad)
    with pytest.raises(UsageError, match="plain file name"):
        families._build(files)
