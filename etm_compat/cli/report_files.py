"""Report files: the one writer of every report (JSON, Markdown, one self-contained HTML page).

This module owns what every report shares: the format a file extension names (:func:`format_for`),
rendering a report in a format (:func:`render`) and the atomic write (:func:`write_text_atomic`:
a new file in the destination folder, then ``os.replace``). The upgrade report and the diagnose
report go through the same renderers: :mod:`etm_compat.cli.report_model` turns either into one
page model, :mod:`etm_compat.cli.report_md` writes it as Markdown and
:mod:`etm_compat.cli.report_html` as one HTML page (charts, a sortable and filterable table, a
detail view per deployment). Escaping lives in :mod:`etm_compat.cli.report_text`
(:func:`md_text`, :func:`esc` are re-exported here).

A report is a report object (:class:`~etm_compat.diagnosis.DiagnoseReport`,
:class:`~etm_compat.bulk.upgrade.UpgradeResult`) or its JSON-ready dict: the diagnose form
``{"schema_version", "root", "summary", "deployments": [{"name", "path", "kind", "error",
"findings", "details"?}]}`` (an optional ``"title"`` names the page), or the upgrade form
``{"report": "etm-compat upgrade", "root", "out", "counts", "items": [...], "skipped"}``.

>>> write_report("diagnose.html", report)  # doctest: +SKIP
PosixPath('diagnose.html')
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from etm_compat.cli.report_model import ReportLike, as_dict
from etm_compat.cli.report_text import esc, md_text
from etm_compat.errors import OutputError, UsageError, escape_json_text
from etm_compat.fileio import check_output, new_temp_file, output_error
from etm_compat.lazy import lazy_exports

if TYPE_CHECKING:
    from etm_compat.cli.report_html import html_page, svg_bar_chart, to_html
    from etm_compat.cli.report_md import to_markdown

#: The page renderers, re-exported here, load on first use (PEP 562): a JSON report, and a run
#: that writes none, never load them (the HTML page's sample conversations come from the
#: template machinery).
_RENDERERS: Final = {
    "html_page": "etm_compat.cli.report_html",
    "svg_bar_chart": "etm_compat.cli.report_html",
    "to_html": "etm_compat.cli.report_html",
    "to_markdown": "etm_compat.cli.report_md",
}


__getattr__ = lazy_exports(__name__, _RENDERERS, globals())


#: The report formats, and the one table of the file extensions that name them.
KINDS: Final = ("json", "md", "html")
FORMATS: Final = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def to_json_text(report: ReportLike) -> str:
    """The report as indented JSON text (UTF-8, ends with a newline)."""
    return escape_json_text(json.dumps(as_dict(report), indent=2, ensure_ascii=False, default=str)) + "\n"


# --- writing ---------------------------------------------------------------------------------


def check_format(fmt: str) -> str:
    """``fmt`` itself when it is a report format (json, md, html); a UsageError otherwise."""
    if fmt not in KINDS:
        raise UsageError(f"unknown report format {fmt!r}", hint="use json, md or html")
    return fmt


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else the format the file extension names: ``json``, ``md`` or ``html``.

    Call it before any work to reject a report path early; a UsageError names the choices.

    >>> format_for("out/report.markdown")
    'md'
    """
    if fmt is not None:
        return check_format(fmt)
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"cannot tell the report format from {suffix or 'no extension'!r}",
            path=os.fspath(path),
            hint="name the file .json, .md or .html",
        )
    return FORMATS[suffix]


def render(report: ReportLike, fmt: str) -> str:
    """The report (diagnose or upgrade) as text in ``fmt`` (json, md or html).

    JSON is the report's own JSON form (a diagnose report without the pages' details: schema 1).
    """
    kind = check_format(fmt)
    if kind == "json":
        return to_json_text(as_dict(report, details=False))
    if kind == "md":
        # Lazy: a page renderer loads only when its page is written (see _RENDERERS).
        from etm_compat.cli.report_md import to_markdown

        return to_markdown(report)
    # Lazy: as above; the HTML page also loads the template machinery for its conversations.
    from etm_compat.cli.report_html import to_html

    return to_html(report)


def write_text_atomic(
    path: str | os.PathLike[str],
    text: str,
    *,
    force: bool = False,
    sources: Iterable[str | os.PathLike[str]] = (),
    force_option: str = "{force}",
) -> Path:
    """Write ``text`` (UTF-8) to a new file in the same folder, then move it onto ``path``.

    The output rule of every file etm-compat writes (:func:`etm_compat.fileio.check_output`):
    a folder, or a file in ``sources`` (what the run read), is refused even with ``force``; an
    existing file is refused unless ``force``. Without ``force`` the file is linked into place
    (never replacing one that appeared meanwhile); with it, ``os.replace`` swaps it in. Readers
    see the old file or the whole new one, never a part. The file gets the umask's mode (0644
    under the usual 022). An OSError (full disk, read-only filesystem...) becomes an
    OutputError; on any failure (interrupts included) the temporary file is removed. Code points
    UTF-8 cannot encode (lone surrogates) are written as ``\\udcXX`` escapes.
    """
    target = check_output(path, force=force, sources=sources, force_option=force_option)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError("the output folder does not exist", path=folder)
    try:
        # The umask's mode (not 0600): a report is for reading. Short: names have a byte limit.
        fd, tmp_name = new_temp_file(folder, f".{target.name[:40]}.", mode=0o666)
        tmp = Path(tmp_name)
    except OSError as exc:
        raise OutputError(f"cannot write here: {exc.strerror or exc}", path=folder) from exc
    try:
        with open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
            fh.write(text)
        if force:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target, force_option)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(exc, target, "the report") from exc
        raise
    return target


def _link_new(tmp: Path, target: Path, force_option: str) -> None:
    """Put ``tmp`` at ``target`` only if nothing is there (a hard link fails on an existing name)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputError(
            "already exists", path=target, hint=f"choose another name or pass {force_option}"
        ) from None
    except OSError:  # a filesystem without hard links: the check above is the guard
        os.replace(tmp, target)
        return
    tmp.unlink()


def write_report(
    path: str | os.PathLike[str],
    report: ReportLike,
    *,
    fmt: str | None = None,
    force: bool = False,
    sources: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write the findings report to ``path`` in the format its extension names (or ``fmt``).

    ``force`` and ``sources`` are :func:`write_text_atomic`'s output rule.
    """
    return write_text_atomic(path, render(report, format_for(path, fmt)), force=force, sources=sources)


__all__ = [
    "FORMATS",
    "KINDS",
    "ReportLike",
    "as_dict",
    "check_format",
    "esc",
    "format_for",
    "html_page",
    "md_text",
    "render",
    "svg_bar_chart",
    "to_html",
    "to_json_text",
    "to_markdown",
    "write_report",
    "write_text_atomic",
]
