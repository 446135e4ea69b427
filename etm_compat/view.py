"""``describe``: read every file of a deployment, infer its configuration, run the checks.

A :class:`DeploymentView` is what every verb works from: ``pack`` writes it, ``diagnose``
reports it, ``inspect`` shows it, and the loader turns it into metadata. Nothing is written.
Beside what inference resolved, it says what the program's constant methods mean whatever
dialect wrote them (``dialects``) and what the ExecuTorch 1.x runner will actually use
(``runner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from etm_compat.checks.multimodal import check_multimodal
from etm_compat.checks.run import family_of, merge_findings, run_checks
from etm_compat.checks.subject import Subject
from etm_compat.errors import EtmError
from etm_compat.fileio import display_path
from etm_compat.findings import Finding
from etm_compat.formats.configs import read_config
from etm_compat.formats.dialects import DialectView, read_dialects
from etm_compat.formats.ptd import PtdInfo, read_ptd
from etm_compat.formats.pte import PteInfo, read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer.inference import Inference, infer
from etm_compat.infer.runner import RunnerTruth, runner_truth, tokenizer_ids
from etm_compat.legacy.deployment import Deployment
from etm_compat.prompt.bounds import RenderLimits, shared_budget


@dataclass(frozen=True)
class DeploymentView:
    """Everything the readers and inference say about one deployment, and the checks' findings.

    ``dialects`` is the program's constant methods in one normalized view; ``runner`` what the
    ExecuTorch 1.x LLM runner takes from the program and the tokenizer (its bos, eos, lengths).
    """

    deployment: Deployment
    pte: PteInfo
    tokenizer: TokenizerInfo
    weights: tuple[PtdInfo, ...]
    inference: Inference
    dialects: DialectView
    runner: RunnerTruth
    findings: tuple[Finding, ...] = field(default=())

    @property
    def files(self) -> DeploymentFiles:
        """The files this view was described from (:func:`read_files`)."""
        return DeploymentFiles(self.deployment, self.pte, self.tokenizer, self.weights)


@dataclass(frozen=True)
class DeploymentFiles:
    """A deployment's files as read, before any judgement: the program's head, the tokenizer
    and the weights files (:func:`read_files`; what :func:`plan_members
    <etm_compat.packing.plan_members>` needs to know what an archive of it holds)."""

    deployment: Deployment
    pte: PteInfo
    tokenizer: TokenizerInfo
    weights: tuple[PtdInfo, ...]


def read_files(
    deployment: Deployment, *, check_runner: bool = True, weights: Sequence[PtdInfo] | None = None
) -> DeploymentFiles:
    """Read the program's head, the tokenizer (with the runner check unless ``check_runner`` is
    false) and the weights files of ``deployment`` (``weights``: those read already, in order)."""
    pte = read_pte(deployment.program)
    assert deployment.tokenizer is not None
    config = deployment.configs.get("tokenizer_config")
    tok = read_tokenizer(deployment.tokenizer, config_path=config, check_runner=check_runner)
    if weights is None:
        weights = [read_ptd(p) for p in deployment.weights]
    return DeploymentFiles(deployment, pte, tok, tuple(weights))


#: The work all renderings of one deployment's template may do together in :func:`describe`:
#: the steps of one rendering, a longer deadline (each rendering keeps its own limits inside it).
DESCRIBE_LIMITS: Final = RenderLimits(max_seconds=4.0)


def describe(
    deployment: Deployment,
    *,
    family: str | None = None,
    chat_template: str | None = None,
    check_runner: bool = True,
    registered_backends: frozenset[str] | None = None,
    files: DeploymentFiles | None = None,
) -> DeploymentView:
    """Read every file of a deployment, infer its configuration and check it (no writing).

    ``findings`` holds inference's findings, then the checks' (each (code, paths) once).
    ``files``: the deployment's files read already (:func:`read_files`), not read again.

    >>> from etm_compat.adapters import default_adapters  # doctest: +SKIP
    >>> from etm_compat.legacy.resolve import resolve_source  # doctest: +SKIP
    >>> describe(resolve_source("fixtures/legacy/et_example", default_adapters())).inference.family_id  # doctest: +SKIP
    'llama2'
    """
    if files is None:
        files = read_files(deployment, check_runner=check_runner)
    pte, tok, weights = files.pte, files.tokenizer, files.weights
    # Inference and the checks render the template many times (probes, sample conversations):
    # all of them share one budget, so a hostile template costs one budget, not one per render.
    with shared_budget(DESCRIBE_LIMITS):
        inference = infer(
            deployment,
            pte=pte,
            tokenizer=tok,
            family_override=family,
            chat_template_override=chat_template,
        )
        runner = runner_truth(pte.constant_methods, tok)
        found = tuple(_with_runner_truth(f, runner, tok) for f in inference.findings)
        view = DeploymentView(
            deployment, pte, tok, weights, inference, read_dialects(pte.constant_methods), runner, found
        )
        checked = run_checks(subject_of_view(view), registered_backends=registered_backends)
    checked += check_multimodal(deployment, tok)
    return replace(view, findings=merge_findings(found, checked))


def _with_runner_truth(f: Finding, runner: RunnerTruth, tok: TokenizerInfo) -> Finding:
    """Inference's ``legacy-default-bos-eos`` speaks of the archive's stop set; a loose program
    still goes to the runner as it is: say what the runner will do with the stale defaults."""
    if f.code != "legacy-default-bos-eos":
        return f
    eos, bos = runner.eos_ids, runner.bos_id
    tok_eos = tokenizer_ids(tok)[1]
    if eos.source == "get_eos_ids" and tok_eos in (eos.value or []):
        stops = f"stops at get_eos_ids={eos.value} (the tokenizer's eos {tok_eos} among them)"
    elif eos.source == "get_eos_ids":
        stops = f"stops only at get_eos_ids={eos.value}, never at the tokenizer's eos {tok_eos}"
    else:
        shown = ", ".join(str(i) for i in eos.value or []) or "(none)"
        stops = f"ignores get_eos_id and stops at the tokenizer's eos {shown}"
    return replace(
        f,
        message=f"{f.message}. Run loose, the ExecuTorch 1.x runner {stops}; it ignores "
        f"get_bos_id and takes bos {bos.value} from the tokenizer",
    )


# --- the checks' subject -----------------------------------------------------------------------


def _model_vocab(dep: Deployment, cm: dict[str, Any]) -> tuple[tuple[int, str], ...]:
    sizes: list[tuple[int, str]] = []
    size = cm.get("get_vocab_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        sizes.append((size, display_path(dep.program, dep.root)))
    for role in ("params", "config"):
        path = dep.configs.get(role)
        if path is None:
            continue
        try:
            cfg = read_config(role, path)
        except EtmError:
            continue  # inference already reports unreadable configs
        value = cfg.get("vocab_size")
        if value is None and isinstance(cfg.get("text_config"), dict):
            value = cfg["text_config"].get("vocab_size")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sizes.append((value, display_path(path, dep.root)))
    return tuple(sizes)


def _config_ids(dep: Deployment) -> tuple[tuple[str, int, str], ...]:
    ids: list[tuple[str, int, str]] = []
    for role in ("config", "generation_config"):
        path = dep.configs.get(role)
        if path is None:
            continue
        try:
            cfg = read_config(role, path)
        except EtmError:
            continue
        label = display_path(path, dep.root)
        for key, kind in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
            value = cfg.get(key)
            values = value if isinstance(value, list) else [value]
            ids += [
                (kind, v, label) for v in values if isinstance(v, int) and not isinstance(v, bool)
            ]
    return tuple(ids)


def _add_bos(dep: Deployment) -> bool | None:
    path = dep.configs.get("tokenizer_config")
    if path is None:
        return None
    try:
        value = read_config("tokenizer_config", path).get("add_bos_token")
    except EtmError:
        return None
    return value if isinstance(value, bool) else None


def subject_of_view(view: DeploymentView) -> Subject:
    """The plain values the checks read, from a described deployment."""
    dep, inf = view.deployment, view.inference
    source = inf.chat_template_source
    return Subject(
        kind="deployment",
        tokenizer=view.tokenizer,
        tokenizer_label=display_path(Path(view.tokenizer.path), dep.root),
        program_label=display_path(dep.program, dep.root),
        constant_methods=dict(view.pte.constant_methods),
        external_keys=tuple(view.pte.external_keys),
        backends=tuple(view.pte.backends),
        weights=tuple(
            (display_path(p, dep.root), w.keys)
            for p, w in zip(dep.weights, view.weights, strict=False)
        ),
        model_vocab=_model_vocab(dep, dict(view.pte.constant_methods)),
        config_ids=_config_ids(dep),
        template=inf.chat_template,
        template_label=source or "chat template",
        template_from_files=source is not None and not source.startswith("registry"),
        family=family_of(inf.family_id),
        stop_ids=tuple(inf.stop_token_ids),
        num_bos=inf.num_bos,
        add_bos_token=_add_bos(dep),
        has_tokenizer_config="tokenizer_config" in dep.configs,
        prior_codes=frozenset(f.code for f in inf.findings),
    )


__all__ = ["DeploymentFiles", "DeploymentView", "describe", "read_files", "subject_of_view"]
