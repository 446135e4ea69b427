"""The drop-in shim: archives and upgraded folders through executorch's own entry points."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat import shim
from etm_compat.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
OLD_APP = ROOT / "tests" / "old_app.py"
#: The one change made to run the old application on an upgraded folder: install() first.
WITH_SHIM = (
    "import etm_compat.shim as s; s.install(); import runpy; "
    f"runpy.run_path({str(OLD_APP)!r}, run_name='__main__')"
)


def _pack(src: Path, dest: Path) -> Path:
    assert main(["pack", str(src), "-o", str(dest), "--json"]) == 0
    return dest


def _upgrade(folder: Path) -> Path:
    """What an operator does: pack the folder to model.etm, then remove the loose files."""
    archive = _pack(folder, folder / "model.etm")
    for child in folder.iterdir():
        if child != archive:
            child.unlink()
    return archive


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


def _copy(name: str, dest: Path) -> Path:
    if not (FIXTURES / "legacy" / name).is_dir():
        pytest.skip("fixtures missing")
    return Path(shutil.copytree(FIXTURES / "legacy" / name, dest))


# --- light import -------------------------------------------------------------------------------


def test_importing_the_shim_imports_nothing_heavy() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import etm_compat.shim"],
        capture_output=True, text=True, check=True,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "etm_compat.shim" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in {"torch", "executorch", "rich", "jinja2", "numpy"})
    assert heavy == []
    assert not any(m in modules for m in ("etm_compat.cli.main", "etm_compat.packing", "etm_compat.prompt.chat"))


# --- finding the archive ------------------------------------------------------------------------


def test_find_archive(tmp_path: Path) -> None:
    folder = _copy("et_example", tmp_path / "app")
    assert shim.find_archive(folder / "model.pte") is None  # exists, not an archive
    assert shim.find_archive(folder / "nothing.pte") is None  # missing, no archive beside
    archive = _upgrade(folder)
    assert shim.find_archive(archive) == archive
    assert shim.find_archive(folder / "model.pte") == archive
    assert shim.find_archive(folder / "tokenizer.model") == archive
    # A second archive: only the one whose provenance names the file stands for it.
    _pack(FIXTURES / "legacy" / "with_ptd", folder / "other.etm")
    assert shim.find_archive(folder / "model.pte") == archive
    assert shim.find_archive(folder / "program.pte") == folder / "other.etm"
    assert shim.find_archive(folder / "unknown.pte") is None  # ambiguous: nobody names it


def test_existing_files_pass_through_unchanged(tmp_path: Path) -> None:
    folder = _copy("with_ptd", tmp_path / "app")
    args = (str(folder / "program.pte"), str(folder / "tokenizer.model"), str(folder / "weights.ptd"))
    assert shim.resolve_runner_paths(*args) == args
    assert not (tmp_path / "cache").exists()  # nothing was materialized


def test_runner_paths_from_an_upgraded_folder(tmp_path: Path, private_cache: Path) -> None:
    folder = _copy("with_ptd", tmp_path / "app")
    originals = {p.name: p.read_bytes() for p in folder.iterdir()}
    _upgrade(folder)
    model, tok, data = shim.resolve_runner_paths(
        folder / "program.pte", folder / "tokenizer.model", folder / "weights.ptd"
    )
    assert Path(model).parent.parent == private_cache
    assert Path(model).read_bytes() == originals["program.pte"]
    assert tok is not None and Path(tok).read_bytes() == originals["tokenizer.model"]
    assert data is not None and Path(data).read_bytes() == originals["weights.ptd"]
    # The archive itself, with nothing else: tokenizer and weights come from it too.
    assert shim.resolve_runner_paths(folder / "model.etm", None, None) == (model, tok, data)


# --- install / uninstall ------------------------------------------------------------------------

_PATCH_ON_IMPORT = textwrap.dedent(
    """
    import sys
    import etm_compat.shim as shim
    shim.install(); shim.install()
    assert "executorch" not in sys.modules
    from executorch.extension.llm.runner import TextLLMRunner
    import executorch.extension.llm.runner as runner_mod
    import executorch.extension.llm.runner._llm_runner as ext
    from executorch.runtime import Runtime
    original = TextLLMRunner._etm_original
    assert ext.TextLLMRunner is TextLLMRunner and runner_mod.TextLLMRunner is TextLLMRunner
    assert issubclass(TextLLMRunner, original) and TextLLMRunner.__name__ == "TextLLMRunner"
    assert hasattr(Runtime.load_program, "_etm_original")
    shim.uninstall()
    assert runner_mod.TextLLMRunner is original and ext.TextLLMRunner is original
    assert not hasattr(Runtime.load_program, "_etm_original")
    assert not shim.installed()
    shim.install()  # modules already imported: patched at once
    assert runner_mod.TextLLMRunner is not original
    print("ok")
    """
)


@pytest.mark.runtime
def test_patches_modules_imported_later_and_undoes() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PATCH_ON_IMPORT], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


# --- the real runtime ---------------------------------------------------------------------------


def _generate(*args: str) -> str:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(*args)
    pieces: list[str] = []
    config = GenerationConfig(temperature=0.0, max_new_tokens=20, echo=False)
    runner.generate("Once upon a time", config, pieces.append)
    return "".join(pieces)


@pytest.mark.runtime
def test_runner_generates_the_same_text_from_the_archive(tmp_path: Path, installed: None) -> None:
    loose = FIXTURES / "llama" / "tiny_llama.pte"
    sp = FIXTURES / "tokenizers" / "sp.model"
    if not loose.is_file() or not sp.is_file():
        pytest.skip("fixtures missing")
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copyfile(loose, folder / "model.pte")
    shutil.copyfile(sp, folder / "tokenizer.model")
    expected = _generate(str(folder / "model.pte"), str(folder / "tokenizer.model"))
    assert len(expected) > 10
    archive = _upgrade(folder)
    assert _generate(str(archive), str(archive)) == expected
    assert _generate(str(archive)) == expected  # tokenizer taken from the archive
    assert _generate(str(folder / "model.pte"), str(folder / "tokenizer.model")) == expected


def _forward(program: object) -> list[float]:
    import torch

    method = program.load_method("forward")  # type: ignore[attr-defined]
    out = method.execute([torch.arange(4, dtype=torch.float32).reshape(1, 4)])
    return [float(v) for v in out[0].flatten()]


def _constants(program: object) -> dict[str, list[object]]:
    names = sorted(program.method_names - {"forward"})  # type: ignore[attr-defined]
    return {n: list(program.load_method(n).execute([])) for n in names}  # type: ignore[attr-defined]


@pytest.mark.runtime
def test_load_program_with_external_weights_from_the_archive(
    tmp_path: Path, installed: None, private_cache: Path
) -> None:
    from executorch.runtime import Runtime

    folder = _copy("with_ptd", tmp_path / "app")
    runtime = Runtime.get()
    loose = runtime.load_program(folder / "program.pte", data_path=folder / "weights.ptd")
    expected_out, expected_constants = _forward(loose), _constants(loose)
    assert any(expected_out)
    archive = _upgrade(folder)
    for program in (
        runtime.load_program(archive),  # the archive: its .ptd is used
        runtime.load_program(str(archive), data_path=str(archive)),
        # Old code, unchanged paths, after the upgrade: both redirected to model.etm.
        runtime.load_program(str(folder / "program.pte"), data_path=str(folder / "weights.ptd")),
    ):
        assert _forward(program) == expected_out
        assert _constants(program) == expected_constants
    assert not private_cache.exists()  # load_program read the archive in place: no extraction


@pytest.mark.runtime
def test_load_program_without_shim_is_untouched(tmp_path: Path) -> None:
    from executorch.runtime import Runtime

    assert not shim.installed()
    assert not hasattr(Runtime.load_program, "_etm_original")
    archive = _pack(FIXTURES / "legacy" / "with_ptd", tmp_path / "m.etm")
    with pytest.raises(RuntimeError):
        Runtime.get().load_program(archive)  # executorch alone cannot read an archive


# --- the old application ------------------------------------------------------------------------


def _run(cmd: list[str], folder: Path, cache: Path) -> dict[str, object]:
    env = {**os.environ, "ETM_CACHE_DIR": str(cache)}
    proc = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"OLD_APP_RESULT (\{.*\})", proc.stdout)
    assert found, proc.stdout[-2000:]
    result: dict[str, object] = json.loads(found.group(1))
    return result


@pytest.mark.runtime
@pytest.mark.slow
def test_old_application_runs_unchanged_after_the_upgrade(tmp_path: Path, private_cache: Path) -> None:
    folder = _copy("et_example", tmp_path / "app")
    before = _run([sys.executable, str(OLD_APP)], folder, private_cache)
    assert before["text"] and before["constants"]
    _upgrade(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.etm"]
    after = _run([sys.executable, "-c", WITH_SHIM], folder, private_cache)
    assert after == before
    # Without the shim the old application cannot run on the upgraded folder.
    env = {**os.environ, "ETM_CACHE_DIR": str(private_cache)}
    proc = subprocess.run([sys.executable, str(OLD_APP), str(folder)], capture_output=True, env=env)
    assert proc.returncode != 0
