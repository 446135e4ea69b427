"""Report files: format by extension, escaping of untrusted text, the page's structure, the
Markdown report's shape, atomic writes.

The diagnose report and the bulk upgrade report go through the same renderers (report_model ->
report_md / report_html), so both are checked here against the same contract. The Markdown is
parsed by a real GFM parser (markdown-it-py); the HTML page's behaviour in a real browser is
tests/test_report_browser.py's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from etm_compat.adapters import default_adapters
from etm_compat.bulk.upgrade import ItemResult, UpgradePlan, UpgradeResult
from etm_compat.cli import report_files, upgrade_view
from etm_compat.cli.report_files import to_html, to_markdown, write_report
from etm_compat.cli.report_model import page_of, upgrade_json
from etm_compat.cli.report_text import md_cell, md_code, visible
from etm_compat.diagnosis import DeploymentReport, diagnose
from etm_compat.errors import OutputError, UsageError
from etm_compat.findings import Finding
from etm_compat.legacy.deployment import Skipped
from tests.conftest import FIXTURES

HOSTILE = "<script>alert(1)</script> | **bold** [x](http://evil.invalid) \x1b[31m &amp;"
#: Invisible code points a file name can carry: a bidi override, a zero-width space, a line separator.
INVISIBLE = "\u202e\u200b\u2028"
#: Names that try to end the page's data element, break its JSON or the Markdown table.
HOSTILE_NAMES = (
    "</script><script>document.title='pwned'</script>",
    "evil\u2028line\u2029para<!--",
    "pipe|name\\|`tick``s`",
    "<|eot_id|> & <b>bold</b>",
    "bidi\u202eexe.pte",
)
ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


def report() -> dict[str, Any]:
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


# --- synthetic upgrade reports from real report types (the browser test uses them too) ----------


@functools.cache
def sample_deployments() -> tuple[DeploymentReport, ...]:
    """Real diagnosed deployments (legacy and broken fixtures): findings and details to reuse."""
    found = []
    for tree in ("legacy", "broken"):
        report = diagnose(FIXTURES / tree, default_adapters())
        found += [d for d in report.deployments if d.kind == "deployment" and d.details is not None]
    return tuple(found)


def synthetic_upgrade(n: int, names: tuple[str, ...] = ()) -> UpgradeResult:
    """An upgrade of ``n`` deployments (the first named ``names``), each like a real fixture
    deployment (its family, findings and details), with varied outcomes and sizes."""
    samples = sample_deployments()
    root, out = Path("/hub/models"), Path("/hub/etm")
    items = []
    for i in range(n):
        like = samples[i % len(samples)]
        folder = names[i] if i < len(names) else f"org{i % 23}/model-{i:05d}"
        outcome = "failed" if i % 50 == 7 else "locked" if i % 97 == 3 else "up_to_date" if i % 5 == 1 else "written"
        read = outcome in ("written", "up_to_date")
        size = 1000 + (i * 7919) % 900_000 if read else None
        assert like.details is not None
        items.append(
            ItemResult(
                program=f"{folder}/model.pte",
                archive=out / folder / "model.etm",
                outcome=outcome,  # type: ignore[arg-type]
                reason="packed" if read else f"broken: {HOSTILE}",
                size=size,
                family=like.details["family"]["id"] if read else None,
                findings=like.findings if read else (),
                source_bytes=(size or 40_000) + 4096 + (i * 104_729) % 20_000,
                details=like.details if read else None,
            )
        )
    plan = UpgradePlan(root=root, out=out, in_place=False, items=(),
                       skipped=(Skipped(root / "notes|<x>", "no tokenizer " + HOSTILE),))
    return UpgradeResult(plan=plan, items=tuple(items), seconds=12.5)


def synthetic_report(n: int, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`synthetic_upgrade`'s JSON form (what the pages read; ``details`` absent when None)."""
    rep = upgrade_json(synthetic_upgrade(n, names))
    for item in rep["items"]:
        item.setdefault("details", None)
    return rep


def expand(data: dict[str, Any], index: int) -> dict[str, Any]:
    """A row's details as the page's script rebuilds them from the shared parts."""
    parts = data["details"][index].items()
    return {k: [data["parts"][p] for p in v] if isinstance(v, list) else data["parts"][v] for k, v in parts}


def embedded(page: str) -> tuple[dict[str, Any], str]:
    """The page's data (parsed as the page's script parses it) and its script."""
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert data is not None and len(scripts) == 1
    return json.loads(data.group(1)), scripts[0]


# --- HTML ----------------------------------------------------------------------------------------


def test_html_escapes_untrusted_text_and_has_no_external_references() -> None:
    page = to_html(report())
    assert "<script>alert" not in page and "\\u003cscript\\u003ealert(1)" in page  # in the data
    assert "<b>it</b>" not in page and "fix &lt;b&gt;it&lt;/b&gt;" in page  # the common hints
    assert "\x1b" not in page and "\\x1b[31m" in page
    assert not re.search(r"\bsrc=|url\(|@import|<iframe|<img|<link (?!rel=\"icon\" href=\"data:,\")", page)
    assert re.findall(r'href="([^"]*)"', page) == ["data:,"]
    assert 'id="count-error"><b>1</b>' in page and page.count("<svg") == 3


def test_the_only_script_is_allowed_by_its_hash() -> None:
    page = to_html(synthetic_report(3))
    _, script = embedded(page)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None
    assert csp.group(1) == (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'"
    )
    # Executable scripts: exactly the one the policy names (the data element is not executed).
    assert len(re.findall(r"<script(?![^>]*application/json)", page)) == 1


def test_hostile_names_cannot_leave_the_embedded_json() -> None:
    page = to_html(synthetic_report(8, HOSTILE_NAMES))
    data_part = page[page.index('id="report-data">') : page.index("</script>", page.index('id="report-data">'))]
    for bad in ("</script", "<!--", "\u2028", "\u2029", "<script", "<b>"):
        assert bad not in data_part
    data, _ = embedded(page)
    names = [row[0] for row in data["rows"]]
    # Every name arrives as text, its invisible code points written as visible escapes.
    assert names[0] == "</script><script>document.title='pwned'</script>/model.pte"
    assert names[1] == "evil\\u2028line\\u2029para<!--/model.pte"
    assert names[4] == "bidi\\u202eexe.pte/model.pte"
    # Outside the data, the names appear only HTML-escaped (in the static page: none do).
    static = page[: page.index('<script type="application/json"')]
    assert "document.title" not in static and "</script>" not in static


def test_page_structure_of_an_upgrade() -> None:
    rep = synthetic_report(60)
    page = to_html(rep)
    counts = rep["counts"]
    for outcome in ("written", "up_to_date", "locked", "failed", "skipped"):
        assert f'id="count-{outcome}"><b>{counts[outcome]}</b>' in page
    assert 'id="count-deployments"><b>60</b>' in page
    for section in ('id="charts"', 'id="common"', 'id="space"', 'id="deployments"', 'id="detail" hidden', 'id="skipped"'):
        assert section in page
    for select in ("f-family", "f-state", "f-severity", "f-text"):
        assert f'id="{select}"' in page
    # The charts: outcomes, families, severities; their bars filter the table.
    assert 'data-filter="state" data-value="written"' in page
    assert 'data-filter="severity" data-value="warning"' in page
    families = {item["family"] for item in rep["items"] if item["family"]}
    assert all(f'data-filter="family" data-value="{html.escape(f)}"' in page for f in families)
    # Space: the archives against their sources, over the rows that have both sizes.
    both = [i for i in rep["items"] if i["size"] is not None]
    archives, sources = sum(i["size"] for i in both), sum(i["source_bytes"] for i in both)
    assert f"({archives:,} bytes)" in page and f"({sources:,} bytes)" in page
    data, _ = embedded(page)
    assert len(data["rows"]) == 60 and data["sizes"] is True
    # Deployments alike share one details object; every read row points at one.
    assert len(data["details"]) == len({json.dumps(d, sort_keys=True) for d in filter(None, (i["details"] for i in rep["items"]))})
    for row, item in zip(data["rows"], rep["items"], strict=True):
        assert row[1] == item["outcome"] and row[5] == item["size"] and row[6] == item["source_bytes"]
        assert (row[9] >= 0) == (item["details"] is not None) and row[4] == len(item["findings"])


def test_detail_data_carries_evidence_stop_set_tokens_and_sample() -> None:
    rep = synthetic_report(len(sample_deployments()))
    data, _ = embedded(to_html(rep))
    qwen = next(r for r in data["rows"] if r[2] == "qwen2_5" and r[9] >= 0)
    details = expand(data, qwen[9])
    assert details["sample"]["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert details["sample"]["conversation"] in data["conversations"]
    assert {s["token"] for s in details["stop"]} >= {"<|im_end|>", "<|endoftext|>"}
    assert details["bos"]["sources"] and details["eos"]["sources"] and details["evidence"]
    assert all({"source", "field", "value", "detail"} <= set(e) for e in details["evidence"])


def test_diagnose_page_has_no_size_columns_and_keeps_its_order() -> None:
    page = to_html(report())
    data, _ = embedded(page)
    assert data["sizes"] is False and 'id="space"' not in page
    assert [r[0] for r in data["rows"]] == ["x<y>", "clean"]
    first = data["parts"][data["rows"][0][10][0]]  # findings are shared parts too
    assert first[:3] == ["error", "vocab-tokenizer-larger", HOSTILE.replace("\x1b", "\\x1b")]


# --- Markdown ------------------------------------------------------------------------------------


def _tables(text: str) -> list[list[list[str]]]:
    """Every GFM table in ``text``, as rows of cell texts, parsed by markdown-it-py."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for tok in tokens:
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append("".join(c.content for c in tok.children or []))
        elif tok.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return tables


def test_markdown_has_no_html_entities_and_escapes_nothing_but_table_pipes() -> None:
    for rep in (report(), synthetic_report(12, HOSTILE_NAMES)):
        text = to_markdown(rep)
        # The only entity is the one HOSTILE carries, kept literally (in a code span no reader
        # decodes it): nothing was entity-escaped, and nothing was decoded or escaped twice.
        assert set(ENTITY.findall(text)) <= {"amp"}, ENTITY.findall(text)
        assert text.count("&amp;") == text.count("http://evil.invalid") > 0
        assert "\x1b" not in text and not set(INVISIBLE) & set(text)
    text = to_markdown(synthetic_report(12, HOSTILE_NAMES))
    assert "`<|eot_id|>`" in text  # a token reads as itself: no &lt;, no backslashes
    assert "\\<" not in text and "&lt;" not in text


def test_markdown_tables_keep_their_shape_with_pipes_in_values() -> None:
    rep = synthetic_report(12, HOSTILE_NAMES)
    text = to_markdown(rep)
    tables = _tables(text)
    assert len(tables) >= 5
    for table in tables:
        assert len({len(row) for row in table}) == 1, table  # every row has the header's cells
    deployments = next(t for t in tables if t[0][0] == "program")
    shown = [visible(item["program"]).replace("\\|", "\\x5c|") for item in rep["items"]]
    assert [row[0] for row in deployments[1:]] == shown
    assert deployments[3][0] == "pipe|name\\x5c|`tick``s`/model.pte"  # the pipe kept, the table intact
    # The same check without a parser: in each table, unescaped pipes per row equal the header's.
    for block in re.findall(r"(?m)(?:^\|.*\n)+", text):
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(counts) == 1, block


def test_markdown_of_an_upgrade_keeps_every_field() -> None:
    rep = synthetic_report(30)
    text = to_markdown(rep)
    assert text.startswith("# etm-compat upgrade report\n")
    assert "- root: `/hub/models`" in text and "- output: `/hub/etm`" in text
    assert "- result: INCOMPLETE: " in text and "1 skipped" in text
    for heading in ("## Summary", "## Most common findings", "## Space", "## Deployments", "## Skipped", "## Findings by deployment"):
        assert heading in text
    assert "- `notes|<x>`: `no tokenizer <script>alert(1)</script> | **bold**" in text
    failed = next(i for i in rep["items"] if i["outcome"] == "failed")
    assert f"### `{failed['program']}`" in text and "- outcome: failed: `broken: <script>" in text
    written = next(i for i in rep["items"] if i["outcome"] == "written" and i["findings"])
    section = text[text.index(f"### `{written['program']}`") :].split("\n\n### ")[0]
    assert "- family: `" in section and "- stop set: " in section and "- bos: " in section
    first = written["findings"][0]
    assert f"**{first['severity']}** `{first['code']}`" in section and "; hint: `" in section


def test_code_spans_survive_backticks_and_padding() -> None:
    parser = MarkdownIt("commonmark").enable("table")
    for value in ("a`b", "``x``", " lead", "trail ", "`", "a|b", "a\\|b", "<|eot_id|>"):
        inline = parser.parseInline(md_code(value))[0].children or []
        assert [t.type for t in inline] == ["code_inline"] and inline[0].content == value
        rendered = parser.render(f"| h |\n|---|\n| {md_cell(value)} |\n")
        cell = re.search(r"<td><code>(.*)</code></td>", rendered, re.S)
        assert cell is not None and html.unescape(cell.group(1)) == value.replace("\\|", "\\x5c|")
    assert md_code("") == '""'


# --- the upgrade report through upgrade_view and the shared writer -----------------------------


def test_upgrade_json_report_is_the_plain_json_form(tmp_path: Path) -> None:
    result = synthetic_upgrade(3)
    out = upgrade_view.write_report(tmp_path / "u.json", result)
    expected = json.dumps(upgrade_view.to_json(result), indent=2, ensure_ascii=False) + "\n"
    assert out.read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("name", ["u.json", "u.md", "u.html"])
def test_upgrade_report_goes_through_the_shared_writer(tmp_path: Path, name: str) -> None:
    result = synthetic_upgrade(3)
    out = upgrade_view.write_report(tmp_path / name, result)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(UsageError, match=r"\.json, \.md or \.html"):
        upgrade_view.write_report(tmp_path / "u.txt", result)
    assert out.read_text(encoding="utf-8")


def test_an_upgrade_result_object_renders_like_its_json_form() -> None:
    result = synthetic_upgrade(20)
    assert to_markdown(result) == to_markdown(upgrade_json(result))
    assert to_html(result) == to_html(upgrade_json(result))
    page = page_of(result)
    assert page.ok is False and [r.source_bytes for r in page.rows] == [i.source_bytes for i in result.items]
    plan = UpgradePlan(root=Path("/r"), out=None, in_place=True, items=())
    ok = UpgradeResult(plan, (ItemResult("m.pte", Path("/r/m.etm"), "written", "packed", 10, "llama2", (), 0.1, 20),), 1.0)
    assert page_of(ok).ok is True and page_of(ok).verdict.startswith("OK: 1 written")
    assert page_of(ok).rows[0].location == "m.etm"  # relative to the output (in place: the root)


def test_findings_from_a_finding_object_round_trip() -> None:
    f = Finding("double-bos", "warning", "two <s>", "set num_bos=0", ("a|b",))
    plan = UpgradePlan(root=Path("/r"), out=None, in_place=True, items=())
    result = UpgradeResult(plan, (ItemResult("m.pte", Path("/r/m.etm"), "written", "packed", 10, "llama2", (f,)),), 1.0)
    common = page_of(result).common_findings()
    assert common == [("warning", "double-bos", 1, 1, "set num_bos=0")]
    assert "**warning** `double-bos` in `a|b`: `two <s>`; hint: `set num_bos=0`" in to_markdown(result)


# --- formats and writing ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "marker"), [("r.json", '"schema_version": 1'), ("r.md", "# etm-compat"), ("r.html", "<!DOCTYPE html>")])
def test_format_follows_the_extension(tmp_path: Path, name: str, marker: str) -> None:
    out = write_report(tmp_path / name, report())
    assert marker in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    if name.endswith(".json"):
        assert json.loads(out.read_text())["deployments"][0]["name"] == "x<y>"


def test_diagnose_json_report_stays_schema_1_while_pages_get_details(tmp_path: Path) -> None:
    rep = diagnose(FIXTURES / "legacy" / "hf_style", default_adapters())
    assert rep.deployments[0].details is not None
    text = report_files.render(rep, "json")
    assert "details" not in json.loads(text)["deployments"][0]
    data, _ = embedded(report_files.render(rep, "html"))
    assert data["details"] and data["rows"][0][9] == 0


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


def test_markdown_root_is_a_code_span() -> None:
    assert "- root: `/tmp/<root>`" in to_markdown(report())


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
    for text in (report_files.md_text(INVISIBLE), report_files.esc(INVISIBLE), md_code(INVISIBLE)):
        assert not set(INVISIBLE) & set(text)
        assert "u202e" in text and "u200b" in text and "u2028" in text


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
    rep["deployments"][0]["name"] = name
    for suffix in (".json", ".md", ".html"):
        text = write_report(tmp_path / f"r{suffix}", rep).read_text(encoding="utf-8")
        assert "udcff" in text
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["root"] == name
    data, _ = embedded((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert data["rows"][0][0] == "bad\\udcffname"
