"""Planning an upgrade: every deployment under a root, its archive, and whether that needs work.

:func:`plan_upgrade` scans the tree through the adapters and decides, for every deployment, where
its archive goes and whether it is ``new``, ``stale`` or ``up_to_date`` (docs/UPGRADE.md has the
rule). Given an executor, the expensive parts (reading folders, opening existing archives) run
on it in batches, so a first run plans on every worker; given the state an earlier run left
(:mod:`etm_compat.bulk.state`), unchanged folders are not read and unchanged archives are not
opened again, so a re-run of a finished tree costs a walk and a few stats per deployment.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from etm_compat.bulk.state import (
    UpgradeState,
    check_and_record,
    load_state,
    recorded_check,
    relative_path,
    source_stats,
)
from etm_compat.bulk.task import ArchiveCheck, Status
from etm_compat.constants import ETM_SUFFIX
from etm_compat.errors import UsageError
from etm_compat.fileio import check_output_folder
from etm_compat.legacy.deployment import Adapter, Deployment, Skipped
from etm_compat.legacy.scan import ScanMemo, paused_gc, scan

#: Archives checked per executor call (see :data:`etm_compat.legacy.scan.MAX_BATCH`).
MAX_CHECK_BATCH = 64


@dataclass(frozen=True)
class PlanItem:
    """One deployment, the archive it becomes, and whether that archive needs (re)writing.

    ``record`` is what the next run may reuse instead of opening an up-to-date archive again
    (:func:`etm_compat.bulk.state.check_and_record`), when there is one.
    """

    deployment: Deployment
    archive: Path
    check: ArchiveCheck
    source_bytes: int
    record: Mapping[str, Any] | None = None

    @property
    def status(self) -> Status:
        return self.check.status

    @property
    def reason(self) -> str:
        return self.check.reason


@dataclass(frozen=True)
class PlanWork:
    """What making a plan cost, counted: folders read and archives opened, and how many of each
    an earlier run's state spared (:mod:`etm_compat.bulk.state`)."""

    folders_read: int = 0
    folders_remembered: int = 0
    archives_opened: int = 0
    archives_remembered: int = 0


@dataclass(frozen=True)
class UpgradePlan:
    root: Path
    out: Path | None
    in_place: bool
    items: tuple[PlanItem, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    force: bool = False
    verify_existing: bool = False
    #: The state this plan was made with, and the scan memo to leave for the next run.
    state: UpgradeState | None = None
    memo: ScanMemo | None = None
    work: PlanWork = PlanWork()

    @cached_property
    def pending(self) -> tuple[PlanItem, ...]:
        """The items :func:`etm_compat.bulk.upgrade.execute` hands to workers."""
        return tuple(i for i in self.items if i.status != "up_to_date" or self.verify_existing)

    def relative(self, path: Path) -> str:
        """``path`` relative to the scanned root (for people and reports)."""
        return relative_path(path, self.root)

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


def _inside(path: Path, folder: Path) -> bool:
    text, top = str(path), str(folder)
    return text == top or text.startswith(top if top.endswith(os.sep) else top + os.sep)


def _archive_name(deployment: Deployment, root: Path, out: Path | None) -> Path:
    name = deployment.program.stem + ETM_SUFFIX
    if out is None:
        return deployment.root / name
    return out / relative_path(deployment.root, root) / name


def _dedupe(path: Path, taken: set[str]) -> Path:
    """``path``, or ``<stem>-2.etm``, ``-3``... when its name (case-insensitively) is taken."""
    candidate, n = path, 1
    while os.path.normcase(str(candidate)).casefold() in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    taken.add(os.path.normcase(str(candidate)).casefold())
    return candidate


#: An archive's check, its deployment's source bytes, the record for the next run (or None),
#: and whether the archive was opened to check it.
Checked = tuple[ArchiveCheck, int, "dict[str, Any] | None", bool]


def check_archives(batch: Sequence[tuple[Path, Deployment]], force: bool) -> list[Checked]:
    """:data:`Checked` for each archive of ``batch`` (top level and plain data: one executor
    call checks a batch)."""
    out: list[Checked] = []
    for archive, dep in batch:
        try:
            source_bytes = sum(size for size, _ in source_stats(dep).values())
        except OSError:
            source_bytes = 0
        if force and os.path.lexists(archive):
            out.append((ArchiveCheck("stale", "--force: repack everything"), source_bytes, None, False))
        elif not os.path.lexists(archive):
            out.append((ArchiveCheck("new", "no archive yet"), source_bytes, None, False))
        else:
            check, record = check_and_record(archive, dep)
            out.append((check, source_bytes, record, True))
    return out


def _check_all(
    todo: Sequence[tuple[Path, Deployment]],
    force: bool,
    executor: concurrent.futures.Executor | None,
) -> list[Checked]:
    if executor is None or len(todo) < 2:
        return check_archives(todo, force)
    size = max(1, min(MAX_CHECK_BATCH, len(todo) // 16))
    futures = [
        executor.submit(check_archives, todo[i : i + size], force) for i in range(0, len(todo), size)
    ]
    return [checked for future in futures for checked in future.result()]


def _remembered(state: UpgradeState | None, archive: Path, dep: Deployment) -> Checked | None:
    """The check an earlier run recorded for ``archive``, when nothing changed since."""
    record = state.archives.get(str(archive)) if state is not None else None
    if record is None:
        return None
    try:
        current = source_stats(dep)
    except OSError:
        return None
    check = recorded_check(record, archive, current)
    if check is None:
        return None
    return check, sum(size for size, _ in current.values()), record, False


def plan_upgrade(
    root: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    out: str | os.PathLike[str] | None,
    in_place: bool = False,
    force: bool = False,
    verify_existing: bool = False,
    executor: concurrent.futures.Executor | None = None,
    remember: bool = True,
) -> UpgradePlan:
    """Scan ``root`` and decide what each deployment's archive is and whether it needs work.

    Archives mirror the deployment's folder under ``out`` and are named after the program:
    ``<out>/<folder relative to root>/<program stem>.etm`` (``in_place``: beside the sources).
    Nothing is written. ``executor`` reads folders and checks archives in batches on its
    workers; with ``remember`` (the default) what the last run left in
    ``<out>/.etm-upgrade/state.json`` spares reading unchanged folders and opening unchanged
    archives (:mod:`etm_compat.bulk.state`).

    >>> from etm_compat.adapters import default_adapters
    >>> plan = plan_upgrade("fixtures/legacy", default_adapters(), out="migrated")  # doctest: +SKIP
    >>> [(i.archive.name, i.status) for i in plan.items][:1]  # doctest: +SKIP
    [('model.etm', 'new')]
    """
    if in_place == (out is not None):
        raise UsageError("give exactly one of an output folder (--out) or --in-place")
    base = Path(os.path.abspath(root))
    out_dir = Path(os.path.abspath(check_output_folder(out))) if out is not None else None
    if out_dir is not None and out_dir == base:
        raise UsageError(
            "the output folder is the scanned folder",
            path=out_dir,
            hint="use {in_place} to write archives beside their sources",
        )
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError("the output exists and is not a folder", path=out_dir)
    with paused_gc():
        state = load_state(out_dir or base, base, adapters) if remember else None
        result = scan(base, adapters, memo=state.scan if state is not None else None, executor=executor)
        deployments: list[Deployment] = list(result.deployments)
        skipped: list[Skipped] = list(result.skipped)
        if out_dir is not None and _inside(out_dir, base):
            # Archives written by earlier runs are never sources of this one.
            deployments = [d for d in deployments if not _inside(d.root, out_dir)]
            skipped = [s for s in skipped if not _inside(Path(s.path), out_dir)]
        taken: set[str] = set()
        named: list[tuple[Deployment, Path, Path]] = []
        for dep in sorted(deployments, key=lambda d: (str(d.root), d.program.name)):
            wanted = _archive_name(dep, base, out_dir)
            named.append((dep, wanted, _dedupe(wanted, taken)))
        checks: dict[int, Checked] = {}
        if not (force or verify_existing):
            for index, (dep, _, archive) in enumerate(named):
                hit = _remembered(state, archive, dep)
                if hit is not None:
                    checks[index] = hit
        todo = [index for index in range(len(named)) if index not in checks]
        fresh = _check_all([(named[i][2], named[i][0]) for i in todo], force, executor)
        checks.update(zip(todo, fresh, strict=True))
        items: list[PlanItem] = []
        for index, (dep, wanted, archive) in enumerate(named):
            check, source_bytes, record, _ = checks[index]
            if archive != wanted:
                why = f"{check.reason} (named {archive.name}: another program already maps to {wanted.name})"
                check = replace(check, reason=why)
            items.append(PlanItem(dep, archive, check, source_bytes, record))
        work = PlanWork(
            folders_read=result.reads,
            folders_remembered=result.reused,
            archives_opened=sum(1 for checked in fresh if checked[3]),
            archives_remembered=len(named) - len(todo),
        )
    return UpgradePlan(
        base, out_dir, in_place, tuple(items), tuple(skipped), force, verify_existing, state, result.memo, work
    )


__all__ = [
    "PlanItem",
    "PlanWork",
    "UpgradePlan",
    "check_archives",
    "paused_gc",
    "plan_upgrade",
]
