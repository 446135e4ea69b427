"""The command line: a thin layer over the library, the same verbs, one error boundary.

Exit codes (also in the README): 0 success; 1 findings at or above the failure level
(diagnose/verify); 2 bad usage; 3 unreadable, malformed or unsupported input; 4 an output cannot
be written; 5 the ExecuTorch runtime is missing or refused the program; 70 internal error (a bug);
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etm_compat.constants import VERSION
from etm_compat.errors import (
    EXIT_FINDINGS,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EtmError,
    InputError,
    UsageError,
)
from etm_compat.fileio import read_capped


def _console(args: argparse.Namespace) -> Any:
    from rich.console import Console

    # rich honours NO_COLOR itself; never colour when writing JSON.
    return Console(highlight=False, soft_wrap=False)


def _emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def _adapters() -> list[Any]:
    from etm_compat.adapters import default_adapters

    return list(default_adapters())


def _read_text(path: str, what: str) -> str:
    data = read_capped(path, 4 * 1024 * 1024, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text", path=path) from exc


# --- commands ---------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from etm_compat.inspection import inspect_path

    info = inspect_path(args.path, _adapters())
    if args.json:
        _emit_json(info)
    else:
        from etm_compat.cli.console import render_inspect

        render_inspect(_console(args), info)
    return EXIT_OK


def cmd_pack(args: argparse.Namespace) -> int:
    from etm_compat.packing import describe, pack, resolve_source

    dest = Path(args.output)
    if dest.exists() and not args.force:
        from etm_compat.errors import OutputError

        raise OutputError("output exists", path=dest, hint="pass --force to replace it")
    deployment = resolve_source(args.source, _adapters(), tokenizer=args.tokenizer, ptds=args.ptd or ())
    template = _read_text(args.chat_template, "chat template") if args.chat_template else None
    view = describe(deployment, family=args.family, chat_template=template)
    result = pack(view, dest, overwrite=args.force, fsync=not args.no_fsync)
    if args.json:
        _emit_json(
            {
                "archive": str(result.archive),
                "size": result.size,
                "family": result.family,
                "findings": [f.to_json() for f in result.findings],
            }
        )
    else:
        from etm_compat.cli.console import render_findings, safe

        console = _console(args)
        console.print(f"wrote {safe(result.archive)} ({result.size:,} bytes, family {safe(result.family or 'unknown')})")
        render_findings(console, [f.to_json() for f in result.findings])
    return EXIT_OK


def cmd_unpack(args: argparse.Namespace) -> int:
    from etm_compat.archive import open_archive

    with open_archive(args.archive) as archive:
        written = archive.extract(args.output, force=args.force)
    if args.json:
        _emit_json({"written": [str(p) for p in written]})
    else:
        from etm_compat.cli.console import safe

        console = _console(args)
        for path in written:
            console.print(f"wrote {safe(path)}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from etm_compat.verification import verify

    report = verify(args.archive, runtime=args.runtime)
    if args.json:
        _emit_json(report.to_json())
    else:
        from etm_compat.cli.console import render_findings, safe

        console = _console(args)
        render_findings(console, [f.to_json() for f in report.findings], title=f"verify {safe(args.archive)}")
        console.print("[green]OK[/green]" if report.ok else "[bold red]FAILED[/bold red]")
    return EXIT_OK if report.ok else EXIT_FINDINGS


def cmd_diagnose(args: argparse.Namespace) -> int:
    from etm_compat.cli import report_files
    from etm_compat.diagnosis import diagnose_path

    fmt = "json" if args.json and args.format is None else args.format
    if args.output:
        fmt = report_files.format_for(args.output, fmt)  # a bad extension fails before any work
    report = diagnose_path(args.path, _adapters(), runtime=args.runtime)
    if args.output:
        report_files.write_report(args.output, report, fmt=fmt)
    elif fmt is not None:
        sys.stdout.write(report_files.render(report, fmt))
    if fmt is None or (args.output and not args.json):
        from etm_compat.cli.console import render_diagnose

        render_diagnose(_console(args), report.to_json())
    return EXIT_FINDINGS if report.at_or_above(args.fail_on) else EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from etm_compat.render import load_messages, render_prompt

    messages = load_messages(_read_text(args.messages, "messages file"), path=args.messages)
    prompt = render_prompt(
        args.path,
        messages,
        adapters=_adapters(),
        add_generation_prompt=not args.no_generation_prompt,
        family=args.family,
    )
    if args.json:
        _emit_json({"prompt": prompt})
    else:
        sys.stdout.write(prompt)
        if not prompt.endswith("\n"):
            sys.stdout.write("\n")
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    from etm_compat.cli import upgrade_view as upgrade_report
    from etm_compat.bulk.upgrade import default_jobs, execute, open_executor, plan_upgrade

    for report in args.report or ():
        upgrade_report.report_format(report)  # a bad extension fails before any work
    plan = plan_upgrade(
        args.root,
        _adapters(),
        out=args.out,
        in_place=args.in_place,
        force=args.force,
        verify_existing=args.verify_existing,
    )
    console = _console(args)
    if args.dry_run:
        if args.json:
            _emit_json(plan.to_json())
        else:
            upgrade_report.render_plan(console, plan)
        return EXIT_OK
    if not args.json:
        upgrade_report.render_plan(console, plan, full=False)
    jobs = args.jobs or default_jobs()
    with open_executor(jobs=jobs, scheduler=args.scheduler, pending=len(plan.pending)) as executor:
        if args.json:
            result = execute(plan, executor)
        else:
            with upgrade_report.upgrade_progress(console, plan) as progress:
                result = execute(plan, executor, progress=progress)
    for report in args.report or ():
        upgrade_report.write_report(report, result)
    if args.json:
        _emit_json(upgrade_report.to_json(result))
    else:
        upgrade_report.render_summary(console, result)
    return EXIT_OK if result.ok else EXIT_FINDINGS


def cmd_cache(args: argparse.Namespace) -> int:
    from etm_compat.compat import cache

    if args.cache_command == "prune":
        max_size = cache.parse_size(args.max_size) if args.max_size else None
        pruned = cache.prune(remove_all=args.all, older_than_days=args.older_than, max_size=max_size)
        if args.json:
            _emit_json({"removed": [e.key for e in pruned.removed], "freed": pruned.freed, "leftovers": pruned.leftovers})
        else:
            _console(args).print(f"removed {len(pruned.removed)} entr{'y' if len(pruned.removed) == 1 else 'ies'}, freed {pruned.freed:,} bytes")
        return EXIT_OK
    entries = cache.list_entries()
    if args.json:
        _emit_json({"root": str(cache.cache_dir()), "entries": [
            {"key": e.key, "folder": str(e.folder), "size": e.size, "created": e.created, "last_used": e.last_used, "archive": e.archive}
            for e in entries]})
    else:
        from etm_compat.cli.console import safe

        console = _console(args)
        console.print(f"{safe(cache.cache_dir())}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {sum(e.size for e in entries):,} bytes")
        for e in entries:
            console.print(f"  {e.key[:16]}  {e.size:>14,}  {safe(e.archive)}")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etm-compat",
        description="Migrate ExecuTorch LLM deployments from loose files to single .etm archives.",
    )
    parser.add_argument("--version", action="version", version=f"etm-compat {VERSION}")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="describe a .pte, .ptd, tokenizer, .etm archive or folder")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("pack", help="pack a legacy folder or a .pte with its siblings into one .etm")
    p.add_argument("source", help="a legacy deployment folder, or a .pte whose siblings are discovered")
    p.add_argument("-o", "--output", required=True, help="the archive to write (.etm)")
    p.add_argument("--tokenizer", help="use this tokenizer file instead of the one found")
    p.add_argument("--ptd", action="append", help="use this .ptd (repeatable) instead of the ones found")
    p.add_argument("--family", help="force the model family (see `etm-compat families`)")
    p.add_argument("--chat-template", help="use this Jinja chat template file")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not wait for the archive to reach the disk (still atomic against crashes, not power loss)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="restore the multi-file layout from an archive")
    p.add_argument("archive")
    p.add_argument("-o", "--output", required=True, help="folder to write into")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("verify", help="check an archive's structure and hashes (and, with --runtime, load it)")
    p.add_argument("archive")
    p.add_argument("--runtime", action="store_true", help="load the program in executorch and the tokenizer in pytorch_tokenizers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diagnose", help="report mismatches between programs, tokenizers, templates and weights")
    p.add_argument("path", help="a legacy folder, a .pte, an .etm archive, or a tree of them")
    p.add_argument("--json", action="store_true", help="print the JSON report (schema: diagnose.schema.json)")
    p.add_argument("--format", choices=("json", "md", "html"), help="report format (default: terminal; with --output: from the extension)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (.json, .md or .html)")
    p.add_argument("--fail-on", choices=("error", "warning", "info"), default="error", help="exit 1 when a finding is at or above this level (default: error)")
    p.add_argument("--runtime", action="store_true", help="also check delegate backends against the installed ExecuTorch runtime (imports torch)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("render", help="render a conversation with a deployment's chat template")
    p.add_argument("path", help="an .etm archive or a legacy folder / .pte")
    p.add_argument("--messages", required=True, help='JSON file: [{"role": ..., "content": ...}, ...]')
    p.add_argument("--no-generation-prompt", action="store_true")
    p.add_argument("--family", help="force the model family")
    p.add_argument("--json", action="store_true", help='print {"prompt": ...}')
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("upgrade", help="pack every deployment under a folder into .etm archives (resumable)")
    p.add_argument("root", help="the folder to scan for legacy deployments")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="write archives here, mirroring ROOT's folders")
    where.add_argument("--in-place", action="store_true", help="write each archive beside its sources")
    p.add_argument("--dry-run", action="store_true", help="only print the plan")
    p.add_argument("-j", "--jobs", type=int, help="worker processes (default: the cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (needs etm-compat[dask])")
    p.add_argument(
        "--report", metavar="FILE", action="append", help="write a report: .json, .md or .html (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="repack archives that are up to date")
    p.add_argument("--verify-existing", action="store_true", help="hash archives and sources to decide what is up to date")
    p.add_argument("--json", action="store_true", help="print the result (or, with --dry-run, the plan) as JSON")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("cache", help="list or prune the cache of archives materialized for path-only runners")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    c = csub.add_parser("list", help="list the cache entries (least recently used first)")
    c.add_argument("--json", action="store_true")
    c = csub.add_parser("prune", help="remove cache entries")
    c.add_argument("--all", action="store_true", help="remove every entry")
    c.add_argument("--older-than", type=float, metavar="DAYS", help="remove entries unused for DAYS")
    c.add_argument("--max-size", metavar="SIZE", help="then remove least recently used entries down to SIZE (500M, 2G)")
    c.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the console script and the tests both call this."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.func(args)
        return result
    except EtmError as exc:
        if args.traceback or os.environ.get("ETM_TRACEBACK"):
            raise
        print(f"etm-compat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("etm-compat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the boundary: a bug must still end in one line, not a traceback
        if args.traceback or os.environ.get("ETM_TRACEBACK"):
            raise
        print(
            f"etm-compat: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in etm-compat; rerun with --traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "main"]
