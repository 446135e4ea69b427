"""Bulk upgrade of a model tree: plan → execute on any ``concurrent.futures.Executor`` → results.

:func:`plan_upgrade` (:mod:`etm_compat.bulk.plan`) scans a tree through the adapters and decides,
for every deployment, where its archive goes and whether it is ``new``, ``stale`` or
``up_to_date`` (see docs/UPGRADE.md for the rule). :func:`execute` runs the pending items on any
executor — a process pool, a Dask cluster's ``client.get_executor()``, or none (in this process) —
through :func:`run_task`, a top-level function over :func:`~etm_compat.bulk.task.upgrade_task`
that takes and returns plain data, so it pickles to any worker. One failing deployment never stops
the others; each archive is written under its own lock (:mod:`etm_compat.bulk.lock`) and published
atomically by the writer. At the end, what the run learnt is left for the next one
(:mod:`etm_compat.bulk.state`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm_compat.bulk.executor import completed, default_jobs, open_executor
from etm_compat.bulk.plan import PlanItem, PlanWork, UpgradePlan, paused_gc, plan_upgrade
from etm_compat.bulk.state import check_and_record, save_state
from etm_compat.bulk.task import Outcome, Task, TaskOutcome, upgrade_task
from etm_compat.errors import OutputError
from etm_compat.findings import Finding
from etm_compat.legacy.deployment import Adapter, Deployment, deployment_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    """What happened to one deployment."""

    program: str  # relative to the scanned root
    archive: Path
    outcome: Outcome
    reason: str
    size: int | None = None
    family: str | None = None
    findings: tuple[Finding, ...] = ()
    seconds: float = 0.0
    source_bytes: int = 0
    #: What the report pages show about the deployment (the task outcome's ``details``).
    details: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "program": self.program,
            "archive": str(self.archive),
            "outcome": self.outcome,
            "reason": self.reason,
            "size": self.size,
            "family": self.family,
            "findings": [f.to_json() for f in self.findings],
            "seconds": round(self.seconds, 4),
        }
        if self.details is not None:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class UpgradeResult:
    plan: UpgradePlan
    items: tuple[ItemResult, ...]  # in plan order
    seconds: float

    def count(self, outcome: Outcome) -> int:
        return self.counts()[outcome]

    def counts(self) -> dict[str, int]:
        """How many items had each outcome, and how many were skipped (the report's counts)."""
        outcomes: tuple[Outcome, ...] = ("written", "up_to_date", "locked", "failed")
        tally: dict[str, int] = dict.fromkeys(outcomes, 0)
        for item in self.items:
            tally[item.outcome] += 1
        return {**tally, "skipped": len(self.plan.skipped)}

    @property
    def ok(self) -> bool:
        """True when every deployment found has an archive (written now, before, or by another run).

        Files that are never packed (checkpoints, notebooks beside the programs) do not count.
        """
        unpacked = [s for s in self.plan.skipped if not s.ignored]
        return not unpacked and all(i.outcome != "failed" for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.plan.root),
            "out": str(self.plan.out) if self.plan.out is not None else None,
            "in_place": self.plan.in_place,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "items": [i.to_json() for i in self.items],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.plan.skipped],
        }


# --- execution ------------------------------------------------------------------------------------


def make_task(plan: UpgradePlan, item: PlanItem) -> Task:
    """The plain-data description of one item (absolute paths: workers may have another cwd)."""
    absolute = os.path.abspath
    return {
        "deployment": deployment_record(item.deployment, lambda p: absolute(p)),
        "archive": absolute(item.archive),
        "force": plan.force and item.status == "stale",
        "verify_existing": plan.verify_existing,
    }


#: A task's outcome, and the record that spares the next run opening its archive (or None).
Finished = tuple[TaskOutcome, "dict[str, Any] | None"]


def run_task(task: Task, deployment: Deployment) -> Finished:
    """:func:`~etm_compat.bulk.task.upgrade_task`, then (for an archive that is now up to
    date) the record of it for the next run, checked here on the worker
    (:func:`~etm_compat.bulk.state.check_and_record`). Top level, plain data."""
    outcome = upgrade_task(task)
    record = None
    if outcome["outcome"] in ("written", "up_to_date"):
        _, record = check_and_record(Path(task["archive"]), deployment)
    return outcome, record


def run_tasks(batch: Sequence[tuple[Task, Deployment]]) -> list[Finished]:
    """:func:`run_task` for each of ``batch``: one executor call."""
    return [run_task(task, dep) for task, dep in batch]


Progress = Callable[[ItemResult], None]


def _item_result(plan: UpgradePlan, item: PlanItem, outcome: TaskOutcome) -> ItemResult:
    return ItemResult(
        program=plan.relative(item.deployment.program),
        archive=item.archive,
        outcome=outcome["outcome"],
        reason=outcome["reason"],
        size=outcome["size"],
        family=outcome["family"],
        findings=tuple(Finding.from_json(f) for f in outcome["findings"]),
        seconds=outcome["seconds"],
        source_bytes=item.source_bytes,
        details=outcome.get("details"),
    )


def _failed(item: PlanItem, exc: BaseException) -> TaskOutcome:
    """The outcome of an item whose worker died or whose executor broke."""
    return {
        "archive": str(item.archive),
        "outcome": "failed",
        "reason": f"worker failed: {type(exc).__name__}: {exc}",
        "size": None,
        "family": None,
        "findings": [],
        "seconds": 0.0,
    }


def _batches(order: Sequence[int], plan: UpgradePlan) -> list[list[int]]:
    """Pending items (biggest first) in batches: small items travel together, so a tree of
    thousands of tiny deployments costs a few hundred executor calls, not thousands; an item
    big enough to matter (over 1/64 of the pending bytes) travels alone, and there are at least
    64 batches when there are that many items, for the workers to finish together."""
    total = sum(plan.items[i].source_bytes for i in order) or 1
    most = max(1, min(32, len(order) // 64))
    batches: list[list[int]] = []
    for index in order:
        small = plan.items[index].source_bytes * 64 < total
        if batches and small and len(batches[-1]) < most and plan.items[batches[-1][0]].source_bytes * 64 < total:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def execute(
    plan: UpgradePlan,
    executor: concurrent.futures.Executor | None = None,
    *,
    progress: Progress | None = None,
    remember: bool = True,
    started: Callable[[], object] | None = None,
) -> UpgradeResult:
    """Run the plan's pending items on ``executor`` (None: one after another in this process).

    Items already up to date are not sent anywhere. ``progress`` is called once per finished item,
    in completion order, from the calling thread. ``started`` is called once the work is handed
    to the executor, before waiting on it: what the caller does there (showing the plan) runs
    while the workers pack. With ``remember`` (the default), what this run
    learnt is written to ``<out>/.etm-upgrade/state.json`` for the next one.

    >>> from concurrent.futures import ProcessPoolExecutor
    >>> with ProcessPoolExecutor(2) as pool:  # doctest: +SKIP
    ...     result = execute(plan, pool)
    """
    start = time.perf_counter()
    results: dict[int, ItemResult] = {}
    records: dict[str, Any] = {}
    order: list[int] = []
    with paused_gc():
        for index, item in enumerate(plan.items):
            if item.status != "up_to_date" or plan.verify_existing:
                order.append(index)
                continue
            results[index] = ItemResult(
                plan.relative(item.deployment.program),
                item.archive,
                "up_to_date",
                item.reason,
                size=item.check.size,
                family=item.check.family,
                findings=item.check.findings,
                source_bytes=item.source_bytes,
                details=item.check.details,
            )
            if item.record is not None:
                records[str(item.archive)] = item.record
    # Biggest first: the long tasks start early, so workers finish together.
    order.sort(key=lambda i: -plan.items[i].source_bytes)

    unusable: list[str] = []  # the output itself failed (full, read-only): stop the run

    def finish(index: int, finished: Finished) -> None:
        outcome, record = finished
        if outcome.get("output_unusable"):
            unusable.append(outcome["reason"])
        results[index] = _item_result(plan, plan.items[index], outcome)
        if record is not None:
            records[str(plan.items[index].archive)] = record
        if progress is not None:
            progress(results[index])

    def job(index: int) -> tuple[Task, Deployment]:
        return make_task(plan, plan.items[index]), plan.items[index].deployment

    if executor is None:
        if started is not None:
            started()
        for index in order:
            finish(index, run_task(*job(index)))
            if unusable:
                break
    else:
        batches = _batches(order, plan)
        futures = {executor.submit(run_tasks, [job(i) for i in batch]): batch for batch in batches}
        try:
            if started is not None:
                started()
            for future in completed(executor, futures):
                batch = futures[future]
                try:
                    done = future.result()
                except Exception as exc:  # the worker died or the executor broke: record it
                    done = [(_failed(plan.items[i], exc), None) for i in batch]
                for index, finished in zip(batch, done, strict=True):
                    finish(index, finished)
                if unusable:
                    break
        finally:
            for future in futures:
                future.cancel()
    if unusable:
        raise OutputError(
            f"the output cannot be written, the run stopped: {unusable[0]}",
            hint="free space or choose a writable output folder, then run again (finished archives are kept)",
        )
    if remember and plan.state is not None:
        with paused_gc():
            save_state(plan.state, plan.memo, records)
    return UpgradeResult(
        plan, tuple(results[i] for i in range(len(plan.items))), time.perf_counter() - start
    )


def upgrade(
    root: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    out: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    force: bool = False,
    verify_existing: bool = False,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> UpgradeResult:
    """Pack every deployment under ``root`` that is not up to date: plan, then execute, both on
    ``jobs`` worker processes (default: the cores) or on the Dask ``scheduler`` at that address.

    >>> from etm_compat.adapters import default_adapters
    >>> upgrade("fixtures/legacy", default_adapters(), out="migrated").ok  # doctest: +SKIP
    True
    """
    with open_executor(jobs=jobs or default_jobs(), scheduler=scheduler) as executor:
        plan = plan_upgrade(
            root,
            adapters,
            out=out,
            in_place=in_place,
            force=force,
            verify_existing=verify_existing,
            executor=executor,
        )
        return execute(plan, executor, progress=progress)


__all__ = [
    "ItemResult",
    "PlanItem",
    "PlanWork",
    "UpgradePlan",
    "UpgradeResult",
    "default_jobs",
    "execute",
    "make_task",
    "open_executor",
    "plan_upgrade",
    "run_task",
    "run_tasks",
    "upgrade",
]
