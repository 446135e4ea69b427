"""Loading model.pte (+ .ptd) from an archive into the real runtime, without extracting it: each
route (cache entry, sealed in-memory copy, bytes) gives what the loose files give."""

from __future__ import annotations

import errno
import gc
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from etm_compat.archive import MemberSpec, open_archive, write_archive
from etm_compat.archive.metadata import new_metadata
from etm_compat.compat.cache import materialize
from etm_compat.compat.runtime import load_program_from_archive, memfd_supported
from etm_compat.errors import RuntimeUnavailableError, UsageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PTE = FIXTURES / "programs" / "ext_weights.pte"
PTD = FIXTURES / "programs" / "ext_weights.ptd"
CONSTANTS = FIXTURES / "programs" / "constants_all.pte"
LLAMA = FIXTURES / "llama" / "tiny_llama.pte"
linux_only = pytest.mark.skipif(not memfd_supported(), reason="memfd_create and /proc/self/fd are Linux's")


def _pack(tmp_path: Path, members: list[MemberSpec]) -> Path:
    for spec in members:
        if not spec.source.exists():
            pytest.skip(f"fixture {spec.source.name} missing (run ./dev.sh fixtures)")
    dest = tmp_path / "m.etm"
    write_archive(dest, metadata=new_metadata(tool_version="0"), members=members)
    return dest


def _with_weights(tmp_path: Path) -> Path:
    return _pack(tmp_path, [MemberSpec("model.pte", PTE, "program"),
                            MemberSpec("weights/ext_weights.ptd", PTD, "weights")])  # fmt: skip


def _constants(program: Any) -> dict[str, list[Any]]:
    out = {}
    for name in sorted(program.method_names):
        method = program.load_method(name)
        if method.metadata.num_inputs() == 0:
            out[name] = list(method.execute([]))
    return out


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own: the route taken depends on what it holds."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    return root


def _spy(monkeypatch: pytest.MonkeyPatch, runtime: Any) -> list[tuple[Any, str | None]]:
    """Record what reaches ``Runtime.load_program``: the program (path or bytes) and data_path."""
    calls: list[tuple[Any, str | None]] = []
    real = runtime.Runtime.load_program

    def spy(self: Any, data: Any, **kw: Any) -> Any:
        calls.append((data, kw.get("data_path")))
        return real(self, data, **kw)

    monkeypatch.setattr(runtime.Runtime, "load_program", spy)
    return calls


@pytest.mark.runtime
@pytest.mark.parametrize("route", ["auto", "memfd", "bytes", "cache"])
def test_every_route_computes_what_the_loose_files_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path, route: str
) -> None:
    torch = pytest.importorskip("torch")
    runtime = pytest.importorskip("executorch.runtime")
    if route in ("auto", "memfd") and not memfd_supported():
        pytest.skip("memfd_create is Linux's")
    archive = _with_weights(tmp_path)
    # Outputs alias the method's memory: keep programs and methods alive while comparing.
    loose = runtime.Runtime.get().load_program(PTE, data_path=PTD)
    loose_forward = loose.load_method("forward")
    x = torch.arange(4, dtype=torch.float32).reshape(1, 4) / 3
    want_forward = loose_forward.execute([x])[0].clone()
    want_constants = _constants(loose)
    assert want_constants  # the fixture has constant methods
    if route == "cache":
        with open_archive(archive) as etm:
            entry = materialize(etm)
    # Nothing may be written to disk: TMPDIR and cwd point at empty folders that must stay empty.
    tmpdir, cwd = tmp_path / "tmpdir", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(cwd)
    calls = _spy(monkeypatch, runtime)
    with open_archive(archive) as etm:
        program = load_program_from_archive(etm, route=route)  # type: ignore[arg-type]
        forward = program.load_method("forward")
        assert torch.equal(forward.execute([x])[0], want_forward)
        assert _constants(program) == want_constants
    [(given, data_path)] = calls
    if route == "cache":
        assert (given, data_path) == (str(entry.files["model.pte"]), str(entry.files["weights/ext_weights.ptd"]))
    elif route == "bytes":
        assert isinstance(given, bytes) and given == PTE.read_bytes()
    else:  # the program and its data are sealed in-memory files, opened by path
        assert isinstance(given, str) and given.startswith("/proc/self/fd/")
    if route != "cache":
        assert data_path is not None and data_path.startswith("/proc/self/fd/")
    assert list(tmpdir.iterdir()) == [] and list(cwd.iterdir()) == []
    del forward, program, loose_forward, loose


@pytest.mark.runtime
def test_auto_takes_the_cache_entry_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    runtime = pytest.importorskip("executorch.runtime")
    archive = _with_weights(tmp_path)
    calls = _spy(monkeypatch, runtime)
    with open_archive(archive) as etm:
        first = load_program_from_archive(etm)
        entry = materialize(etm)
        second = load_program_from_archive(etm)
    assert calls[0][0] != str(entry.files["model.pte"])
    assert calls[1] == (str(entry.files["model.pte"]), str(entry.files["weights/ext_weights.ptd"]))
    del first, second


@pytest.mark.runtime
def test_an_explicit_cache_route_without_an_entry_is_refused(tmp_path: Path, private_cache: Path) -> None:
    pytest.importorskip("executorch.runtime")
    archive = _with_weights(tmp_path)
    with open_archive(archive) as etm, pytest.raises(UsageError, match="no cache entry"):
        load_program_from_archive(etm, route="cache")
    with open_archive(archive) as etm, pytest.raises(UsageError, match="unknown route"):
        load_program_from_archive(etm, route="mapped")  # type: ignore[arg-type]


@pytest.mark.runtime
@linux_only
def test_in_memory_copies_are_sealed_and_closed_with_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    runtime = pytest.importorskip("executorch.runtime")
    archive = _with_weights(tmp_path)
    calls = _spy(monkeypatch, runtime)
    before = set(os.listdir("/proc/self/fd"))
    with open_archive(archive) as etm:
        program = load_program_from_archive(etm, route="memfd")
    [(given, data_path)] = calls
    for path in (given, data_path):
        assert isinstance(path, str) and os.path.basename(path) not in before
        with pytest.raises(PermissionError) as info:  # F_SEAL_SHRINK: nobody can truncate it
            os.truncate(path, 0)
        assert info.value.errno == errno.EPERM
        fd = os.open(path, os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):  # F_SEAL_WRITE: nor write to it
                os.write(fd, b"x")
        finally:
            os.close(fd)
    del program
    gc.collect()
    assert not {os.path.basename(given), os.path.basename(data_path or "")} & set(os.listdir("/proc/self/fd"))


@pytest.mark.runtime
@linux_only
def test_the_memfd_route_never_holds_the_program_in_python_memory(tmp_path: Path, private_cache: Path) -> None:
    # The program goes archive -> in-memory file inside the kernel: the Python heap never holds
    # it (the bytes route, for contrast, does).
    pytest.importorskip("executorch.runtime")
    archive = _pack(tmp_path, [MemberSpec("model.pte", LLAMA, "program")])
    size = LLAMA.stat().st_size
    peaks = {}
    with open_archive(archive) as etm:
        for route in ("memfd", "bytes"):
            tracemalloc.start()
            program = load_program_from_archive(etm, route=route)  # type: ignore[arg-type]
            peaks[route] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del program
    assert peaks["bytes"] >= size > 4 * peaks["memfd"], (size, peaks)


@pytest.mark.runtime
@pytest.mark.parametrize("source", [CONSTANTS, LLAMA], ids=["constants_all", "tiny_llama"])
def test_constant_methods_without_weights(tmp_path: Path, source: Path, private_cache: Path) -> None:
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
