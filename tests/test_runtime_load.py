"""Loading model.pte (+ .ptd) from an archive into the real runtime, without extracting it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from etm_compat.archive import MemberSpec, open_archive, write_archive
from etm_compat.archive.metadata import new_metadata
from etm_compat.compat.runtime import load_program_from_archive
from etm_compat.errors import RuntimeUnavailableError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PTE = FIXTURES / "programs" / "ext_weights.pte"
PTD = FIXTURES / "programs" / "ext_weights.ptd"
CONSTANTS = FIXTURES / "programs" / "constants_all.pte"
LLAMA = FIXTURES / "llama" / "tiny_llama.pte"


def _pack(tmp_path: Path, members: list[MemberSpec]) -> Path:
    for spec in members:
        if not spec.source.exists():
            pytest.skip(f"fixture {spec.source.name} missing (run ./dev.sh fixtures)")
    dest = tmp_path / "m.etm"
    write_archive(dest, metadata=new_metadata(tool_version="0"), members=members)
    return dest


def _constants(program: Any) -> dict[str, list[Any]]:
    out = {}
    for name in sorted(program.method_names):
        method = program.load_method(name)
        if method.metadata.num_inputs() == 0:
            out[name] = list(method.execute([]))
    return out


@pytest.mark.runtime
def test_load_in_place_equals_loose_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    runtime = pytest.importorskip("executorch.runtime")
    archive = _pack(tmp_path, [MemberSpec("model.pte", PTE, "program"),
                               MemberSpec("weights/ext_weights.ptd", PTD, "weights")])  # fmt: skip
    loose = runtime.Runtime.get().load_program(PTE, data_path=PTD)
    x = torch.arange(4, dtype=torch.float32).reshape(1, 4) / 3
    want_forward = loose.load_method("forward").execute([x])[0]
    want_constants = _constants(loose)
    assert want_constants  # the fixture has constant methods

    # Nothing may be written to disk: TMPDIR and cwd point at empty folders that must stay empty.
    tmpdir, cwd = tmp_path / "tmpdir", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(cwd)
    calls: list[tuple[type, str | None]] = []
    real = runtime.Runtime.load_program

    def spy(self: Any, data: Any, **kw: Any) -> Any:
        calls.append((type(data), kw.get("data_path")))
        return real(self, data, **kw)

    monkeypatch.setattr(runtime.Runtime, "load_program", spy)
    with open_archive(archive) as etm:
        program = load_program_from_archive(etm)
        got_forward = program.load_method("forward").execute([x])[0]
        assert torch.equal(got_forward, want_forward)
        assert _constants(program) == want_constants
    assert calls == [(bytes, calls[0][1])]
    assert calls[0][1] is not None and calls[0][1].startswith("/proc/self/fd/")
    assert list(tmpdir.iterdir()) == [] and list(cwd.iterdir()) == []
    del program


@pytest.mark.runtime
@pytest.mark.parametrize("source", [CONSTANTS, LLAMA], ids=["constants_all", "tiny_llama"])
def test_constant_methods_without_weights(tmp_path: Path, source: Path) -> None:
    runtime = pytest.importorskip("executorch.runtime")
    archive = _pack(tmp_path, [MemberSpec("model.pte", source, "program")])
    loose = runtime.Runtime.get().load_program(source)
    with open_archive(archive) as etm:
        assert _constants(load_program_from_archive(etm)) == _constants(loose)


def test_missing_runtime_raises_runtime_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _pack(tmp_path, [MemberSpec("model.pte", PTE, "program")])
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # makes the import fail
    with open_archive(archive) as etm, pytest.raises(RuntimeUnavailableError) as info:
        load_program_from_archive(etm)
    assert info.value.hint is not None and "etm-compat[runtime]" in info.value.hint
    assert os.listdir(tmp_path) == ["m.etm"]
