"""The HTML report: one self-contained page, no external assets, works offline.

The page (:func:`to_html`) shows the summary counts, inline-SVG charts of outcomes (or kinds),
families and findings by severity, the most common findings, the space the archives take against
their sources, and a table of every deployment that sorts by any column and filters by family,
outcome, severity and free text; a row opens its detail view (evidence, stop set, bos/eos and
their sources, a sample conversation rendered with the model's template, findings with hints).

The table is drawn by the page's one inline script from the report's data, embedded as JSON in
``<script type="application/json">`` (:func:`~etm_compat.cli.report_text.script_json`: it cannot
close the element), and only the rows in view are in the DOM, so 10,000 rows stay fast. The
script puts every value in the page as text, never as HTML; the Content-Security-Policy allows
that one script by its hash and nothing else (no network, no other script, no frames).

>>> page = to_html(result)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

from etm_compat.cli.report_model import (
    UNKNOWN_FAMILY,
    Page,
    ReportLike,
    Row,
    human_bytes,
    page_of,
    share,
)
from etm_compat.cli.report_text import esc, script_json, visible, visible_lines
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS

COLORS: Final = {"error": "#c62828", "warning": "#ef8f00", "info": "#1565c0"}
STATE_COLORS: Final = {
    "written": "#2e7d32", "up_to_date": "#1565c0", "locked": "#ef8f00", "failed": "#c62828",
    "deployment": "#455a64", "archive": "#6a1b9a", "skipped": "#ef8f00",
}
PALETTE: Final = ("#1565c0", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#ef6c00", "#455a64")


@cache
def asset(name: str) -> str:
    """A file of the page (``report_page.css``, ``report_page.js``), shipped with this package."""
    # The package's folder, read as one (see etm_compat.prompt.families._DATA).
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def svg_bar_chart(
    items: Sequence[tuple[str, int, str]],
    *,
    title: str,
    filter_by: str | None = None,
    label: Callable[[int], str] = lambda n: f"{n:,}",
) -> str:
    """A horizontal bar chart as inline SVG: ``(label, value, colour)`` per bar.

    With ``filter_by`` each bar carries ``data-filter``/``data-value``: a click filters the
    table (bars whose label is a group, such as "other (3)", do not).
    """
    width, bar_h, label_w = 420, 20, 150
    height = max(1, len(items)) * (bar_h + 6) + 6
    top = max((v for _, v, _ in items), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
    ]
    for i, (name, value, colour) in enumerate(items):
        y = 6 + i * (bar_h + 6)
        w = max(1, int((width - label_w - 90) * value / top)) if value else 0
        shown = name.replace("_", " ") if filter_by == "state" else name
        shown = shown if len(shown) <= 22 else shown[:21] + "…"
        grouped = filter_by is None or name.startswith("other (")
        attrs = "" if grouped else f' data-filter="{esc(filter_by)}" data-value="{esc(name)}"'
        parts.append(
            f"<g{attrs}><title>{esc(name)}: {esc(label(value))}</title>"
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(shown)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="2" fill="{esc(colour)}"/>'
            f'<text x="{label_w + w + 5}" y="{y + 15}">{esc(label(value))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _csp(script: str | None) -> str:
    """Nothing from anywhere; inline styles; the page's own script only, by its hash."""
    policy = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    if script is not None:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
        policy += f"; script-src 'sha256-{digest}'"
    return policy


def html_page(title: str, body: str, *, data: Any = None, script: str | None = None) -> str:
    """The self-contained page shell: inline CSS, a strict Content-Security-Policy, no external
    references; ``data`` (embedded as JSON for ``script``) and ``script`` are optional.

    ``body`` must already be escaped HTML; ``title`` is escaped here.
    """
    tail = ""
    if data is not None:
        tail += f'<script type="application/json" id="report-data">{script_json(data)}</script>\n'
    if script is not None:
        tail += f"<script>{script}</script>\n"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(script)}">'
        # An empty data: icon, so a browser does not ask the server for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{asset('report_page.css')}</style></head>\n"
        f"<body><main>\n{body}\n</main>\n{tail}</body></html>\n"
    )


# --- the static parts ----------------------------------------------------------------------------


def _header(page: Page) -> str:
    parts = [f"<h1>{esc(page.title)}</h1>", f'<p class="meta">Root: <code>{esc(page.root)}</code>']
    if page.kind == "upgrade":
        out = f"<code>{esc(page.out)}</code>" if page.out is not None else "in place"
        parts.append(f"; output: {out}")
    parts.append("</p>")
    cls = "" if page.ok is None else ("ok" if page.ok else "error")
    parts.append(f'<p class="verdict {cls}" id="verdict">{esc(page.verdict)}</p>')
    parts += [f'<p class="note">Check skipped: {esc(note)}</p>' for note in page.notes]
    return "".join(parts)


def _cards(page: Page) -> str:
    cards = [
        f'<div class="card {esc(label)}" id="count-{esc(label)}"><b>{n:,}</b>{esc(label.replace("_", " "))}</div>'
        for label, n in page.cards
    ]
    if page.kind == "upgrade":
        cards.insert(0, f'<div class="card" id="count-deployments"><b>{len(page.rows):,}</b>deployments</div>')
    return f'<section id="summary"><div class="cards">{"".join(cards)}</div>'


def _charts(page: Page) -> str:
    states = page.tally("state")
    families = page.tally("family")
    severity = page.tally("severity")
    label = "outcomes" if page.kind == "upgrade" else "kinds"
    figures = [
        (label, svg_bar_chart([(s, n, STATE_COLORS.get(s, "#777")) for s, n in states], title=label, filter_by="state")),
        ("families", svg_bar_chart(
            [(f, n, PALETTE[i % len(PALETTE)] if f != UNKNOWN_FAMILY else "#999") for i, (f, n) in enumerate(families)],
            title="families", filter_by="family",
        )),
        ("findings by severity", svg_bar_chart(
            [(s, n, COLORS[s]) for s, n in severity], title="findings by severity", filter_by="severity"
        )),
    ]
    cells = "".join(f"<figure><figcaption>{esc(t)}</figcaption>{svg}</figure>" for t, svg in figures)
    return f'<div class="charts" id="charts">{cells}</div></section>'


def _common(page: Page) -> str:
    common = page.common_findings()
    if not common:
        return '<section id="common"><h2>Most common findings</h2><p class="ok">No findings.</p></section>'
    rows = "".join(
        f'<tr><td class="sev {esc(sev)}">{esc(sev)}</td><td><code>{esc(code)}</code></td>'
        f'<td class="n">{d:,}</td><td class="n">{n:,}</td><td>{esc(hint or "")}</td></tr>'
        for sev, code, d, n, hint in common
    )
    return (
        '<section id="common"><h2>Most common findings</h2><table><thead><tr><th>severity</th>'
        '<th>code</th><th class="n">deployments</th><th class="n">findings</th><th>hint</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def _space(page: Page) -> str:
    space = page.space()
    if space is None:
        return ""
    archives, sources, counted = space
    chart = svg_bar_chart(
        [("sources", sources, "#90a4ae"), ("archives", archives, "#1565c0")],
        title="bytes: archives against their sources", label=human_bytes,
    )
    rows = "".join(
        f'<tr><td>{esc(f)}</td><td class="n">{n:,}</td><td class="n">{esc(human_bytes(s))}</td>'
        f'<td class="n">{esc(human_bytes(a))}</td><td class="n">{esc(share(a, s))}</td></tr>'
        for f, n, a, s in page.space_by_family()
    )
    return (
        f'<section id="space"><h2>Space</h2><p>The archives of {counted:,} deployment(s) take '
        f"<b>{esc(human_bytes(archives))}</b> ({archives:,} bytes): <b>{esc(share(archives, sources))}</b> "
        f"of their sources' {esc(human_bytes(sources))} ({sources:,} bytes).</p>"
        f"<figure>{chart}</figure><table><thead><tr><th>family</th><th class=\"n\">deployments</th>"
        '<th class="n">sources</th><th class="n">archives</th><th class="n">archives/sources</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _table(page: Page) -> str:
    n = f"{len(page.rows):,}"
    return (
        f'<section id="deployments"><h2>Deployments</h2><div class="filters">'
        '<label>family<select id="f-family"></select></label>'
        f'<label>{esc(page.state_label)}<select id="f-state"></select></label>'
        '<label>findings<select id="f-severity"></select></label>'
        '<label>search<input id="f-text" type="search" placeholder="name, code, message…"></label>'
        f'<span id="shown-line"><b id="shown">{n}</b> of {n} shown; a row opens its details</span></div>'
        '<div class="viewport" id="viewport"><table id="rows"><colgroup id="cols"></colgroup>'
        '<thead><tr id="head"></tr></thead><tbody id="tbody"></tbody></table></div>'
        "<noscript><p>The table needs JavaScript; the Markdown and JSON reports list every "
        "deployment.</p></noscript></section>"
        '<section id="detail" hidden aria-live="polite"></section>'
    )


def _skipped(page: Page) -> str:
    if not page.skipped:
        return ""
    items = "".join(f"<li><code>{esc(p)}</code>: {esc(why)}</li>" for p, why in page.skipped)
    return f'<section><h2>Skipped</h2><ul id="skipped">{items}</ul></section>'


# --- the data the script draws from --------------------------------------------------------------


def _clean(value: Any, key: str = "") -> Any:
    """Every text made visible (:func:`visible`; a rendered prompt keeps its line breaks)."""
    if isinstance(value, str):
        return visible_lines(value) if key == "prompt" else visible(value)
    if isinstance(value, Mapping):
        return {visible(k): _clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float) else visible(value)


class _Parts:
    """Each distinct JSON value once: deployments alike share their details' parts (the same
    sample rendering, stop set, evidence entries...), so the page stays small."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[str, int] = {}

    def add(self, value: Any) -> int:
        key = json.dumps(value, sort_keys=True, default=str)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.values)
            self.values.append(_clean(value))
        return found

    def details(self, details: Mapping[str, Any]) -> dict[str, Any]:
        """``details`` as part numbers (``evidence``: one per entry)."""
        out: dict[str, Any] = {}
        for key, value in details.items():
            if key == "evidence" and isinstance(value, list):
                out[visible(key)] = [self.add(e) for e in value]
            else:
                out[visible(key)] = self.add(value)
        return out


def page_data(page: Page) -> dict[str, Any]:
    """The JSON the page's script reads: a row per deployment (the columns of ``report_page.js``),
    each distinct details object once, as numbers of the distinct parts they are made of (its
    findings too are part numbers)."""
    parts = _Parts()
    details: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    rows = []
    for row in page.rows:
        index = -1
        if row.details is not None:
            key = json.dumps(row.details, sort_keys=True, default=str)
            index = seen.setdefault(key, len(details))
            if index == len(details):
                details.append(parts.details(row.details))
        findings = [parts.add(_finding(f)) for f in row.findings]
        rows.append(_row(row, index, findings))
    conversations = {name: _clean(list(m)) for name, m in STANDARD_CONVERSATIONS.items()}
    return {
        "kind": page.kind,
        "stateLabel": page.state_label,
        "nameLabel": "program" if page.kind == "upgrade" else "deployment",
        "locationLabel": "archive" if page.kind == "upgrade" else "path",
        "sizes": page.space() is not None,
        "unknownFamily": UNKNOWN_FAMILY,
        "rows": rows,
        "details": details,
        "parts": parts.values,
        "conversations": conversations,
    }


def _finding(f: Mapping[str, Any]) -> list[Any]:
    """``[severity, code, message, hint, paths]`` (made visible when added to the parts)."""
    hint = f.get("hint")
    paths = [str(p) for p in f.get("paths") or []]
    return [str(f.get("severity")), str(f.get("code", "")), str(f.get("message", "")), hint and str(hint), paths]


def _row(row: Row, detail: int, findings: list[int]) -> list[Any]:
    return [
        visible(row.name),
        visible(row.state),
        visible(row.family) if row.family else None,
        row.worst,
        len(row.findings),
        row.size,
        row.source_bytes,
        visible(row.location),
        visible(row.reason),
        detail,
        findings,
    ]


def to_html(report: ReportLike) -> str:
    """The report (upgrade or diagnose, object or JSON form) as one self-contained HTML page."""
    page = page_of(report)
    body = "\n".join(
        [_header(page), _cards(page), _charts(page), _common(page), _space(page), _table(page), _skipped(page)]
    )
    return html_page(page.title, body, data=page_data(page), script=asset("report_page.js"))


__all__ = ["COLORS", "asset", "html_page", "page_data", "svg_bar_chart", "to_html"]
