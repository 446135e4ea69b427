"""One loader for every deployment: an ``.etm`` archive, a legacy folder, or a ``.pte`` file.

:func:`load` returns a :class:`Bundle` with the same API either way: the metadata (the dict
shape of an archive's metadata.json; for a legacy folder it is inferred on first access exactly
as ``etm-compat pack`` would), zero-copy views of the program, tokenizer and weights, the chat
template renderer, a runner ``GenerationConfig``, and real file paths for path-only runners
(:meth:`Bundle.legacy_paths`; an archive is materialized once in :mod:`etm_compat.compat.cache`).

Nothing heavy is imported here: the inference pipeline (jinja2 and friends) is imported when a
legacy folder's metadata is first needed, executorch when a ``GenerationConfig`` is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from etm_compat.adapters import default_adapters
from etm_compat.archive.metadata import tokenizer_member
from etm_compat.archive.names import weights_member_names
from etm_compat.archive.read import EtmArchive, is_archive, open_archive
from etm_compat.compat.cache import LegacyPaths, legacy_paths_of
from etm_compat.compat.generation import generation_config, max_new_tokens
from etm_compat.constants import MAIN_PROGRAM_NAME, MEMBER_TOKENIZER_CONFIG
from etm_compat.errors import (
    EtmError,
    OutputError,
    UnreadableError,
    UsageError,
)
from etm_compat.fileio import metadata_path
from etm_compat.formats.tokenizer.detect import sniff_tokenizer_format
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.legacy.resolve import resolve_source
from etm_compat.packing import build_metadata, plan_members
from etm_compat.prompt.chat import check_messages
from etm_compat.prompt.render import PromptTokens, encode_prompt, render_prompt
from etm_compat.view import DeploymentView, describe

log = logging.getLogger(__name__)

def _map_file(path: Path) -> tuple[mmap.mmap | None, memoryview]:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return None, memoryview(b"")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return mapped, memoryview(mapped)


class Bundle:
    """A loaded deployment; use :func:`load`. A context manager: ``close()`` unmaps everything.

    >>> with load("model.etm") as bundle:                     # doctest: +SKIP
    ...     prompt = bundle.render([{"role": "user", "content": "Hi"}])
    ...     config = bundle.generation_config(occupied=len(prompt_tokens), temperature=0)
    """

    def __init__(
        self,
        path: Path,
        *,
        archive: EtmArchive | None = None,
        deployment: Deployment | None = None,
    ) -> None:
        if (archive is None) == (deployment is None):
            raise UsageError("a Bundle wraps either an archive or a deployment")
        self.path = path
        self.kind: Literal["archive", "legacy"] = "archive" if archive is not None else "legacy"
        self._archive = archive
        self._deployment = deployment
        self._metadata: dict[str, Any] | None = archive.metadata if archive is not None else None
        self._render_meta: dict[str, Any] | None = None
        self._view: DeploymentView | None = None
        self._maps: dict[Path, mmap.mmap | None] = {}
        self._weights: Mapping[str, memoryview] | None = None

    # --- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the files; views handed out should be released first (else they stay mapped)."""
        if self._weights is not None:
            for view in self._weights.values():
                view.release()
            self._weights = None
        for path, mapped in self._maps.items():
            if mapped is None:
                continue
            try:
                mapped.close()
            except BufferError:
                log.warning("%s: views still in use; the mapping stays until they are freed", path)
        self._maps.clear()
        if self._archive is not None:
            self._archive.close()

    # --- metadata ---------------------------------------------------------------------------

    @property
    def deployment(self) -> Deployment | None:
        """The legacy deployment behind this bundle (None for an archive)."""
        return self._deployment

    @property
    def metadata(self) -> dict[str, Any]:
        """The archive's metadata.json, or what ``etm-compat pack`` would write for a folder."""
        if self._metadata is None:
            self._metadata = _legacy_metadata(self._legacy_view())
        return self._metadata

    def _legacy_view(self) -> DeploymentView:
        if self._view is None:
            assert self._deployment is not None
            self._view = describe(self._deployment, check_runner=False)
        return self._view

    @property
    def tokenizer_format(self) -> str:
        """``hf_json``, ``tekken``, ``sentencepiece``, ``tiktoken`` or ``llama2c``."""
        if self._deployment is not None and self._metadata is None:
            assert self._deployment.tokenizer is not None
            return sniff_tokenizer_format(self._deployment.tokenizer)
        tokenizer = self.metadata.get("tokenizer") or {}
        return str(tokenizer.get("format"))

    # --- bytes ------------------------------------------------------------------------------

    def _view_of(self, path: Path) -> memoryview:
        if path not in self._maps:
            mapped, view = _map_file(path)
            self._maps[path] = mapped
            return view
        mapped = self._maps[path]
        return memoryview(mapped) if mapped is not None else memoryview(b"")

    @property
    def programs(self) -> tuple[str, ...]:
        """The names of the deployment's programs, ``model`` first (preprocessors, encoders,
        LoRA siblings follow)."""
        if self._archive is not None:
            return tuple(p.name for p in self._archive.layout.programs)
        assert self._deployment is not None
        return (MAIN_PROGRAM_NAME, *(p.name for p in self._deployment.parts))

    def program_bytes(self, name: str = MAIN_PROGRAM_NAME) -> memoryview:
        """A program, zero-copy (the archive member's mapping, or an mmap of the ``.pte``).

        A mapping: if the file is truncated while the view is in use (``cp`` over it), touching
        the lost pages raises SIGBUS. Replace deployments by rename, never by copying over them.
        """
        if self._archive is not None:
            return self._archive.member_view(self._archive.layout.program(name).member)
        assert self._deployment is not None
        return self._view_of(self._legacy_program(name))

    def program_data(self, name: str = MAIN_PROGRAM_NAME) -> tuple[memoryview, ...]:
        """The data files a program loads, in load order, zero-copy."""
        if self._archive is not None:
            return tuple(self._archive.member_view(d) for d in self._archive.layout.program(name).data)
        assert self._deployment is not None
        dep = self._deployment
        self._legacy_program(name)
        paths = dep.weights if name == MAIN_PROGRAM_NAME else next(p.weights for p in dep.parts if p.name == name)
        return tuple(self._view_of(p) for p in paths)

    def _legacy_program(self, name: str) -> Path:
        assert self._deployment is not None
        found = {MAIN_PROGRAM_NAME: self._deployment.program, **{p.name: p.path for p in self._deployment.parts}}
        if name not in found:
            raise UsageError(f"no program {name!r} (programs: {list(found)})", path=self.path)
        return found[name]

    def tokenizer_bytes(self) -> memoryview:
        """The tokenizer file's bytes, zero-copy."""
        if self._archive is not None:
            return self._archive.member_view(self._tokenizer_member())
        assert self._deployment is not None and self._deployment.tokenizer is not None
        return self._view_of(self._deployment.tokenizer)

    def _tokenizer_member(self) -> str:
        member = tokenizer_member(self.metadata)
        if member is None:
            raise UsageError("the archive holds no tokenizer", path=self.path)
        return member

    @property
    def weights(self) -> Mapping[str, memoryview]:
        """``weights/<name>.ptd`` -> zero-copy view, for archives and folders alike."""
        if self._weights is None:
            if self._archive is not None:
                names = [m["name"] for m in self.metadata["members"] if m["role"] == "weights"]
                views = {n: self._archive.member_view(n) for n in names}
            else:
                assert self._deployment is not None
                paths = self._deployment.weights
                views = {
                    n: self._view_of(p) for n, p in zip(weights_member_names(paths), paths, strict=True)
                }
            self._weights = MappingProxyType(views)
        return self._weights

    # --- use --------------------------------------------------------------------------------

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool | None = None,
        *,
        family: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        continue_final_message: bool | str = False,
        **template_vars: Any,
    ) -> str:
        """Render a conversation as transformers' ``apply_chat_template`` does, with the
        deployment's chat template and special-token strings.

        ``add_generation_prompt`` defaults to True (False when continuing the final message);
        ``family`` uses that registry family's template; ``tools``, ``documents`` and
        ``template_vars`` (``enable_thinking=False``...) reach the template as in transformers.

        >>> bundle.render([{"role": "user", "content": "Hi"}], enable_thinking=False)  # doctest: +SKIP
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n'
        """
        check_messages(messages)
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        return render_prompt(
            self._render_metadata(),
            messages,
            add_generation_prompt=add_generation_prompt,
            family=family,
            path=self.path,
            tools=tools,
            documents=documents,
            continue_final_message=continue_final_message,
            **template_vars,
        )

    def render_tokens(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool | None = None,
        *,
        num_bos: int | None = None,
        num_eos: int | None = None,
        **options: Any,
    ) -> PromptTokens:
        """The ids the ExecuTorch runner feeds for this conversation: the rendered prompt encoded
        by the runner's tokenizer library, ``num_bos``/``num_eos`` (default: the deployment's)
        added. ``options`` are :meth:`render`'s.

        >>> bundle.render_tokens([{"role": "user", "content": "Hi"}]).ids  # doctest: +SKIP
        (1, 433, ...)
        """
        prompt = self.render(messages, add_generation_prompt, **options)
        gen = self._render_metadata().get("generation") or {}
        with self._tokenizer_files() as (tokenizer, config):
            return encode_prompt(
                prompt,
                tokenizer,
                num_bos=int(gen.get("num_bos") or 0) if num_bos is None else num_bos,
                num_eos=int(gen.get("num_eos") or 0) if num_eos is None else num_eos,
                config_path=config,
            )

    def _render_metadata(self) -> Mapping[str, Any]:
        """The metadata; for a folder, what pack would record, without hashing every source."""
        if self._metadata is not None:
            return self._metadata
        if self._render_meta is None:
            view = self._legacy_view()
            members, sources = plan_members(view.files), view.deployment.sources
            self._render_meta = build_metadata(view, members, converted_from=None, digested_by_writer=sources)
        return self._render_meta

    @contextlib.contextmanager
    def _tokenizer_files(self) -> Iterator[tuple[Path, Path | None]]:
        """The tokenizer file and its tokenizer_config.json (an archive's, in a temporary folder)."""
        if self._deployment is not None:
            assert self._deployment.tokenizer is not None
            yield self._deployment.tokenizer, self._deployment.configs.get("tokenizer_config")
            return
        assert self._archive is not None
        member = self._tokenizer_member()
        config = MEMBER_TOKENIZER_CONFIG in {m["name"] for m in self.metadata.get("members") or []}
        with tempfile.TemporaryDirectory(prefix="etm-tok-") as tmp:
            for name in (member, MEMBER_TOKENIZER_CONFIG) if config else (member,):
                Path(tmp, name).write_bytes(self._archive.read_member(name))
            yield Path(tmp, member), Path(tmp, MEMBER_TOKENIZER_CONFIG) if config else None

    def max_new_tokens(self, occupied: int = 0) -> int:
        """How many tokens may still be generated after ``occupied`` positions are used
        (:func:`etm_compat.compat.generation.max_new_tokens`)."""
        return max_new_tokens(self.metadata, occupied)

    def generation_config(self, *, occupied: int = 0, **overrides: Any) -> Any:
        """An ``executorch.extension.llm.runner.GenerationConfig`` filled from the metadata.

        ``occupied`` is how many context positions the caller expects to use before generating
        (the prompt's tokens); ``max_new_tokens`` is what fits in the rest. ``overrides`` set
        any field (``temperature=0`` for greedy decoding...).

        >>> runner.generate(prompt, bundle.generation_config(occupied=12, temperature=0))  # doctest: +SKIP
        """
        return generation_config(self.metadata, occupied=occupied, **overrides)

    def legacy_paths(self, *, verify: bool = False, cache_root: str | os.PathLike[str] | None = None) -> LegacyPaths:
        """Real file paths: the original files of a folder, or the archive's cache entry.

        An archive is materialized once (see :mod:`etm_compat.compat.cache`); later calls, in any
        process, reuse the entry after a cheap check (sizes and stat signature; full sha256
        with ``verify=True``).
        """
        if self._deployment is not None:
            dep = self._deployment
            assert dep.tokenizer is not None
            programs = {MAIN_PROGRAM_NAME: dep.program, **{p.name: p.path for p in dep.parts}}
            data = {MAIN_PROGRAM_NAME: tuple(dep.weights), **{p.name: p.weights for p in dep.parts}}
            return LegacyPaths(dep.program, dep.tokenizer, tuple(dep.weights), dep.root, programs, data)
        assert self._archive is not None
        try:
            return legacy_paths_of(self._archive, verify=verify, root=cache_root)
        except EtmError:
            raise
        except OSError as exc:  # the cache folder: missing rights, full disk, a file in the way
            raise OutputError(
                f"cannot materialize the archive in the cache: {exc.strerror or exc}",
                path=exc.filename if exc.filename is not None else cache_root,
                hint="check the cache folder (ETM_CACHE_DIR), or pass cache_root=DIR",
            ) from None

    def __repr__(self) -> str:
        return f"<Bundle {self.kind} {str(self.path)!r}>"


def _legacy_metadata(view: DeploymentView) -> dict[str, Any]:
    """What ``etm-compat pack`` would write as metadata.json for this deployment."""
    deployment = view.deployment
    members = plan_members(view.files)
    meta = build_metadata(view, members, converted_from=None)
    digests = {s["path"]: s["sha256"] for s in meta["provenance"]["sources"]}
    meta["members"] = [
        {
            "name": m.name,
            "size": m.source.stat().st_size,
            "sha256": digests[metadata_path(os.path.relpath(m.source, deployment.root))["path"]],
            "role": m.role,
        }
        for m in members
    ]
    return meta


def load(
    path: str | os.PathLike[str],
    *,
    adapters: Sequence[Adapter] | None = None,
) -> Bundle:
    """Open an ``.etm`` archive, a legacy folder, or a ``.pte`` (siblings found by the adapters).

    >>> with load("fixtures/legacy/et_example") as bundle:    # doctest: +SKIP
    ...     bundle.metadata["generation"]["stop_token_ids"], bundle.legacy_paths().tokenizer
    ([2], PosixPath('fixtures/legacy/et_example/tokenizer.model'))
    """
    target = Path(path)
    if not target.exists():
        raise UnreadableError("no such file or folder", path=target)
    if not target.is_file() and not target.is_dir():
        raise UnreadableError(
            "not a regular file or folder (a FIFO, socket or device)",
            path=target,
            hint="load an .etm archive, a .pte or a deployment folder",
        )
    if target.is_file() and is_archive(target):
        return Bundle(target, archive=open_archive(target))
    if adapters is None:
        adapters = default_adapters()
    return Bundle(target, deployment=resolve_source(target, adapters))


def render(
    path: str | os.PathLike[str],
    messages: Sequence[Mapping[str, Any]],
    *,
    adapters: Sequence[Adapter] | None = None,
    **options: Any,
) -> str:
    """Render ``messages`` as the deployment at ``path`` (archive, folder or ``.pte``) expects;
    ``options`` are :meth:`Bundle.render`'s (``tools``, ``enable_thinking=False``...).

    >>> render("fixtures/legacy/hf_style", [{"role": "user", "content": "Hi"}])[:14]  # doctest: +SKIP
    '<|im_start|>sy'
    """
    with load(path, adapters=adapters) as bundle:
        return bundle.render(messages, **options)


__all__ = ["Bundle", "LegacyPaths", "PromptTokens", "load", "render"]
