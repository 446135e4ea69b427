"""Showing an upgrade: the plan and the summary for people (rich), and the upgrade report's content.

``write_report(path, result)`` writes the report as JSON, Markdown or one self-contained HTML
page, chosen by the extension; the format table, the escaping, the page shell and the atomic
write are :mod:`etm_compat.cli.report_files`' (validate a path early with
``report_files.format_for(path)``). Everything that came from the scanned tree (file names,
messages quoting file contents) is escaped for the medium: :func:`etm_compat.cli.console.safe`
for the terminal, :func:`~etm_compat.cli.report_files.md_text` for Markdown and
:func:`~etm_compat.cli.report_files.esc` for HTML.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

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

from etm_compat.bulk.upgrade import ItemResult, UpgradePlan, UpgradeResult
from etm_compat.cli.console import SEVERITY_STYLE, safe
from etm_compat.cli.report_files import (
    check_format,
    esc,
    format_for,
    html_page,
    md_text,
    to_json_text,
    write_text_atomic,
)
from etm_compat.constants import VERSION
from etm_compat.findings import SEVERITIES

TITLE = "etm-compat upgrade report"
OUTCOME_STYLE = {"written": "green", "up_to_date": "cyan", "locked": "yellow", "failed": "bold red"}
STATUS_STYLE = {"new": "green", "stale": "yellow", "up_to_date": "cyan"}
#: The report page's CSS class for each outcome (classes of the shared page shell).
OUTCOME_CLASS = {"written": "ok", "up_to_date": "info", "locked": "warning", "failed": "sev error"}
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


def to_json(result: UpgradeResult) -> dict[str, Any]:
    """The JSON report (also what ``upgrade --json`` prints)."""
    return {"report": "etm-compat upgrade", "tool_version": VERSION, **result.to_json()}


def _verdict(result: UpgradeResult) -> str:
    c = result.to_json()["counts"]
    return (
        f"{c['written']} written, {c['up_to_date']} up to date, {c['locked']} locked, "
        f"{c['failed']} failed, {c['skipped']} skipped ({result.seconds:.1f} s)"
    )


def _size(item: ItemResult) -> str:
    return f"{item.size:,}" if item.size is not None else "-"


def to_markdown(result: UpgradeResult) -> str:
    """The report as GitHub-flavoured Markdown: the counts, one table row per deployment, then
    the skipped folders and every finding with its message and hint."""
    plan = result.plan
    out = md_text(plan.out) if plan.out is not None else "in place"
    lines = [
        f"# {TITLE}",
        "",
        f"- root: {md_text(plan.root)}",
        f"- output: {out}",
        f"- result: {'OK' if result.ok else 'INCOMPLETE'}: {_verdict(result)}",
        "",
        "| program | outcome | archive | size | family | findings | reason |",
        "|---|---|---|---:|---|---|---|",
    ]
    for item in result.items:
        codes = ", ".join(f"{md_text(f.severity)}: {md_text(f.code)}" for f in item.findings)
        lines.append(
            f"| {md_text(item.program)} | {item.outcome} | "
            f"{md_text(_archive_label(plan, item.archive))} | {_size(item)} | "
            f"{md_text(item.family or '-')} | {codes or '-'} | {md_text(item.reason)} |"
        )
    if plan.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {md_text(plan.relative(Path(s.path)))}: {md_text(s.reason)}" for s in plan.skipped]
    with_findings = [i for i in result.items if i.findings]
    if with_findings:
        lines += ["", "## Findings", ""]
        for item in with_findings:
            lines += [f"### {md_text(item.program)}", ""]
            for f in item.findings:
                hint = f" (hint: {md_text(f.hint)})" if f.hint else ""
                lines.append(f"- **{md_text(f.severity)}** {md_text(f.code)}: {md_text(f.message)}{hint}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _html_findings(item: ItemResult) -> str:
    parts = []
    for f in item.findings:
        cls = f.severity if f.severity in SEVERITIES else ""
        hint = f" <small>(hint: {esc(f.hint)})</small>" if f.hint else ""
        parts.append(
            f'<span class="sev {cls}">{esc(f.severity)}</span> <code>{esc(f.code)}</code>: '
            f"{esc(f.message)}{hint}"
        )
    return "<br>".join(parts) or "-"


def to_html(result: UpgradeResult) -> str:
    """The report as one self-contained HTML page (the shared shell: no scripts, no requests)."""
    plan = result.plan
    out = f"<code>{esc(plan.out)}</code>" if plan.out is not None else "in place"
    verdict = '<b class="ok">OK</b>' if result.ok else '<b class="error">INCOMPLETE</b>'
    rows = "".join(
        f"<tr><td><code>{esc(item.program)}</code></td>"
        f'<td class="{OUTCOME_CLASS.get(item.outcome, "")}">{esc(item.outcome)}</td>'
        f"<td><code>{esc(_archive_label(plan, item.archive))}</code></td>"
        f'<td class="n">{_size(item)}</td><td>{esc(item.family or "-")}</td>'
        f"<td>{_html_findings(item)}</td><td>{esc(item.reason)}</td></tr>"
        for item in result.items
    )
    parts = [
        f"<h1>{esc(TITLE)}</h1>",
        f"<p>Root: <code>{esc(plan.root)}</code>; output: {out}</p>",
        f'<p id="summary">{verdict}: {esc(_verdict(result))}</p>',
        "<table><thead><tr><th>program</th><th>outcome</th><th>archive</th>"
        '<th class="n">size</th><th>family</th><th>findings</th><th>reason</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>",
    ]
    if plan.skipped:
        skipped = "".join(
            f"<li><code>{esc(plan.relative(Path(s.path)))}</code>: {esc(s.reason)}</li>"
            for s in plan.skipped
        )
        parts.append(f'<h2>Skipped</h2><ul id="skipped">{skipped}</ul>')
    return html_page(TITLE, "\n".join(parts))


def render(result: UpgradeResult, fmt: str) -> str:
    """The report as text in ``fmt`` (``json``, ``md`` or ``html``, as :func:`format_for` names)."""
    fmt = check_format(fmt)
    if fmt == "json":
        return to_json_text(to_json(result))
    return to_markdown(result) if fmt == "md" else to_html(result)


#: The option that lets ``upgrade`` replace an existing report (``--force`` means "repack").
OVERWRITE_REPORTS: Final = "--overwrite-reports"


def plan_files(plan: UpgradePlan) -> list[Path]:
    """Every file an upgrade reads or writes (sources and archives): no report may replace one."""
    files: list[Path] = []
    for item in plan.items:
        files.extend(item.deployment.sources)
        files.append(item.archive)
    return files


def write_report(
    path: str | os.PathLike[str], result: UpgradeResult, *, fmt: str | None = None, force: bool = False
) -> Path:
    """Write the report in the format the extension names (or ``fmt``), atomically.

    An existing file is refused unless ``force``; a source or archive of the run always is.

    >>> write_report("upgrade.html", result)  # doctest: +SKIP
    PosixPath('upgrade.html')
    """
    return write_text_atomic(
        path,
        render(result, format_for(path, fmt)),
        force=force,
        sources=plan_files(result.plan),
        force_option=OVERWRITE_REPORTS,
    )


__all__ = [
    "OVERWRITE_REPORTS",
    "plan_files",
    "render",
    "render_plan",
    "render_summary",
    "to_html",
    "to_json",
    "to_markdown",
    "upgrade_progress",
    "write_report",
]
