"""report_files: format by extension, escaping of untrusted text, self-contained HTML, atomic writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from etm_compat.errors import OutputError, UsageError
from etm_compat.cli.report_files import to_html, to_markdown, write_report

HOSTILE = "<script>alert(1)</script> | **bold** [x](http://evil.invalid) \x1b[31m"


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
    write_report(target, report())
    assert target.read_text().startswith("# etm-compat diagnose report")
