"""The upgrade report's content and files (JSON, Markdown, one HTML page); nothing for terminals.

``write_report(path, result)`` writes the report in the format the extension names; the format
table, the escaping, the page shell and the atomic write are :mod:`etm_compat.cli.report_files`'
(validate a path early with ``report_files.format_for(path)``). ``upgrade --json`` prints
:func:`to_json`. The terminal views (rich) are :mod:`etm_compat.cli.upgrade_view`'s, which an
``upgrade --json`` never loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from etm_compat.cli import report_files
from etm_compat.cli.report_files import check_format, format_for, to_json_text, write_text_atomic
from etm_compat.cli.report_model import upgrade_json
from etm_compat.constants import VERSION

if TYPE_CHECKING:
    from etm_compat.bulk.upgrade import UpgradePlan, UpgradeResult

#: The option that lets ``upgrade`` replace an existing report (``--force`` means "repack").
OVERWRITE_REPORTS: Final = "--overwrite-reports"


def to_json(result: UpgradeResult) -> dict[str, Any]:
    """The JSON report (also what ``upgrade --json`` prints)."""
    return {"report": "etm-compat upgrade", "tool_version": VERSION, **result.to_json()}


def render(result: UpgradeResult, fmt: str) -> str:
    """The report as text in ``fmt`` (``json``, ``md`` or ``html``, as :func:`format_for` names)."""
    fmt = check_format(fmt)
    if fmt == "json":
        return to_json_text(to_json(result))
    # The page and the Markdown shared with diagnose, from the report's dict form (so that
    # report_model never needs the diagnose report's class, nor its checks and templates).
    return report_files.render(upgrade_json(result), fmt)


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


__all__ = ["OVERWRITE_REPORTS", "plan_files", "render", "to_json", "write_report"]
