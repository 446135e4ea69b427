"""From a legacy deployment to an ``.etm`` archive: read, infer, check, write.

Data flows one way: the deployment's files are described by the readers, inference resolves the
configuration, the checks produce findings, and the archive writer packs the original bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from etm_compat.constants import VERSION
from etm_compat.archive import MemberSpec, write_archive
from etm_compat.archive.names import weights_member_names
from etm_compat.constants import (
    MEMBER_PROGRAM,
    MEMBER_TOKENIZER_CONFIG,
    TOKENIZER_MEMBER_BY_FORMAT,
)
from etm_compat.legacy.deployment import Adapter, Deployment
from etm_compat.errors import InputError, UnreadableError, UsageError
from etm_compat.fileio import sha256_file
from etm_compat.findings import Finding
from etm_compat.infer.inference import Inference, infer
from etm_compat.archive.metadata import SHA256_PLACEHOLDER, new_metadata
from etm_compat.formats.ptd import PtdInfo, read_ptd
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.legacy.scan import read_folder
from etm_compat.formats.tokenizer.detect import TokenizerInfo, convert_llama2c_original, read_tokenizer


@dataclass(frozen=True)
class DeploymentView:
    """Everything the readers and inference say about one deployment."""

    deployment: Deployment
    pte: PteInfo
    tokenizer: TokenizerInfo
    weights: tuple[PtdInfo, ...]
    inference: Inference
    findings: tuple[Finding, ...] = field(default=())


@dataclass(frozen=True)
class PackResult:
    archive: Path
    size: int
    family: str | None
    findings: tuple[Finding, ...]
    metadata: dict[str, Any]


def resolve_source(
    source: str | os.PathLike[str],
    adapters: Sequence[Adapter],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    ptds: Sequence[str | os.PathLike[str]] = (),
) -> Deployment:
    """The one deployment a ``pack`` source names: a folder with one program, or a ``.pte`` file.

    Explicit ``tokenizer``/``ptds`` replace what the adapters found beside the program.
    """
    path = Path(source)
    if not path.exists():
        raise UnreadableError("no such file or folder", path=path)
    folder = path if path.is_dir() else path.parent
    found, skipped = read_folder(folder, adapters)
    if not found and skipped and tokenizer is None:
        raise InputError(skipped[0].reason, path=skipped[0].path, hint="pass --tokenizer PATH")
    if path.is_dir():
        if len(found) > 1:
            names = ", ".join(d.program.name for d in found)
            raise UsageError(
                f"folder holds several programs ({names})",
                path=path,
                hint="name one .pte as SOURCE, or use `etm-compat upgrade` for all of them",
            )
        if not found:
            raise InputError("no ExecuTorch program (.pte with the ET12 identifier) in this folder", path=path)
        chosen = found[0]
    else:
        matches = [d for d in found if d.program.resolve() == path.resolve()]
        chosen = matches[0] if matches else Deployment(root=folder, program=path, layout="file")
    if tokenizer is not None:
        chosen = replace(chosen, tokenizer=Path(tokenizer))
    if ptds:
        chosen = replace(chosen, weights=tuple(Path(p) for p in ptds))
    if chosen.tokenizer is None:
        raise InputError("no tokenizer file found beside the program", path=chosen.program, hint="pass --tokenizer PATH")
    return chosen


def describe(
    deployment: Deployment,
    *,
    family: str | None = None,
    chat_template: str | None = None,
    check_runner: bool = True,
) -> DeploymentView:
    """Read every file of a deployment and infer its configuration (no writing)."""
    pte = read_pte(deployment.program)
    assert deployment.tokenizer is not None
    config = deployment.configs.get("tokenizer_config")
    tok = read_tokenizer(deployment.tokenizer, config_path=config, check_runner=check_runner)
    weights = tuple(read_ptd(p) for p in deployment.weights)
    inference = infer(
        deployment,
        pte=pte,
        tokenizer=tok,
        family_override=family,
        chat_template_override=chat_template,
    )
    view = DeploymentView(deployment, pte, tok, weights, inference, tuple(inference.findings))
    from etm_compat.diagnosis import diagnose_view, merge_findings  # imports pack: import here

    return replace(view, findings=merge_findings(inference.findings, diagnose_view(view)))


def build_metadata(
    view: DeploymentView,
    *,
    tokenizer_member: str,
    converted_from: str | None,
    digested_by_writer: Collection[Path] = (),
) -> dict[str, Any]:
    """The metadata.json content for a deployment (members and hashes are filled by the writer).

    Sources in ``digested_by_writer`` are packed unchanged: their provenance sha256 is left as a
    placeholder for the archive writer, which hashes them anyway while copying.
    """
    dep, pte, tok, inf = view.deployment, view.pte, view.tokenizer, view.inference
    meta = new_metadata(tool_version=VERSION)
    fields = inf.metadata_fields()
    meta.update({k: v for k, v in fields.items() if k in meta})
    meta["program"] = {
        "constant_methods": dict(pte.constant_methods),
        "methods": list(pte.methods),
        "backends": list(pte.backends),
        "external_keys": list(pte.external_keys),
        "size": pte.file_size,
    }
    eos_tokens: list[str | None] = []
    for eos in inf.eos_ids:
        text = next((t for t, i in tok.special_tokens.items() if i == eos), None)
        eos_tokens.append(text)
    meta["tokenizer"] = {
        "member": tokenizer_member,
        "format": tok.format,
        "variant": tok.variant,
        "vocab_size": tok.vocab_size,
        "bos_id": inf.bos_id,
        "bos_token": inf.bos_token,
        "eos_ids": list(inf.eos_ids),
        "eos_tokens": eos_tokens,
        "converted_from": converted_from,
    }
    meta["diagnostics"] = [f.to_json() for f in view.findings]
    later = set(digested_by_writer)
    sources = []
    for path in dep.sources:
        st = path.stat()
        sources.append(
            {
                "path": os.path.relpath(path, dep.root),
                "size": st.st_size,
                "sha256": SHA256_PLACEHOLDER if path in later else sha256_file(path),
                "mtime_ns": st.st_mtime_ns,
            }
        )
    meta["provenance"]["sources"] = sources
    return meta


def pack(
    view: DeploymentView,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    fsync: bool = True,
) -> PackResult:
    """Write ``view``'s deployment as one archive at ``dest`` (atomically; sources untouched).

    >>> from etm_compat.adapters import default_adapters
    >>> dep = resolve_source("fixtures/legacy/et_example", default_adapters())  # doctest: +SKIP
    >>> pack(describe(dep), "out/model.etm").archive  # doctest: +SKIP
    """
    dest_path = Path(dest)
    dep, tok = view.deployment, view.tokenizer
    assert dep.tokenizer is not None
    with contextlib.ExitStack() as stack:
        tokenizer_source, converted_from = dep.tokenizer, None
        if tok.variant == "llama2c_original":
            # The runner only loads the pytorch-tokenizers layout: convert, and record it.
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".etm-pack-", dir=dest_path.parent or None)
            )
            tokenizer_source = Path(scratch) / "tokenizer.bin"
            convert_llama2c_original(dep.tokenizer, tokenizer_source)
            converted_from = "llama2c_original"
        tokenizer_member = TOKENIZER_MEMBER_BY_FORMAT[tok.format]
        members = [
            MemberSpec(MEMBER_PROGRAM, dep.program, "program"),
            MemberSpec(tokenizer_member, tokenizer_source, "tokenizer"),
        ]
        config = dep.configs.get("tokenizer_config")
        if tok.format == "hf_json" and config is not None:
            members.append(MemberSpec(MEMBER_TOKENIZER_CONFIG, config, "tokenizer_config"))
        names = weights_member_names(dep.weights)
        for name, ptd_path, ptd in zip(names, dep.weights, view.weights, strict=True):
            members.append(MemberSpec(name, ptd_path, "weights", tuple(sorted(ptd.keys))))
        # Files packed unchanged get their provenance digest from the writer's single pass.
        index = {path: i for i, path in enumerate(dep.sources)}
        members = [
            dataclasses.replace(m, provenance=index[m.source]) if m.source in index else m for m in members
        ]
        meta = build_metadata(
            view,
            tokenizer_member=tokenizer_member,
            converted_from=converted_from,
            digested_by_writer=[m.source for m in members if m.provenance is not None],
        )
        meta["weights"] = [{"member": m.name, "keys": list(m.keys)} for m in members if m.role == "weights"]
        result = write_archive(dest_path, metadata=meta, members=members, overwrite=overwrite, fsync=fsync)
    return PackResult(
        archive=dest_path,
        size=result.size,
        family=view.inference.family_id,
        findings=view.findings,
        metadata=result.metadata,
    )
