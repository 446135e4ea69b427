"""Report files: the one writer of every report (JSON, Markdown, one self-contained HTML page).

This module owns what every report shares: the format a file extension names (:func:`format_for`),
making untrusted text inert in Markdown (:func:`md_text`) and HTML (:func:`esc`), the HTML page
shell (:func:`html_page`: inline CSS, a Content-Security-Policy, no scripts, no external assets)
and the atomic write (:func:`write_text_atomic`: a new file in the destination folder, then
``os.replace``). It also renders the findings report ``diagnose`` writes; other reports (the bulk
upgrade's, in :mod:`etm_compat.cli.upgrade_view`) build their own content with these helpers.

A findings *report* is the JSON-ready dict a report object's ``to_json()`` returns (or the object
itself): ``{"schema_version", "root", "summary": {"by_severity", "by_code", ...},
"deployments": [{"name", "path", "kind", "error", "findings": [Finding.to_json()...]}]}``;
an optional ``"title"`` names the page.

Everything in a report comes from untrusted files: control characters and other invisible code
points (bidi overrides, zero-width characters, undecodable bytes) become visible escapes, then
Markdown backslash-escapes its markup characters and HTML goes through :func:`html.escape`.

>>> write_report("diagnose.html", report)  # doctest: +SKIP
PosixPath('diagnose.html')
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from etm_compat.errors import OutputError, UsageError, escape_control
from etm_compat.fileio import check_output, output_error
from etm_compat.findings import SEVERITIES

COLORS: Final = {"error": "#c62828", "warning": "#ef8f00", "info": "#1565c0"}
#: The report formats, and the one table of the file extensions that name them.
KINDS: Final = ("json", "md", "html")
FORMATS: Final = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


class SupportsToJson(Protocol):
    def to_json(self) -> dict[str, Any]: ...


ReportLike = Mapping[str, Any] | SupportsToJson


def as_dict(report: ReportLike) -> Mapping[str, Any]:
    """The JSON-ready form of a report object (or the dict itself)."""
    return report if isinstance(report, Mapping) else report.to_json()


def _counts(rep: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    summary = rep.get("summary") or {}
    by_sev: dict[str, int] = {s: int((summary.get("by_severity") or {}).get(s, 0)) for s in SEVERITIES}
    by_code = {str(k): int(v) for k, v in (summary.get("by_code") or {}).items()}
    return by_sev, by_code


def _findings(dep: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(dep.get("findings") or [])


def to_json_text(report: ReportLike) -> str:
    """The report as indented JSON text (UTF-8, ends with a newline)."""
    return json.dumps(as_dict(report), indent=2, ensure_ascii=False, default=str) + "\n"


# --- escaping --------------------------------------------------------------------------------


def _visible(value: object) -> str:
    """``value`` as text with every control or invisible code point written as an escape.

    Beyond :func:`escape_control`, anything :meth:`str.isprintable` rejects (bidi overrides,
    zero-width and format characters, lone surrogates from undecodable file names) is escaped,
    so a file name cannot hide or reorder what a report shows.
    """
    text = escape_control(str(value))
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def md_text(value: object) -> str:
    """Untrusted text made inert in Markdown: no markup, no HTML, one line, safe in a table cell.

    Use it outside code spans (backslash escapes are literal inside backticks).
    """
    text = _visible(value)
    for ch in "\\`*_[]<>|#!~":
        text = text.replace(ch, "\\" + ch)
    return text


def esc(value: object) -> str:
    """Untrusted text for HTML text or a quoted attribute: made visible, then ``html.escape``."""
    return html.escape(_visible(value), quote=True)


# --- Markdown --------------------------------------------------------------------------------


def to_markdown(report: ReportLike) -> str:
    """The report as GitHub-flavoured Markdown: summary tables, then one section per deployment."""
    rep = as_dict(report)
    by_sev, by_code = _counts(rep)
    title = str(rep.get("title") or "etm-compat diagnose report")
    lines = [f"# {md_text(title)}", "", f"Root: {md_text(rep.get('root', ''))}", ""]
    lines += ["| severity | findings |", "|---|---:|"]
    lines += [f"| {s} | {by_sev[s]} |" for s in SEVERITIES]
    if by_code:
        lines += ["", "| check | findings |", "|---|---:|"]
        lines += [f"| {md_text(code)} | {n} |" for code, n in by_code.items()]
    for dep in rep.get("deployments") or []:
        lines += ["", f"## {md_text(dep.get('name', ''))} ({md_text(dep.get('kind', ''))})", ""]
        if dep.get("error"):
            lines += [f"**Could not be read:** {md_text(dep['error'])}", ""]
        findings = _findings(dep)
        if not findings:
            lines.append("No findings.")
            continue
        lines += ["| severity | code | message | hint | files |", "|---|---|---|---|---|"]
        for f in findings:
            files = ", ".join(md_text(p) for p in f.get("paths") or [])
            lines.append(
                f"| {md_text(f.get('severity', ''))} | {md_text(f.get('code', ''))} | "
                f"{md_text(f.get('message', ''))} | {md_text(f.get('hint') or '')} | {files} |"
            )
    return "\n".join(lines) + "\n"


# --- HTML ------------------------------------------------------------------------------------

_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;width:100%}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;width:6em}
.sev{font-weight:bold;white-space:nowrap}
.error{color:#c62828}.warning{color:#b06a00}.info{color:#1565c0}
.cards{display:flex;gap:1em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1.2em;min-width:7em}
.card b{display:block;font-size:1.8em}
code{background:#f4f4f4;padding:0 .2em;word-break:break-all}
.ok{color:#2e7d32}
"""


def svg_bar_chart(items: Sequence[tuple[str, int, str]], *, title: str) -> str:
    """A horizontal bar chart as inline SVG: ``(label, value, colour)`` per bar."""
    width, bar_h, label_w = 560, 20, 220
    height = max(1, len(items)) * (bar_h + 6) + 6
    top = max((v for _, v, _ in items), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
    ]
    for i, (label, value, colour) in enumerate(items):
        y = 6 + i * (bar_h + 6)
        w = int((width - label_w - 50) * value / top)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{esc(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{esc(colour)}"/>'
            f'<text x="{label_w + w + 4}" y="{y + 15}" font-size="12">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def html_page(title: str, body: str) -> str:
    """The self-contained page shell: inline CSS, no scripts, no external references.

    ``body`` must already be escaped HTML; ``title`` is escaped here.
    """
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        # An empty data: icon, so a browser does not ask the server for /favicon.ico.
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _findings_table(findings: Sequence[Mapping[str, Any]]) -> str:
    if not findings:
        return '<p class="ok">No findings.</p>'
    rows = []
    for f in findings:
        sev = str(f.get("severity", ""))
        cls = sev if sev in SEVERITIES else ""
        files = "<br>".join(f"<code>{esc(p)}</code>" for p in f.get("paths") or [])
        rows.append(
            f'<tr><td class="sev {cls}">{esc(sev)}</td><td><code>{esc(f.get("code", ""))}</code></td>'
            f"<td>{esc(f.get('message', ''))}</td><td>{esc(f.get('hint') or '')}</td><td>{files}</td></tr>"
        )
    return (
        "<table><thead><tr><th>severity</th><th>code</th><th>message</th><th>hint</th>"
        "<th>files</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def to_html(report: ReportLike) -> str:
    """The report as one self-contained HTML page (summary, chart, per-deployment details)."""
    rep = as_dict(report)
    by_sev, by_code = _counts(rep)
    title = str(rep.get("title") or "etm-compat diagnose report")
    deployments = list(rep.get("deployments") or [])
    cards = "".join(
        f'<div class="card {s}" id="count-{s}"><b>{by_sev[s]}</b>{s}</div>' for s in SEVERITIES
    )
    cards += f'<div class="card" id="count-deployments"><b>{len(deployments)}</b>deployments</div>'
    codes = {
        str(f.get("code")): str(f.get("severity"))
        for d in deployments
        for f in _findings(d)
    }
    chart = svg_bar_chart(
        [(code, n, COLORS.get(codes.get(code, ""), "#777")) for code, n in by_code.items()],
        title="findings by check",
    )
    check_rows = "".join(
        f'<tr><td><code>{esc(code)}</code></td><td class="sev {esc(codes.get(code, ""))}">'
        f'{esc(codes.get(code, ""))}</td><td class="n">{n}</td></tr>'
        for code, n in by_code.items()
    )
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p>Root: <code>{esc(rep.get('root', ''))}</code></p>",
        f'<section id="summary"><div class="cards">{cards}</div>',
    ]
    if by_code:
        parts.append(
            f"<figure>{chart}</figure><table><thead><tr><th>check</th><th>severity</th>"
            f'<th class="n">findings</th></tr></thead><tbody>{check_rows}</tbody></table>'
        )
    parts.append("</section>")
    for dep in deployments:
        parts.append(
            f"<section class=\"deployment\"><h2>{esc(dep.get('name', ''))} "
            f"<small>({esc(dep.get('kind', ''))})</small></h2>"
            f"<p><code>{esc(dep.get('path', ''))}</code></p>"
        )
        if dep.get("error"):
            parts.append(f'<p class="error">Could not be read: {esc(dep["error"])}</p>')
        parts.append(_findings_table(_findings(dep)) + "</section>")
    return html_page(title, "\n".join(parts))


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
    """The findings report as text in ``fmt`` (json, md or html)."""
    kind = check_format(fmt)
    if kind == "json":
        return to_json_text(report)
    return to_markdown(report) if kind == "md" else to_html(report)


def _new_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file beside the target, created with the umask's mode (not mkstemp's 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name[:40]}.{secrets.token_hex(6)}.tmp"  # short: names have a byte limit
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {name}")


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
        fd, tmp = _new_temp(folder, target.name)
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
