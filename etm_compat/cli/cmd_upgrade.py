"""``etm-compat upgrade ROOT``: pack every deployment of a tree, resumably, on a pool or Dask.

This parent process imports what planning, the pool and the output need; describing and packing
a deployment (inference, checks, templates, the archive writer) load where the tasks run.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable

from etm_compat.bulk.executor import default_jobs, open_executor
from etm_compat.bulk.upgrade import ItemResult, execute, plan_upgrade
from etm_compat.cli.common import adapters, emit_json
from etm_compat.cli.exit_codes import EXIT_FINDINGS, EXIT_OK
from etm_compat.cli.report_files import format_for
from etm_compat.cli.upgrade_report import OVERWRITE_REPORTS, plan_files, to_json, write_report
from etm_compat.fileio import check_output


def run(args: argparse.Namespace) -> int:
    for report in args.report or ():
        format_for(report)  # a bad extension fails before any work
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
            check_output(report, force=args.overwrite_reports, sources=plan_files(plan), force_option=OVERWRITE_REPORTS)
        if args.json:
            if args.dry_run:
                emit_json(plan.to_json())
                return EXIT_OK
            result = execute(plan, executor)
        elif args.dry_run:
            # Lazy: rich is for terminals; --json output never loads it.
            from etm_compat.cli.console import console
            from etm_compat.cli.upgrade_view import render_plan

            render_plan(console(), plan)
            return EXIT_OK
        else:
            with contextlib.ExitStack() as stack:
                bar: list[Callable[[ItemResult], None]] = []

                def started() -> None:  # the plan is shown while the workers pack (not before)
                    # Lazy: rich is for terminals (as above), and loads while the workers pack.
                    from etm_compat.cli.console import console
                    from etm_compat.cli.upgrade_view import render_plan, upgrade_progress

                    out = console()
                    render_plan(out, plan, full=False)
                    bar.append(stack.enter_context(upgrade_progress(out, plan)))

                result = execute(plan, executor, progress=lambda item: bar[0](item), started=started)
    for report in args.report or ():
        write_report(report, result, force=args.overwrite_reports)
    if args.json:
        emit_json(to_json(result))
    else:
        # Lazy: rich is for terminals, as above.
        from etm_compat.cli.console import console
        from etm_compat.cli.upgrade_view import render_summary

        render_summary(console(), result)
    return EXIT_OK if result.ok else EXIT_FINDINGS


__all__ = ["run"]
