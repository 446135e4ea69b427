"""load(): one Bundle API for an archive, a legacy folder and a .pte with siblings."""

from __future__ import annotations

import mmap
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.cli.main import main
from etm_compat.compat.loader import Bundle, LegacyPaths, load
from etm_compat.errors import UnreadableError, UsageError
from etm_compat.prompt.chat import render_chat

NAMES = ("et_example", "with_ptd", "hf_style")
#: The metadata sections inference fills: a folder and its archive must agree on all of them.
INFERRED = ("family", "chat_template", "generation", "tokenizer", "weights", "program", "members")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (FIXTURES / "legacy").is_dir():
        pytest.skip("fixtures missing")
    out = tmp_path_factory.mktemp("loader")
    for name in NAMES:
        assert main(["pack", str(FIXTURES / "legacy" / name), "-o", str(out / f"{name}.etm")]) == 0
    return {name: out / f"{name}.etm" for name in NAMES}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    return root


@pytest.mark.parametrize("name", NAMES)
def test_folder_and_archive_give_the_same_metadata(archives: dict[str, Path], name: str) -> None:
    with load(archives[name]) as packed, load(FIXTURES / "legacy" / name) as loose:
        assert packed.kind == "archive" and loose.kind == "legacy"
        for section in INFERRED:
            assert loose.metadata[section] == packed.metadata[section], section
        assert loose.tokenizer_format == packed.tokenizer_format


def test_pte_path_finds_its_siblings(archives: dict[str, Path]) -> None:
    with load(FIXTURES / "legacy" / "with_ptd" / "program.pte") as bundle:
        paths = bundle.legacy_paths()
        assert paths.tokenizer.name == "tokenizer.model"
        assert [p.name for p in paths.weights] == ["weights.ptd"]
        assert list(bundle.weights) == ["weights/weights.ptd"]


@pytest.mark.parametrize("source", ["archive", "folder"])
def test_bytes_are_zero_copy_views(archives: dict[str, Path], source: str) -> None:
    folder = FIXTURES / "legacy" / "with_ptd"
    target = archives["with_ptd"] if source == "archive" else folder
    with load(target) as bundle:
        program = bundle.program_bytes()
        assert isinstance(program.obj, mmap.mmap) and program.readonly
        assert program == (folder / "program.pte").read_bytes()
        tokenizer = bundle.tokenizer_bytes()
        assert isinstance(tokenizer.obj, mmap.mmap)
        assert tokenizer == (folder / "tokenizer.model").read_bytes()
        assert bundle.tokenizer_format == "sentencepiece"
        weights = bundle.weights
        assert list(weights) == ["weights/weights.ptd"]
        assert weights["weights/weights.ptd"] == (folder / "weights.ptd").read_bytes()
        program.release()
        tokenizer.release()


def test_legacy_paths_of_a_folder_are_the_originals() -> None:
    folder = FIXTURES / "legacy" / "with_ptd"
    with load(folder) as bundle:
        assert bundle.legacy_paths() == LegacyPaths(
            folder / "program.pte",
            folder / "tokenizer.model",
            (folder / "weights.ptd",),
            folder,
            {"model": folder / "program.pte"},
            {"model": (folder / "weights.ptd",)},
        )


def test_legacy_paths_of_an_archive_are_cached_copies(
    archives: dict[str, Path], private_cache: Path
) -> None:
    folder = FIXTURES / "legacy" / "with_ptd"
    with load(archives["with_ptd"]) as bundle:
        paths = bundle.legacy_paths()
        assert paths.folder.parent == private_cache
        assert paths.program.read_bytes() == (folder / "program.pte").read_bytes()
        assert paths.tokenizer.read_bytes() == (folder / "tokenizer.model").read_bytes()
        assert [p.read_bytes() for p in paths.weights] == [(folder / "weights.ptd").read_bytes()]
        assert bundle.legacy_paths() == paths  # reused
    with load(archives["with_ptd"]) as again:
        assert again.legacy_paths(verify=True) == paths


def test_hf_archive_materializes_tokenizer_beside_config(archives: dict[str, Path]) -> None:
    with load(archives["hf_style"]) as bundle:
        paths = bundle.legacy_paths()
    assert paths.tokenizer.name == "tokenizer.json"
    assert (paths.tokenizer.parent / "tokenizer_config.json").read_bytes() == (
        FIXTURES / "legacy" / "hf_style" / "tokenizer_config.json"
    ).read_bytes()


@pytest.mark.parametrize("name", ["hf_style", "et_example"])
def test_render_uses_the_template_and_special_tokens(archives: dict[str, Path], name: str) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    with load(archives[name]) as packed, load(FIXTURES / "legacy" / name) as loose:
        meta = packed.metadata
        tok = meta["tokenizer"]
        expected = render_chat(
            meta["chat_template"],
            messages,
            add_generation_prompt=True,
            special_tokens=tok["special_tokens_map"],
        )
        # The strings the template sees: the configs' (hf_style), else the tokenizer's own.
        assert tok["special_tokens_map"] == (
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
            if name == "hf_style"
            else {"bos_token": "<s>", "eos_token": "</s>"}
        )
        assert packed.render(messages) == expected == loose.render(messages)
        assert "What is 2+2?" in expected
        if name == "hf_style":  # Qwen's template opens the assistant turn; Llama 2's has none
            assert expected.endswith("<|im_start|>assistant\n")
            assert not packed.render(messages, add_generation_prompt=False).endswith("assistant\n")


def test_max_new_tokens_fits_the_context(archives: dict[str, Path]) -> None:
    with load(archives["et_example"]) as bundle:
        context = bundle.metadata["generation"]["max_context_len"]
        assert context == 128
        assert bundle.max_new_tokens() == 128
        assert bundle.max_new_tokens(occupied=30) == 98
        assert bundle.max_new_tokens(occupied=500) == 0


@pytest.mark.runtime
def test_generation_config_from_metadata(archives: dict[str, Path]) -> None:
    from executorch.extension.llm.runner import GenerationConfig

    with load(archives["hf_style"]) as bundle:
        gen = bundle.metadata["generation"]
        config = bundle.generation_config(occupied=20)
        assert isinstance(config, GenerationConfig)
        assert (config.num_bos, config.num_eos) == (gen["num_bos"], gen["num_eos"])
        assert config.seq_len == gen["max_seq_len"]
        budget = gen["max_context_len"] - 20
        assert config.max_new_tokens == min(budget, gen.get("max_new_tokens") or budget)
        if gen.get("temperature") is not None:
            assert config.temperature == pytest.approx(gen["temperature"])
        else:
            assert config.temperature == pytest.approx(GenerationConfig().temperature)
        greedy = bundle.generation_config(temperature=0.0, max_new_tokens=5, echo=False)
        assert (greedy.temperature, greedy.max_new_tokens, greedy.echo) == (0.0, 5, False)
        with pytest.raises(UsageError, match="top_q"):
            bundle.generation_config(top_q=0.5)


def test_load_refuses_what_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError):
        load(tmp_path / "missing.etm")


def test_close_unmaps_and_bundle_is_one_type(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(FIXTURES / "legacy" / "et_example", folder)
    bundles = [load(archives["et_example"]), load(folder)]
    for bundle in bundles:
        assert type(bundle) is Bundle
        view = bundle.program_bytes()
        assert len(view) > 0
        view.release()
        bundle.close()
    with pytest.raises(ValueError):
        bundles[0].program_bytes()  # the archive's mapping is gone
