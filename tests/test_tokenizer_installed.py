"""Tests of etm_compat.formats.tokenizer.installed: a distribution's version read from its
dist-info, always the answer importlib.metadata gives, on real installs and made-up paths."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from etm_compat.formats.tokenizer.installed import installed_version


def _expected(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize(
    "name",
    ["pytorch-tokenizers", "pytorch_tokenizers", "PyTorch.Tokenizers", "msgspec", "PyYAML", "pyyaml",
     "typing_extensions", "typing-extensions", "pytest", "etm-compat", "no-such-distribution-here"],
)
def test_installed_versions_are_importlib_metadatas(name: str) -> None:
    assert installed_version(name) == _expected(name)


def _dist(folder: Path, dirname: str, metadata: str | None) -> Path:
    info = folder / dirname
    info.mkdir(parents=True)
    if metadata is not None:
        (info / "METADATA").write_text(metadata)
    return info


#: Runs in a fresh interpreter whose path is the made-up one: importlib.metadata's answer (the
#: reference) cannot be skewed by what tests run before left in this process (finders, caches).
PROBE = """
import importlib.metadata, json, sys
paths = json.loads(sys.argv[1])
from etm_compat.formats.tokenizer import installed
sys.path[:] = paths
def outcome(function):
    try:
        return ["ok", function("fake-dist")]
    except installed._Unsure:
        return ["unsure", None]
    except importlib.metadata.PackageNotFoundError:
        return ["ok", None]
    except Exception as exc:
        return ["error", type(exc).__name__]
print(json.dumps({"expected": outcome(importlib.metadata.version),
                  "installed": outcome(installed.installed_version),
                  "fast": outcome(installed._fast_version)}))
"""


def _probe(tmp_path: Path) -> dict[str, list[str | None]]:
    paths = [str(tmp_path / "missing.zip"), str(tmp_path / "first"), str(tmp_path / "second")]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(paths)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str | None]] = json.loads(done.stdout)
    return result


@pytest.fixture()
def fake_path(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    return first, second


@pytest.mark.parametrize(
    ("layout", "fast"),
    [
        # (folder, dist-info name, METADATA or None) in path order
        ([(1, "Fake_Dist-2.0.dist-info", "Metadata-Version: 2.1\nName: fake\nVersion: 2.0\n\nbody")], True),
        ([(1, "fake.dist-1.0.dist-info", "Name: fake\r\nVersion:\t1.0 \r\n")], True),
        ([(2, "fake_dist-3.dist-info", "Version: 3\n"), (1, "other-1.dist-info", "Version: 9\n")], True),
        ([(1, "fake_dist-1.dist-info", "Name: x\nSummary: a\n  folded\nversion: 1.5\n")], True),
        ([(1, "fake_dist-1.dist-info", "Version: 1\n  folded\n")], False),
        ([(1, "fake_dist-1.dist-info", "Name: x\nno header here\nVersion: 1\n")], False),
        ([(1, "fake_dist-1.dist-info", "Name: x\n\nVersion: 1\n")], False),  # Version in the body
        ([(1, "fake_dist-1.dist-info", None), (2, "fake_dist-2.dist-info", "Version: 2\n")], False),
        ([(1, "fake_dist-1.egg-info", "Version: 1\n")], False),
        ([(1, "fake_dist-1.dist-info", "Version: \u00e91\n")], True),
        ([], False),
    ],
)
def test_made_up_installs_give_importlib_metadatas_answer(
    fake_path: tuple[Path, Path], layout: list[tuple[int, str, str | None]], fast: bool
) -> None:
    for index, dirname, metadata in layout:
        _dist(fake_path[index - 1], dirname, metadata)
    result = _probe(fake_path[0].parent)
    assert result["installed"] == result["expected"]
    # Read without importlib.metadata where the fast reading is sure, else left to it.
    assert result["fast"] == (result["expected"] if fast else ["unsure", None])


def test_metadata_that_is_not_utf8_is_left_to_importlib_metadata(fake_path: tuple[Path, Path]) -> None:
    info = _dist(fake_path[0], "fake_dist-1.dist-info", None)
    (info / "METADATA").write_bytes(b"Version: 1\nSummary: \xff\n")
    result = _probe(fake_path[0].parent)
    assert result["fast"] == ["unsure", None]
    # What importlib.metadata itself does with it.
    assert result["installed"] == result["expected"] == ["error", "UnicodeDecodeError"]


def test_reading_the_runner_librarys_version_imports_no_metadata_machinery() -> None:
    code = (
        "import sys; from etm_compat.formats.tokenizer import runner; v = runner._library_version(); "
        "print(v is not None, 'importlib.metadata' in sys.modules, 'email' in sys.modules, "
        "'etm_compat.isolation' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False", "False"]
