"""The Markdown report: reads cleanly in a terminal and in a Markdown viewer.

Every value read from a file is a code span (:func:`~etm_compat.cli.report_text.md_code`,
:func:`~etm_compat.cli.report_text.md_cell` in tables): markup, HTML and entities inside are
inert, so nothing is entity-escaped or backslash-escaped except a ``|`` in a table cell, and
control characters are written as visible escapes. Free text (reasons, messages, hints) is kept
out of tables, in the per-deployment sections, so a ``<|eot_id|>`` reads as itself.

The report: header facts, then summary tables (outcomes or kinds, families, findings by
severity), the most common findings, space (archives against their sources), one table row per
deployment, the skipped folders, and a section per deployment that has findings or failed: its
reason, family, bos/eos and stop set, and every finding with its hint.

>>> print(to_markdown(result))  # doctest: +SKIP
# etm-compat upgrade report
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from etm_compat.cli.report_model import Page, ReportLike, Row, human_bytes, page_of, share
from etm_compat.cli.report_text import md_cell, md_code


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """A GFM table; ``head`` is ours, every cell is already made inert."""
    align = ["---:" if i in right else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "-"


def _word(value: object, *, cell: bool = False) -> str:
    """One of our own words (an outcome, a kind, a severity) as is; anything else a code span."""
    text = str(value)
    if text and all(ch.isalnum() or ch in " -_" for ch in text):
        return text.replace("_", " ")
    return md_cell(text) if cell else md_code(text)


def _header(page: Page) -> list[str]:
    lines = [f"# {_word(page.title)}", ""]
    lines.append(f"- root: {md_code(page.root)}")
    if page.kind == "upgrade":
        lines.append(f"- output: {md_code(page.out) if page.out is not None else 'in place'}")
    lines.append(f"- result: {page.verdict}")
    lines += [f"- check skipped: {md_code(note)}" for note in page.notes]
    return lines


def _summary(page: Page) -> list[str]:
    lines = ["", "## Summary", ""]
    states = page.tally("state")
    lines += _table([page.state_label, "deployments"], ((_word(s, cell=True), _count(n)) for s, n in states), [1])
    lines.append("")
    families = page.tally("family")
    lines += _table(["family", "deployments"], ((md_cell(f), _count(n)) for f, n in families), [1])
    lines.append("")
    affected = {s: sum(1 for r in page.rows if s in r.severities()) for s, _ in page.tally("severity")}
    lines += _table(
        ["severity", "findings", "deployments"],
        ((s, _count(n), _count(affected[s])) for s, n in page.tally("severity")),
        [1, 2],
    )
    common = page.common_findings()
    if common:
        lines += ["", "## Most common findings", ""]
        lines += _table(
            ["severity", "code", "deployments", "findings"],
            ((_word(sev, cell=True), md_cell(code), _count(d), _count(n)) for sev, code, d, n, _ in common),
            [2, 3],
        )
        hints = [(code, hint) for _, code, _, _, hint in common if hint]
        if hints:
            lines += ["", "Hints:", ""]
            lines += [f"- {md_code(code)}: {md_code(hint)}" for code, hint in hints]
    return lines


def _space(page: Page) -> list[str]:
    space = page.space()
    if space is None:
        return []
    archives, sources, counted = space
    lines = [
        "",
        "## Space",
        "",
        f"The archives of {counted:,} deployment(s) take {human_bytes(archives)} ({archives:,} bytes): "
        f"{share(archives, sources)} of their sources' {human_bytes(sources)} ({sources:,} bytes).",
        "",
    ]
    rows = (
        (md_cell(f), _count(n), human_bytes(s), human_bytes(a), share(a, s))
        for f, n, a, s in page.space_by_family()
    )
    lines += _table(["family", "deployments", "sources", "archives", "archives/sources"], rows, [1, 2, 3, 4])
    return lines


def _deployments(page: Page) -> list[str]:
    lines = ["", "## Deployments", ""]
    head = ["program" if page.kind == "upgrade" else "deployment", page.state_label, "family", "worst", "findings"]
    right = [4]
    if page.kind == "upgrade":
        head += ["size", "sources", "archive"]
        right += [5, 6]

    def cells(row: Row) -> list[str]:
        out = [
            md_cell(row.name),
            _word(row.state, cell=True),
            md_cell(row.family) if row.family else "-",
            row.worst or "-",
            _count(len(row.findings)),
        ]
        if page.kind == "upgrade":
            out += [_count(row.size), _count(row.source_bytes), md_cell(row.location) if row.location else "-"]
        return out

    lines += _table(head, (cells(r) for r in page.rows), right)
    if page.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {md_code(path)}: {md_code(reason)}" for path, reason in page.skipped]
    return lines


def _value(value: Any) -> str:
    """A number as is; anything else (a list, a text, None) as a code span of its JSON."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return md_code(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str))


def _tokens(details: Mapping[str, Any]) -> list[str]:
    """bos, eos and the stop set, each id with its token text and where it came from."""

    def token(token_id: Any, text: Any) -> str:
        return f"{_value(token_id)} {md_code(text)}" if text is not None else _value(token_id)

    def said(items: Any) -> str:
        pairs = [f"{md_code(s.get('source'))} = {_value(s.get('value'))}" for s in items or [] if isinstance(s, Mapping)]
        return f" (from {', '.join(pairs)})" if pairs else ""

    bos, eos = details.get("bos") or {}, details.get("eos") or {}
    texts = list(eos.get("tokens") or [])
    eos_ids = [token(i, texts[k] if k < len(texts) else None) for k, i in enumerate(eos.get("ids") or [])]
    stop = []
    for s in details.get("stop") or []:
        if isinstance(s, Mapping):
            sources = ", ".join(md_code(x) for x in s.get("sources") or [])
            stop.append(token(s.get("id"), s.get("token")) + (f" ({sources})" if sources else ""))
    lines = [
        f"- bos: {token(bos.get('id'), bos.get('token'))}{said(bos.get('sources'))}; "
        f"num_bos {_value(details.get('num_bos'))}, num_eos {_value(details.get('num_eos'))}",
        f"- eos: {', '.join(eos_ids) or '-'}{said(eos.get('sources'))}",
        f"- stop set: {', '.join(stop) or '-'}",
    ]
    runner = details.get("runner") or {}
    ran = [
        f"{k if k in ('bos_id', 'eos_ids') else md_code(k)} {_value(v.get('value'))} from {md_code(v.get('source'))}"
        for k, v in runner.items()
        if isinstance(v, Mapping)
    ]
    if ran:
        lines.append(f"- the ExecuTorch runner takes: {'; '.join(ran)}")
    return lines


def _sections(page: Page) -> list[str]:
    shown = [r for r in page.rows if r.findings or r.state == "failed" or (page.kind == "diagnose" and r.reason)]
    if not shown:
        return ["", "No findings."]
    lines = ["", "## Findings by deployment", ""]
    clean = len(page.rows) - len(shown)
    if clean:
        lines += [f"{clean:,} deployment(s) without findings are not listed here.", ""]
    for row in shown:
        lines += [f"### {md_code(row.name)}", ""]
        reason = f": {md_code(row.reason)}" if row.reason else ""
        lines.append(f"- {page.state_label}: {_word(row.state)}{reason}")
        details = row.details or {}
        family = details.get("family") or {}
        if row.family:
            confidence = f" ({_word(family['confidence'])} confidence)" if family.get("confidence") else ""
            source = details.get("chat_template_source")
            template = f"; chat template from {md_code(source)}" if source else ""
            lines.append(f"- family: {md_code(row.family)}{confidence}{template}")
        if details:
            lines += _tokens(details)
        for f in row.findings:
            hint = f"; hint: {md_code(f.get('hint'))}" if f.get("hint") else ""
            paths = f" in {', '.join(md_code(p) for p in f.get('paths') or [])}" if f.get("paths") else ""
            head = f"**{_word(f.get('severity'))}** {md_code(f.get('code'))}{paths}"
            lines.append(f"- {head}: {md_code(f.get('message'))}{hint}")
        lines.append("")
    return lines


def to_markdown(report: ReportLike) -> str:
    """The report (upgrade or diagnose, object or JSON form) as GitHub-flavoured Markdown."""
    page = page_of(report)
    lines = [*_header(page), *_summary(page), *_space(page), *_deployments(page), *_sections(page)]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["to_markdown"]
