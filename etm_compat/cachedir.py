"""Where etm-compat keeps its caches, and the small JSON records it keeps there.

The folder is ``$ETM_CACHE_DIR``, else ``$XDG_CACHE_HOME/etm-compat``, else
``~/.cache/etm-compat``. It holds two kinds of entries: archives materialized for path-only
runners (:mod:`etm_compat.compat.cache`, one folder per key) and *records*, small JSON files of
work that is costly to redo, one file per key in a folder per kind
(``runner-checks/<sha256>.json``: how pytorch_tokenizers took a tokenizer).

Records are a convenience, never a requirement: a record is written atomically (a temp file in
the same folder, then one rename), read as untrusted (a regular file, at most
:data:`RECORD_MAX_BYTES`, a JSON object, or else ignored), and any problem with the folder (it
is a file, it is read-only, the disk is full) only means the work is done again. Reading and
writing records never raises. Records are created private to the user (mode 0600, as
``mkstemp`` makes them): in a cache shared through ``ETM_CACHE_DIR`` another user redoes the work
rather than trusting someone else's answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from etm_compat.errors import EtmError
from etm_compat.fileio import new_temp_file, read_capped

#: Prefix of the temp files and folders that become entries and records by one rename.
TMP_PREFIX: Final = ".tmp-"
#: The kinds of records (one folder each under the cache folder).
RECORD_KINDS: Final = ("runner-checks",)
#: A record larger than this is damaged or planted: it is ignored.
RECORD_MAX_BYTES: Final = 64 * 1024
RECORD_SUFFIX: Final = ".json"
_KEY: Final = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """The cache root: ``$ETM_CACHE_DIR``, ``$XDG_CACHE_HOME/etm-compat`` or ``~/.cache/etm-compat``.

    >>> str(cache_dir())                                      # doctest: +SKIP
    '/home/me/.cache/etm-compat'
    """
    explicit = os.environ.get("ETM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "etm-compat"


def is_record_key(key: str) -> bool:
    """Whether ``key`` is a record key (a sha256 hex digest)."""
    return _KEY.fullmatch(key) is not None


def record_folder(kind: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds the records of ``kind``."""
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r} (known: {', '.join(RECORD_KINDS)})")
    return (Path(root) if root is not None else cache_dir()) / kind


def read_record(
    kind: str, key: str, *, root: str | os.PathLike[str] | None = None
) -> dict[str, Any] | None:
    """The record of ``key``, or None when there is none or it is not a readable JSON object.

    A hit marks the record as used (its mtime), for ``etm-compat cache prune --older-than``;
    a read-only cache still serves.
    """
    if not is_record_key(key):
        return None
    path = record_folder(kind, root) / f"{key}{RECORD_SUFFIX}"
    try:
        data = read_capped(path, RECORD_MAX_BYTES, what="cache record")
        record = json.loads(data)
    except (EtmError, OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return record


def write_record(
    kind: str, key: str, record: Mapping[str, Any], *, root: str | os.PathLike[str] | None = None
) -> bool:
    """Store ``record`` under ``key`` atomically; False (and nothing left behind) when the cache
    folder cannot take it."""
    if not is_record_key(key):
        return False
    data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(data) > RECORD_MAX_BYTES:
        return False
    # Lazy: only a write needs them; a lookup (every inspect) stays light.
    import logging

    folder = record_folder(kind, root)
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp_file(folder, TMP_PREFIX, RECORD_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, folder / f"{key}{RECORD_SUFFIX}")
    except OSError as exc:
        logging.getLogger(__name__).debug("cache record %s/%s not written: %s", kind, key, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
    return True


def record_files(kind: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every record file of ``kind`` (not the temp files of writes under way), sorted."""
    try:
        children = sorted(record_folder(kind, root).iterdir())
    except OSError:
        return []
    return [
        p
        for p in children
        if p.name.endswith(RECORD_SUFFIX) and is_record_key(p.name[: -len(RECORD_SUFFIX)])
    ]


__all__ = [
    "RECORD_KINDS",
    "RECORD_MAX_BYTES",
    "RECORD_SUFFIX",
    "TMP_PREFIX",
    "cache_dir",
    "is_record_key",
    "read_record",
    "record_files",
    "record_folder",
    "write_record",
]
