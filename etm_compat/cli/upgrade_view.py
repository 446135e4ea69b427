"""Showing an upgrade to people (rich): the plan, the progress bar and the summary.

Everything that came from the scanned tree (file names, messages quoting file contents) goes
through :func:`etm_compat.cli.console.safe`. The report's content and files are
:mod:`etm_compat.cli.upgrade_report`'s (re-exported here); ``upgrade --json`` loads only that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from etm_compat.cli.console import SEVERITY_STYLE, safe
from etm_compat.cli.upgrade_report import (
    OVERWRITE_REPORTS,
    plan_files,
    render,
    to_json,
    write_report,
)

if TYPE_CHECKING:
    from etm_compat.bulk.upgrade import ItemResult, UpgradePlan, UpgradeResult

TITLE = "etm-compat upgrade report"
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


#: Seconds between two redraws of the progress bar.
PROGRESS_REFRESH = 0.1


@contextmanager
def upgrade_progress(console: Console, plan: UpgradePlan) -> Iterator[Any]:
    """A rich progress bar (counts, bytes, ETA); yields the callback :func:`execute` takes.

    The bar is redrawn from that callback (at most every :data:`PROGRESS_REFRESH` seconds), not
    by a refresh thread: the process keeps a single thread, so the worker pool, which starts at
    the first task, can always fork.
    """
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
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as bar:
        task = bar.add_task(
            "upgrade", total=sum(i.source_bytes for i in pending) or 1, done=0, count=len(pending)
        )
        drawn = time.monotonic()

        def advance(item: ItemResult) -> None:
            nonlocal drawn
            done = int(bar.tasks[0].fields["done"]) + 1
            bar.update(task, advance=item.source_bytes, done=done)
            if item.outcome == "failed":
                bar.console.print(f"[bold red]failed[/] {safe(item.program)}: {safe(item.reason)}")
            if time.monotonic() - drawn >= PROGRESS_REFRESH:
                drawn = time.monotonic()
                bar.refresh()

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
    counts = result.counts()
    verdict = "[green]OK[/green]" if result.ok else "[bold red]INCOMPLETE[/bold red]"
    flagged = sum(1 for i in result.items if any(f.severity == "error" for f in i.findings))
    console.print(
        f"{verdict} {counts['written']} written, {counts['up_to_date']} up to date, "
        f"{counts['locked']} locked by another run, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {result.seconds:.1f}s"
        + (f"; [yellow]{flagged} archive(s) carry error-level findings[/yellow]" if flagged else "")
    )


__all__ = [
    "OVERWRITE_REPORTS",
    "plan_files",
    "render",
    "render_plan",
    "render_summary",
    "to_json",
    "upgrade_progress",
    "write_report",
]
