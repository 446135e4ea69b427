"""diagnose: every broken scenario yields its code, clean fixtures stay clean, exit codes, JSON schema.

The expected codes live in ``fixtures/broken/<scenario>/EXPECTED``, written from each check's
specification (docs/DIAGNOSTICS.md) when the scenario was designed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from etm_compat.adapters import default_adapters
from etm_compat.bulk.task import Task, upgrade_task
from etm_compat.checks.archive import check_archive
from etm_compat.checks.program import check_backends
from etm_compat.checks.subject import Subject
from etm_compat.cli.main import main
from etm_compat.compat.loader import render
from etm_compat.diagnosis import (
    DETAIL_ITEMS,
    DETAIL_TEXT_CHARS,
    SAMPLE_CHARS,
    diagnose,
    metadata_details,
    view_details,
)
from etm_compat.legacy.deployment import deployment_record
from etm_compat.legacy.resolve import resolve_source
from etm_compat.packing import pack_view
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS
from etm_compat.view import describe
from tests.conftest import FIXTURES

BROKEN = sorted(p for p in (FIXTURES / "broken").iterdir() if p.is_dir()) if (FIXTURES / "broken").is_dir() else []
CLEAN = sorted(p for p in (FIXTURES / "legacy").iterdir() if p.is_dir())
SCHEMA = json.loads(resources.files("etm_compat").joinpath("schemas/diagnose.schema.json").read_text())


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["diagnose", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("scenario", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_scenario_reports_its_code(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = scenario.joinpath("EXPECTED").read_text().split()
    assert expected, "every scenario declares its code"
    # A scenario may need extra options, e.g. --runtime to ask the installed runtime its backends.
    extra = scenario.joinpath("ARGS").read_text().split() if scenario.joinpath("ARGS").exists() else []
    code, report = run_json(capsys, str(scenario), *extra)
    jsonschema.validate(report, SCHEMA)
    found = {f["code"] for d in report["deployments"] for f in d["findings"]}
    assert set(expected) <= found
    # One fault, one finding: nothing else at warning or error (info notes are allowed). An
    # expected code may itself be info (vocab-model-larger), so it is left out of the equality.
    loud = {
        f["code"]
        for d in report["deployments"]
        for f in d["findings"]
        if f["severity"] in ("warning", "error")
    }
    info_only = {
        c
        for c in expected
        if all(f["severity"] == "info" for d in report["deployments"] for f in d["findings"] if f["code"] == c)
    }
    assert loud == set(expected) - info_only
    worst = {"error": 1, "warning": 0, "info": 0}
    severities = {f["severity"] for d in report["deployments"] for f in d["findings"] if f["code"] in expected}
    assert code == max(worst[s] for s in severities)


@pytest.mark.parametrize("folder", CLEAN, ids=[p.name for p in CLEAN])
def test_clean_fixture_has_no_error_or_warning(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, str(folder))
    jsonschema.validate(report, SCHEMA)
    bad = {
        (f["code"], f["message"])
        for d in report["deployments"]
        for f in d["findings"]
        if f["severity"] in ("error", "warning")
    }
    assert bad == set()
    assert code == 0


def test_fail_on_lowers_the_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = str(FIXTURES / "broken" / "vocab_model_larger")  # one info finding
    assert main(["diagnose", scenario]) == 0
    assert main(["diagnose", scenario, "--fail-on", "info"]) == 1
    capsys.readouterr()


def test_usage_and_unreadable_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(tmp_path / "missing")]) == 3
    assert main(["diagnose", str(FIXTURES / "legacy"), "--output", str(tmp_path / "r.txt")]) == 2
    assert main(["diagnose", str(FIXTURES / "legacy"), "--fail-on", "fatal"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["diagnose", str(tmp_path / "empty")]) == 3
    bad = tmp_path / "bad.etm"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["diagnose", str(bad)]) == 3
    assert not (tmp_path / "r.txt").exists()
    capsys.readouterr()


def test_whole_fixture_tree_as_markdown_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md, page = tmp_path / "report.md", tmp_path / "report.html"
    assert main(["diagnose", str(FIXTURES), "--format", "md", "--output", str(md)]) == 1
    assert main(["diagnose", str(FIXTURES), "--output", str(page)]) == 1
    capsys.readouterr()
    text = md.read_text()
    assert text.startswith("# etm-compat diagnose report")
    assert "weights-missing-key" in text and "`legacy/et_example/model.pte`" in text
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "metadata-snapshot-mismatch" in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]


def test_describe_merges_diagnose_findings_without_duplicates() -> None:
    dep = resolve_source(FIXTURES / "broken" / "legacy_default_bos_eos", default_adapters())
    view = describe(dep)
    codes = [f.code for f in view.findings]
    assert codes.count("legacy-default-bos-eos") == 1
    dep = resolve_source(FIXTURES / "broken" / "vocab_tokenizer_larger", default_adapters())
    assert "vocab-tokenizer-larger" in {f.code for f in describe(dep).findings}


def test_packed_clean_deployment_diagnoses_clean(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "legacy" / "with_ptd" / "program.pte", src / "program.pte")
    shutil.copy(FIXTURES / "legacy" / "with_ptd" / "weights.ptd", src / "weights.ptd")
    shutil.copy(FIXTURES / "legacy" / "with_ptd" / "tokenizer.model", src / "tokenizer.model")
    result = pack_view(describe(resolve_source(src, default_adapters())), tmp_path / "m.etm")
    findings = check_archive(result.archive)
    assert [f for f in findings if f.severity != "info"] == []
    report = diagnose(tmp_path, default_adapters())
    assert {d.kind for d in report.deployments} == {"deployment", "archive"}


def test_backend_check_uses_the_registered_names() -> None:
    subject = Subject("deployment", None, "tokenizer.model", "xnnpack.pte", {}, backends=("XnnpackBackend",))
    assert [f.code for f in check_backends(subject, frozenset({"QnnBackend"}))] == ["backend-not-registered"]
    assert check_backends(subject, frozenset({"XnnpackBackend"})) == []
    assert check_backends(subject, None) == []


def test_plain_diagnose_does_not_import_torch() -> None:
    code = (
        "import sys; from etm_compat.cli.main import main; "
        f"rc = main(['diagnose', {str(FIXTURES / 'legacy')!r}, '--json']); "
        "assert 'torch' not in sys.modules and 'executorch' not in sys.modules, 'imported'; "
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_runtime_backend_check_with_the_installed_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("executorch.runtime")
    shutil.copy(FIXTURES / "programs" / "xnnpack.pte", tmp_path / "model.pte")
    shutil.copy(FIXTURES / "tokenizers" / "sp.model", tmp_path / "tokenizer.model")
    _code, report = run_json(capsys, str(tmp_path), "--runtime")
    assert report["checks_skipped"] == []
    # executorch's pybindings register XnnpackBackend, so nothing is reported for it.
    assert "backend-not-registered" not in {f["code"] for d in report["deployments"] for f in d["findings"]}


# --- details: what the report pages show about each deployment ----------------------------------


def _texts(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _texts(v, k)]
    if isinstance(value, list):
        assert len(value) <= DETAIL_ITEMS
        return [t for v in value for t in _texts(v, key)]
    return []


def test_details_of_a_folder_are_what_render_and_inference_say() -> None:
    folder = FIXTURES / "legacy" / "hf_style"
    view = describe(resolve_source(folder, default_adapters()))
    details = view_details(view)
    json.dumps(details)  # JSON-ready
    assert details["family"]["id"] == "qwen2_5" and details["chat_template_source"] == "tokenizer_config.json"
    assert {(s["id"], s["token"]) for s in details["stop"]} == {(0, "<|endoftext|>"), (2, "<|im_end|>")}
    assert all(s["sources"] for s in details["stop"])
    assert details["bos"]["id"] == view.inference.bos_id and details["bos"]["sources"]
    assert details["eos"]["ids"] == list(view.inference.eos_ids) and details["eos"]["sources"]
    assert details["runner"]["eos_ids"]["source"] == "get_eos_ids"
    assert details["evidence_total"] == len(view.inference.evidence) and details["evidence"]
    # The sample is exactly what `etm-compat render` prints for this folder.
    sample = details["sample"]
    assert sample["conversation"] == "system_multi_turn" and sample["error"] is None
    assert sample["prompt"] == render(folder, STANDARD_CONVERSATIONS["system_multi_turn"])


def test_details_of_an_archive_come_from_its_metadata(tmp_path: Path) -> None:
    folder = FIXTURES / "legacy" / "hf_style"
    result = pack_view(describe(resolve_source(folder, default_adapters())), tmp_path / "m.etm")
    details = metadata_details(result.metadata)
    assert details["family"]["id"] == "qwen2_5"
    assert [s["id"] for s in details["stop"]] == result.metadata["generation"]["stop_token_ids"]
    assert details["sample"]["prompt"] == render(result.archive, STANDARD_CONVERSATIONS["system_multi_turn"])
    report = diagnose(tmp_path, default_adapters())
    (archive,) = [d for d in report.deployments if d.kind == "archive"]
    assert archive.details == details
    assert json.loads(json.dumps(report.to_json(details=True)))["deployments"][0]["details"] is not None
    jsonschema.validate(report.to_json(), SCHEMA)  # the JSON report (schema 1) leaves them out
    assert "details" not in report.to_json()["deployments"][0]


def test_details_are_bounded_and_fall_back_without_the_system_message() -> None:
    dep = resolve_source(FIXTURES / "legacy" / "hf_style", default_adapters())
    long = view_details(describe(dep, chat_template="{% for m in messages %}{{ m.content * 300 }}{% endfor %}"))
    assert long["sample"]["truncated"] is True and len(long["sample"]["prompt"]) == SAMPLE_CHARS
    for key, text in _texts(long):
        assert key == "prompt" or len(text) <= DETAIL_TEXT_CHARS + 1, (key, len(text))
    no_system = (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m.role }}] {{ m.content }}{% endfor %}"
    )
    fallback = view_details(describe(dep, chat_template=no_system))["sample"]
    assert fallback["conversation"] == "multi_turn" and fallback["prompt"].startswith("[user] Hello!")
    failing = view_details(describe(dep, chat_template="{{ raise_exception('never') }}"))["sample"]
    assert failing["prompt"] is None and "never" in failing["error"]


def test_upgrade_outcomes_carry_details(tmp_path: Path) -> None:
    folder = FIXTURES / "legacy" / "hf_style"
    dep = resolve_source(folder, default_adapters())
    record = deployment_record(dep, os.path.abspath)
    task: Task = {"deployment": record, "archive": str(tmp_path / "m.etm"), "force": False, "verify_existing": False}
    written = upgrade_task(task)
    assert written["outcome"] == "written" and written.get("details") == view_details(describe(dep))
    again = upgrade_task(task)  # up to date: the details come from the archive's metadata
    details = again.get("details")
    assert again["outcome"] == "up_to_date" and details is not None
    assert details["sample"] == written["details"]["sample"] and details["stop"] != []
    missing = upgrade_task({**task, "deployment": {**record, "program": str(tmp_path / "gone.pte")}})
    assert missing["outcome"] == "failed" and missing.get("details") is None
