"""Showing an upgrade: the plan and the summary for people (rich), and the report file.

``write_report(path, result)`` writes JSON, Markdown or self-contained HTML, chosen by the
extension, atomically. Everything that came from the scanned tree (file names, messages quoting
file contents) is escaped for the medium: :func:`etm_compat.cli.console.safe` for the terminal,
``html.escape`` for HTML, pipe/backtick/angle escaping for Markdown.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from etm_compat.constants import VERSION
from etm_compat.errors import OutputError, UsageError
from etm_compat.cli.console import SEVERITY_STYLE, safe
from etm_compat.bulk.upgrade import ItemResult, UpgradePlan, UpgradeResult

REPORT_FORMATS = {
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}
OUTCOME_STYLE = {"written": "green", "up_to_date": "cyan", "locked": "yellow", "failed": "bold red"}
STATUS_STYLE = {"new": "green", "stale": "yellow", "up_to_date": "cyan"}
#: Above this many deployments the summary lists only the ones that need attention.
FULL_TABLE_LIMIT = 50


def _archive_label(plan: UpgradePlan, archive: Path) -> str:
    base = plan.out if plan.out is not None else plan.root
    return os.path.relpath(archive, base)


# --- terminal ------------------------------------------------------------------------------------


def render_plan(console: Console, plan: UpgradePlan, *, full: bool = True) -> None:
    """Which archive comes from which files, and what will be done; then what is skipped and why.

    Without ``full`` only the archives to (re)pack are listed and the up-to-date ones are
    counted: a re-run over thousands of finished deployments prints a few lines, not a table.
    """
    where = f"→ {plan.out}" if plan.out is not None else "(in place)"
    table = Table(title=safe(f"upgrade plan: {plan.root} {where}"), title_justify="left")
    for col in ("archive", "from", "status"):
        table.add_column(col, overflow="fold")
    shown = plan.items if full else plan.pending
    hidden = 0
    if not full and len(shown) > FULL_TABLE_LIMIT:
        # Thousands of rows help nobody on a terminal: the report file has every one.
        hidden = len(shown) - FULL_TABLE_LIMIT
        shown = shown[:FULL_TABLE_LIMIT]
    for item in shown:
        program = plan.relative(item.deployment.program)
        others = [os.path.basename(p) for p in item.deployment.sources[1:]]
        style = STATUS_STYLE[item.status]
        status = f"[{style}]{safe(item.status.replace('_', ' '))}[/]"
        if item.status == "stale" or "named" in item.reason:
            status += f": {safe(item.reason)}"
        table.add_row(
            safe(_archive_label(plan, item.archive)),
            safe(" + ".join([program, *others])),
            status,
        )
    if shown:
        console.print(table)
    if hidden:
        console.print(f"... and {hidden} more to pack (all listed by --dry-run and in --report files)")
    for s in plan.skipped:
        console.print(
            f"[yellow]skipped[/yellow] {safe(plan.relative(Path(s.path)))}: {safe(s.reason)}"
        )
    todo = len(plan.pending)
    console.print(
        f"{len(plan.items)} deployment(s): {todo} to pack, {len(plan.items) - todo} up to date, "
        f"{len(plan.skipped)} skipped"
    )


@contextmanager
def upgrade_progress(console: Console, plan: UpgradePlan) -> Iterator[Any]:
    """A rich progress bar (counts, bytes, ETA); yields the callback :func:`execute` takes."""
    pending = plan.pending
    columns = (
        TextColumn("[bold]upgrade"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[count]}"),
        DownloadColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(
            "upgrade", total=sum(i.source_bytes for i in pending) or 1, done=0, count=len(pending)
        )

        def advance(item: ItemResult) -> None:
            done = int(bar.tasks[0].fields["done"]) + 1
            bar.update(task, advance=item.source_bytes, done=done)
            if item.outcome == "failed":
                bar.console.print(f"[bold red]failed[/] {safe(item.program)}: {safe(item.reason)}")

        yield advance


def render_summary(console: Console, result: UpgradeResult) -> None:
    """The table at the end: per deployment when the tree is small, the problems otherwise."""
    plan = result.plan
    rows = list(result.items)
    if len(rows) > FULL_TABLE_LIMIT:
        rows = [i for i in rows if i.outcome in ("failed", "locked")]
    if rows:
        table = Table(title="upgrade results", title_justify="left")
        for col in ("archive", "outcome", "size", "family", "findings / reason"):
            table.add_column(col, overflow="fold")
        for item in rows:
            style = OUTCOME_STYLE[item.outcome]
            if item.outcome == "failed" or item.outcome == "locked":
                detail = safe(item.reason)
            else:
                detail = (
                    ", ".join(
                        f"[{SEVERITY_STYLE[f.severity]}]{safe(f.code)}[/]" for f in item.findings
                    )
                    or "-"
                )
            table.add_row(
                safe(_archive_label(plan, item.archive)),
                f"[{style}]{item.outcome}[/]",
                f"{item.size:,}" if item.size is not None else "-",
                safe(item.family or "-"),
                detail,
            )
        console.print(table)
    for s in plan.skipped:
        console.print(
            f"[yellow]skipped[/yellow] {safe(plan.relative(Path(s.path)))}: {safe(s.reason)}"
        )
    counts = result.to_json()["counts"]
    verdict = "[green]OK[/green]" if result.ok else "[bold red]INCOMPLETE[/bold red]"
    flagged = sum(1 for i in result.items if any(f.severity == "error" for f in i.findings))
    console.print(
        f"{verdict} {counts['written']} written, {counts['up_to_date']} up to date, "
        f"{counts['locked']} locked by another run, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {result.seconds:.1f}s"
        + (f"; [yellow]{flagged} archive(s) carry error-level findings[/yellow]" if flagged else "")
    )


# --- report files ---------------------------------------------------------------------------------


def report_format(path: str | os.PathLike[str]) -> str:
    """``json``, ``markdown`` or ``html`` for a report path; a UsageError naming the choices."""
    suffix = Path(path).suffix.lower()
    if suffix not in REPORT_FORMATS:
        raise UsageError(
            f"unknown report format {suffix or '(no extension)'!r}",
            path=path,
            hint="name the report file .json, .md or .html",
        )
    return REPORT_FORMATS[suffix]


def to_json(result: UpgradeResult) -> dict[str, Any]:
    return {"report": "etm-compat upgrade", "tool_version": VERSION, **result.to_json()}


def _md(text: object) -> str:
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    out = out.replace("<", "&lt;").replace(">", "&gt;").replace("\r", " ").replace("\n", " ")
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in out)


def to_markdown(result: UpgradeResult) -> str:
    plan, data = result.plan, result.to_json()
    c = data["counts"]
    lines = [
        "# etm-compat upgrade report",
        "",
        f"- root: {_md(plan.root)}",
        f"- output: {_md(plan.out) if plan.out is not None else 'in place'}",
        f"- result: {'OK' if result.ok else 'INCOMPLETE'}: {c['written']} written, {c['up_to_date']} up to date, "
        f"{c['locked']} locked, {c['failed']} failed, {c['skipped']} skipped ({result.seconds:.1f} s)",
        "",
        "| program | outcome | archive | size | family | findings | reason |",
        "|---|---|---|---:|---|---|---|",
    ]
    for item in result.items:
        codes = ", ".join(f"{f.severity}: {f.code}" for f in item.findings) or "-"
        size = f"{item.size:,}" if item.size is not None else "-"
        lines.append(
            f"| {_md(item.program)} | {item.outcome} | {_md(_archive_label(plan, item.archive))} | {size} "
            f"| {_md(item.family or '-')} | {_md(codes)} | {_md(item.reason)} |"
        )
    if plan.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {_md(plan.relative(Path(s.path)))}: {_md(s.reason)}" for s in plan.skipped]
    with_findings = [i for i in result.items if i.findings]
    if with_findings:
        lines += ["", "## Findings", ""]
        for item in with_findings:
            lines += [f"### {_md(item.program)}", ""]
            for f in item.findings:
                hint = f" (hint: {_md(f.hint)})" if f.hint else ""
                lines.append(f"- **{f.severity}** {_md(f.code)}: {_md(f.message)}{hint}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    ".failed,.error{color:#b00020;font-weight:bold}.locked,.warning{color:#8a6d00}"
    ".written{color:#1b7f2a}.up_to_date,.info{color:#00658a}"
)


def to_html(result: UpgradeResult) -> str:
    plan, e = result.plan, html.escape
    c = result.to_json()["counts"]
    rows = []
    for item in result.items:
        findings = "<br>".join(
            f'<span class="{e(f.severity)}">{e(f.severity)}</span> {e(f.code)}: {e(f.message)}'
            for f in item.findings
        )
        size = f"{item.size:,}" if item.size is not None else "-"
        rows.append(
            f'<tr><td>{e(item.program)}</td><td class="{item.outcome}">{item.outcome}</td>'
            f"<td>{e(_archive_label(plan, item.archive))}</td><td>{size}</td><td>{e(item.family or '-')}</td>"
            f"<td>{findings or '-'}</td><td>{e(item.reason)}</td></tr>"
        )
    skipped = "".join(
        f"<li>{e(plan.relative(Path(s.path)))}: {e(s.reason)}</li>" for s in plan.skipped
    )
    out = e(str(plan.out)) if plan.out is not None else "in place"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>etm-compat upgrade report</title><style>{_CSS}</style></head><body>"
        f"<h1>etm-compat upgrade report</h1><p>root {e(str(plan.root))}, output {out}</p>"
        f"<p><b>{'OK' if result.ok else 'INCOMPLETE'}</b>: {c['written']} written, {c['up_to_date']} up to date, "
        f"{c['locked']} locked, {c['failed']} failed, {c['skipped']} skipped ({result.seconds:.1f} s)</p>"
        "<table><thead><tr><th>program</th><th>outcome</th><th>archive</th><th>size</th><th>family</th>"
        f"<th>findings</th><th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + "</body></html>\n"
    )


def write_report(path: str | os.PathLike[str], result: UpgradeResult) -> Path:
    """Write the report (format by extension) atomically: temp file beside it, then ``os.replace``.

    >>> write_report("upgrade.html", result)  # doctest: +SKIP
    PosixPath('upgrade.html')
    """
    dest = Path(path)
    kind = report_format(dest)
    if kind == "json":
        text = json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n"
    elif kind == "markdown":
        text = to_markdown(result)
    else:
        text = to_html(result)
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write the report: {exc.strerror}", path=dest) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write the report: {exc.strerror}", path=dest) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


__all__ = [
    "render_plan",
    "render_summary",
    "report_format",
    "to_html",
    "to_json",
    "to_markdown",
    "upgrade_progress",
    "write_report",
]
