"""``render --tokens``: the ids the ExecuTorch runner feeds the model, as the runner computes them.

The prompt is encoded by pytorch_tokenizers (the runner's library) with the deployment's
``num_bos``/``num_eos``. Checked three ways: against the HF ``tokenizers`` library where the
deployment has a tokenizer.json; through the command line (terminal and JSON); and against a real
``TextLLMRunner`` run on the fixtures: the prompt token count it reports equals ours, and for the
SentencePiece deployments the greedy continuation of *our* ids (run step by step on the program)
is the text the runner generates from the prompt.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

import etm_compat
from etm_compat.cli.exit_codes import EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.errors import UsageError

pytest.importorskip("pytorch_tokenizers", reason="pytorch_tokenizers (the runner's tokenizer library) is not installed")

LEGACY = FIXTURES / "legacy"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2? «ünïcødé» 日本語, and <|im_end|> typed by a user"},
]


def test_ids_match_the_tokenizers_library() -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="the HF tokenizers library is not installed")
    reference = tokenizers.Tokenizer.from_file(str(LEGACY / "hf_style" / "tokenizer.json"))
    with etm_compat.load(LEGACY / "hf_style") as bundle:
        for messages in (CONVERSATION, CONVERSATION[1:], [{"role": "user", "content": "  spaced\n\nout  "}]):
            result = bundle.render_tokens(messages)
            assert result.num_bos == 0 and result.tokenizer_class == "HFTokenizer"
            assert list(result.ids) == reference.encode(result.prompt, add_special_tokens=False).ids
            special = {reference.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
            assert [i in special for i in result.ids] == list(result.special)
            assert result.special[0] and result.pieces[0] == "<|im_start|>"


def test_archive_and_folder_feed_the_same_ids(tmp_path: Path) -> None:
    for name in ("hf_style", "et_example"):
        archive = tmp_path / f"{name}.etm"
        assert main(["pack", str(LEGACY / name), "-o", str(archive)]) == EXIT_OK
        with etm_compat.load(archive) as packed, etm_compat.load(LEGACY / name) as loose:
            assert packed.render_tokens(CONVERSATION).ids == loose.render_tokens(CONVERSATION).ids


def test_num_bos_and_num_eos_are_added_as_the_runner_adds_them() -> None:
    with etm_compat.load(LEGACY / "et_example") as bundle:
        assert bundle.metadata["generation"]["num_bos"] == 0
        plain = bundle.render_tokens(CONVERSATION)
        both = bundle.render_tokens(CONVERSATION, num_bos=1, num_eos=1)
        assert plain.bos_id == 1 and plain.eos_id == 2 and plain.tokenizer_class == "SPTokenizer"
        assert both.ids == (1, *plain.ids, 2) and both.special[0] and both.special[-1]
        # The Llama 2 template writes "<s>" as text; SentencePiece does not read it as BOS.
        assert plain.prompt.startswith("<s>[INST]") and plain.ids[0] != plain.bos_id
        with pytest.raises(UsageError, match="num_bos must be 0 to 127"):
            bundle.render_tokens(CONVERSATION, num_bos=128)


def test_command_line_json_and_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["render", str(LEGACY / "hf_style"), "--user", "Hi", "--tokens", "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == [t["id"] for t in out["tokens"]] and out["tokenizer_class"] == "HFTokenizer"
    assert out["tokens"][0] == {"id": out["ids"][0], "piece": "<|im_start|>", "special": True}
    with etm_compat.load(LEGACY / "hf_style") as bundle:
        assert out["prompt"] == bundle.render([{"role": "user", "content": "Hi"}])
    assert main(["render", str(LEGACY / "et_example"), "--user", "Hi", "--tokens", "--num-bos", "1"]) == EXIT_OK
    text = capsys.readouterr().out
    assert re.search(r"\d+ tokens \(\d+ special\) from SPTokenizer, num_bos=1, num_eos=0", text)
    assert re.search(r"0 │\s+1 │ \"<s>\"\s+│ special", text)
    assert main(["render", str(LEGACY / "et_example"), "--user", "Hi", "--tokens", "--num-bos", "-1"]) == EXIT_USAGE


# --- the real runner -------------------------------------------------------------------------


def _runner_run(bundle: Any, prompt: str, num_bos: int, capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The prompt token count a TextLLMRunner reports (its stats; its own log line when the
    Python token callback fails on a partial UTF-8 piece) and the pieces it generates."""
    runner_mod = pytest.importorskip("executorch.extension.llm.runner")
    paths = bundle.legacy_paths()
    runner = runner_mod.TextLLMRunner(str(paths.program), str(paths.tokenizer))
    config = bundle.generation_config(temperature=0.0, max_new_tokens=4, echo=False, num_bos=num_bos)
    pieces: list[str] = []
    stats: list[Any] = []
    capfd.readouterr()
    # Byte-level vocabularies: the binding cannot hand a partial character to the callback.
    with contextlib.suppress(UnicodeDecodeError):
        runner.generate(prompt, config, pieces.append, stats.append)
    log = capfd.readouterr()
    reported = re.findall(r"num_prompt_tokens (\d+)", log.out + log.err)
    assert reported, "the runner reported no prompt token count"
    if stats:
        assert stats[-1].num_prompt_tokens == int(reported[-1])
    return int(reported[-1]), pieces


def _greedy_pieces(pte: Path, ids: tuple[int, ...], count: int, model: Path) -> list[str]:
    import sentencepiece
    import torch
    from executorch.runtime import Runtime

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    forward = Runtime.get().load_program(pte).load_method("forward")
    out = forward.execute([torch.tensor([list(ids)]), torch.tensor([0])])
    generated: list[int] = []
    for pos in range(len(ids), len(ids) + count):
        generated.append(int(out[0].reshape(-1, out[0].shape[-1])[-1].argmax()))
        out = forward.execute([torch.tensor([[generated[-1]]]), torch.tensor([pos])])
    return [sp.id_to_piece(i).replace("\u2581", " ") for i in generated]


@pytest.mark.runtime
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("name", "family", "num_bos"),
    [
        ("et_example", None, 0),
        ("et_example", None, 1),
        ("et_example", "qwen2_5", 0),
        ("export_llm", None, 1),
        ("hf_style", None, 0),
        ("hf_style", "llama2", 1),
    ],
)
def test_the_runner_feeds_our_ids(
    capfd: pytest.CaptureFixture[str], name: str, family: str | None, num_bos: int
) -> None:
    messages = [{"role": "user", "content": "The cat walked to the market"}]
    with etm_compat.load(LEGACY / name) as bundle:
        ours = bundle.render_tokens(messages, family=family, num_bos=num_bos)
        count, pieces = _runner_run(bundle, ours.prompt, num_bos, capfd)
        assert count == len(ours.ids)
        if ours.tokenizer_class in ("SPTokenizer", "Llama2cTokenizer"):
            model = FIXTURES / "tokenizers" / "sp.model"  # tokenizer.bin is sp.model converted
            program = bundle.legacy_paths().program
            assert pieces == _greedy_pieces(program, ours.ids, len(pieces), model)
