"""The shim covers MultimodalRunner as it covers TextLLMRunner: a multimodal deployment packed
into one archive generates the same tokens through the shim as its loose files do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from etm_compat import shim
from etm_compat.adapters import default_adapters
from etm_compat.packing import pack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
VISION = FIXTURES / "multimodal" / "vision"

pytestmark = pytest.mark.runtime


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    return root


@pytest.fixture
def installed() -> Iterator[None]:
    shim.install()
    try:
        yield
    finally:
        shim.uninstall()


def _generate(model: str, tokenizer: str | None = None) -> list[str]:
    import torch
    from executorch.extension.llm.runner import (
        GenerationConfig,
        MultimodalRunner,
        make_image_input,
        make_text_input,
    )

    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4001))
    runner = MultimodalRunner(model, tokenizer) if tokenizer is not None else MultimodalRunner(model)
    pieces: list[str] = []
    inputs = [make_text_input("A photo of"), make_image_input(image), make_text_input("The cat walked to the market")]
    runner.generate(inputs, GenerationConfig(temperature=0.0, max_new_tokens=10, echo=False), token_callback=pieces.append)
    return pieces


def test_multimodal_runner_generates_the_same_tokens_from_the_archive(tmp_path: Path, installed: None) -> None:
    expected = _generate(str(VISION / "model.pte"), str(VISION / "tokenizer.model"))
    assert len(expected) == 10
    archive = tmp_path / "vision.etm"
    pack(VISION, archive, default_adapters())
    assert _generate(str(archive), str(archive)) == expected
    assert _generate(str(archive)) == expected  # the tokenizer comes from the archive


def test_the_shim_patches_the_multimodal_runner(installed: None) -> None:
    from executorch.extension.llm import runner

    assert hasattr(runner.MultimodalRunner, "_etm_original")
    assert runner.MultimodalRunner.__name__ == "MultimodalRunner"
