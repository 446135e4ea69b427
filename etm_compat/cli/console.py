"""Rendering for people: rich tables from the JSON-ready dicts the library returns.

Everything printed here that came from a file goes through :func:`safe` first: control
characters are escaped and rich markup is neutralised. Only terminal output imports this module
(and so rich): the verbs import it where they print for people, never for ``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from etm_compat.errors import escape_control

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def console() -> Console:
    """The terminal every verb prints to (rich honours NO_COLOR itself; JSON never goes here)."""
    return Console(highlight=False, soft_wrap=False)


def safe(value: object) -> str:
    """Text from an untrusted file, made safe for a terminal and for rich markup."""
    return escape(escape_control(str(value)))


def short(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return safe(text)


def _kv_table(title: str, rows: Iterable[tuple[str, object]]) -> Table:
    table = Table(title=safe(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(safe(key), short(value, 100))
    return table


def render_pte(console: Console, info: Mapping[str, Any]) -> None:
    console.print(
        _kv_table(
            f"program {info['path']}",
            [
                ("size", f"{info['file_size']:,} bytes (program head {info['program_size']:,})"),
                ("methods", ", ".join(info["methods"]) or "-"),
                ("backends", ", ".join(info["backends"]) or "-"),
                ("external keys", f"{len(info['external_keys'])}"),
                ("named data", f"{len(info['named_data_keys'])}"),
                ("segments", f"{len(info['segments'])}"),
            ],
        )
    )
    view = info.get("dialects") or {}
    spoken = ", ".join(view.get("dialects") or []) or "none recognised"
    title = f"constant methods (dialect: {spoken})" if view else "constant methods"
    table = Table(title=safe(title), title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("value")
    keys = {k["key"]: k for k in view.get("keys") or []}
    if view:
        table.add_column("means")
        table.add_column("1.x runner")
    for name, value in info["constant_methods"].items():
        row = [safe(name), short(value)]
        if view:
            key = keys.get(name) or {}
            row += [safe(key.get("field") or "-"), safe(_runner_use(key))]
        table.add_row(*row)
    console.print(table)


def _runner_use(key: Mapping[str, Any]) -> str:
    use = str(key.get("runner") or "ignored")
    if use == "overridden":
        return "replaced by the tokenizer's"
    if use == "ignored" and key.get("stands_for"):
        return f"ignored (reads {key['stands_for']})"
    return use


def render_runner(console: Console, runner: Mapping[str, Any]) -> None:
    """What the ExecuTorch 1.x runner will use (a ``runner`` section), beside what it ignores."""
    title = "ExecuTorch 1.x runner uses" + ("" if runner.get("loads") else " (REFUSES the program)")
    table = Table(title=safe(title), title_justify="left")
    for col in ("setting", "value", "from", "ignored in the program"):
        table.add_column(col)
    for name, entry in runner.items():
        if not isinstance(entry, Mapping):
            continue
        ignored = ", ".join(f"{k}={short(v, 30)}" for k, v in (entry.get("ignored") or {}).items())
        table.add_row(safe(name), short(entry.get("value")), safe(entry.get("source")), ignored or "-")
    console.print(table)
    if runner.get("refusal"):
        console.print(f"[bold red]refuses:[/] {safe(runner['refusal'])}")


def render_ptd(console: Console, info: Mapping[str, Any]) -> None:
    table = Table(title=safe(f"weights {info['path']} ({info['layout']} layout)"), title_justify="left")
    for col in ("key", "dtype", "shape", "bytes"):
        table.add_column(col)
    for t in info["tensors"]:
        shape = "x".join(str(d) for d in t["shape"]) if t["shape"] is not None else "-"
        table.add_row(safe(t["key"]), safe(t["dtype"] or "-"), shape, f"{t['nbytes']:,}")
    console.print(table)


def render_tokenizer(console: Console, info: Mapping[str, Any]) -> None:
    runner = info.get("runner") or {}
    loadable = runner.get("loadable")
    verdict = "not checked" if loadable is None else ("loads" if loadable else f"FAILS: {runner.get('error')}")
    console.print(
        _kv_table(
            f"tokenizer {info['path']}",
            [
                ("format", info["format"] + (f" ({info['variant']})" if info.get("variant") else "")),
                ("vocab size", info["vocab_size"]),
                ("bos", f"{info['bos_id']} {info['bos_token']!r}"),
                ("eos", f"{info['eos_id']} {info['eos_token']!r}"),
                ("special tokens", len(info.get("special_tokens") or {})),
                ("ExecuTorch runner", verdict),
            ],
        )
    )


def render_inference(console: Console, inf: Mapping[str, Any]) -> None:
    family = inf.get("family_id") or "unknown"
    rows: list[tuple[str, object]] = [
        ("family", f"{family} (confidence {inf.get('family_confidence')})"),
        ("could also be", ", ".join(inf.get("family_alternatives") or []) or "-"),
        ("chat template", inf.get("chat_template_source") or "none"),
        ("bos", inf.get("bos_id")),
        ("stop ids", inf.get("stop_token_ids")),
        ("num_bos / num_eos", f"{inf.get('num_bos')} / {inf.get('num_eos')}"),
        ("generation", inf.get("generation")),
    ]
    console.print(_kv_table("inference", rows))
    evidence = inf.get("family_evidence") or []
    if evidence:
        table = Table(title="evidence", title_justify="left")
        for col in ("source", "field", "value", "detail"):
            table.add_column(col)
        for ev in evidence:
            table.add_row(safe(ev["source"]), safe(ev["field"]), short(ev["value"], 40), short(ev.get("detail") or "", 60))
        console.print(table)


def render_findings(console: Console, findings: Sequence[Mapping[str, Any]], *, title: str = "findings") -> None:
    if not findings:
        console.print(f"[green]{safe(title)}: none[/green]")
        return
    table = Table(title=safe(title), title_justify="left")
    for col in ("severity", "code", "message", "hint"):
        table.add_column(col)
    for f in findings:
        sev = str(f["severity"])
        table.add_row(
            f"[{SEVERITY_STYLE.get(sev, '')}]{safe(sev)}[/]",
            safe(f["code"]),
            safe(f["message"]),
            safe(f.get("hint") or ""),
        )
    console.print(table)


def render_folder(console: Console, info: Mapping[str, Any]) -> None:
    deployments = info["deployments"]
    summary = Table(title=safe(f"{info['path']}: {len(deployments)} deployment(s)"), title_justify="left")
    for col in ("program", "layout", "tokenizer", "weights", "family", "findings"):
        summary.add_column(col)
    for d in deployments:
        inf = d.get("inference") or {}
        tok = d.get("tokenizer_info") or {}
        findings = d.get("findings") or []
        summary.add_row(
            safe(d["name"]),
            safe(d["layout"]),
            safe(f"{d['tokenizer']} [{tok.get('format', '?')}]"),
            safe(", ".join(d["weights"]) or "-"),
            safe(d["error"] if "error" in d else f"{inf.get('family_id') or 'unknown'} ({inf.get('family_confidence')})"),
            str(len(findings)),
        )
    console.print(summary)
    for s in info.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {safe(s['path'])}: {safe(s['reason'])}")


def render_archive(console: Console, info: Mapping[str, Any]) -> None:
    meta = info["metadata"]
    family = meta.get("family") or {}
    gen = meta.get("generation") or {}
    tok = meta.get("tokenizer") or {}
    console.print(
        _kv_table(
            f"archive {info['path']}",
            [
                ("format", f"{meta.get('format')} v{meta.get('format_version')}"),
                ("family", f"{family.get('id') or 'unknown'} ({family.get('confidence')})"),
                ("tokenizer", f"{tok.get('member')} [{tok.get('format')}] vocab {tok.get('vocab_size')}"),
                ("chat template", meta.get("chat_template_source") or "none"),
                ("stop ids", gen.get("stop_token_ids")),
                ("num_bos / num_eos", f"{gen.get('num_bos')} / {gen.get('num_eos')}"),
                ("max_seq_len", gen.get("max_seq_len")),
                ("program dialects", ", ".join((meta.get("program") or {}).get("dialects") or []) or "-"),
            ],
        )
    )
    if isinstance(meta.get("runner"), Mapping):
        render_runner(console, meta["runner"])
    table = Table(title="members", title_justify="left")
    for col in ("name", "offset", "size", "crc32"):
        table.add_column(col)
    for m in info["members"]:
        table.add_row(safe(m["name"]), f"{m['offset']:,}", f"{m['size']:,}", f"{m['crc32']:08x}")
    console.print(table)
    render_findings(console, meta.get("diagnostics") or [], title="recorded diagnostics")


def render_inspect(console: Console, info: Mapping[str, Any]) -> None:
    """Render whatever ``inspect_path`` returned."""
    kind = info["kind"]
    if kind == "pte":
        render_pte(console, info)
    elif kind == "ptd":
        render_ptd(console, info)
    elif kind == "tokenizer":
        render_tokenizer(console, info)
    elif kind == "etm":
        render_archive(console, info)
    else:
        render_folder(console, info)
        for d in info["deployments"]:
            if "inference" in d:
                console.rule(safe(d["name"]))
                render_inference(console, d["inference"])
                if d.get("runner"):
                    render_runner(console, d["runner"])
                render_findings(console, d.get("findings") or [])


def render_diagnose(console: Console, report: Mapping[str, Any]) -> None:
    """A diagnose report (its ``to_json()`` form): summary, then each deployment, worst first."""
    summary = report.get("summary") or {}
    by_sev = summary.get("by_severity") or {}
    counts = ", ".join(
        f"[{SEVERITY_STYLE[s]}]{int(by_sev.get(s, 0))} {s}[/]" for s in ("error", "warning", "info")
    )
    console.print(f"diagnose {safe(report.get('root', ''))}: {int(summary.get('deployments', 0))} checked; {counts}")
    for dep in report.get("deployments") or []:
        title = f"{dep.get('name', '')} ({dep.get('kind', '')})"
        if dep.get("error"):
            console.print(f"[bold red]{safe(title)}: unreadable[/]")
        render_findings(console, dep.get("findings") or [], title=title)
    for skipped in report.get("checks_skipped") or []:
        console.print(f"[dim]not checked: {safe(skipped)}[/dim]")


def render_tokens(console: Console, result: Mapping[str, Any]) -> None:
    """``render --tokens``: the ids the runner feeds, one row each (pieces quoted, so spaces and
    line breaks show), special tokens marked."""
    tokens = result.get("tokens") or []
    specials = sum(1 for t in tokens if t.get("special"))
    console.print(
        f"{len(tokens)} tokens ({specials} special) from {safe(result.get('tokenizer_class'))}, "
        f"num_bos={int(result.get('num_bos') or 0)}, num_eos={int(result.get('num_eos') or 0)} "
        f"(bos {safe(result.get('bos_id'))}, eos {safe(result.get('eos_id'))})"
    )
    table = Table(title_justify="left", show_edge=False)
    for col in ("#", "id", "piece", ""):
        table.add_column(col, justify="right" if col in ("#", "id") else "left")
    for index, token in enumerate(tokens):
        piece = safe(json.dumps(str(token.get("piece", "")), ensure_ascii=False))
        if token.get("special"):
            table.add_row(str(index), str(token.get("id")), f"[bold magenta]{piece}[/]", "[magenta]special[/]")
        else:
            table.add_row(str(index), str(token.get("id")), piece, "")
    console.print(table)


def render_families(console: Console, families: Sequence[Mapping[str, Any]]) -> None:
    """``etm-compat families``: every registry family, its names, tokens and template source."""
    table = Table(title=f"{len(families)} model families (use an id with --family)", title_justify="left")
    table.add_column("id", style="bold", no_wrap=True)
    for col in ("aliases", "stop tokens", "template @ commit"):
        table.add_column(col)
    for fam in families:
        commit = fam.get("template_commit")
        template = fam.get("template") or "none (base model)"
        table.add_row(
            safe(fam["id"]),
            safe(", ".join(fam.get("aliases") or []) or "-"),
            safe(" ".join(fam.get("stop_tokens") or []) or "-"),
            safe(f"{template} @{commit[:10]}" if commit else template),
        )
    console.print(table)


def render_family(console: Console, detail: Mapping[str, Any]) -> None:
    """``etm-compat families show ID``: the entry, the template text, a sample rendering."""
    rows = [
        (key, detail.get(key))
        for key in ("display_name", "aliases", "architectures", "bos_token", "eos_token",
                    "end_of_turn", "stop_tokens", "num_bos", "variants", "group", "template_source")
    ]  # fmt: skip
    console.print(_kv_table(f"family {detail['id']}", rows))
    console.rule("chat template")
    _print_lines(console, detail.get("chat_template") or "(none)")
    sample = detail.get("sample") or {}
    console.rule(f"sample: {safe(sample.get('conversation') or 'none')}")
    if sample.get("rendering") is not None:
        _print_lines(console, sample["rendering"])
    else:
        console.print(f"[yellow]{safe(sample.get('error') or 'no sample')}[/yellow]")


def _print_lines(console: Console, text: str) -> None:
    """Multi-line text from a file: its line breaks kept, every other control character escaped."""
    for line in str(text).split("\n"):
        console.print(safe(line), soft_wrap=True)
