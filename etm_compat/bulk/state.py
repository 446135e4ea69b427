"""What an upgrade remembers between runs, so that a re-run of a finished tree costs stats only.

``<out>/.etm-upgrade/state.json`` (``<root>/...`` for ``--in-place``) holds two memos, written at
the end of every run:

* the scan memo (:class:`~etm_compat.legacy.scan.ScanMemo`): each folder's deployments, with the
  stamps of the folders reading it listed: a folder is read again only when one of them changed;
* archive records: for each archive found up to date (or just written and checked), its
  ``stat`` (size, mtime, ctime, inode, device) and the sources' fingerprint it was checked
  against, with what the check said. While both are unchanged the archive is up to date without
  being opened again (docs/UPGRADE.md, section 2).

The file is untrusted like every input: bounded in size and nesting, and thrown away whole when
it does not parse, was written by other code (any changed ``.py`` file of etm-compat, other
adapters) or for another root. Losing it only costs time: the next run reads and checks again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import etm_compat
from etm_compat.bulk.task import ArchiveCheck, archive_status
from etm_compat.errors import EtmError
from etm_compat.fileio import metadata_path, new_temp_file, read_capped
from etm_compat.findings import Finding
from etm_compat.jsonlimits import json_nesting
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.legacy.files import UPGRADE_STATE_DIR
from etm_compat.legacy.scan import ScanMemo, relative_below

log = logging.getLogger(__name__)

STATE_DIR: Final = UPGRADE_STATE_DIR
STATE_FILE: Final = "state.json"
STATE_FORMAT: Final = "etm-upgrade-state"
STATE_VERSION: Final = 1
#: Far above the state of a million deployments; a larger file is ignored, not read.
MAX_STATE_BYTES: Final = 1 << 30
MAX_STATE_NESTING: Final = 16


def state_path(base: Path) -> Path:
    """Where the state of an upgrade writing under ``base`` (``--out``, or the root in place) lives."""
    return base / STATE_DIR / STATE_FILE


@functools.cache
def code_stamp() -> str:
    """The etm-compat code a state was written by: every module's name, size and mtime, taken
    once per process (the code that runs is the code imported then).

    Reading a folder or checking an archive depends on the code; a state written by any other
    code (an upgrade, a local edit) is not used.
    """
    package = Path(etm_compat.__file__).parent
    rows = []
    for folder, _dirs, files in os.walk(package, followlinks=True):
        for name in files:
            if name.endswith(".py") or name.endswith(".json"):
                st = os.stat(os.path.join(folder, name))
                rows.append((os.path.relpath(os.path.join(folder, name), package), st.st_size, st.st_mtime_ns))
    return repr(sorted(rows))


def adapters_key(adapters: Sequence[Adapter]) -> list[str]:
    """The adapters a scan was made with (their classes, in order)."""
    return [f"{type(a).__module__}.{type(a).__qualname__}" for a in adapters]


# --- archive records -------------------------------------------------------------------------------


def relative_path(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``os.path.relpath(path, root)``, by spelling when ``path`` lies plainly below an absolute
    ``root`` (:func:`~etm_compat.legacy.scan.relative_below`)."""
    if os.path.isabs(path) and os.path.isabs(root):
        rel = relative_below(path, root)
        if rel is not None:
            return rel
    return os.path.relpath(path, root)


def source_stats(deployment: Deployment) -> dict[str, tuple[int, int]]:
    """:func:`etm_compat.bulk.task.fingerprint` (the same keys and values), with paths made
    relative by spelling."""
    out: dict[str, tuple[int, int]] = {}
    for path in deployment.sources:
        st = os.stat(path)
        out[metadata_path(relative_path(path, deployment.root))["path"]] = (st.st_size, st.st_mtime_ns)
    return out




def archive_stat(archive: Path) -> list[int] | None:
    """What identifies an archive's bytes without reading them; None when it is not there.

    ctime changes on every write and cannot be set back by a user, so an archive rewritten with
    its old size and mtime still differs.
    """
    try:
        st = os.stat(archive)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _sources(current: Mapping[str, tuple[int, int]]) -> list[list[Any]]:
    return [[rel, size, mtime] for rel, (size, mtime) in sorted(current.items())]


def check_and_record(archive: Path, deployment: Deployment) -> tuple[ArchiveCheck, dict[str, Any] | None]:
    """:func:`~etm_compat.bulk.task.archive_status`, and the record that lets the next run skip
    it while nothing changes: kept only when the archive and the sources kept their stat across
    the whole check (so the record describes exactly the bytes that were checked)."""
    before = archive_stat(archive)
    try:
        current = source_stats(deployment)
    except OSError:
        current = None
    check = archive_status(archive, deployment)
    if check.status != "up_to_date" or before is None or current is None:
        return check, None
    try:
        unchanged = archive_stat(archive) == before and source_stats(deployment) == current
    except OSError:
        unchanged = False
    if not unchanged:
        return check, None
    return check, {
        "archive": before,
        "sources": _sources(current),
        "reason": check.reason,
        "size": check.size,
        "family": check.family,
        "findings": [f.to_json() for f in check.findings],
        "details": dict(check.details) if check.details is not None else None,
    }


def recorded_check(record: Any, archive: Path, current: Mapping[str, tuple[int, int]]) -> ArchiveCheck | None:
    """The check a record stands for, when the archive and its sources are as recorded."""
    try:
        if record["archive"] != archive_stat(archive) or record["sources"] != _sources(current):
            return None
        size, family, reason = record["size"], record["family"], record["reason"]
        if not isinstance(reason, str) or not (size is None or isinstance(size, int)):
            return None
        if not (family is None or isinstance(family, str)):
            return None
        findings = tuple(Finding.from_json(f) for f in record["findings"])
        details = record["details"]
        if not (details is None or isinstance(details, dict)):
            return None
    except (KeyError, TypeError, ValueError, AttributeError, EtmError):
        return None
    return ArchiveCheck("up_to_date", reason, size=size, family=family, findings=findings, details=details)


# --- the file ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpgradeState:
    """The memos one run leaves for the next (empty when there is no usable state file)."""

    path: Path
    header: Mapping[str, Any]
    scan: ScanMemo | None = None
    archives: Mapping[str, Any] = field(default_factory=dict)

    def same(self, scan: ScanMemo | None, archives: Mapping[str, Any]) -> bool:
        """Whether these memos are the ones this state holds (then there is nothing to write)."""
        return (
            self.scan is not None and scan is not None
            and self.scan.folders == scan.folders and self.archives == archives
        )


def load_state(base: Path, root: Path, adapters: Sequence[Adapter]) -> UpgradeState:
    """The state under ``base`` if it was written for ``root`` with these adapters and this code."""
    path = state_path(base)
    header = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "root": str(root),
        "adapters": adapters_key(adapters),
        "code": code_stamp(),
    }
    empty = UpgradeState(path, header)
    if not path.is_file():
        return empty
    try:
        raw = read_capped(path, MAX_STATE_BYTES, what="upgrade state")
        if json_nesting(raw) > MAX_STATE_NESTING:
            raise ValueError("nested too deeply")
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("header") != header:
            return empty
        folders, archives = data["folders"], data["archives"]
        if not isinstance(folders, dict) or not isinstance(archives, dict):
            raise ValueError("not an object")
    except (EtmError, ValueError, KeyError, RecursionError) as exc:
        log.info("ignoring the upgrade state %s: %s", path, exc)
        return empty
    return UpgradeState(path, header, ScanMemo(root, folders), archives)


def save_state(
    state: UpgradeState, scan: ScanMemo | None, archives: Mapping[str, Any]
) -> Path | None:
    """Write the memos for the next run, atomically, unless they are the ones it read; a state
    that cannot be written is logged and skipped (the run's real outputs are the archives)."""
    if state.same(scan, archives):
        return state.path
    payload = {
        "header": dict(state.header),
        "folders": scan.to_json() if scan is not None else {},
        "archives": dict(archives),
    }
    # dumps, not dump: only the one-shot encoder is the C one.
    text = json.dumps(payload, separators=(",", ":"))
    try:
        state.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp_file(state.path.parent, f".{state.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, state.path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("cannot write the upgrade state %s: %s", state.path, exc.strerror or exc)
        return None
    return state.path


__all__ = [
    "UpgradeState",
    "archive_stat",
    "check_and_record",
    "code_stamp",
    "load_state",
    "recorded_check",
    "relative_path",
    "save_state",
    "source_stats",
    "state_path",
]
