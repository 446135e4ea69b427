"""Make executorch's Python entry points accept ``.etm`` archives; old path-based code keeps working.

>>> import etm_compat.shim
>>> etm_compat.shim.install()          # first thing in the application            # doctest: +SKIP
>>> TextLLMRunner("model.etm", "model.etm")                                       # doctest: +SKIP

After :func:`install`:

* ``executorch.extension.llm.runner.TextLLMRunner(model, tokenizer, data_path)`` and
  ``executorch.runtime.Runtime.load_program(data, data_path=...)`` accept an archive wherever
  they accept a program path. The tokenizer and weights come from the archive when the caller
  passes none, or passes the archive again. ``load_program`` reads the program from the archive's
  bytes (nothing is extracted); the runner only takes paths, so it gets the archive's files from
  the materialization cache (:mod:`etm_compat.compat.cache`, extracted once, then reused).
* A path that no longer exists because its folder was upgraded (``model.pte`` and
  ``tokenizer.model`` replaced by ``model.etm``) is redirected to the archive beside it: the
  ``.etm`` in the same folder whose provenance lists that file name, else the only ``.etm`` there.
  The argument's position says which role it plays (program, tokenizer, weights).
* Paths that exist and are not archives go to the original functions unchanged: a folder that
  was never upgraded loads exactly as before.

The patches apply to the modules already imported and, through an import hook, to those
imported later. Code that ran ``from executorch.extension.llm.runner import TextLLMRunner``
*before* ``install()`` keeps the original class in its own namespace: call ``install()`` first.
:func:`uninstall` restores everything.

Importing this module is cheap: the standard library and etm-compat's archive reader and cache
(no torch, executorch, jinja2 or rich); torch/executorch are imported by the application itself.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from etm_compat.archive.read import is_archive, open_archive
from etm_compat.compat.cache import LegacyPaths, legacy_paths_of
from etm_compat.compat.runtime import load_program_from_archive
from etm_compat.constants import ETM_SUFFIX, MEMBER_PROGRAM
from etm_compat.errors import EtmError, UsageError
from etm_compat.fileio import metadata_text

log = logging.getLogger(__name__)

RUNNER_MODULE: Final = "executorch.extension.llm.runner"
RUNNER_EXTENSION: Final = "executorch.extension.llm.runner._llm_runner"
RUNTIME_MODULE: Final = "executorch.runtime"
_HOOKED: Final = (RUNNER_MODULE, RUNTIME_MODULE)

_lock = threading.RLock()
#: (owner, attribute, original value) of every patch in place, for uninstall().
_patched: list[tuple[Any, str, Any]] = []
_finder: _PatchFinder | None = None

StrPath = str | os.PathLike[str]


# --- finding the archive a path stands for ------------------------------------------------------


def _source_names(archive: Path) -> set[str] | None:
    """File names the archive was packed from (its provenance), or None if it is unreadable."""
    try:
        with open_archive(archive) as etm:
            sources = etm.metadata.get("provenance", {}).get("sources", [])
    except EtmError as exc:
        log.warning("%s: not used by the shim: %s", archive, exc)
        return None
    # Recorded as metadata text (undecodable name bytes escaped): compare in that spelling.
    return {Path(s["path"]).name for s in sources if isinstance(s, dict) and "path" in s}


def find_archive(path: StrPath) -> Path | None:
    """The archive ``path`` stands for: itself, or the one that replaced it; None if neither.

    An existing file that is not an archive stands for itself (None). A missing file stands for
    the ``.etm`` beside it whose provenance names it, else the only ``.etm`` in that folder.

    >>> find_archive("deploy/model.pte")   # after deploy/ was upgraded   # doctest: +SKIP
    PosixPath('deploy/model.etm')
    """
    p = Path(path)
    if p.exists():
        return p if p.is_file() and is_archive(p) else None
    folder = p.parent
    try:
        candidates = sorted(c for c in folder.glob(f"*{ETM_SUFFIX}") if c.is_file())
    except OSError:
        return None
    if not candidates:
        return None
    naming = [c for c in candidates if metadata_text(p.name) in (_source_names(c) or set())]
    if len(naming) == 1:
        return naming[0]
    if not naming and len(candidates) == 1 and _source_names(candidates[0]) is not None:
        return candidates[0]
    return None


class _Archives:
    """The archives one call touches, each opened (and materialized) at most once."""

    def __init__(self) -> None:
        self._paths: dict[Path, LegacyPaths] = {}

    def legacy_paths(self, archive: Path) -> LegacyPaths:
        key = archive.resolve()
        if key not in self._paths:
            with open_archive(archive) as etm:
                self._paths[key] = legacy_paths_of(etm)
        return self._paths[key]


def _one_weights(paths: LegacyPaths, archive: Path) -> str | None:
    if len(paths.weights) > 1:
        raise UsageError(
            f"the archive has {len(paths.weights)} weight files; this API takes one data_path",
            path=archive,
        )
    return str(paths.weights[0]) if paths.weights else None


def resolve_runner_paths(
    model_path: StrPath, tokenizer_path: StrPath | None, data_path: StrPath | None
) -> tuple[str, str | None, str | None]:
    """The real paths to give ``TextLLMRunner`` for what the caller passed.

    >>> resolve_runner_paths("model.etm", None, None)               # doctest: +SKIP
    ('/home/me/.cache/etm-compat/3f5c.../model.pte', '.../tokenizer.model', None)
    """
    archives = _Archives()
    model_archive = find_archive(model_path)
    model = os.fspath(model_path)
    tokenizer = os.fspath(tokenizer_path) if tokenizer_path is not None else None
    data = os.fspath(data_path) if data_path is not None else None
    if model_archive is not None:
        paths = archives.legacy_paths(model_archive)
        model = str(paths.program)
        if not tokenizer or find_archive(tokenizer) == model_archive:
            tokenizer = str(paths.tokenizer)
        if not data or find_archive(data) == model_archive:
            data = _one_weights(paths, model_archive)
    if tokenizer and find_archive(tokenizer) not in (None, model_archive):
        tok_archive = find_archive(tokenizer)
        assert tok_archive is not None
        tokenizer = str(archives.legacy_paths(tok_archive).tokenizer)
    if data and find_archive(data) not in (None, model_archive):
        data_archive = find_archive(data)
        assert data_archive is not None
        data = _one_weights(archives.legacy_paths(data_archive), data_archive)
    return model, tokenizer, data


# --- the patched entry points -------------------------------------------------------------------


#: The runner classes the shim patches: both take ``(model_path, tokenizer_path, data_path)``.
RUNNER_CLASSES: Final = ("TextLLMRunner", "MultimodalRunner")


def _make_runner_class(original: type) -> type:
    """A subclass of a pybind11 runner (``TextLLMRunner``, ``MultimodalRunner``) that resolves
    archive paths first."""

    class Runner(original):  # type: ignore[misc]
        def __init__(
            self,
            model_path: StrPath,
            tokenizer_path: StrPath | None = None,
            data_path: StrPath | None = None,
        ) -> None:
            model, tokenizer, data = resolve_runner_paths(model_path, tokenizer_path, data_path)
            if tokenizer is None:
                super().__init__(model, tokenizer_path, data)  # the original's own error
            else:
                super().__init__(model, tokenizer, data)

    Runner.__name__ = original.__name__
    Runner.__module__ = original.__module__
    Runner.__qualname__ = original.__qualname__
    Runner.__doc__ = original.__doc__
    Runner._etm_original = original
    return Runner


def _make_load_program(original: Callable[..., Any]) -> Callable[..., Any]:
    def load_program(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(data, (str, os.PathLike)):
            return original(self, data, *args, **kwargs)
        archive = find_archive(data)
        data_path = kwargs.get("data_path")
        data_archive = find_archive(data_path) if data_path is not None else None
        if archive is None:
            if data_archive is not None:
                kwargs["data_path"] = _one_weights(
                    _Archives().legacy_paths(data_archive), data_archive
                )
            return original(self, data, *args, **kwargs)
        own_weights = data_path is None or data_archive == archive
        extra = set(kwargs) - {"verification", "data_path"}
        if own_weights and not args and not extra:
            with open_archive(archive) as etm:  # sealed in-memory copies (or the cache): no disk
                return load_program_from_archive(etm, verification=kwargs.get("verification"))
        with open_archive(archive) as etm:  # read, not mapped: a truncated archive is an error
            program_bytes = etm.read_member(MEMBER_PROGRAM)
        if own_weights:
            kwargs["data_path"] = _one_weights(_Archives().legacy_paths(archive), archive)
        elif data_archive is not None:
            kwargs["data_path"] = _one_weights(_Archives().legacy_paths(data_archive), data_archive)
        return original(self, program_bytes, *args, **kwargs)

    load_program.__doc__ = original.__doc__
    load_program._etm_original = original  # type: ignore[attr-defined]
    return load_program


def _set(owner: Any, name: str, value: Any) -> None:
    _patched.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _patch_module(name: str, module: ModuleType) -> None:
    """Apply the patches that belong to one freshly imported (or already imported) module."""
    with _lock:
        if name == RUNNER_MODULE:
            for cls in RUNNER_CLASSES:
                original = getattr(module, cls, None)
                if original is None or hasattr(original, "_etm_original"):
                    continue
                patched = _make_runner_class(original)
                _set(module, cls, patched)
                extension = sys.modules.get(RUNNER_EXTENSION)
                if extension is not None and getattr(extension, cls, None) is original:
                    _set(extension, cls, patched)
        elif name == RUNTIME_MODULE:
            runtime = getattr(module, "Runtime", None)
            method = getattr(runtime, "load_program", None)
            if method is None or hasattr(method, "_etm_original"):
                return
            _set(runtime, "load_program", _make_load_program(method))


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, inner: Any, fullname: str) -> None:
        self._inner = inner
        self._fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        result: ModuleType | None = self._inner.create_module(spec)
        return result

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch_module(self._fullname, module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_source, is_package...
        return getattr(self._inner, name)


class _PatchFinder(importlib.abc.MetaPathFinder):
    """Finds the hooked modules with the other finders and wraps their loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _HOOKED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Patch executorch's entry points (now, and on import); calling it again does nothing."""
    global _finder
    with _lock:
        if _finder is None:
            _finder = _PatchFinder()
            sys.meta_path.insert(0, _finder)
        for name in _HOOKED:
            module = sys.modules.get(name)
            if module is not None:
                _patch_module(name, module)


def uninstall() -> None:
    """Undo :func:`install`: the original functions and classes are back everywhere it patched."""
    global _finder
    with _lock:
        if _finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_finder)
            _finder = None
        while _patched:
            owner, name, original = _patched.pop()
            setattr(owner, name, original)


def installed() -> bool:
    """Whether the shim is in place."""
    return _finder is not None


__all__ = ["find_archive", "install", "installed", "resolve_runner_paths", "uninstall"]
