"""report_files: format by extension, escaping of untrusted text, self-contained HTML, atomic writes.

The same writer serves the diagnose report and the bulk upgrade report (upgrade_view), so both
are checked here against the same contract.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from etm_compat.bulk.upgrade import ItemResult, UpgradePlan, UpgradeResult
from etm_compat.cli import report_files, upgrade_view
from etm_compat.cli.report_files import to_html, to_markdown, write_report
from etm_compat.errors import OutputError, UsageError
from etm_compat.findings import Finding
from etm_compat.legacy.deployment import Skipped

HOSTILE = "<script>alert(1)</script> | **bold** [x](http://evil.invalid) \x1b[31m"
#: Invisible code points a file name can carry: a bidi override, a zero-width space, a line separator.
INVISIBLE = "\u202e\u200b\u2028"


def report() -> dict[str, object]:
    finding = {"code": "vocab-tokenizer-larger", "severity": "error", "message": HOSTILE,
               "hint": "fix <b>it</b>", "paths": ["a|b.pte"]}
    return {
        "schema_version": 1, "root": "/tmp/<root>",
        "summary": {"deployments": 2, "unreadable": 0,
                    "by_severity": {"error": 1, "warning": 0, "info": 0},
                    "by_code": {"vocab-tokenizer-larger": 1}},
        "deployments": [
            {"name": "x<y>", "path": "p", "kind": "deployment", "error": None, "findings": [finding]},
            {"name": "clean", "path": "q", "kind": "archive", "error": None, "findings": []},
        ],
    }


def test_html_escapes_untrusted_text_and_has_no_external_references() -> None:
    page = to_html(report())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>it</b>" not in page and "x&lt;y&gt;" in page
    assert "\x1b" not in page
    assert not re.search(r"\bsrc=|url\(|@import|<script|<iframe|<img", page)
    assert re.findall(r'href="([^"]*)"', page) == ["data:,"]
    assert 'id="count-error"><b>1</b>' in page and "<svg" in page


def test_markdown_escapes_table_and_markup_characters() -> None:
    text = to_markdown(report())
    row = next(line for line in text.splitlines() if "vocab-tokenizer-larger" in line and "script" in line)
    assert row.count(" | ") == 4  # the '|' inside the message is escaped, not a column
    assert "<script>" not in text and "\\*\\*bold\\*\\*" in text
    assert "No findings." in text


@pytest.mark.parametrize(("name", "marker"), [("r.json", '"schema_version": 1'), ("r.md", "# etm-compat"), ("r.html", "<!DOCTYPE html>")])
def test_format_follows_the_extension(tmp_path: Path, name: str, marker: str) -> None:
    out = write_report(tmp_path / name, report())
    assert marker in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    if name.endswith(".json"):
        assert json.loads(out.read_text())["deployments"][0]["name"] == "x<y>"


def test_bad_extension_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_report(tmp_path / "r.txt", report())
    with pytest.raises(OutputError):
        write_report(tmp_path / "missing" / "r.md", report())
    assert write_report(tmp_path / "r.txt", report(), fmt="md").read_text().startswith("# ")


def test_replaces_an_existing_report_atomically(tmp_path: Path) -> None:
    target = tmp_path / "r.md"
    target.write_text("old")
    write_report(target, report(), force=True)
    assert target.read_text().startswith("# etm-compat diagnose report")


def test_markdown_root_is_escaped_outside_a_code_span() -> None:
    # Backslash escapes are literal inside backticks, so the root is plain escaped text.
    assert "Root: /tmp/\\<root\\>" in to_markdown(report())


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.json", "json"), ("a.JSON", "json"), ("a.md", "md"), ("a.markdown", "md"),
     ("a.html", "html"), ("a.htm", "html")],
)
def test_one_format_table(name: str, kind: str) -> None:
    assert report_files.format_for(name) == kind
    assert report_files.format_for("a.txt", kind) == kind


def test_one_error_for_an_unknown_format() -> None:
    for bad in ("r.txt", "report"):
        with pytest.raises(UsageError, match="report format") as info:
            report_files.format_for(bad)
        assert ".json, .md or .html" in str(info.value)
    for fmt in ("markdown", "pdf"):
        with pytest.raises(UsageError, match="unknown report format"):
            report_files.format_for("r.md", fmt)
        with pytest.raises(UsageError, match="unknown report format"):
            report_files.check_format(fmt)


def test_invisible_characters_become_visible_escapes() -> None:
    for text in (report_files.md_text(INVISIBLE), report_files.esc(INVISIBLE)):
        assert not set(INVISIBLE) & set(text)
        assert "u202e" in text and "u200b" in text and "u2028" in text


# --- the upgrade report through the same writer ----------------------------------------------


def upgrade_result() -> UpgradeResult:
    root = Path("/r/<root>")
    finding = Finding(code="family-ambiguous", severity="warning", message=HOSTILE, hint="h <b>x</b>")
    plan = UpgradePlan(
        root=root, out=None, in_place=True, items=(),
        skipped=(Skipped(root / "skip|<me>", "no tokenizer " + HOSTILE),),
    )
    items = (
        ItemResult(program="a|<i>b</i>" + INVISIBLE + "/m.pte", archive=root / "a|<i>b</i>/m.etm",
                   outcome="failed", reason="broken: " + HOSTILE),
        ItemResult(program="ok/m.pte", archive=root / "ok/m.etm", outcome="written", reason="packed",
                   size=12345, family="llama<3>", findings=(finding,)),
    )
    return UpgradeResult(plan=plan, items=items, seconds=2.0)


def test_upgrade_json_report_is_the_plain_json_form(tmp_path: Path) -> None:
    result = upgrade_result()
    out = upgrade_view.write_report(tmp_path / "u.json", result)
    expected = json.dumps(upgrade_view.to_json(result), indent=2, ensure_ascii=False) + "\n"
    assert out.read_text(encoding="utf-8") == expected


def test_upgrade_markdown_keeps_every_field_and_escapes_untrusted_text() -> None:
    text = upgrade_view.to_markdown(upgrade_result())
    assert not re.search(r"(?<!\\)[<>]", text)  # every angle bracket is backslash-escaped
    assert "\x1b" not in text and not set(INVISIBLE) & set(text)
    assert "\\*\\*bold\\*\\*" in text and "\\[x\\]" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [len(re.findall(r"(?<!\\)\|", row)) for row in rows] == [8, 8, 8]  # 7 columns each
    failed, written = rows[1], rows[2]
    assert failed.startswith("| a\\|\\<i\\>b\\</i\\>") and "| failed |" in failed and "broken: " in failed
    for field in ("ok/m.pte", "| written |", "ok/m.etm", "12,345", "llama\\<3\\>", "warning: family-ambiguous", "packed"):
        assert field in written
    assert "skip\\|\\<me\\>: no tokenizer" in text
    assert "INCOMPLETE: 1 written, 0 up to date, 0 locked, 1 failed, 1 skipped (2.0 s)" in text
    assert "(hint: h \\<b\\>x\\</b\\>)" in text


def test_upgrade_html_uses_the_shared_page_shell() -> None:
    page = upgrade_view.to_html(upgrade_result())
    shell = report_files.html_page("etm-compat upgrade report", "BODY")
    head = shell[: shell.index("BODY")]
    assert page.startswith(head)  # the same CSP, icon and inline CSS as every report
    assert "<script" not in page and "<i>" not in page and "<b>x" not in page
    assert "\x1b" not in page and not set(INVISIBLE) & set(page)
    assert not re.search(r"\bsrc=|url\(|@import|<iframe|<img", page)
    assert re.findall(r'href="([^"]*)"', page) == ["data:,"]
    for field in ("a|&lt;i&gt;b&lt;/i&gt;", "&lt;script&gt;", 'class="sev error">failed<', "12,345",
                  "llama&lt;3&gt;", "family-ambiguous", "h &lt;b&gt;x&lt;/b&gt;", "skip|&lt;me&gt;",
                  "1 written, 0 up to date, 0 locked, 1 failed, 1 skipped"):
        assert field in page


@pytest.mark.parametrize("name", ["u.json", "u.md", "u.html"])
def test_upgrade_report_goes_through_the_shared_writer(tmp_path: Path, name: str) -> None:
    out = upgrade_view.write_report(tmp_path / name, upgrade_result())
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(UsageError, match=r"\.json, \.md or \.html"):
        upgrade_view.write_report(tmp_path / "u.txt", upgrade_result())
    assert out.read_text(encoding="utf-8")


# --- the atomic write ---------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    target = tmp_path / "r.md"
    target.write_text("old")

    def fail(src: object, dst: object) -> None:
        raise error

    monkeypatch.setattr(report_files.os, "replace", fail)
    expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        report_files.write_text_atomic(target, "new", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"] and target.read_text() == "old"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_reports_get_the_umask_mode_not_a_private_one(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        out = report_files.write_text_atomic(tmp_path / "r.html", "x")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_undecodable_file_names_do_not_break_the_write(tmp_path: Path) -> None:
    name = os.fsdecode(b"bad\xffname")  # how Python spells a non-UTF-8 file name: a lone surrogate
    rep = report()
    rep["root"] = name
    for suffix in (".json", ".md", ".html"):
        text = write_report(tmp_path / f"r{suffix}", rep).read_text(encoding="utf-8")
        assert "udcff" in text
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["root"] == name
