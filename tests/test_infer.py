"""Inference from real parts: tokenizers trained in tmp_path, fixture programs and folders, the registry.

Expected values come from the registry data (families/*.json) and from the fixture facts written
down in fixtures/gen_*.py, never from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, fixture_file

from etm_compat.adapters import default_adapters
from etm_compat.errors import UsageError
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.infer.inference import Inference, infer, infer_from_parts
from etm_compat.legacy.deployment import Deployment
from etm_compat.legacy.scan import deployments_in_folder
from etm_compat.prompt.families import Family, load_registry

REGISTRY = load_registry()

# Facts of the fixtures (fixtures/gen_tokenizers.py, gen_legacy.py, gen_llama.py).
TIKTOKEN_BOS, TIKTOKEN_EOS = 256, 257  # 256 byte tokens, then Llama 3's special tokens
TIKTOKEN_EOT = 256 + 9  # <|eot_id|> is the tenth Llama 3 special token
SP_BOS, SP_EOS = 1, 2
HF_ENDOFTEXT_ID, HF_IM_START_ID, HF_IM_END_ID = 0, 1, 2


# --- builders --------------------------------------------------------------------------------
def hf_tokenizer(
    folder: Path,
    specials: Sequence[str],
    *,
    bos: str | None,
    eos: str | None,
    config: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """A real HF tokenizer.json (WordLevel + added special tokens) and a tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["hello", "world", "the", "cat", "sat", "on", "mat"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(dict.fromkeys(specials)))
    folder.mkdir(parents=True, exist_ok=True)
    tok_path = folder / "tokenizer.json"
    tok.save(str(tok_path))
    cfg: dict[str, Any] = {"bos_token": bos, "eos_token": eos, **(config or {})}
    cfg_path = folder / "tokenizer_config.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    return tok_path, cfg_path


def family_tokens(family: Family) -> list[str]:
    """Every special token the registry names for a family."""
    named = [family.bos_token, family.eos_token, family.end_of_turn, *family.stop_tokens]
    return list(dict.fromkeys([*family.special_token_fingerprint, *(t for t in named if t)]))


def program(folder: Path, name: str = "model.pte", source: str = "constants_none.pte") -> Path:
    """A real .pte copied from fixtures/programs."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(fixture_file(f"programs/{source}"), folder / name))


def pte_with(path: Path, **constants: Any) -> PteInfo:
    """The PteInfo of a real program, with the constant methods a test needs."""
    return dataclasses.replace(read_pte(path), path=str(path), constant_methods=constants)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def copy_fixture_tokenizer(folder: Path, relative: str, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(fixture_file(relative), folder / name))


def group_default(group: str) -> str:
    return next(f.id for f in REGISTRY.values() if f.group == group and f.group_default)


def sources(result: Inference, field: str) -> set[str]:
    return {e.source for e in result.evidence if e.field == field}


def codes(result: Inference) -> set[str]:
    return {f.code for f in result.findings}


# --- every family, without a template --------------------------------------------------------
#: Families whose tokenizer is another family's, unchanged: only names identify them.
NAME_ONLY = [fid for fid, f in REGISTRY.items() if not f.special_token_fingerprint]


@pytest.mark.parametrize("family_id", [fid for fid in REGISTRY if fid not in NAME_ONLY])
def test_each_family_from_tokenizer_and_program(tmp_path: Path, family_id: str) -> None:
    family = REGISTRY[family_id]
    tok_path, cfg_path = hf_tokenizer(
        tmp_path, family_tokens(family), bos=family.bos_token, eos=family.eos_token
    )
    tok = read_tokenizer(tok_path, config_path=cfg_path, check_runner=False)
    eos_id = tok.token_id(family.eos_token) if family.eos_token else None
    pte_path = program(tmp_path)
    constants: dict[str, Any] = {"get_max_seq_len": 256, "get_vocab_size": family.vocab_sizes[0]}
    if eos_id is not None:
        constants["get_eos_ids"] = [eos_id]
    deployment = Deployment(
        tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg_path}
    )
    result = infer(deployment, pte=pte_with(pte_path, **constants))

    if family.group is None or result.family_id == family_id != group_default(family.group):
        # a group member with a token of its own (Llama 3.2 Vision's <|image|>) is chosen outright
        assert result.family_id == family_id
        assert result.family_alternatives == ()
    else:  # group members share fingerprints: the group's documented default is chosen
        assert result.family_id == group_default(family.group)
        assert family_id == result.family_id or family_id in result.family_alternatives
        assert all(REGISTRY[a].group == family.group for a in result.family_alternatives)
    chosen = REGISTRY[result.family_id]
    assert result.family_confidence in ("medium", "high")
    assert "tokenizer.json" in {e.source for e in result.family_evidence}
    assert result.to_json()["family_evidence"], "the evidence is shown"
    assert result.chat_template == chosen.chat_template
    assert result.chat_template_source == f"registry:{chosen.id}"
    assert result.max_seq_len == 256 and result.max_context_len == 256
    if chosen.end_of_turn:
        assert tok.token_id(chosen.end_of_turn) in result.stop_token_ids
    assert result.num_eos == 0
    for key, value in chosen.generation.items():
        assert result.generation[key] == value
    json.dumps(result.to_json())
    json.dumps(result.metadata_fields())


# --- a tiktoken rank file: its Llama 3 special tokens are the runner's, not the file's ----------
def test_tiktoken_rank_file_alone_names_no_family(tmp_path: Path) -> None:
    # tiktoken.model holds 256 ranks; bos 256/eos 257 exist only because pytorch-tokenizers
    # appends Llama 3's special tokens to any rank file: no evidence for Llama 3.
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/tiktoken.model", "tokenizer.model")
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path)
    pte = pte_with(
        pte_path, get_max_seq_len=128, get_bos_id=TIKTOKEN_BOS, get_eos_ids=[TIKTOKEN_EOS]
    )
    result = infer(deployment, pte=pte)
    assert result.family_id is None and result.family_confidence == "none"
    assert result.chat_template is None
    (unknown,) = [f for f in result.findings if f.code == "family-unknown"]
    assert "256 ranks" in unknown.message and "128000" in unknown.message
    assert not [e for e in result.family_evidence if "special tokens" in e.detail]
    # the runner's ids still make the stop set: what the files and the runner declare, no more
    assert result.bos_id == TIKTOKEN_BOS and result.bos_token == "<|begin_of_text|>"
    assert result.stop_token_ids == (TIKTOKEN_EOS,)
    assert result.num_bos == 1


def test_tiktoken_rank_file_with_a_llama3_template_is_llama3(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/tiktoken.model", "tokenizer.model")
    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text(REGISTRY["llama3_2"].chat_template, encoding="utf-8")
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"chat_template": jinja})
    pte = pte_with(
        pte_path, get_max_seq_len=128, get_bos_id=TIKTOKEN_BOS, get_eos_ids=[TIKTOKEN_EOS]
    )
    result = infer(deployment, pte=pte)
    assert result.family_id == "llama3_2" and result.family_alternatives == ()
    assert result.family_confidence == "medium"  # an exact template, against a 256-rank file
    (mismatch,) = [f for f in result.findings if f.code == "family-tokenizer-mismatch"]
    assert mismatch.severity == "info" and mismatch.paths == ("tokenizer.model",)
    assert "chat_template.jinja" in mismatch.message
    assert {TIKTOKEN_EOS, TIKTOKEN_EOT} <= set(result.stop_token_ids)
    assert f"registry:{result.family_id}" in result.stop_token_sources[TIKTOKEN_EOT]
    assert result.num_bos == 0  # the Llama 3 template emits <|begin_of_text|> itself


# --- legacy get_bos_id=1 / get_eos_ids=[2] --------------------------------------------------
@pytest.mark.parametrize("key", ["get_eos_ids", "get_eos_id"])
def test_legacy_defaults_with_tiktoken_are_excluded_and_reported(tmp_path: Path, key: str) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/tiktoken.model", "tokenizer.model")
    pte_path = program(tmp_path)
    eos: Any = [2] if key == "get_eos_ids" else 2
    pte = pte_with(pte_path, get_max_seq_len=128, get_bos_id=1, **{key: eos})
    result = infer(Deployment(tmp_path, pte_path, "test", tok_path), pte=pte)
    assert 2 not in result.stop_token_ids
    assert 2 not in result.eos_ids
    assert result.bos_id == TIKTOKEN_BOS
    assert TIKTOKEN_EOS in result.stop_token_ids
    legacy = [f for f in result.findings if f.code == "legacy-default-bos-eos"]
    assert len(legacy) == 1 and legacy[0].severity == "warning"
    assert legacy[0].paths == ("model.pte",)


def test_legacy_defaults_agreeing_with_sentencepiece_are_kept(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path, source="legacy_keys.pte")  # get_bos_id 1, get_eos_id 2
    result = infer(Deployment(tmp_path, pte_path, "test", tok_path))
    assert "legacy-default-bos-eos" not in codes(result)
    assert result.bos_id == SP_BOS
    assert result.stop_token_ids == (SP_EOS,)
    assert "model.pte" in result.stop_token_sources[SP_EOS]


# --- conflicts ---------------------------------------------------------------------------------
def test_config_model_type_against_the_tokenizer_is_a_conflict(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path)
    config = write_json(tmp_path / "config.json", {"model_type": "qwen2", "vocab_size": 512})
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"config": config})
    result = infer(deployment)
    family_conflicts = [c for c in result.conflicts if c.field == "family"]
    assert family_conflicts
    values = family_conflicts[0].values
    assert {s for _, s in values} >= {"tokenizer.model", "config.json"}
    assert any("qwen2_5" in str(v) for v, s in values if s == "config.json")
    finding = next(f for f in result.findings if f.code == "family-conflict")
    assert finding.severity == "warning" and "config.json" in finding.paths
    assert result.family_confidence in ("low", "medium")
    # the tokenizer's own <s>, </s>, <unk> win: 512 pieces and no ChatML token rule out Qwen 2.5
    assert result.family_id == "llama2"


def test_config_beside_a_tokenizer_that_rules_it_out_is_noted(tmp_path: Path) -> None:
    # A rank file says no family (its specials are the runner's); config.json says Qwen 2.5,
    # whose tokenizer is not a 256-rank file: config.json decides, one step less sure.
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/tiktoken.model", "tokenizer.model")
    config = write_json(tmp_path / "config.json", {"model_type": "qwen2", "vocab_size": 512})
    deployment = Deployment(
        tmp_path, program(tmp_path), "test", tok_path, configs={"config": config}
    )
    result = infer(deployment)
    assert result.family_id == "qwen2_5" and result.family_confidence == "low"
    assert "family-conflict" not in codes(result)  # the rank file names no other family
    (mismatch,) = [f for f in result.findings if f.code == "family-tokenizer-mismatch"]
    assert mismatch.paths == ("tokenizer.model",) and "config.json" in mismatch.message


def test_a_tie_between_disagreeing_sources_is_one_conflict(tmp_path: Path) -> None:
    # A ChatML template (a qwen2_5 marker) against a gemma2 config.json (model_type and
    # architectures): equal weight, two groups. The tie *is* the disagreement: one finding.
    # The tokenizer holds Gemma's <bos> and Qwen's <|endoftext|>, so it rules out neither.
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    tok_path, cfg_path = hf_tokenizer(
        tmp_path,
        ["<|endoftext|>", "<bos>"],
        bos=None,
        eos="<|endoftext|>",
        config={"chat_template": chatml},
    )
    config = write_json(
        tmp_path / "config.json",
        {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
    )
    deployment = Deployment(
        tmp_path,
        program(tmp_path),
        "test",
        tok_path,
        configs={"tokenizer_config": cfg_path, "config": config},
    )
    result = infer(deployment)
    assert {result.family_id, *result.family_alternatives} == {"qwen2_5", "gemma2"}
    assert "family-ambiguous" not in codes(result)
    (conflict,) = [f for f in result.findings if f.code == "family-conflict"]
    assert conflict.severity == "warning" and conflict.paths == ("config.json",)
    assert "equally" in conflict.message


def test_a_tokenizer_that_rules_a_family_out_breaks_the_tie(tmp_path: Path) -> None:
    # The same disagreement, but the tokenizer (7 words and <|endoftext|>) holds no Gemma token
    # and is nowhere near Gemma's 256000: gemma2 drops out, the conflict is still reported.
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    tok_path, cfg_path = hf_tokenizer(
        tmp_path, ["<|endoftext|>"], bos=None, eos="<|endoftext|>", config={"chat_template": chatml}
    )
    config = write_json(
        tmp_path / "config.json",
        {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
    )
    configs = {"tokenizer_config": cfg_path, "config": config}
    result = infer(Deployment(tmp_path, program(tmp_path), "test", tok_path, configs=configs))
    assert result.family_id == "qwen2_5" and result.family_alternatives == ()
    (conflict,) = [f for f in result.findings if f.code == "family-conflict"]
    assert conflict.paths == ("config.json",) and "equally" not in conflict.message


def test_bos_disagreement_is_kept(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path)
    config = write_json(tmp_path / "config.json", {"bos_token_id": 7})
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"config": config})
    result = infer(deployment, pte=pte_with(pte_path, get_max_seq_len=64))
    assert result.bos_id == SP_BOS  # the runner takes the tokenizer's
    conflict = next(c for c in result.conflicts if c.field == "bos_id")
    assert (SP_BOS, "tokenizer.model") in conflict.values and (7, "config.json") in conflict.values
    assert "bos-conflict" in codes(result)


# --- double BOS ------------------------------------------------------------------------------
SIMPLE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


@pytest.mark.parametrize(
    ("template", "num_bos"),
    [
        ("{{ bos_token }}" + SIMPLE, 0),  # references bos_token
        ("<s>" + SIMPLE, 0),  # hard-codes the BOS text: the rendering starts with it
        (SIMPLE, 1),  # no BOS: the runner must add one (SentencePiece tokenizer has a BOS)
    ],
)
def test_num_bos_follows_the_shipped_template(tmp_path: Path, template: str, num_bos: int) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path)
    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text(template, encoding="utf-8")
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"chat_template": jinja})
    # sp.model is Llama 2 by its tokens; Llama 2's num_bos 0 relies on its own template
    result = infer(deployment, pte=pte_with(pte_path, get_max_seq_len=64, get_vocab_size=999))
    assert result.chat_template == template
    assert result.chat_template_source == "chat_template.jinja"
    assert result.num_bos == num_bos
    assert "chat_template.jinja" in sources(result, "chat_template")


def test_hf_tokenizer_without_bos_gets_num_bos_zero(tmp_path: Path) -> None:
    tok_path, cfg = hf_tokenizer(tmp_path, ["<|x|>", "<|y|>"], bos=None, eos="<|y|>")
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg})
    result = infer(deployment, pte=pte_with(pte_path, get_max_seq_len=64))
    assert result.bos_id is None and result.num_bos == 0


# --- unknown models ------------------------------------------------------------------------
def test_unknown_model_is_family_none_with_a_finding(tmp_path: Path) -> None:
    tok_path, cfg = hf_tokenizer(tmp_path, ["[CLS]", "[SEP]", "[END]"], bos="[CLS]", eos="[SEP]")
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg})
    result = infer(deployment, pte=pte_with(pte_path, get_max_seq_len=64, get_vocab_size=12345))
    assert result.family_id is None
    assert result.family_confidence == "none"
    assert result.chat_template is None and result.chat_template_source is None
    finding = next(f for f in result.findings if f.code == "family-unknown")
    assert finding.severity == "warning" and finding.hint and "--family" in finding.hint
    tok = read_tokenizer(tok_path, config_path=cfg, check_runner=False)
    assert result.stop_token_ids == (tok.token_id("[SEP]"),)  # what the files declare, no more
    assert result.metadata_fields()["family"]["id"] is None


def test_a_tokenizer_format_alone_is_not_a_family(tmp_path: Path) -> None:
    # SentencePiece fits several families; without special tokens that say which, no guess.
    from_parts = infer_from_parts(
        pte=None,
        tokenizer=dataclasses.replace(
            read_tokenizer(fixture_file("tokenizers/sp.model"), check_runner=False),
            special_tokens={},
            vocab=None,
        ),
        configs={},
    )
    assert from_parts.family_id is None and from_parts.family_confidence == "none"
    assert "family-unknown" in codes(from_parts)


# --- overrides ------------------------------------------------------------------------------
def test_family_override_wins_and_is_recorded(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path)
    result = infer(Deployment(tmp_path, pte_path, "test", tok_path), family_override="qwen3")
    assert result.family_id == "qwen3"
    assert result.family_confidence == "high"
    assert result.family_evidence[0].source == "override"
    assert result.chat_template == REGISTRY["qwen3"].chat_template
    assert result.chat_template_source == "registry:qwen3"
    disagrees = next(f for f in result.findings if f.code == "family-override-disagrees")
    assert disagrees.paths == ("tokenizer.model",)


def test_unknown_family_override_is_a_usage_error(tmp_path: Path) -> None:
    pte_path = program(tmp_path)
    with pytest.raises(UsageError, match="unknown family"):
        infer(Deployment(tmp_path, pte_path, "test"), family_override="gpt17")


def test_chat_template_override_wins_over_the_shipped_one(tmp_path: Path) -> None:
    tok_path, cfg = hf_tokenizer(
        tmp_path,
        ["<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|im_end|>",
        config={"chat_template": "{{ messages[0].content }}"},
    )
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg})
    override = REGISTRY["qwen3"].chat_template
    result = infer(deployment, chat_template_override=override)
    assert result.chat_template == override
    assert result.chat_template_source == "override"
    assert result.family_id == "qwen3"  # the override is a template the registry knows
    assert "override" in {e.source for e in result.family_evidence}


# --- templates shipped in several places ----------------------------------------------------
def test_template_sources_in_priority_order_and_conflict(tmp_path: Path) -> None:
    qwen = REGISTRY["qwen2_5"].chat_template
    tok_path, cfg = hf_tokenizer(
        tmp_path,
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        bos=None,
        eos="<|im_end|>",
        config={
            "chat_template": [
                {"name": "tool_use", "template": "T"},
                {"name": "default", "template": qwen},
            ]
        },
    )
    pte_path = program(tmp_path)
    only_config = Deployment(
        tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg}
    )
    result = infer(only_config)
    assert result.chat_template == qwen and result.chat_template_source == "tokenizer_config.json"
    assert result.family_id == "qwen2_5" and result.family_confidence == "high"

    jinja = tmp_path / "chat_template.jinja"
    jinja.write_text("{{ bos_token }}" + SIMPLE, encoding="utf-8")
    both = dataclasses.replace(
        only_config, configs={"tokenizer_config": cfg, "chat_template": jinja}
    )
    result = infer(both)
    assert result.chat_template_source == "chat_template.jinja"
    assert "template-conflict" in codes(result)
    conflict = next(c for c in result.conflicts if c.field == "chat_template")
    assert {s for _, s in conflict.values} == {"chat_template.jinja", "tokenizer_config.json"}


# --- generation settings and lengths --------------------------------------------------------
def test_generation_config_wins_over_family_defaults(tmp_path: Path) -> None:
    family = REGISTRY["llama3_2"]
    tok_path, cfg = hf_tokenizer(
        tmp_path, family_tokens(family), bos=family.bos_token, eos=family.eos_token
    )
    pte_path = program(tmp_path)
    gen = write_json(
        tmp_path / "generation_config.json",
        {"temperature": 0.2, "max_new_tokens": 99, "do_sample": True},
    )
    deployment = Deployment(
        tmp_path,
        pte_path,
        "test",
        tok_path,
        configs={"tokenizer_config": cfg, "generation_config": gen},
    )
    result = infer(
        deployment, pte=pte_with(pte_path, get_max_seq_len=512, get_max_context_len=1024)
    )
    assert result.generation["temperature"] == 0.2
    assert result.generation["max_new_tokens"] == 99
    assert result.generation["top_p"] == family.generation["top_p"]
    assert "generation_config.json" in sources(result, "temperature")
    fields = result.metadata_fields()["generation"]
    assert fields["max_seq_len"] == 512 and fields["max_context_len"] == 1024
    assert fields["num_bos"] == result.num_bos and fields["stop_token_ids"] == list(
        result.stop_token_ids
    )


def test_unreadable_config_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path, source="ext_weights.pte")
    bad = tmp_path / "config.json"
    bad.write_text("{not json", encoding="utf-8")
    result = infer(Deployment(tmp_path, pte_path, "test", tok_path, configs={"config": bad}))
    finding = next(f for f in result.findings if f.code == "input-unreadable")
    assert finding.severity == "error" and finding.paths == ("config.json",)
    assert result.bos_id == SP_BOS and result.max_seq_len == 128


# --- the committed legacy folders -----------------------------------------------------------
def legacy(name: str) -> list[Inference]:
    folder = FIXTURES / "legacy" / name
    if not folder.is_dir():
        pytest.skip(f"fixtures/legacy/{name} is missing")
    deployments, _ = deployments_in_folder(folder, default_adapters())
    assert deployments
    return [infer(d) for d in deployments]


def test_legacy_hf_style_is_qwen2_5() -> None:
    (result,) = legacy("hf_style")
    assert result.family_id == "qwen2_5" and result.family_confidence == "high"
    assert result.chat_template_source == "tokenizer_config.json"
    assert {"tokenizer_config.json", "config.json"} <= {e.source for e in result.family_evidence}
    assert result.stop_token_ids == (HF_ENDOFTEXT_ID, HF_IM_END_ID)
    assert "generation_config.json" in result.stop_token_sources[HF_ENDOFTEXT_ID]
    assert result.num_bos == 0
    # generation_config.json of the fixture
    assert dict(result.generation) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert result.max_seq_len == 128
    assert result.prompt_format is not None
    assert not [f for f in result.findings if f.severity != "info"]


@pytest.mark.parametrize("yaml", [None, "base:\n  model_class: llama3_2\n"])
def test_legacy_tiktoken_llama3_program_and_rank_file(tmp_path: Path, yaml: str | None) -> None:
    # The committed folder's two files: a 256-rank file and a program whose get_bos_id 256 /
    # get_eos_ids [257] only mean <|begin_of_text|>/<|end_of_text|> because pytorch-tokenizers
    # appends them. Alone: no evidence. With export_llm's yaml naming the class: that class.
    src = FIXTURES / "legacy" / "tiktoken_llama3"
    if not src.is_dir():
        pytest.skip("fixtures/legacy/tiktoken_llama3 is missing")
    for name in ("model.pte", "tokenizer.model"):
        shutil.copyfile(src / name, tmp_path / name)
    if yaml is not None:
        (tmp_path / "export_config.yaml").write_text(yaml, encoding="utf-8")
    deployments, _ = deployments_in_folder(tmp_path, default_adapters())
    (result,) = [infer(d) for d in deployments]
    assert result.bos_id == TIKTOKEN_BOS and TIKTOKEN_EOS in result.stop_token_ids
    assert "legacy-default-bos-eos" not in codes(result)
    if yaml is None:
        assert result.family_id is None and result.family_confidence == "none"
        assert "family-unknown" in codes(result)
        assert result.stop_token_ids == (TIKTOKEN_EOS,)
    else:
        assert result.family_id == "llama3_2" and result.family_confidence == "low"
        assert "family-tokenizer-mismatch" in codes(result)
        assert not [f for f in result.findings if f.severity != "info"]


@pytest.mark.parametrize("name", ["et_example", "with_ptd", "variants"])
def test_legacy_sentencepiece_folders(name: str) -> None:
    for result in legacy(name):
        assert result.family_id == "llama2"  # <s>, </s>, <unk>: the Llama 2 fingerprint
        assert result.bos_id == SP_BOS and SP_EOS in result.stop_token_ids
        assert not [f for f in result.findings if f.severity == "error"]


def test_legacy_variants_keep_their_own_lengths() -> None:
    lengths = sorted(r.max_seq_len for r in legacy("variants") if r.max_seq_len is not None)
    assert lengths == [64, 128]


def test_legacy_export_llm_agrees_with_its_tokenizer() -> None:
    (result,) = legacy("export_llm")
    # model_class llama2 in the yaml and a llama2.c tokenizer: no conflict to report
    assert result.family_id == "llama2"
    assert not [c for c in result.conflicts if c.field == "family"]
    assert "export_config.yaml" in {e.source for e in result.family_evidence}
    assert result.max_seq_len == 128


def test_export_llm_yaml_disagreeing_with_the_tokenizer_is_a_conflict(tmp_path: Path) -> None:
    src = FIXTURES / "legacy" / "export_llm"
    if not src.is_dir():
        pytest.skip("fixtures/legacy/export_llm is missing")
    folder = tmp_path / "export_llm"
    shutil.copytree(src, folder)
    yaml_path = folder / "export_config.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("model_class: llama2", "model_class: llama3"))
    deployments, _ = deployments_in_folder(folder, default_adapters())
    (result,) = [infer(d) for d in deployments]
    # model_class llama3 + Llama 3 rope_theta, but a llama2.c tokenizer: kept as a conflict
    assert any(c.field == "family" for c in result.conflicts)
    assert "export_config.yaml" in {e.source for e in result.family_evidence}
    assert "params.json" in {e.source for e in result.family_evidence}


# --- specificity: a tokenizer holding several families' fingerprints ----------------------
@pytest.mark.parametrize(("family_id", "also"), [("qwen3", "qwen2_5"), ("gemma3", "gemma2")])
def test_the_more_specific_family_wins(tmp_path: Path, family_id: str, also: str) -> None:
    # A real Qwen3 tokenizer also holds Qwen2.5's tokens (<tool_call>); a Gemma 3 one Gemma's.
    family, other = REGISTRY[family_id], REGISTRY[also]
    tokens = [*family_tokens(family), *family_tokens(other)]
    tok_path, cfg = hf_tokenizer(tmp_path, tokens, bos=family.bos_token, eos=family.eos_token)
    tok = read_tokenizer(tok_path, config_path=cfg, check_runner=False)
    result = infer_from_parts(pte=None, tokenizer=tok, configs={}, root=tmp_path)
    assert result.family_id == family_id
    assert result.family_confidence == "medium"
    assert {e.source for e in result.family_evidence} == {"tokenizer.json"}


def test_file_names_alone_give_low_confidence(tmp_path: Path) -> None:
    result = infer_from_parts(pte=None, tokenizer=None, configs={}, file_names=["Qwen3-0.6B.pte"])
    assert result.family_id == "qwen3"
    assert result.family_confidence == "low"
    assert result.family_evidence[0].source == "Qwen3-0.6B.pte"


# --- the export config's metadata and lengths ------------------------------------------------
def test_export_yaml_legacy_metadata_and_length_conflict(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/tiktoken.model", "tokenizer.model")
    pte_path = program(tmp_path)
    yaml_path = tmp_path / "export_config.yaml"
    yaml_path.write_text(
        'base:\n  model_class: llama3_2\n  metadata: \'{"get_bos_id":1,"get_eos_ids":[2]}\'\n'
        "export:\n  max_seq_length: 256\n",
        encoding="utf-8",
    )
    deployment = Deployment(
        tmp_path, pte_path, "test", tok_path, configs={"export_config": yaml_path}
    )
    pte = pte_with(
        pte_path, get_max_seq_len=128, get_bos_id=TIKTOKEN_BOS, get_eos_ids=[TIKTOKEN_EOS]
    )
    result = infer(deployment, pte=pte)
    assert result.family_id == "llama3_2" and result.family_alternatives == ()
    legacy = [f for f in result.findings if f.code == "legacy-default-bos-eos"]
    assert [f.paths for f in legacy] == [("export_config.yaml",)]
    assert 2 not in result.stop_token_ids and result.bos_id == TIKTOKEN_BOS
    assert result.max_seq_len == 128  # the program's value is what the runtime uses
    assert any(c.field == "max_seq_len" for c in result.conflicts)
    assert result.max_context_len == 128  # the runner's default: max_seq_len
    assert "rules" in sources(result, "max_context_len")


# --- hostile values ---------------------------------------------------------------------------
def test_odd_program_values_do_not_crash(tmp_path: Path) -> None:
    tok_path = copy_fixture_tokenizer(tmp_path, "tokenizers/sp.model", "tokenizer.model")
    pte_path = program(tmp_path)
    pte = pte_with(
        pte_path,
        get_max_seq_len="long",
        get_bos_id=True,
        get_eos_ids=[SP_EOS, 10**9, -1, *range(3, 200)],
        get_vocab_size=[1, 2],
    )
    gen = write_json(
        tmp_path / "generation_config.json", {"eos_token_id": "x", "temperature": "hot"}
    )
    deployment = Deployment(
        tmp_path, pte_path, "test", tok_path, configs={"generation_config": gen}
    )
    result = infer(deployment, pte=pte)
    assert result.max_seq_len is None and result.bos_id == SP_BOS
    assert 10**9 not in result.stop_token_ids and -1 not in result.stop_token_ids
    assert "stop-token-out-of-range" in codes(result)
    assert "temperature" not in result.generation or result.generation["temperature"] != "hot"
    json.dumps(result.to_json())


def test_unknown_family_stops_at_the_end_of_turn_its_template_writes(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|turn|>{{ m.content }}<|end|>{% endfor %}"
    tok_path, cfg = hf_tokenizer(
        tmp_path,
        ["<|turn|>", "<|end|>", "<|stop|>"],
        bos=None,
        eos="<|stop|>",
        config={"chat_template": template},
    )
    pte_path = program(tmp_path)
    deployment = Deployment(tmp_path, pte_path, "test", tok_path, configs={"tokenizer_config": cfg})
    result = infer(deployment, pte=pte_with(pte_path, get_max_seq_len=64))
    tok = read_tokenizer(tok_path, config_path=cfg, check_runner=False)
    end, stop = tok.token_id("<|end|>"), tok.token_id("<|stop|>")
    assert end is not None and stop is not None
    assert result.family_id is None and result.chat_template == template
    assert result.stop_token_ids == tuple(sorted((end, stop)))
    assert result.stop_token_sources[end] == ("tokenizer_config.json",)


# --- the special-token strings a chat template sees ---------------------------------------------


def test_template_tokens_are_the_configs_not_the_runners(tmp_path: Path) -> None:
    # The config's eos "</s>" is not in this tokenizer: the runner picks another eos, the
    # template still gets "</s>" (as transformers gives it); a null bos stays absent.
    tok_path, cfg_path = hf_tokenizer(
        tmp_path, ["<|endoftext|>", "<|im_end|>"], bos=None, eos="</s>",
        config={"unk_token": {"__type": "AddedToken", "content": "<unk>"}, "image_token": "<img>"},
    )  # fmt: skip
    tok = read_tokenizer(tok_path, config_path=cfg_path)
    config = json.loads(cfg_path.read_text())
    result = infer_from_parts(pte=None, tokenizer=tok, configs={"tokenizer_config": config})
    assert dict(result.special_tokens_map) == {"eos_token": "</s>", "unk_token": "<unk>", "image_token": "<img>"}
    assert tok.eos_token != "</s>"
    noted = {e.value for e in result.evidence if e.field == "special_tokens_map"}
    assert noted == {None, "</s>", "<unk>", "<img>"}


def test_special_tokens_map_json_overrides_named_tokens_unless_the_config_has_a_decoder() -> None:
    config = {"eos_token": "</s>", "image_token": "<image>"}
    special = {"eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}, "image_token": "<picture>"}
    both = {"tokenizer_config": config, "special_tokens_map": special}
    tokens = infer_from_parts(pte=None, tokenizer=None, configs=both).special_tokens_map
    assert dict(tokens) == {"eos_token": "<|im_end|>", "pad_token": "<pad>", "image_token": "<image>"}
    decoder = {**both, "tokenizer_config": {**config, "added_tokens_decoder": {}}}
    tokens = infer_from_parts(pte=None, tokenizer=None, configs=decoder).special_tokens_map
    assert dict(tokens) == {"eos_token": "</s>", "image_token": "<image>"}


def test_without_configs_the_tokenizers_own_then_the_familys() -> None:
    sp = read_tokenizer(FIXTURES / "tokenizers" / "sp.model")
    own = infer_from_parts(pte=None, tokenizer=sp, configs={}, family_override="phi_3_5")
    assert dict(own.special_tokens_map) == {"bos_token": "<s>", "eos_token": "</s>"}
    registry = infer_from_parts(pte=None, tokenizer=None, configs={}, family_override="llama3")
    family = REGISTRY["llama3"]
    assert dict(registry.special_tokens_map) == {"bos_token": family.bos_token, "eos_token": family.eos_token}
    assert any(e.source == "registry:llama3" and e.field == "special_tokens_map" for e in registry.evidence)
