"""The installed version of a distribution, as ``importlib.metadata.version`` gives it, without
importing ``importlib.metadata`` (email, socket, zipfile...: a tenth of the start-up of a
tokenizer ``inspect``) or the distribution itself.

The runner-check records are keyed by ``pytorch_tokenizers``' version, read on every run that
checks a tokenizer. :func:`installed_version` looks where ``importlib.metadata`` looks, in the
same order (``sys.path``, each folder's entries as ``os.listdir`` lists them, names normalized
the same way), and reads the ``Version`` header of the first ``*.dist-info/METADATA`` found.
Whatever it is not sure of (a zip or an egg on the path, a finder of distributions other than
the path's, an ``.egg-info``, an unusual header block, nothing found) goes to
``importlib.metadata`` itself, so the answer is always the one it gives.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys

from etm_compat.errors import EtmError
from etm_compat.formats.tokenizer.bounded import read_head

#: A METADATA file larger than this (a long description) is left to importlib.metadata.
_METADATA_MAX = 1 << 20
#: A header line as ``email`` (compat32) takes it; the name non-empty, to stay on the safe side.
_HEADER = re.compile(r"([\x21-\x39\x3b-\x7e]+):(.*)")
_LINE_END = re.compile(r"\r\n|\r|\n")


class _Unsure(Exception):
    """The fast reading cannot promise importlib.metadata's answer."""


def _normalized(name: str) -> str:
    """A distribution name as importlib.metadata compares them (PEP 503, dashes as underscores)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _version_header(metadata: str) -> str:
    """The first ``Version`` header of a METADATA file, as ``email`` (compat32) reads it."""
    try:
        raw = read_head(metadata, _METADATA_MAX)
        text = raw.decode("utf-8")  # importlib.metadata reads it whole, strictly
    except (EtmError, UnicodeDecodeError):
        raise _Unsure from None
    if len(raw) >= _METADATA_MAX:
        raise _Unsure
    lines = _LINE_END.split(text)
    for index, line in enumerate(lines):
        if not line:
            break
        match = _HEADER.fullmatch(line)
        if match is None:  # a continuation line, or what email would take for the body
            if line[0] in " \t" and index > 0:
                continue
            raise _Unsure
        if match.group(1).lower() == "version":
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following[:1] in (" ", "\t"):
                raise _Unsure  # folded over lines: leave it to email
            return match.group(2).lstrip(" \t")
    raise _Unsure


def _fast_version(name: str) -> str:
    for finder in sys.meta_path:
        if finder is not importlib.machinery.PathFinder and hasattr(finder, "find_distributions"):
            raise _Unsure
    wanted = _normalized(name)
    for entry in sys.path:
        folder = entry or "."
        if not isinstance(entry, str) or os.path.basename(folder).lower().endswith(".egg"):
            raise _Unsure
        if not os.path.isdir(folder):
            if os.path.exists(folder):  # a zip, which importlib.metadata reads
                raise _Unsure
            continue
        try:
            children = os.listdir(folder)
        except OSError:
            continue
        for child in children:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            if _normalized(low.rpartition(".")[0].partition("-")[0]) != wanted:
                continue
            if not low.endswith(".dist-info"):
                raise _Unsure
            return _version_header(os.path.join(folder, child, "METADATA"))
    raise _Unsure


def installed_version(name: str) -> str | None:
    """The version ``importlib.metadata.version(name)`` gives, None when it is not installed.

    >>> installed_version("msgspec") == __import__("msgspec").__version__
    True
    """
    try:
        return _fast_version(name)
    except _Unsure:
        pass
    # Lazy: importlib.metadata costs a tenth of a tokenizer inspect's start-up; only the unusual
    # installs (and a distribution that is not installed) need it.
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


__all__ = ["installed_version"]
