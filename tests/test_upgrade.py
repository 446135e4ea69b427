"""`etm-compat upgrade`: planning, naming, the up-to-date rule, locking, reports, a 200-deployment tree.

``build_tree`` (also used by the crash and Dask tests and by benchmarks/bench_upgrade.py) copies
the committed legacy fixtures into a nested tree with deliberately broken deployments mixed in.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.bulk.lock import archive_lock, lock_path
from etm_compat.bulk.upgrade import execute, plan_upgrade
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.errors import UsageError
from etm_compat.verification import verify

LEGACY = FIXTURES / "legacy"
BIG = ("et_example", "hf_style", "export_llm", "tiktoken_llama3", "variants")


@dataclass
class Tree:
    root: Path
    good: set[str] = field(default_factory=set)  # programs (relative to root) that must pack
    broken: dict[str, str] = field(default_factory=dict)  # program or folder -> kind of damage


def _copy(src: str, dest: Path, *, skip: tuple[str, ...] = ()) -> None:
    dest.mkdir(parents=True)
    for f in sorted((LEGACY / src).iterdir()):
        if f.name not in skip:
            shutil.copy2(f, dest / f.name)


def build_tree(root: Path, total: int = 200, *, big: int = 1) -> Tree:
    """A nested tree of ``total`` deployments: ``big`` copies of each ~730 KB layout, a dozen
    broken ones, the rest small with_ptd programs (2 KB + .ptd)."""
    tree = Tree(root)
    et = (LEGACY / "et_example" / "model.pte").read_bytes()
    n = 0

    def folder(kind: str) -> Path:
        nonlocal n
        n += 1
        return root / f"region{n % 3}" / f"org{n % 7}" / f"{kind}-{n:03d}"

    for _ in range(big):
        for name in BIG:
            dest = folder(name)
            _copy(name, dest)
            for pte in sorted(dest.glob("*.pte")):
                tree.good.add(str(pte.relative_to(root)))
    for i in range(2):
        dest = folder("no-tokenizer")
        _copy("with_ptd", dest, skip=("tokenizer.model",))
        tree.broken[str((dest / "program.pte").relative_to(root))] = "no tokenizer"
        dest = folder("garbage-pte")
        dest.mkdir(parents=True)
        (dest / "model.pte").write_bytes(b"\0\0\0\0ET12" + bytes(range(256)) * (8 + i))
        shutil.copy2(LEGACY / "et_example" / "tokenizer.model", dest)
        tree.broken[str((dest / "model.pte").relative_to(root))] = "corrupt"
        dest = folder("truncated")
        dest.mkdir(parents=True)
        (dest / "model.pte").write_bytes(et[: 200_000 + i])
        shutil.copy2(LEGACY / "et_example" / "tokenizer.model", dest)
        tree.broken[str((dest / "model.pte").relative_to(root))] = "truncated"
        dest = folder("tokenizer-garbage")
        _copy("hf_style", dest)
        (dest / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
        tree.broken[str((dest / "model.pte").relative_to(root))] = "not valid JSON"
        dest = folder("tokenizer-noise")
        _copy("et_example", dest, skip=("tokenizer.model",))
        (dest / "tokenizer.model").write_bytes(bytes(range(255, -1, -1)) * 12)
        tree.broken[str((dest / "model.pte").relative_to(root))] = "no tokenizer"
    while len(tree.good) + len(tree.broken) < total:
        dest = folder("small")
        if n % 11 == 0:
            dest = dest / "deeper" / "v1"
        _copy("with_ptd", dest)
        tree.good.add(str((dest / "program.pte").relative_to(root)))
    return tree


def digests(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under root (to prove sources are never touched)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["upgrade", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def copy_legacy(tmp_path: Path) -> Path:
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    return root


# --- planning and naming -------------------------------------------------------------------------


def test_dry_run_prints_mirrored_names_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, plan = run_json(capsys, str(LEGACY), "--out", str(out), "--dry-run")
    assert code == EXIT_OK
    archives = {i["program"]: Path(i["archive"]).relative_to(out).as_posix() for i in plan["items"]}
    assert archives == {
        "et_example/model.pte": "et_example/model.etm",
        "export_llm/tiny_llama.pte": "export_llm/tiny_llama.etm",
        "hf_style/model.pte": "hf_style/model.etm",
        "tiktoken_llama3/model.pte": "tiktoken_llama3/model.etm",
        "variants/model_a.pte": "variants/model_a.etm",
        "variants/model_b.pte": "variants/model_b.etm",
        "with_ptd/program.pte": "with_ptd/program.etm",
    }
    assert {i["status"] for i in plan["items"]} == {"new"}
    hf = next(i for i in plan["items"] if i["program"] == "hf_style/model.pte")
    assert "hf_style/tokenizer_config.json" in hf["sources"]
    assert not out.exists()


def test_dry_run_for_people_names_sources_and_skips(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    (root / "with_ptd" / "tokenizer.model").unlink()
    assert main(["upgrade", str(root), "--out", str(tmp_path / "out"), "--dry-run"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "variants/model_b.etm" in text and "tokenizer.model" in text
    assert "skipped" in text and "no tokenizer file found" in text
    assert not (tmp_path / "out").exists()


def test_names_that_collide_case_insensitively_get_a_deterministic_suffix(tmp_path):
    root = tmp_path / "tree"
    _copy("with_ptd", root / "Model")
    _copy("with_ptd", root / "model")
    plan = plan_upgrade(root, default_adapters(), out=tmp_path / "out")
    names = sorted(i.archive.relative_to(tmp_path / "out").as_posix() for i in plan.items)
    assert names == ["Model/program.etm", "model/program-2.etm"]
    assert "program-2.etm" in plan.items[1].reason
    again = plan_upgrade(root, default_adapters(), out=tmp_path / "out")
    assert [i.archive for i in again.items] == [i.archive for i in plan.items]


def test_out_inside_root_is_never_scanned_as_sources(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    out = root / "converted"
    _copy("with_ptd", out / "stray")  # a deployment inside OUT must not be picked up
    code, first = run_json(capsys, str(root), "--out", str(out), "-j", "1")
    assert code == EXIT_OK
    assert len(first["items"]) == 7 and not any("converted" in i["program"] for i in first["items"])
    code, second = run_json(capsys, str(root), "--out", str(out), "-j", "1")
    assert code == EXIT_OK and second["counts"]["up_to_date"] == 7 and len(second["items"]) == 7


def test_out_equal_to_root_or_both_modes_are_usage_errors(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    assert main(["upgrade", str(root), "--out", str(root)]) == EXIT_USAGE
    assert "--in-place" in capsys.readouterr().err
    assert main(["upgrade", str(root), "--out", str(tmp_path / "o"), "--in-place"]) == EXIT_USAGE
    assert main(["upgrade", str(root)]) == EXIT_USAGE
    with pytest.raises(UsageError):
        plan_upgrade(root, default_adapters(), out=None, in_place=False)


def test_unknown_report_extension_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["upgrade", str(LEGACY), "--out", str(out), "--report", str(tmp_path / "r.txt")]) == EXIT_USAGE
    assert ".json, .md or .html" in capsys.readouterr().err
    assert not out.exists()


# --- execution, idempotence, staleness --------------------------------------------------------------


def test_in_place_writes_beside_sources_and_rerun_redoes_nothing(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    before = digests(root)
    code, first = run_json(capsys, str(root), "--in-place", "-j", "2")
    assert code == EXIT_OK and first["counts"]["written"] == 7
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.etm")) == [
        "et_example/model.etm",
        "export_llm/tiny_llama.etm",
        "hf_style/model.etm",
        "tiktoken_llama3/model.etm",
        "variants/model_a.etm",
        "variants/model_b.etm",
        "with_ptd/program.etm",
    ]
    after = digests(root)
    assert {k: v for k, v in after.items() if k in before} == before  # sources untouched
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.etm")}
    code, second = run_json(capsys, str(root), "--in-place")
    assert code == EXIT_OK and second["counts"]["up_to_date"] == 7 and second["counts"]["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.etm")} == stamps
    # Up-to-date items still report what the archive records.
    tik = next(i for i in second["items"] if i["program"] == "tiktoken_llama3/model.pte")
    assert tik["family"] == "llama3_2" and tik["findings"]


def test_changed_or_damaged_archives_are_redone_and_only_they(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    out = tmp_path / "out"
    assert run_json(capsys, str(root), "--out", str(out), "-j", "1")[0] == EXIT_OK
    os.utime(root / "variants" / "tokenizer.model", ns=(1, 1))  # shared by both variants
    damaged = out / "hf_style" / "model.etm"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    code, plan = run_json(capsys, str(root), "--out", str(out), "--dry-run")
    assert code == EXIT_OK
    status = {i["program"]: (i["status"], i["reason"]) for i in plan["items"]}
    assert status["variants/model_a.pte"] == ("stale", "tokenizer.model changed since it was packed (size or mtime)")
    assert status["variants/model_b.pte"][0] == "stale"
    assert status["hf_style/model.pte"][0] == "stale" and "does not open" in status["hf_style/model.pte"][1]
    assert [s for s, _ in status.values()].count("up_to_date") == 4
    code, result = run_json(capsys, str(root), "--out", str(out), "-j", "2")
    assert code == EXIT_OK
    outcome = {i["program"]: i["outcome"] for i in result["items"]}
    assert [p for p, o in outcome.items() if o == "written"] == [
        "hf_style/model.pte",
        "variants/model_a.pte",
        "variants/model_b.pte",
    ]
    assert verify(damaged).ok


def test_verify_existing_catches_a_change_that_kept_size_and_mtime(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    out = tmp_path / "out"
    assert run_json(capsys, str(root), "--out", str(out))[0] == EXIT_OK
    params = root / "export_llm" / "params.json"
    st = params.stat()
    data = bytearray(params.read_bytes())
    data[-2:-1] = b" " if data[-2:-1] != b" " else b"\n"
    params.write_bytes(bytes(data))
    os.utime(params, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, cheap = run_json(capsys, str(root), "--out", str(out))
    assert cheap["counts"] == {"written": 0, "up_to_date": 7, "locked": 0, "failed": 0, "skipped": 0}
    code, deep = run_json(capsys, str(root), "--out", str(out), "--verify-existing", "-j", "1")
    assert code == EXIT_OK
    written = [i for i in deep["items"] if i["outcome"] == "written"]
    assert [i["program"] for i in written] == ["export_llm/tiny_llama.pte"]
    assert "params.json has different bytes" in written[0]["reason"]


def test_force_repacks_everything(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_json(capsys, str(LEGACY), "--out", str(out))[0] == EXIT_OK
    code, again = run_json(capsys, str(LEGACY), "--out", str(out), "--force", "-j", "1")
    assert code == EXIT_OK and again["counts"]["written"] == 7


def test_a_locked_archive_is_left_to_its_holder(tmp_path):
    out = tmp_path / "out"
    plan = plan_upgrade(LEGACY, default_adapters(), out=out)
    target = next(i.archive for i in plan.items if i.archive.name == "model_a.etm")
    target.parent.mkdir(parents=True)
    with archive_lock(target) as mine:
        assert mine
        result = execute(plan, None)
    outcome = {i.archive.name: i.outcome for i in result.items}
    assert outcome.pop("model_a.etm") == "locked" and set(outcome.values()) == {"written"}
    assert not target.exists() and lock_path(target).exists()
    assert result.ok  # another run owns it; nothing failed
    rerun = execute(plan_upgrade(LEGACY, default_adapters(), out=out), None)
    assert [i.outcome for i in rerun.items if i.archive == target] == ["written"]


def test_any_executor_gives_the_same_bytes(tmp_path):
    plans = {}
    for name in ("serial", "threads"):
        plans[name] = plan_upgrade(LEGACY, default_adapters(), out=tmp_path / name)
    execute(plans["serial"], None)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        seen = []
        execute(plans["threads"], pool, progress=seen.append)
    assert len(seen) == 7
    for item in plans["serial"].items:
        twin = tmp_path / "threads" / item.archive.relative_to(tmp_path / "serial")
        assert item.archive.read_bytes() == twin.read_bytes()


def test_started_runs_once_the_work_is_handed_over(tmp_path):
    # The CLI shows the plan from `started`, while the workers pack.
    events: list[str] = []
    plan = plan_upgrade(LEGACY, default_adapters(), out=tmp_path / "serial")
    execute(plan, None, progress=lambda item: events.append("done"), started=lambda: events.append("started"))
    assert events == ["started"] + ["done"] * 7  # serial: before the first item
    events.clear()
    plan = plan_upgrade(LEGACY, default_adapters(), out=tmp_path / "threads")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        submitted: list[int] = []
        real_submit = pool.submit
        pool.submit = lambda *a, **k: submitted.append(1) or real_submit(*a, **k)  # type: ignore[method-assign]
        execute(plan, pool, progress=lambda item: events.append("done"),
                started=lambda: events.append(f"started after {len(submitted)} submissions"))  # fmt: skip
    assert events.count("done") == 7
    assert [e for e in events if e.startswith("started")] == [f"started after {len(submitted)} submissions"]
    assert events.index(f"started after {len(submitted)} submissions") == 0  # before any result is taken


# --- reports --------------------------------------------------------------------------------------


def test_reports_in_three_formats_carry_outcomes_and_findings(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    hostile = root / "evil|<b>name</b>"
    _copy("with_ptd", hostile)
    (root / "et_example" / "tokenizer.model").write_bytes(b"\x00" * 64)  # → skipped, with its reason
    out = tmp_path / "out"
    reports = [tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.html"]
    code = main(["upgrade", str(root), "--out", str(out), "--report", str(reports[0]), "-j", "1"])
    assert code == EXIT_FINDINGS  # one deployment could not be migrated
    text = capsys.readouterr().out
    assert "INCOMPLETE" in text and "skipped" in text
    for report in reports[1:]:
        assert main(["upgrade", str(root), "--out", str(out), "--report", str(report)]) == EXIT_FINDINGS
    data = json.loads(reports[0].read_text())
    assert data["report"] == "etm-compat upgrade" and data["counts"]["written"] == 7
    assert [s["reason"] for s in data["skipped"]] == ["no tokenizer file found beside the program"]
    tik = next(i for i in data["items"] if i["program"] == "tiktoken_llama3/model.pte")
    assert tik["family"] == "llama3_2" and tik["size"] > 0
    assert {f["code"] for f in tik["findings"]} >= {"family-tokenizer-mismatch"}
    md = reports[1].read_text()
    assert "| `tiktoken_llama3/model.pte` | up to date |" in md and "`family-tokenizer-mismatch`" in md
    # a name read from the tree stays a code span (literal in any viewer), its pipe escaped
    assert "| `evil\\|<b>name</b>/program.pte` |" in md and "&lt;" not in md
    page = reports[2].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<b>name" not in page
    assert "evil|\\u003cb\\u003ename" in page and "family-tokenizer-mismatch" in page
    assert not list(tmp_path.glob(".r.*.tmp"))


# --- acceptance: 200 deployments -------------------------------------------------------------------


def test_two_hundred_deployments_upgrade_and_rerun(tmp_path, capsys):
    tree = build_tree(tmp_path / "tree", 200)
    assert len(tree.good) + len(tree.broken) == 200
    before = digests(tree.root)
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    code, result = run_json(capsys, str(tree.root), "--out", str(out), "-j", "2", "--report", str(report))
    assert code == EXIT_FINDINGS
    assert json.loads(report.read_text())["counts"] == result["counts"]
    outcome = {i["program"]: i for i in result["items"]}
    written = {p for p, i in outcome.items() if i["outcome"] == "written"}
    assert written == tree.good
    for program in tree.good:
        archive = Path(outcome[program]["archive"])
        assert archive == out / Path(program).with_suffix(".etm")
        assert verify(archive).ok
        with open_archive(archive) as etm:
            meta = etm.metadata
        assert outcome[program]["size"] == archive.stat().st_size
        assert {s["path"] for s in meta["provenance"]["sources"]} >= {Path(program).name}
    skipped = {str(Path(s["path"]).relative_to(tree.root)): s["reason"] for s in result["skipped"]}
    failed = {p: i["reason"] for p, i in outcome.items() if i["outcome"] == "failed"}
    assert skipped.keys() | failed.keys() == set(tree.broken)
    for where, kind in tree.broken.items():
        assert kind in (skipped.get(where) or failed[where]), (where, kind)
    assert digests(tree.root) == before  # not one source byte or mtime changed
    others = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith((".etm", ".lock"))]
    assert [p.relative_to(out).as_posix() for p in others] == [".etm-upgrade/state.json"]  # for re-runs

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.etm")}
    code, again = run_json(capsys, str(tree.root), "--out", str(out), "-j", "2")
    assert again["counts"]["up_to_date"] == len(tree.good) and again["counts"]["written"] == 0
    assert again["counts"]["failed"] == len(failed)  # broken ones are retried, and fail the same way
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.etm")} == stamps


def test_one_run_writes_every_requested_report(tmp_path, capsys):
    root = copy_legacy(tmp_path)
    out = tmp_path / "out"
    reports = [tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.html"]
    args = ["upgrade", str(root), "--out", str(out), "-j", "1"]
    for report in reports:
        args += ["--report", str(report)]
    assert main(args) == EXIT_OK
    data = json.loads(reports[0].read_text())
    assert data["counts"]["written"] == 7
    assert "| `et_example/model.pte` | written |" in reports[1].read_text()
    assert "written" in reports[2].read_text()


def test_large_plans_are_summarised_on_the_terminal_but_complete_in_reports(tmp_path, capsys):
    root = tmp_path / "tree"
    for i in range(60):  # 60 small deployments: more rows than a terminal table should show
        _copy("with_ptd", root / f"team{i % 3}" / f"model-{i:02d}")
    report = tmp_path / "r.json"
    assert main(["upgrade", str(root), "--out", str(tmp_path / "out"), "-j", "1", "--report", str(report)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "... and 10 more to pack" in text
    assert len(json.loads(report.read_text())["items"]) == 60
    assert main(["upgrade", str(root), "--out", str(tmp_path / "out2"), "--dry-run"]) == EXIT_OK
    assert "more to pack" not in capsys.readouterr().out  # --dry-run lists every item


def test_upgrade_packs_the_same_members_as_pack(tmp_path):
    lora = FIXTURES / "lora"
    packed = tmp_path / "packed.etm"
    assert main(["pack", str(lora), "-o", str(packed)]) == EXIT_OK
    out = tmp_path / "out"
    result = execute(plan_upgrade(lora, default_adapters(), out=out), None)
    (item,) = result.items
    with open_archive(packed) as a, open_archive(item.archive) as b:
        assert sorted(b.metadata["members"], key=str) == sorted(a.metadata["members"], key=str)
    assert plan_upgrade(lora, default_adapters(), out=out).items[0].status == "up_to_date"
