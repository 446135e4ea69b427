"""Bulk upgrade of a model tree: plan → execute on any ``concurrent.futures.Executor`` → results.

:func:`plan_upgrade` scans a tree through the adapters and decides, for every deployment, where
its archive goes and whether it is ``new``, ``stale`` or ``up_to_date`` (see docs/UPGRADE.md for
the rule). :func:`execute` runs the pending items on any executor — a process pool, a Dask
cluster's ``client.get_executor()``, or none (in this process) — through :func:`upgrade_task`, a
top-level function (in :mod:`etm_compat.bulk.task`) that takes and returns plain data, so it
pickles to any worker. One failing deployment never stops the others; each archive is written
under its own lock (:mod:`etm_compat.bulk.lock`) and published atomically by the writer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from etm_compat.bulk.executor import default_jobs, open_executor
from etm_compat.bulk.task import (
    ArchiveCheck,
    Outcome,
    Status,
    Task,
    TaskOutcome,
    archive_status,
    fingerprint,
    upgrade_task,
)
from etm_compat.constants import ETM_SUFFIX
from etm_compat.errors import UsageError
from etm_compat.findings import Finding
from etm_compat.legacy.deployment import Adapter, Deployment, Skipped
from etm_compat.legacy.scan import scan

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PlanItem:
    """One deployment, the archive it becomes, and whether that archive needs (re)writing."""

    deployment: Deployment
    archive: Path
    check: ArchiveCheck
    source_bytes: int

    @property
    def status(self) -> Status:
        return self.check.status

    @property
    def reason(self) -> str:
        return self.check.reason


@dataclass(frozen=True)
class UpgradePlan:
    root: Path
    out: Path | None
    in_place: bool
    items: tuple[PlanItem, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    force: bool = False
    verify_existing: bool = False

    @property
    def pending(self) -> tuple[PlanItem, ...]:
        """The items :func:`execute` hands to workers."""
        return tuple(i for i in self.items if i.status != "up_to_date" or self.verify_existing)

    def relative(self, path: Path) -> str:
        """``path`` relative to the scanned root (for people and reports)."""
        return os.path.relpath(path, self.root)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "out": str(self.out) if self.out is not None else None,
            "in_place": self.in_place,
            "items": [
                {
                    "program": self.relative(i.deployment.program),
                    "layout": i.deployment.layout,
                    "sources": [self.relative(p) for p in i.deployment.sources],
                    "archive": str(i.archive),
                    "status": i.status,
                    "reason": i.reason,
                    "source_bytes": i.source_bytes,
                }
                for i in self.items
            ],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


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

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "archive": str(self.archive),
            "outcome": self.outcome,
            "reason": self.reason,
            "size": self.size,
            "family": self.family,
            "findings": [f.to_json() for f in self.findings],
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class UpgradeResult:
    plan: UpgradePlan
    items: tuple[ItemResult, ...]  # in plan order
    seconds: float

    def count(self, outcome: Outcome) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    @property
    def ok(self) -> bool:
        """True when every deployment found has an archive (written now, before, or by another run).

        Files that are never packed (checkpoints, notebooks beside the programs) do not count.
        """
        unpacked = [s for s in self.plan.skipped if not s.ignored]
        return not unpacked and all(i.outcome != "failed" for i in self.items)

    def to_json(self) -> dict[str, Any]:
        outcomes: tuple[Outcome, ...] = ("written", "up_to_date", "locked", "failed")
        return {
            "root": str(self.plan.root),
            "out": str(self.plan.out) if self.plan.out is not None else None,
            "in_place": self.plan.in_place,
            "seconds": round(self.seconds, 3),
            "counts": {**{o: self.count(o) for o in outcomes}, "skipped": len(self.plan.skipped)},
            "items": [i.to_json() for i in self.items],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.plan.skipped],
        }


# --- planning -----------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _archive_name(deployment: Deployment, root: Path, out: Path | None) -> Path:
    name = deployment.program.stem + ETM_SUFFIX
    if out is None:
        return deployment.root / name
    return out / os.path.relpath(deployment.root, root) / name


def _dedupe(path: Path, taken: set[str]) -> Path:
    """``path``, or ``<stem>-2.etm``, ``-3``... when its name (case-insensitively) is taken."""
    candidate, n = path, 1
    while os.path.normcase(str(candidate)).casefold() in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    taken.add(os.path.normcase(str(candidate)).casefold())
    return candidate


def plan_upgrade(
    root: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    out: str | os.PathLike[str] | None,
    in_place: bool = False,
    force: bool = False,
    verify_existing: bool = False,
) -> UpgradePlan:
    """Scan ``root`` and decide what each deployment's archive is and whether it needs work.

    Archives mirror the deployment's folder under ``out`` and are named after the program:
    ``<out>/<folder relative to root>/<program stem>.etm`` (``in_place``: beside the sources).
    Nothing is written.

    >>> from etm_compat.adapters import default_adapters
    >>> plan = plan_upgrade("fixtures/legacy", default_adapters(), out="migrated")  # doctest: +SKIP
    >>> [(i.archive.name, i.status) for i in plan.items][:1]  # doctest: +SKIP
    [('model.etm', 'new')]
    """
    if in_place == (out is not None):
        raise UsageError("give exactly one of an output folder (--out) or --in-place")
    base = Path(os.path.abspath(root))
    out_dir = Path(os.path.abspath(out)) if out is not None else None
    if out_dir is not None and out_dir == base:
        raise UsageError(
            "the output folder is the scanned folder",
            path=out_dir,
            hint="use {in_place} to write archives beside their sources",
        )
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError("the output exists and is not a folder", path=out_dir)
    result = scan(base, adapters)
    deployments: list[Deployment] = list(result.deployments)
    skipped: list[Skipped] = list(result.skipped)
    if out_dir is not None and _inside(out_dir, base):
        # Archives written by earlier runs are never sources of this one.
        deployments = [d for d in deployments if not _inside(d.root, out_dir)]
        skipped = [s for s in skipped if not _inside(Path(s.path), out_dir)]
    taken: set[str] = set()
    items: list[PlanItem] = []
    for dep in sorted(deployments, key=lambda d: (str(d.root), d.program.name)):
        wanted = _archive_name(dep, base, out_dir)
        archive = _dedupe(wanted, taken)
        try:
            source_bytes = sum(size for size, _ in fingerprint(dep).values())
        except OSError:
            source_bytes = 0
        if force and os.path.lexists(archive):
            check = ArchiveCheck("stale", "--force: repack everything")
        else:
            check = archive_status(archive, dep)
        if archive != wanted:
            why = f"{check.reason} (named {archive.name}: another program already maps to {wanted.name})"
            check = replace(check, reason=why)
        items.append(PlanItem(dep, archive, check, source_bytes))
    return UpgradePlan(
        base, out_dir, in_place, tuple(items), tuple(skipped), force, verify_existing
    )


# --- execution ------------------------------------------------------------------------------------


def make_task(plan: UpgradePlan, item: PlanItem) -> Task:
    """The plain-data description of one item (absolute paths: workers may have another cwd)."""
    dep = item.deployment
    absolute = os.path.abspath
    return {
        "root": absolute(dep.root),
        "program": absolute(dep.program),
        "layout": dep.layout,
        "tokenizer": absolute(dep.tokenizer) if dep.tokenizer is not None else None,
        "weights": [absolute(p) for p in dep.weights],
        "configs": {role: absolute(p) for role, p in dep.configs.items()},
        "notes": list(dep.notes),
        "archive": absolute(item.archive),
        "force": plan.force and item.status == "stale",
        "verify_existing": plan.verify_existing,
    }


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
    )


def execute(
    plan: UpgradePlan,
    executor: concurrent.futures.Executor | None = None,
    *,
    progress: Progress | None = None,
) -> UpgradeResult:
    """Run the plan's pending items on ``executor`` (None: one after another in this process).

    Items already up to date are not sent anywhere. ``progress`` is called once per finished item,
    in completion order, from the calling thread.

    >>> from concurrent.futures import ProcessPoolExecutor
    >>> with ProcessPoolExecutor(2) as pool:  # doctest: +SKIP
    ...     result = execute(plan, pool)
    """
    start = time.perf_counter()
    results: dict[int, ItemResult] = {}
    order: list[int] = []
    for index, item in enumerate(plan.items):
        if item.status != "up_to_date" or plan.verify_existing:
            order.append(index)
        else:
            results[index] = ItemResult(
                plan.relative(item.deployment.program),
                item.archive,
                "up_to_date",
                item.reason,
                size=item.check.size,
                family=item.check.family,
                findings=item.check.findings,
                source_bytes=item.source_bytes,
            )
    # Biggest first: the long tasks start early, so workers finish together.
    order.sort(key=lambda i: -plan.items[i].source_bytes)

    def finish(index: int, outcome: TaskOutcome) -> None:
        results[index] = _item_result(plan, plan.items[index], outcome)
        if progress is not None:
            progress(results[index])

    if executor is None:
        for index in order:
            finish(index, upgrade_task(make_task(plan, plan.items[index])))
    else:
        futures = {executor.submit(upgrade_task, make_task(plan, plan.items[i])): i for i in order}
        try:
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker died or the executor broke: record it
                    outcome = {
                        "archive": str(plan.items[index].archive),
                        "outcome": "failed",
                        "reason": f"worker failed: {type(exc).__name__}: {exc}",
                        "size": None,
                        "family": None,
                        "findings": [],
                        "seconds": 0.0,
                    }
                finish(index, outcome)
        finally:
            for future in futures:
                future.cancel()
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
    """Pack every deployment under ``root`` that is not up to date: plan, then execute.

    ``jobs`` worker processes (default: the cores), or the Dask ``scheduler`` at that address.

    >>> from etm_compat.adapters import default_adapters
    >>> upgrade("fixtures/legacy", default_adapters(), out="migrated").ok  # doctest: +SKIP
    True
    """
    plan = plan_upgrade(
        root, adapters, out=out, in_place=in_place, force=force, verify_existing=verify_existing
    )
    with open_executor(jobs=jobs or default_jobs(), scheduler=scheduler, pending=len(plan.pending)) as executor:
        return execute(plan, executor, progress=progress)


__all__ = [
    "ItemResult",
    "PlanItem",
    "UpgradePlan",
    "UpgradeResult",
    "execute",
    "make_task",
    "plan_upgrade",
    "upgrade",
]
