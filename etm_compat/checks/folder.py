"""Checks on a folder as a whole: weight files that no program of the folder uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etm_compat.fileio import display_path
from etm_compat.findings import Finding
from etm_compat.formats.ptd import is_ptd_file
from etm_compat.legacy.deployment import Deployment


def unused_ptd_files(deployments: Sequence[Deployment]) -> dict[Path, list[Finding]]:
    """Per folder: .ptd files no program of that folder took, keyed by its first program."""
    out: dict[Path, list[Finding]] = {}
    by_folder: dict[Path, list[Deployment]] = {}
    for dep in deployments:
        by_folder.setdefault(dep.program.parent, []).append(dep)
    for folder, deps in by_folder.items():
        used = {p.resolve() for d in deps for p in d.weights}
        try:
            ptds = sorted(p for p in folder.iterdir() if p.suffix == ".ptd" and p.is_file())
        except OSError:
            continue
        for ptd in ptds:
            if ptd.resolve() in used or not is_ptd_file(ptd):
                continue
            out.setdefault(deps[0].program, []).append(
                Finding(
                    "weights-unused-file",
                    "warning",
                    f"no program in {folder.name or folder} uses {ptd.name}: none of its keys "
                    "is an external key of a program here",
                    "remove it, or ship the program it belongs to",
                    (display_path(ptd, deps[0].root),),
                )
            )
    return out


__all__ = ["unused_ptd_files"]
