"""One function per command: parse nothing, call the library verb, show the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from etm_compat.adapters import default_adapters
from etm_compat.archive import is_archive
from etm_compat.bulk.executor import default_jobs, open_executor
from etm_compat.bulk.upgrade import execute, plan_upgrade
from etm_compat.cli import report_files, upgrade_view
from etm_compat.cli.console import (
    render_diagnose,
    render_families,
    render_family,
    render_findings,
    render_inspect,
    render_tokens,
    safe,
)
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK
from etm_compat.compat import cache_admin
from etm_compat.compat.loader import load
from etm_compat.diagnosis import diagnose
from etm_compat.errors import InputError, UsageError, escape_json_text
from etm_compat.fileio import check_output, read_named_input, read_stream_capped
from etm_compat.inspection import inspect
from etm_compat.legacy.deployment import Adapter
from etm_compat.legacy.resolve import resolve_source
from etm_compat.legacy.scan import scan
from etm_compat.packing import pack, unpack
from etm_compat.prompt.families.catalog import list_families, show_family
from etm_compat.prompt.messages import load_messages, load_objects, parse_var
from etm_compat.verification import verify


def console() -> Console:
    # rich honours NO_COLOR itself; JSON never goes through it.
    return Console(highlight=False, soft_wrap=False)


def emit_json(obj: object) -> None:
    sys.stdout.write(escape_json_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str)) + "\n")


def adapters() -> list[Adapter]:
    """The one place the list of legacy layouts is assembled."""
    return list(default_adapters())


#: The most a small text input (messages, a chat template) may hold.
TEXT_INPUT_LIMIT: Final = 4 * 1024 * 1024


def read_text(path: str, what: str) -> str:
    """A small UTF-8 input the user named: a file, a pipe (``<(...)``) or ``-`` for stdin; bounded."""
    if path == "-":
        data = read_stream_capped(sys.stdin.buffer, TEXT_INPUT_LIMIT, what=what, path="<stdin>")
    else:
        data = read_named_input(path, TEXT_INPUT_LIMIT, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text", path=path) from exc


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect(args.path, adapters()).to_json()
    if args.json:
        emit_json(info)
    else:
        render_inspect(console(), info)
    return EXIT_OK


def cmd_pack(args: argparse.Namespace) -> int:
    if args.chat_template:  # read as text here, so the writer cannot see it as a source
        check_output(args.output, force=args.force, sources=[args.chat_template])
    template = read_text(args.chat_template, "chat template") if args.chat_template else None
    result = pack(
        args.source,
        args.output,
        adapters(),
        tokenizer=args.tokenizer,
        ptds=args.ptd or (),
        family=args.family,
        chat_template=template,
        force=args.force,
        fsync=not args.no_fsync,
    )
    findings = [f.to_json() for f in result.findings]
    if args.json:
        emit_json({"archive": str(result.archive), "size": result.size, "family": result.family, "findings": findings})
    else:
        out = console()
        out.print(f"wrote {safe(result.archive)} ({result.size:,} bytes, family {safe(result.family or 'unknown')})")
        render_findings(out, findings)
    return EXIT_OK


def cmd_unpack(args: argparse.Namespace) -> int:
    written = unpack(args.archive, args.output, force=args.force, app=args.app)
    if args.json:
        emit_json({"written": [str(p) for p in written]})
    else:
        out = console()
        for path in written:
            out.print(f"wrote {safe(path)}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify(args.archive, runtime=args.runtime)
    if args.json:
        emit_json(result.to_json())
    else:
        out = console()
        render_findings(out, [f.to_json() for f in result.findings], title=f"verify {safe(args.archive)}")
        out.print("[green]OK[/green]" if result.ok else "[bold red]FAILED[/bold red]")
    return EXIT_OK if result.ok else EXIT_FINDINGS


def cmd_diagnose(args: argparse.Namespace) -> int:
    fmt = "json" if args.json and args.format is None else args.format
    if args.output:
        fmt = report_files.format_for(args.output, fmt)  # a bad extension fails before any work
        check_output(args.output, force=args.force, sources=[args.path])  # ...and an existing file
    report = diagnose(args.path, adapters(), runtime=args.runtime, app=args.app)
    if args.output:
        sources = diagnosed_files(args.path)
        report_files.write_report(args.output, report, fmt=fmt, force=args.force, sources=sources)
    elif fmt is not None:
        sys.stdout.write(report_files.render(report, fmt))
    if fmt is None or (args.output and not args.json):
        render_diagnose(console(), report.to_json())
    return EXIT_FINDINGS if report.at_or_above(args.fail_on) else EXIT_OK


def diagnosed_files(path: str) -> list[Path]:
    """Every file ``diagnose PATH`` reads: a report must never be written over one of them."""
    target = Path(path)
    adapters_ = adapters()
    if target.is_file():
        if is_archive(target):
            return [target]
        return [target, *resolve_source(target, adapters_).sources]
    result = scan(target, adapters_)
    files = [f for dep in result.deployments for f in dep.sources]
    return files + list(result.archives)


def render_inputs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The conversation and the template options ``render`` was given, read and checked."""
    given = {"--messages": args.messages, "--tools": args.tools, "--documents": args.documents}
    readers = [option for option, path in given.items() if path == "-"]
    if len(readers) > 1:
        raise UsageError(f"only one of {' and '.join(readers)} can read stdin (-)")
    if args.user is not None:
        messages = [{"role": "user", "content": args.user}]
    else:
        messages = load_messages(read_text(args.messages, "messages file"), path=args.messages)
    options: dict[str, Any] = dict(parse_var(spec) for spec in args.var or ())
    for name, path in (("tools", args.tools), ("documents", args.documents)):
        if path is not None:
            options[name] = load_objects(read_text(path, f"{name} file"), what=name, path=path)
    if args.continue_final_message:
        options["continue_final_message"] = True
    options["add_generation_prompt"] = not (args.no_generation_prompt or args.continue_final_message)
    return messages, options


def cmd_render(args: argparse.Namespace) -> int:
    messages, options = render_inputs(args)
    with load(args.path, adapters=adapters()) as bundle:
        if args.tokens:
            tokens = bundle.render_tokens(
                messages, family=args.family, num_bos=args.num_bos, num_eos=args.num_eos, **options
            ).to_json()
            if args.json:
                emit_json(tokens)
            else:
                render_tokens(console(), tokens)
            return EXIT_OK
        prompt = bundle.render(messages, family=args.family, **options)
    if args.json:
        emit_json({"prompt": prompt})
    else:
        sys.stdout.write(prompt)
        if not prompt.endswith("\n"):
            sys.stdout.write("\n")
    return EXIT_OK


def cmd_families(args: argparse.Namespace) -> int:
    if args.families_command == "show":
        detail = show_family(args.id, variant=args.variant).to_json()
        if args.json:
            emit_json(detail)
        else:
            render_family(console(), detail)
        return EXIT_OK
    entries = [entry.to_json() for entry in list_families()]
    if args.json:
        emit_json({"families": entries})
    else:
        render_families(console(), entries)
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    for report in args.report or ():
        report_files.format_for(report)  # a bad extension fails before any work
    jobs = args.jobs or default_jobs()
    # One executor for planning and packing: the plan reads folders and opens existing archives
    # on the workers (a process pool starts at its first task, so a re-run that has nothing to
    # read or pack starts none).
    with open_executor(jobs=jobs, scheduler=args.scheduler, connect_timeout=args.scheduler_timeout) as executor:
        plan = plan_upgrade(
            args.root,
            adapters(),
            out=args.out,
            in_place=args.in_place,
            force=args.force,
            verify_existing=args.verify_existing,
            executor=executor,
        )
        for report in args.report or ():  # an existing report or a source fails before any work
            check_output(
                report,
                force=args.overwrite_reports,
                sources=upgrade_view.plan_files(plan),
                force_option=upgrade_view.OVERWRITE_REPORTS,
            )
        out = console()
        if args.dry_run:
            if args.json:
                emit_json(plan.to_json())
            else:
                upgrade_view.render_plan(out, plan)
            return EXIT_OK
        if not args.json:
            upgrade_view.render_plan(out, plan, full=False)
        if args.json:
            result = execute(plan, executor)
        else:
            with upgrade_view.upgrade_progress(out, plan) as progress:
                result = execute(plan, executor, progress=progress)
    for report in args.report or ():
        upgrade_view.write_report(report, result, force=args.overwrite_reports)
    if args.json:
        emit_json(upgrade_view.to_json(result))
    else:
        upgrade_view.render_summary(out, result)
    return EXIT_OK if result.ok else EXIT_FINDINGS


def _plural(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def cmd_cache(args: argparse.Namespace) -> int:
    if args.cache_command == "prune":
        max_size = cache_admin.parse_size(args.max_size) if args.max_size else None
        pruned = cache_admin.prune(remove_all=args.all, older_than_days=args.older_than, max_size=max_size)
        if args.json:
            emit_json({"removed": [e.key for e in pruned.removed], "freed": pruned.freed, "leftovers": pruned.leftovers})
        else:
            console().print(f"removed {_plural(len(pruned.removed))}, freed {pruned.freed:,} bytes")
        return EXIT_OK
    entries = cache_admin.list_entries()
    if args.json:
        rows: list[dict[str, Any]] = [
            {"key": e.key, "kind": e.kind, "folder": str(e.folder), "size": e.size, "created": e.created, "last_used": e.last_used, "archive": e.archive}
            for e in entries
        ]
        emit_json({"root": str(cache_admin.cache_dir()), "entries": rows})
    else:
        out = console()
        out.print(f"{safe(cache_admin.cache_dir())}: {_plural(len(entries))}, {sum(e.size for e in entries):,} bytes")
        for e in entries:
            out.print(f"  {e.key[:16]}  {e.size:>14,}  {safe(e.archive)}")
    return EXIT_OK


__all__ = [
    "cmd_cache",
    "cmd_diagnose",
    "cmd_families",
    "cmd_inspect",
    "cmd_pack",
    "cmd_render",
    "cmd_unpack",
    "cmd_upgrade",
    "cmd_verify",
    "render_inputs",
]
