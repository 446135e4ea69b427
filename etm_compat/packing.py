"""``pack`` and ``unpack``: a legacy deployment to one ``.etm`` archive, and back.

:func:`plan_members` is the one rule for what an archive holds (the loader uses it too, to give a
never-packed folder the metadata ``pack`` would write); :func:`build_metadata` fills
metadata.json from a :class:`~etm_compat.view.DeploymentView`; :func:`pack` writes the original
bytes atomically, converting only a tokenizer the runner cannot load as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm_compat.archive.metadata import SHA256_PLACEHOLDER, new_metadata
from etm_compat.archive.names import (
    processor_member_names,
    program_member_names,
    program_name,
    weights_member_names,
)
from etm_compat.archive.plan import MemberSpec
from etm_compat.archive.read import open_archive
from etm_compat.archive.write import ArchiveDraft, write_archive
from etm_compat.constants import (
    MEMBER_PROGRAM,
    MEMBER_SPECIAL_TOKENS_MAP,
    MEMBER_TOKENIZER_CONFIG,
    TOKENIZER_MEMBER_BY_FORMAT,
    VERSION,
)
from etm_compat.errors import EtmError, OutputError
from etm_compat.fileio import metadata_path, metadata_safe, sha256_file
from etm_compat.findings import Finding
from etm_compat.formats.program_kinds import read_program_kind
from etm_compat.formats.ptd import PtdInfo, read_ptd
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.formats.tokenizer.detect import sniff_tokenizer_format
from etm_compat.formats.tokenizer.llama2c import convert_llama2c_original
from etm_compat.formats.tokenizer.model import TokenizerFormat
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.legacy.resolve import resolve_source
from etm_compat.prompt.apps import app_file_names
from etm_compat.view import DeploymentFiles, DeploymentView, describe, read_files


@dataclass(frozen=True)
class PackResult:
    """The archive written, its size, the family it records and the findings it carries."""

    archive: Path
    size: int
    family: str | None
    findings: tuple[Finding, ...]
    metadata: dict[str, Any]


def plan_members(files: DeploymentFiles) -> list[MemberSpec]:
    """Every member an archive of this deployment holds, from the deployment's own files (read:
    no inference needed).

    The program, the tokenizer (named by its detected format), ``tokenizer_config.json`` beside
    an HF tokenizer, and each ``.ptd`` as ``weights/<name>.ptd`` with the keys it provides.
    """
    return _plan(files.deployment, files.tokenizer.format, files.weights)


def _plan(dep: Deployment, tokenizer_format: TokenizerFormat, weights: Sequence[PtdInfo]) -> list[MemberSpec]:
    """:func:`plan_members` from what it reads of the files: the tokenizer's format, and the
    weights files (their keys)."""
    assert dep.tokenizer is not None
    members = [MemberSpec(TOKENIZER_MEMBER_BY_FORMAT[tokenizer_format], dep.tokenizer, "tokenizer")]
    config = dep.configs.get("tokenizer_config")
    if tokenizer_format == "hf_json" and config is not None:
        members.append(MemberSpec(MEMBER_TOKENIZER_CONFIG, config, "tokenizer_config"))
    extras = _plan_extras(dep, tokenizer_format)
    if not dep.parts and not dep.weight_roles and not extras:  # format version 1
        names = weights_member_names(dep.weights)
        members.insert(0, MemberSpec(MEMBER_PROGRAM, dep.program, "program"))
        for name, ptd_path, ptd in zip(names, dep.weights, weights, strict=True):
            members.append(MemberSpec(name, ptd_path, "weights", tuple(sorted(ptd.keys))))
        return members
    return _plan_programs(dep, weights) + members + extras


def _load_order(weights: Sequence[Path], roles: Mapping[Path, str]) -> list[Path]:
    """A program's data files in load order: foundation, own weights, adapter, backend blob."""
    rank = {"foundation": 0, "weights": 1, "adapter": 2, "backend_blob": 3}
    return sorted(weights, key=lambda p: (rank.get(roles.get(p, "weights"), 1), p.name))


def _plan_programs(dep: Deployment, weights: Sequence[PtdInfo]) -> list[MemberSpec]:
    """The programs (main and parts) and every weights file once, with roles and load orders."""
    all_weights = list(dict.fromkeys([*dep.weights, *(w for part in dep.parts for w in part.weights)]))
    names = dict(zip(all_weights, weights_member_names(all_weights), strict=True))
    known = dict(zip(dep.weights, weights, strict=True))
    members = [
        MemberSpec(
            MEMBER_PROGRAM, dep.program, "program",
            data=tuple(names[w] for w in _load_order(dep.weights, dep.weight_roles)),
        )
    ]
    part_names = program_member_names([part.path for part in dep.parts])
    for member, part in zip(part_names, dep.parts, strict=True):
        snapshot = program_snapshot(read_pte(part.path))
        data = tuple(names[w] for w in _load_order(part.weights, dep.weight_roles))
        members.append(MemberSpec(member, part.path, "program", kind=part.role, data=data, snapshot=snapshot))
    for path in all_weights:
        keys = (known[path] if path in known else read_ptd(path)).keys
        role = dep.weight_roles.get(path, "weights")
        members.append(MemberSpec(names[path], path, "weights", tuple(sorted(keys)), kind=role))
    return members


def _plan_extras(dep: Deployment, tokenizer_format: TokenizerFormat) -> list[MemberSpec]:
    """Files only a version-2 archive carries: special_tokens_map.json, processor configs."""
    extras = []
    special = dep.configs.get("special_tokens_map")
    if tokenizer_format == "hf_json" and special is not None:
        extras.append(MemberSpec(MEMBER_SPECIAL_TOKENS_MAP, special, "tokenizer_config"))
    processor = dep.configs.get("processor_config")
    if processor is not None:
        (name,) = processor_member_names([processor])
        extras.append(MemberSpec(name, processor, "processor_config"))
    return extras


def program_snapshot(pte: PteInfo) -> dict[str, Any]:
    """What metadata.json records of a program's head (``program``, or a part's ``snapshot``)."""
    return {
        "constant_methods": dict(pte.constant_methods),
        "methods": list(pte.methods),
        "backends": list(pte.backends),
        "external_keys": list(pte.external_keys),
        "size": pte.file_size,
    }


def build_metadata(
    view: DeploymentView,
    members: Sequence[MemberSpec],
    *,
    converted_from: str | None,
    digested_by_writer: Collection[Path] = (),
) -> dict[str, Any]:
    """The metadata.json content for a deployment (members and hashes are filled by the writer).

    Sources in ``digested_by_writer`` are packed unchanged: their provenance sha256 is left as a
    placeholder for the archive writer, which hashes them anyway while copying. Every text is
    valid UTF-8: a source name that is not gets ``path_bytes_b64`` (:func:`metadata_path`).
    """
    dep, pte, tok, inf = view.deployment, view.pte, view.tokenizer, view.inference
    meta = new_metadata(tool_version=VERSION)
    fields = inf.metadata_fields()
    meta.update({k: v for k, v in fields.items() if k in meta})
    meta["program"] = {**program_snapshot(pte), "dialects": list(view.dialects.dialects)}
    # What the ExecuTorch 1.x runner takes from these files (optional: version-1 readers skip it).
    meta["runner"] = view.runner.to_json()
    eos_tokens: list[str | None] = []
    for eos in inf.eos_ids:
        text = next((t for t, i in tok.special_tokens.items() if i == eos), None)
        eos_tokens.append(text)
    meta["tokenizer"] = {
        "member": next(m.name for m in members if m.role == "tokenizer"),
        "format": tok.format,
        "variant": tok.variant,
        "vocab_size": tok.vocab_size,
        "bos_id": inf.bos_id,
        "bos_token": inf.bos_token,
        "eos_ids": list(inf.eos_ids),
        "eos_tokens": eos_tokens,
        # The strings a chat template sees as bos_token, eos_token, unk_token, image_token...
        # (transformers' special_tokens_map): the configs', not the runner's ids' texts.
        "special_tokens_map": dict(inf.special_tokens_map),
        "converted_from": converted_from,
    }
    meta["diagnostics"] = [f.to_json() for f in view.findings]
    later = set(digested_by_writer)
    sources = []
    for path in dep.sources:
        st = path.stat()
        sources.append(
            {
                **metadata_path(os.path.relpath(path, dep.root)),
                "size": st.st_size,
                "sha256": SHA256_PLACEHOLDER if path in later else sha256_file(path),
                "mtime_ns": st.st_mtime_ns,
            }
        )
    meta["provenance"]["sources"] = sources
    meta["weights"] = [{"member": m.name, "keys": list(m.keys)} for m in members if m.role == "weights"]
    modalities = plan_modalities(view, members)
    if modalities:
        meta["modalities"] = modalities
    # Names that are not valid UTF-8 (in findings, paths...) become escapes: JSON must encode.
    result: dict[str, Any] = metadata_safe(meta)
    return result


def plan_modalities(view: DeploymentView, members: Sequence[MemberSpec]) -> list[dict[str, Any]]:
    """The inputs besides text the main program takes, read from the program itself: each
    modality's encoder method, placeholder token id, preprocessor program and processor config."""
    kind = read_program_kind(view.deployment.program)
    if kind.kind not in ("multimodal_llm", "seq2seq"):
        return []
    preprocessors = [m for m in members if m.role == "program" and m.kind == "preprocessor"]
    processors = [m.name for m in members if m.role == "processor_config"]
    out: list[dict[str, Any]] = []
    for modality in kind.modalities:
        method = next((m for m in kind.encoders if m.startswith(modality) or len(kind.encoders) == 1), None)
        entry: dict[str, Any] = {"modality": modality, "token_id": kind.media_token_ids.get(modality)}
        if method is not None:
            entry["method"] = method
        if modality == "audio" and len(preprocessors) == 1:
            entry["preprocessor"] = program_name(preprocessors[0].name)
        if len(processors) == 1:
            entry["processor"] = processors[0]
        out.append(entry)
    return out


def pack(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    ptds: Sequence[str | os.PathLike[str]] = (),
    family: str | None = None,
    chat_template: str | None = None,
    force: bool = False,
    fsync: bool = True,
) -> PackResult:
    """Pack the deployment ``source`` names (a folder or a ``.pte``) into one archive at ``dest``.

    ``tokenizer``/``ptds`` replace the files found beside the program; ``family`` and
    ``chat_template`` (the template's text) override inference. See :func:`pack_view`.

    >>> from etm_compat.adapters import default_adapters
    >>> pack("fixtures/legacy/et_example", "out/model.etm", default_adapters()).family  # doctest: +SKIP
    'llama2'
    """
    dest_path = Path(dest)
    if dest_path.exists() and not force:
        raise OutputError("output exists", path=dest_path, hint="pass {force} to replace it")
    deployment = resolve_source(source, adapters, tokenizer=tokenizer, ptds=ptds)
    with contextlib.ExitStack() as stack:
        # The members are copied into the archive (in a thread of the draft's) while the
        # tokenizer is parsed and inference and the checks work out the metadata: the copy and
        # its sync to disk are done by the time the metadata is.
        early, weights = _members_before_reading(deployment)
        draft = None
        if early is not None:
            draft = stack.enter_context(ArchiveDraft(dest_path, early, overwrite=force, fsync=fsync))
        files = read_files(deployment, weights=weights)
        members, converted_from = stack.enter_context(_archive_members(files, dest_path))
        if draft is None or members != early:  # the tokenizer read otherwise than it sniffed
            if draft is not None:
                draft.discard()
            draft = stack.enter_context(ArchiveDraft(dest_path, members, overwrite=force, fsync=fsync))
        view = describe(deployment, family=family, chat_template=chat_template, files=files)
        result = draft.finish(_metadata(view, members, converted_from))
    return PackResult(dest_path, result.size, view.inference.family_id, view.findings, result.metadata)


def _members_before_reading(
    deployment: Deployment,
) -> tuple[list[MemberSpec] | None, list[PtdInfo] | None]:
    """The members :func:`_archive_members` will give once the files are read, from what is
    known before the tokenizer is parsed: its format as sniffed from its head, and the weights'
    keys; with the weights files read for it (None: not read). No members where they may differ
    (a llama2c tokenizer may need converting) or a file cannot be read yet: reading the files
    says why, in its own order."""
    assert deployment.tokenizer is not None
    try:
        tokenizer_format = sniff_tokenizer_format(deployment.tokenizer)
        if tokenizer_format == "llama2c":
            return None, None
        weights = [read_ptd(p) for p in deployment.weights]
        members = _plan(deployment, tokenizer_format, weights)
    except EtmError:
        return None, None
    return _with_provenance(deployment, members), weights


@contextlib.contextmanager
def _archive_members(files: DeploymentFiles, dest: Path) -> Iterator[tuple[list[MemberSpec], str | None]]:
    """The members of the archive (:func:`plan_members`, each file packed unchanged tied to its
    provenance entry) and the format a tokenizer was converted from, if one was: the converted
    file lives in a scratch folder beside ``dest`` for the block."""
    dep, tok = files.deployment, files.tokenizer
    assert dep.tokenizer is not None
    with contextlib.ExitStack() as stack:
        members, converted_from = plan_members(files), None
        if tok.variant == "llama2c_original":
            # The runner only loads the pytorch-tokenizers layout: convert, and record it.
            # Lazy: only this conversion needs a scratch folder (tempfile's imports are heavy).
            import tempfile

            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".etm-pack-", dir=dest.parent or None)
            )
            converted = Path(scratch) / "tokenizer.bin"
            convert_llama2c_original(dep.tokenizer, converted)
            converted_from = "llama2c_original"
            members = [
                dataclasses.replace(m, source=converted) if m.role == "tokenizer" else m for m in members
            ]
        yield _with_provenance(dep, members), converted_from


def _with_provenance(dep: Deployment, members: Sequence[MemberSpec]) -> list[MemberSpec]:
    """Files packed unchanged get their provenance digest from the writer's single pass: each
    member tied to its source's provenance entry."""
    index = {path: i for i, path in enumerate(dep.sources)}
    return [dataclasses.replace(m, provenance=index[m.source]) if m.source in index else m for m in members]


def _metadata(view: DeploymentView, members: Sequence[MemberSpec], converted_from: str | None) -> dict[str, Any]:
    digested = [m.source for m in members if m.provenance is not None]
    return build_metadata(view, members, converted_from=converted_from, digested_by_writer=digested)


def pack_view(
    view: DeploymentView,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    fsync: bool = True,
) -> PackResult:
    """Write a described deployment as one archive at ``dest`` (atomically; sources untouched).

    An existing ``dest`` is refused unless ``force``. ``fsync=False`` keeps the write atomic
    against crashes, not power loss.
    """
    dest_path = Path(dest)
    with _archive_members(view.files, dest_path) as (members, converted_from):
        meta = _metadata(view, members, converted_from)
        result = write_archive(dest_path, metadata=meta, members=members, overwrite=force, fsync=fsync)
    return PackResult(dest_path, result.size, view.inference.family_id, view.findings, result.metadata)


def unpack(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    app: str | None = None,
) -> list[Path]:
    """Restore the multi-file layout of ``archive`` into folder ``dest``; the files written.

    Existing files are refused unless ``force``; nothing is written outside ``dest``. With
    ``app`` (``"android"`` or ``"ios"``) the program is named so that ExecuTorch demo app picks
    the model type meant for the archive's family (:func:`etm_compat.prompt.apps.app_file_names`:
    ``model.etm`` of a Llama 3.2 gives ``llama3_2-model.pte``); a family the app has no type
    for is a :class:`~etm_compat.errors.UsageError`, raised before anything is written.

    >>> unpack("model.etm", "for-ios", app="ios")  # doctest: +SKIP
    [PosixPath('for-ios/llama3_2-model.pte'), PosixPath('for-ios/tokenizer.model')]
    """
    with open_archive(archive) as etm:
        rename = None
        if app is not None:
            family = etm.metadata.get("family") or {}
            tokenizer = etm.metadata.get("tokenizer") or {}
            family_id, member = family.get("id"), tokenizer.get("member")
            rename = app_file_names(
                app,
                family_id if isinstance(family_id, str) else None,
                stem=Path(archive).stem,
                program_member=MEMBER_PROGRAM,
                tokenizer_member=member if isinstance(member, str) else None,
            )
        return etm.extract(dest, force=force, rename=rename)


__all__ = ["PackResult", "build_metadata", "pack", "pack_view", "plan_members", "unpack"]
