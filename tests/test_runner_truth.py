"""Runner truth (etm_compat.infer.runner): what the ExecuTorch 1.x runner really uses, where it
shows (describe, inspect, metadata.json) and the diagnostics built on it.

The last test runs the real ``TextLLMRunner`` on fixtures/field/eos_singular (a tiny Llama
exported with a singular ``get_eos_id`` = 495 and no ``get_eos_ids``) and checks the
diagnostic's claim against what the runner does: it does not stop at 495, it stops at the
tokenizer's eos.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import FIXTURES, fixture_file

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.archive.metadata import validate_metadata
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import main
from etm_compat.findings import Finding
from etm_compat.formats.pte import read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.runner import encode_with_runner
from etm_compat.infer.runner import runner_truth
from etm_compat.legacy.resolve import resolve_source
from etm_compat.view import DeploymentView, describe

RUNTIME_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:importlib.*")
SP_MODEL = FIXTURES / "tokenizers" / "sp.model"  # SentencePiece: bos 1, eos 2 ('</s>'), 512 pieces
STALE = FIXTURES / "field" / "dialects" / "stale_llama2_defaults"
TIKTOKEN = STALE / "tokenizer.model"  # tiktoken: bos 256, eos 257
EOS_SINGULAR = FIXTURES / "field" / "eos_singular"
SCHEMA = json.loads(
    resources.files("etm_compat").joinpath("schemas/metadata.schema.json").read_text()
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner-check records go to a folder of the test's own, not the user's cache."""
    monkeypatch.setenv("ETM_CACHE_DIR", str(tmp_path / "cache"))


def _view(program: Path, tokenizer: Path | None = None) -> DeploymentView:
    return describe(resolve_source(program, default_adapters(), tokenizer=tokenizer))


def _only(view: DeploymentView, code: str) -> Finding:
    found = [f for f in view.findings if f.code == code]
    assert len(found) == 1, [f.code for f in view.findings]
    return found[0]


# --- what the runner uses, per dialect ----------------------------------------------------------

#: program -> {value: (what the runner uses, where from, the program's keys it ignores for it)},
#: with fixtures/tokenizers/sp.model as the tokenizer.
EXPECTED: dict[str, dict[str, tuple[Any, str, dict[str, Any]]]] = {
    "dialects/export_llm.pte": {
        "bos_id": (1, "tokenizer", {"get_bos_id": 128000}),
        "eos_ids": ([128009, 128001], "get_eos_ids", {}),
        "vocab_size": (512, "tokenizer", {"get_vocab_size": 128256}),
        "max_seq_len": (2048, "get_max_seq_len", {}),
        "max_context_len": (4096, "get_max_context_len", {}),
        "use_sdpa_with_kv_cache": (True, "use_sdpa_with_kv_cache", {}),
    },
    "dialects/optimum.pte": {
        "eos_ids": ([2], "tokenizer", {"get_eos_id": 2}),
        "max_context_len": (2048, "get_max_seq_len", {}),
    },
    "dialects/qualcomm.pte": {
        "eos_ids": ([2], "tokenizer", {"get_eos_id": 2}),
        "max_context_len": (1024, "get_max_context_len", {}),
        "use_kv_cache": (True, "default", {"get_use_kv_cache": True}),
        "enable_dynamic_shape": (False, "default", {}),
    },
    "dialects/mlx.pte": {
        "eos_ids": ([2], "tokenizer", {"get_eos_id": [128001, 128008, 128009]}),
        "max_context_len": (1024, "get_max_seq_len", {"get_max_ctx_len": 1024}),
    },
    "dialects/mlx_custom_components.pte": {
        "max_seq_len": (None, "missing", {}),
        "max_context_len": (None, "missing", {"get_max_ctx_len": 1024}),
    },
    "eos_singular/model.pte": {
        "bos_id": (1, "tokenizer", {"get_bos_id": 1}),
        "eos_ids": ([2], "tokenizer", {"get_eos_id": 495}),
    },
}


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_runner_truth_of_each_dialect(rel: str) -> None:
    cm = read_pte(fixture_file(f"field/{rel}")).constant_methods
    truth = runner_truth(cm, read_tokenizer(SP_MODEL)).values
    got = {
        name: (truth[name].value, truth[name].source, dict(truth[name].ignored))
        for name in EXPECTED[rel]
    }
    assert got == EXPECTED[rel]


def test_a_program_without_max_seq_len_is_refused() -> None:
    cm = read_pte(fixture_file("field/dialects/mlx_custom_components.pte")).constant_methods
    truth = runner_truth(cm, None)
    assert truth.loads is False and "get_max_seq_len" in (truth.refusal or "")
    assert (truth.bos_id.value, truth.eos_ids.value) == (None, [])  # no tokenizer given


def test_describe_and_inspect_show_the_runner_truth(capsys: pytest.CaptureFixture[str]) -> None:
    view = _view(EOS_SINGULAR)
    assert view.runner.eos_ids.value == [2] and view.dialects.dialects == ("export_llm", "legacy")
    assert main(["inspect", "--json", str(EOS_SINGULAR)]) == EXIT_OK
    dep = json.loads(capsys.readouterr().out)["deployments"][0]
    assert dep["runner"]["eos_ids"] == {
        "value": [2],
        "source": "tokenizer",
        "ignored": {"get_eos_id": 495},
    }
    assert dep["runner"]["loads"] is True
    assert dep["dialects"]["fields"]["eos_ids"] == {"value": [495], "key": "get_eos_id"}
    assert main(["inspect", str(EOS_SINGULAR)]) == EXIT_OK
    assert "ExecuTorch 1.x runner uses" in capsys.readouterr().out


# --- the archive's runner section -----------------------------------------------------------------


def test_archive_records_the_runner_and_stays_version_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.etm", tmp_path / "b.etm"
    assert main(["pack", str(EOS_SINGULAR), "-o", str(first)]) == EXIT_OK
    assert main(["pack", str(EOS_SINGULAR), "-o", str(second)]) == EXIT_OK
    capsys.readouterr()
    assert first.read_bytes() == second.read_bytes()  # deterministic
    with open_archive(first) as archive:
        meta = archive.metadata
    assert meta["format_version"] == 1 and meta["min_reader_version"] == 1
    assert meta["runner"] == _view(EOS_SINGULAR).runner.to_json()
    assert meta["runner"]["eos_ids"]["source"] == "tokenizer"
    assert meta["program"]["dialects"] == ["export_llm", "legacy"]
    # The archive's own stop set keeps the exporter's eos.
    assert 495 in meta["generation"]["stop_token_ids"]
    assert "eos-id-ignored" in {d["code"] for d in meta["diagnostics"]}
    assert validate_metadata(meta) == []
    jsonschema.validate(meta, SCHEMA)
    assert main(["inspect", str(first)]) == EXIT_OK
    assert "ExecuTorch 1.x runner uses" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("eos_ids", "value"), "2"),
        (("loads",), "yes"),
        (("max_seq_len", "value"), -1),
        (("bos_id", "source"), 3),
        (("use_kv_cache",), None),
    ],
)
def test_checker_and_schema_reject_a_bad_runner_section(
    tmp_path: Path, path: tuple[str, ...], value: Any
) -> None:
    out = tmp_path / "m.etm"
    assert main(["pack", str(EOS_SINGULAR), "-o", str(out)]) == EXIT_OK
    with open_archive(out) as archive:
        meta = copy.deepcopy(archive.metadata)
    target = meta["runner"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(p.startswith("$.runner") for p in validate_metadata(meta))
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(meta))
    del meta["runner"]
    assert validate_metadata(meta) == []  # optional: older archives have none


# --- diagnostics on runner truth -------------------------------------------------------------------


def test_singular_eos_says_which_eos_the_runner_uses() -> None:
    view = _view(EOS_SINGULAR)
    f = _only(view, "eos-id-ignored")
    assert f.severity == "warning"
    assert "will use eos 2 ('</s>') from the tokenizer, not 495" in f.message
    # One fact, one code: the program's ids are not also reported as a wrong get_eos_ids.
    assert not {"eos-ids-mismatch", "stop-missing-end-of-turn"} & {x.code for x in view.findings}


def test_singular_eos_against_a_tokenizer_with_another_eos() -> None:
    mlx = _only(_view(fixture_file("field/dialects/mlx.pte"), SP_MODEL), "eos-id-ignored")
    assert mlx.severity == "warning"
    assert "will use eos 2 ('</s>') from the tokenizer, not 128001, 128008, 128009" in mlx.message
    optimum = _only(_view(fixture_file("field/optimum_out/model.pte"), TIKTOKEN), "eos-id-ignored")
    assert (
        optimum.severity == "warning"
        and "eos 257" in optimum.message
        and "not 2:" in optimum.message
    )
    same = _only(_view(fixture_file("field/dialects/qualcomm.pte"), SP_MODEL), "eos-id-ignored")
    assert same.severity == "info"  # get_eos_id=2 is the tokenizer's eos: nothing is lost


def test_hard_coded_bos_1_eos_2_on_another_tokenizer_is_the_legacy_finding() -> None:
    view = _view(fixture_file("field/dialects/qualcomm.pte"), TIKTOKEN)
    f = _only(view, "legacy-default-bos-eos")
    assert "ignores get_eos_id and stops at the tokenizer's eos 257" in f.message
    assert "eos-id-ignored" not in {x.code for x in view.findings}  # one fact, one code


def test_ignored_dialect_keys_are_one_info_finding() -> None:
    qualcomm = _only(
        _view(fixture_file("field/dialects/qualcomm.pte"), SP_MODEL), "runner-ignores-key"
    )
    assert qualcomm.severity == "info"
    for key in ("get_n_bos=1", "get_n_eos=1", "get_use_kv_cache=True"):
        assert key in qualcomm.message
    mlx = _only(_view(fixture_file("field/dialects/mlx.pte"), SP_MODEL), "runner-ignores-key")
    assert "get_max_ctx_len=1024 (it uses max_context_len=1024 from get_max_seq_len)" in mlx.message
    custom = _view(fixture_file("field/dialects/mlx_custom_components.pte"), SP_MODEL)
    assert _only(custom, "max-seq-len-missing").severity == "error"
    assert "get_max_ctx_len" in _only(custom, "runner-ignores-key").message
    assert custom.runner.loads is False
    # export_llm's own keys are all read: nothing to say.
    assert "runner-ignores-key" not in {
        f.code for f in _view(fixture_file("field/dialects/export_llm.pte"), SP_MODEL).findings
    }


def test_stale_llama2_defaults_extend_the_legacy_finding() -> None:
    view = _view(STALE)
    f = _only(view, "legacy-default-bos-eos")
    assert (
        "the ExecuTorch 1.x runner stops only at get_eos_ids=[2], never at the tokenizer's eos 257"
        in f.message
    )
    assert "takes bos 256 from the tokenizer" in f.message
    assert view.runner.eos_ids.value == [2] and view.runner.bos_id.value == 256
    assert not {"eos-ids-mismatch", "eos-id-ignored"} & {x.code for x in view.findings}


# --- the real runner -----------------------------------------------------------------------------


def _greedy_ids(pte: Path, prompt_ids: list[int], count: int) -> list[int]:
    """Greedy ids decoded step by step with executorch.runtime (the KV-cache forward)."""
    import torch
    from executorch.runtime import Runtime

    forward = Runtime.get().load_program(pte).load_method("forward")
    out = forward.execute([torch.tensor([prompt_ids]), torch.tensor([0])])
    ids: list[int] = []
    for pos in range(len(prompt_ids), len(prompt_ids) + count):
        ids.append(int(out[0].reshape(-1, out[0].shape[-1])[-1].argmax()))
        out = forward.execute([torch.tensor([[ids[-1]]]), torch.tensor([pos])])
    return ids


@pytest.mark.runtime
@RUNTIME_WARNINGS
def test_the_real_runner_ignores_get_eos_id_and_stops_at_the_tokenizers_eos() -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    runner_mod = pytest.importorskip("executorch.extension.llm.runner")
    pte, tok = EOS_SINGULAR / "model.pte", EOS_SINGULAR / "tokenizer.model"
    view = _view(EOS_SINGULAR)
    claim = _only(view, "eos-id-ignored").message
    uses = view.runner.eos_ids.value
    assert uses == [2] and f"will use eos {uses[0]} ('</s>') from the tokenizer, not 495" in claim
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok))
    runner = runner_mod.TextLLMRunner(str(pte), str(tok))

    def generate(prompt: str, max_new_tokens: int) -> tuple[list[str], Any]:
        pieces: list[str] = []
        stats: list[Any] = []
        runner.reset()
        config = runner_mod.GenerationConfig(
            temperature=0.0, max_new_tokens=max_new_tokens, echo=False
        )
        runner.generate(prompt, config, pieces.append, stats.append)
        return pieces, stats[-1]

    # The exporter's eos (495) is the 3rd greedy token: the runner goes on to all 20.
    prompt = "The cat walked to the market"
    ids = _greedy_ids(pte, sp.encode(prompt), 20)
    assert ids[:3] == [348, 348, 495] and 2 not in ids
    pieces, stats = generate(prompt, 20)
    assert len(pieces) == 20 and stats.num_generated_tokens == 19  # the first token is prefill's
    assert pieces == [sp.id_to_piece(i).replace("\u2581", " ") for i in ids]
    # And where greedy decoding meets the tokenizer's eos (2), the runner stops right there.
    prompt = "The end."
    ids = _greedy_ids(pte, sp.encode(prompt), 40)
    stop = ids.index(uses[0])
    assert 495 not in ids[:stop]
    pieces, stats = generate(prompt, 40)
    assert len(pieces) == stop + 1 < 40  # the eos token is handed to the callback, then it stops
    assert pieces[:stop] == [sp.id_to_piece(i).replace("\u2581", " ") for i in ids[:stop]]


@pytest.mark.runtime
@RUNTIME_WARNINGS
def test_encode_with_runner_gives_the_ids_the_real_runner_feeds() -> None:
    """The ids of ``render --tokens`` (encode_with_runner, in the isolation worker) are the ones
    TextLLMRunner prefills: the same count, and greedy decoding from them gives its first piece."""
    sentencepiece = pytest.importorskip("sentencepiece")
    runner_mod = pytest.importorskip("executorch.extension.llm.runner")
    pte, tok = EOS_SINGULAR / "model.pte", EOS_SINGULAR / "tokenizer.model"
    prompt = "The cat walked to the market"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok))
    for bos, eos in ((0, 0), (1, 0), (2, 1)):
        enc = encode_with_runner(tok, prompt, bos=bos, eos=eos)
        assert enc.tokenizer_class == "SPTokenizer" and (enc.bos_id, enc.eos_id) == (1, 2)
        assert list(enc.ids) == [1] * bos + sp.encode(prompt) + [2] * eos
        assert enc.pieces[bos : len(enc.ids) - eos] == tuple(sp.id_to_piece(i).replace("\u2581", " ") for i in sp.encode(prompt))
    config = runner_mod.GenerationConfig(temperature=0.0, max_new_tokens=1, echo=False)
    enc = encode_with_runner(tok, prompt, bos=config.num_bos, eos=config.num_eos)
    pieces: list[str] = []
    stats: list[Any] = []
    runner_mod.TextLLMRunner(str(pte), str(tok)).generate(prompt, config, pieces.append, stats.append)
    assert stats[-1].num_prompt_tokens == len(enc.ids)
    first = _greedy_ids(pte, list(enc.ids), 1)[0]
    assert pieces[0] == sp.id_to_piece(first).replace("\u2581", " ")
