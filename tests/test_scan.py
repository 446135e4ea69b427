"""Walking a tree of deployments: every one found, loops and unreadable folders survived."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest
from conftest import FIXTURES

from etm_compat.adapters import default_adapters
from etm_compat.errors import InputError, UnreadableError
from etm_compat.legacy.scan import scan

LEGACY = FIXTURES / "legacy"


def test_scan_finds_every_fixture_deployment():
    if not LEGACY.is_dir():
        pytest.skip("fixtures/legacy missing")
    result = scan(LEGACY, default_adapters())
    expected = sorted(p.relative_to(LEGACY) for p in LEGACY.rglob("*.pte"))
    assert sorted(d.program.relative_to(LEGACY) for d in result.deployments) == expected


def test_symlink_loop_does_not_trap_the_walk(tmp_path):
    shutil.copytree(LEGACY / "et_example", tmp_path / "a" / "et")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    result = scan(tmp_path, default_adapters())
    assert [d.program.parent.name for d in result.deployments] == ["et"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_reported_not_fatal(tmp_path):
    shutil.copytree(LEGACY / "et_example", tmp_path / "ok")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = scan(tmp_path, default_adapters())
    finally:
        locked.chmod(0o755)
    assert len(result.deployments) == 1
    assert any("unreadable" in s.reason for s in result.skipped)


def test_scan_of_missing_root_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(UnreadableError):
        scan(tmp_path / "nope", default_adapters())
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        scan(tmp_path / "f", default_adapters())


def test_a_scan_runs_no_cyclic_collection(monkeypatch):
    # A scan's objects all stay alive: a full collection during it would walk them all again,
    # a cost that grows with the tree. Counted, not timed: collections started during a scan.
    import gc

    from etm_compat import remembered

    def collections(run: Callable[[], object]) -> int:
        started: list[int] = []

        def count(phase: str, info: dict[str, int]) -> None:
            started.append(info["generation"]) if phase == "start" else None

        # Both scans do the same work: nothing read by an earlier one is remembered.
        monkeypatch.setattr(remembered, "_PARSED", remembered._Remembered(remembered._PARSED.max_bytes))
        monkeypatch.setattr(remembered, "_FACTS", remembered._Remembered(remembered._FACTS.max_bytes))
        gc.collect()
        gc.callbacks.append(count)
        try:
            run()
        finally:
            gc.callbacks.remove(count)
        return len(started)

    legacy, adapters = FIXTURES / "legacy", default_adapters()
    # At most the one young collection that the first allocation after it starts.
    assert collections(lambda: scan(legacy, adapters)) <= 1
    assert gc.isenabled()
    # The same scan with collection on collects several times: the count can fail.
    assert collections(lambda: scan.__wrapped__(legacy, adapters)) > 1  # type: ignore[attr-defined]
