"""What an upgrade remembers between runs (etm_compat.bulk.state), and planning on workers.

Every test counts work (folders read, archives opened, executor calls) instead of timing it, and
each would fail if the memo, or the check that guards it, were taken away.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_upgrade import LEGACY, _copy, copy_legacy

from etm_compat.adapters import default_adapters
from etm_compat.bulk.executor import LazyProcessPool, open_executor
from etm_compat.bulk.state import STATE_DIR, STATE_FILE, source_stats
from etm_compat.bulk.task import ArchiveCheck, fingerprint
from etm_compat.bulk.upgrade import ItemResult, PlanItem, UpgradePlan, execute, plan_upgrade
from etm_compat.legacy.deployment import Deployment

OLD = 1_600_000_000_000_000_000  # 2020: far older than the racy window of any scan


def plan(root: Path, out: Path, **kw: Any) -> UpgradePlan:
    return plan_upgrade(root, default_adapters(), out=out, **kw)


def finished_tree(tmp_path: Path) -> tuple[Path, Path]:
    """The legacy fixtures, upgraded once."""
    root, out = copy_legacy(tmp_path), tmp_path / "out"
    first = execute(plan(root, out))
    assert first.ok and first.count("written") == 7
    return root, out


def state_file(out: Path) -> Path:
    return out / STATE_DIR / STATE_FILE


class Counting(concurrent.futures.ThreadPoolExecutor):
    """A real executor that counts the calls it is given."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.calls.append(fn.__name__)
        return super().submit(fn, *args, **kwargs)


def test_a_rerun_reads_no_folder_and_opens_no_archive(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    again = plan(root, out)
    assert {i.status for i in again.items} == {"up_to_date"} and len(again.items) == 7
    assert again.work.folders_read == 0 and again.work.archives_opened == 0
    assert again.work.folders_remembered == 7 and again.work.archives_remembered == 7
    forgetful = plan(root, out, remember=False)  # the same plan, the long way
    assert forgetful.work.folders_read == 7 and forgetful.work.archives_opened == 7
    assert [(i.archive, i.check) for i in again.items] == [(i.archive, i.check) for i in forgetful.items]
    assert [i.deployment for i in again.items] == [i.deployment for i in forgetful.items]
    result = execute(again)
    tik = next(i for i in result.items if i.program == "tiktoken_llama3/model.pte")
    assert tik.outcome == "up_to_date" and tik.family == "llama3_2" and tik.findings


def test_only_the_changed_folder_is_read_again(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    tokenizer = root / "variants" / "tokenizer.model"
    os.utime(tokenizer, ns=(OLD, OLD + 1))
    again = plan(root, out)
    assert again.work.folders_read == 1 and again.work.archives_opened == 2
    stale = sorted(i.deployment.program.name for i in again.items if i.status == "stale")
    assert stale == ["model_a.pte", "model_b.pte"]
    assert execute(again).count("written") == 2
    assert plan(root, out).work.folders_read == 0  # and remembered again


def test_a_new_program_is_found(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    shutil.copy2(root / "variants" / "model_a.pte", root / "variants" / "model_c.pte")
    again = plan(root, out)
    assert again.work.folders_read == 1
    new = [i.archive.name for i in again.items if i.status == "new"]
    assert new == ["model_c.etm"]


def test_a_tokenizer_shared_from_above_is_a_dependency(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "team" / "v1").mkdir(parents=True)
    shutil.copy2(LEGACY / "et_example" / "model.pte", root / "team" / "v1" / "model.pte")
    shutil.copy2(LEGACY / "et_example" / "tokenizer.model", root / "team" / "tokenizer.model")
    out = tmp_path / "out"
    first = execute(plan(root, out))
    assert first.count("written") == 1
    assert first.items[0].outcome == "written"
    shared = root / "team" / "tokenizer.model"
    shared.write_bytes(shared.read_bytes() + b"\0")  # v1's own folder is unchanged
    os.utime(shared, ns=(OLD, OLD))
    again = plan(root, out)
    assert again.work.folders_read >= 1
    assert [i.status for i in again.items] == ["stale"]


def test_files_changed_just_now_are_not_remembered(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _copy("et_example", root / "fresh")
    now = time.time_ns()
    for f in (root / "fresh").iterdir():
        os.utime(f, ns=(now, now))  # within the racy window: a rewrite could keep this stamp
    out = tmp_path / "out"
    execute(plan(root, out))
    recorded = json.loads(state_file(out).read_text())["folders"]
    assert "fresh" not in recorded
    again = plan(root, out).work
    assert (again.folders_read, again.folders_remembered) == (1, 1)  # fresh is read again, root is not


def test_an_archive_rewritten_with_its_old_stat_is_opened_again(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    archive = out / "hf_style" / "model.etm"
    st = archive.stat()
    archive.write_bytes(archive.read_bytes())
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
    again = plan(root, out)
    assert again.work.archives_opened == 1 and again.work.folders_read == 0


def _tamper(out: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = state_file(out)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "lie",
    [
        "/etc/passwd",  # outside the tree
        "../etc/passwd",
        "with_ptd/weights.ptd",  # a folder the record does not depend on
        "et_example/nothing.model",  # not an entry of the folder
    ],
)
def test_a_state_that_names_other_files_is_not_trusted(tmp_path: Path, lie: str) -> None:
    root, out = finished_tree(tmp_path)

    def change(data: dict[str, Any]) -> None:
        data["folders"]["et_example"]["deployments"][0]["tokenizer"] = lie

    _tamper(out, change)
    again = plan(root, out)
    assert again.work.folders_read == 1  # the lying record is dropped, the folder read again
    dep = next(i.deployment for i in again.items if i.deployment.root.name == "et_example")
    assert dep.tokenizer == root / "et_example" / "tokenizer.model"


@pytest.mark.parametrize("garbage", [b"", b"{", b"[" * 100_000, b'{"header": 1}', b"\xff\xfe"])
def test_a_damaged_state_is_ignored(tmp_path: Path, garbage: bytes) -> None:
    root, out = finished_tree(tmp_path)
    state_file(out).write_bytes(garbage)
    again = plan(root, out)
    assert again.work.folders_read == 7 and {i.status for i in again.items} == {"up_to_date"}
    execute(again)
    assert plan(root, out).work.folders_read == 0  # the next run wrote a good one


def test_a_state_written_by_other_code_is_ignored(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    _tamper(out, lambda data: data["header"].update(code="another version"))
    assert plan(root, out).work.folders_read == 7


def test_planning_on_an_executor_reads_in_batches_and_plans_the_same(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(40):
        _copy("with_ptd", root / f"team{i % 4}" / f"model-{i:02d}")
    serial = plan(root, tmp_path / "out", remember=False)
    with Counting(2) as pool:
        parallel = plan(root, tmp_path / "out", executor=pool, remember=False)
    assert [(i.deployment, i.archive, i.status) for i in parallel.items] == [
        (i.deployment, i.archive, i.status) for i in serial.items
    ]
    reads = pool.calls.count("read_folders")
    assert pool.calls.count("check_archives") >= 2 and 2 <= reads < 45  # 45 folders, in batches


def test_execute_sends_small_items_in_batches(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(130):
        (root / f"m{i:03d}").mkdir(parents=True)
    dep = Deployment(root=root, program=root / "m000" / "model.pte", layout="x")
    items = tuple(
        PlanItem(dep, root / f"m{i:03d}" / "model.etm", ArchiveCheck("up_to_date", "ok"), 1000) for i in range(130)
    )
    finished = UpgradePlan(root, None, True, items)
    with Counting(2) as pool:
        result = execute(finished, pool, remember=False)
    assert pool.calls == [] and result.count("up_to_date") == 130  # nothing to send
    pending = UpgradePlan(root, None, True, tuple(
        PlanItem(dep, i.archive, ArchiveCheck("new", "no archive yet"), 1000) for i in items
    ))
    with Counting(2) as pool:
        result = execute(pending, pool, remember=False)
    assert result.count("failed") == 130  # no such program: every item fails, and is reported
    assert 64 <= len(pool.calls) < 130 and set(pool.calls) == {"run_tasks"}


def test_the_pool_starts_at_its_first_task_only(tmp_path: Path) -> None:
    root, out = finished_tree(tmp_path)
    with open_executor(jobs=2) as pool:
        assert isinstance(pool, LazyProcessPool)
        result = execute(plan(root, out, executor=pool), pool)
        assert not pool.started and result.count("up_to_date") == 7  # a re-run starts no worker
        assert pool.submit(abs, -3).result() == 3 and pool.started


def test_item_details_reach_the_json() -> None:
    item = ItemResult("a/model.pte", Path("out/a/model.etm"), "written", "packed", details={"family": {"id": "x"}})
    assert item.to_json()["details"] == {"family": {"id": "x"}}
    assert "details" not in ItemResult("a", Path("a.etm"), "failed", "boom").to_json()


def test_source_stats_are_the_fingerprint_of_the_up_to_date_rule(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _copy("et_example", root / "team" / "v1")
    shutil.move(root / "team" / "v1" / "tokenizer.model", root / "team" / "tokenizer.model")  # "../"
    for source in (LEGACY, root):
        deps = [i.deployment for i in plan(source, tmp_path / "o", remember=False).items]
        assert deps and all(source_stats(d) == fingerprint(d) for d in deps)
    assert any(".." in key for d in deps for key in source_stats(d))


def test_in_place_archives_and_state_do_not_change_the_folders_stamps(tmp_path: Path) -> None:
    root = copy_legacy(tmp_path)
    first = execute(plan_upgrade(root, default_adapters(), out=None, in_place=True))
    assert first.count("written") == 7 and (root / STATE_DIR / STATE_FILE).is_file()
    again = plan_upgrade(root, default_adapters(), out=None, in_place=True).work
    assert (again.folders_read, again.archives_opened) == (0, 0)  # .etm, locks and state left out
