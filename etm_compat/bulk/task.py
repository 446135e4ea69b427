"""One unit of upgrade work: the up-to-date rule, and the worker function that packs one archive.

:func:`upgrade_task` is top level and takes and returns plain data (:class:`Task`,
:class:`TaskOutcome`: paths as strings, findings as JSON), so any ``concurrent.futures`` executor
can run it: a process pool, or a Dask worker on another machine that sees the same paths.
Each outcome carries the deployment's ``details`` for the report pages (bounded, JSON-ready:
:func:`etm_compat.diagnosis.view_details`, or :func:`~etm_compat.diagnosis.metadata_details` for
an archive already up to date).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

from etm_compat.archive.read import open_archive
from etm_compat.bulk.lock import archive_lock, remove_stale_temporaries
from etm_compat.constants import ETM_FORMAT_VERSION, ETM_LATEST_FORMAT_VERSION
from etm_compat.errors import EtmError
from etm_compat.fileio import metadata_path
from etm_compat.findings import Finding
from etm_compat.legacy.deployment import Deployment, deployment_from_record

log = logging.getLogger(__name__)

#: What the plan says about an archive before any work is done.
Status = Literal["new", "stale", "up_to_date"]
#: What happened to a deployment.
Outcome = Literal["written", "up_to_date", "locked", "failed"]

# --- the up-to-date rule --------------------------------------------------------------------------

#: The format versions ``pack`` writes (2 only for what format 1 cannot hold).
WRITTEN_VERSIONS: tuple[int, ...] = tuple(range(ETM_FORMAT_VERSION, ETM_LATEST_FORMAT_VERSION + 1))


def fingerprint(deployment: Deployment) -> dict[str, tuple[int, int]]:
    """``{path relative to the deployment root: (size, mtime_ns)}`` of every source (stat only).

    Paths are spelled as metadata.json records them (:func:`etm_compat.fileio.metadata_path`).
    """
    out: dict[str, tuple[int, int]] = {}
    for path in deployment.sources:
        st = os.stat(path)
        out[metadata_path(os.path.relpath(path, deployment.root))["path"]] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass(frozen=True)
class ArchiveCheck:
    """Whether an archive is up to date, why, and (when it is) what it records: its size,
    family, findings and details (:func:`~etm_compat.diagnosis.metadata_details`)."""

    status: Status
    reason: str
    size: int | None = None
    family: str | None = None
    findings: tuple[Finding, ...] = ()
    details: Mapping[str, Any] | None = None


def archive_status(archive: Path, deployment: Deployment, *, deep: bool = False) -> ArchiveCheck:
    """Is ``archive`` an up-to-date packing of ``deployment``? Never raises for a bad archive.

    Up to date iff the archive opens and validates (structure + metadata, no member hashing), has
    this tool's format version, and its recorded provenance lists exactly the deployment's current
    source files with the same sizes and mtimes. ``deep`` adds a full pass: every member's CRC and
    sha256, and every source's sha256 against the recorded one.

    >>> archive_status(Path("out/model.etm"), deployment).status  # doctest: +SKIP
    'up_to_date'
    """
    if not os.path.lexists(archive):
        return ArchiveCheck("new", "no archive yet")
    try:
        current = fingerprint(deployment)
    except OSError as exc:
        return ArchiveCheck("stale", f"a source cannot be read: {exc.strerror}: {exc.filename}")
    try:
        with open_archive(archive) as etm:
            meta = etm.metadata
            problems = [str(p) for p in etm.verify()] if deep else []
            size = archive.stat().st_size
    except EtmError as exc:
        return ArchiveCheck("stale", f"the existing archive does not open: {exc.message}")
    except OSError as exc:
        return ArchiveCheck("stale", f"the existing archive cannot be read: {exc.strerror}")
    if problems:
        return ArchiveCheck("stale", f"the existing archive fails verification: {problems[0]}")
    if meta.get("format_version") not in WRITTEN_VERSIONS:  # pack writes 2 only when it must
        found = meta.get("format_version")
        return ArchiveCheck(
            "stale", f"format version {found}; this tool writes {' or '.join(map(str, WRITTEN_VERSIONS))}"
        )
    recorded = {s["path"]: s for s in meta["provenance"]["sources"]}
    if recorded.keys() != current.keys():
        added = sorted(current.keys() - recorded.keys())
        removed = sorted(recorded.keys() - current.keys())
        return ArchiveCheck(
            "stale", f"the source files changed (added {added or '-'}, gone {removed or '-'})"
        )
    for rel, (src_size, mtime_ns) in sorted(current.items()):
        if (recorded[rel]["size"], recorded[rel]["mtime_ns"]) != (src_size, mtime_ns):
            return ArchiveCheck("stale", f"{rel} changed since it was packed (size or mtime)")
    if deep:
        files = {metadata_path(os.path.relpath(p, deployment.root))["path"]: p for p in deployment.sources}
        for rel in sorted(current):
            if _sha256(files[rel]) != recorded[rel]["sha256"]:
                return ArchiveCheck("stale", f"{rel} has different bytes than the packed copy")
    what = "paths, sizes, mtimes" + (", hashes" if deep else "")
    # Lazy: the details render the archive's sample conversation (the template machinery),
    # needed only once an archive is up to date; a parent that only plans never loads them.
    from etm_compat.diagnosis import metadata_details

    return ArchiveCheck(
        "up_to_date",
        f"archive matches its sources ({what})",
        size=size,
        family=(meta.get("family") or {}).get("id"),
        findings=tuple(Finding.from_json(d) for d in meta.get("diagnostics") or []),
        details=metadata_details(meta),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --- one task: plain data in, plain data out -------------------------------------------------


class Task(TypedDict):
    #: the whole deployment (parts, weight roles, left-out files...) as
    #: :func:`~etm_compat.legacy.deployment.deployment_record` writes it, absolute paths
    deployment: dict[str, Any]
    archive: str
    force: bool
    verify_existing: bool


class _TaskOutcomeRequired(TypedDict):
    archive: str
    outcome: Outcome
    reason: str
    size: int | None
    family: str | None
    findings: list[dict[str, Any]]
    seconds: float


class TaskOutcome(_TaskOutcomeRequired, total=False):
    #: What the report pages show about the deployment (None when it failed or was locked;
    #: absent from outcomes made elsewhere, e.g. for a worker that died).
    details: dict[str, Any] | None
    #: Set when the output itself is unusable (full, read-only, over quota): the run stops.
    output_unusable: bool


#: errno values that make the whole output unusable, not one archive.
OUTPUT_UNUSABLE: Final = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})


def upgrade_task(task: Task) -> TaskOutcome:
    """Pack one deployment under its archive lock; every error becomes a ``failed`` outcome.

    Top level and plain data only, so it runs in a process pool or on a Dask worker.
    """
    start = time.perf_counter()
    archive = Path(task["archive"])
    dep = deployment_from_record(task["deployment"], Path)

    def done(
        outcome: Outcome,
        reason: str,
        *,
        size: int | None = None,
        family: str | None = None,
        findings: Sequence[Finding] = (),
        details: Mapping[str, Any] | None = None,
    ) -> TaskOutcome:
        return {
            "archive": str(archive),
            "outcome": outcome,
            "reason": reason,
            "size": size,
            "family": family,
            "findings": [f.to_json() for f in findings],
            "seconds": time.perf_counter() - start,
            "details": dict(details) if details is not None else None,
        }

    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with archive_lock(archive) as mine:
            if not mine:
                return done("locked", "another run holds this archive's lock; it is writing it now")
            remove_stale_temporaries(archive)
            check = archive_status(archive, dep, deep=task["verify_existing"])
            if check.status == "up_to_date" and not task["force"]:
                return done(
                    "up_to_date",
                    check.reason,
                    size=check.size,
                    family=check.family,
                    findings=check.findings,
                    details=check.details,
                )
            # Lazy: describing and packing (inference, checks, templates, the archive writer)
            # load where the tasks run, not in the parent process that plans them.
            from etm_compat.diagnosis import view_details
            from etm_compat.packing import pack_view
            from etm_compat.view import describe

            view = describe(dep)
            result = pack_view(view, archive, force=True)
    except EtmError as exc:
        failed = done("failed", str(exc))
        if isinstance(exc, OSError) and exc.errno in OUTPUT_UNUSABLE:
            failed["output_unusable"] = True
        return failed
    except OSError as exc:
        failed = done("failed", f"{exc.filename or archive}: {exc.strerror or exc}")
        if exc.errno in OUTPUT_UNUSABLE:
            failed["output_unusable"] = True
        return failed
    except Exception as exc:  # one deployment's bug must not stop the tree; it is reported
        log.exception("internal error while upgrading %s", dep.program)
        return done("failed", f"internal error (a bug in etm-compat): {type(exc).__name__}: {exc}")
    reason = "packed" if check.status == "new" else f"repacked: {check.reason}"
    return done(
        "written",
        reason,
        size=result.size,
        family=result.family,
        findings=result.findings,
        details=view_details(view),
    )


__all__ = [
    "ArchiveCheck",
    "Outcome",
    "Status",
    "Task",
    "TaskOutcome",
    "archive_status",
    "fingerprint",
    "upgrade_task",
]
