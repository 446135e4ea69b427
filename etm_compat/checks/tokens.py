"""The mismatch checks that need no template: tokenizer vs model (program, weights and backends
are in :mod:`etm_compat.checks.program`).

Every check reads one :class:`Subject` (what a deployment or an archive says, reduced to plain
values) and returns findings; none stops the others. Codes, severities and fixes are listed in
docs/DIAGNOSTICS.md. Codes inference already emits (``legacy-default-bos-eos``,
``stop-token-out-of-range``, ``bos-conflict``, ``family-conflict``...) are not emitted again here:
:attr:`Subject.prior_codes` says which ones the caller already has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from etm_compat.checks.subject import Subject, as_int, finding
from etm_compat.constants import LEGACY_DEFAULT_BOS_ID, LEGACY_DEFAULT_EOS_IDS
from etm_compat.findings import Finding
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer.runner import RunnerTruth, runner_truth


def _ints(value: Any) -> list[int] | None:
    one = as_int(value)
    if one is not None:
        return [one]
    if isinstance(value, list) and value and all(as_int(v) is not None for v in value):
        return list(value)
    return None


def program_eos(cm: Mapping[str, Any]) -> tuple[list[int] | None, str]:
    """The program's eos ids and the constant method they came from (legacy singular too)."""
    eos = _ints(cm.get("get_eos_ids"))
    if eos is not None:
        return eos, "get_eos_ids"
    return _ints(cm.get("get_eos_id")), "get_eos_id"


def token_label(tok: TokenizerInfo | None, token_id: int) -> str:
    """``2 ('</s>')``: an id with its token text when the tokenizer names it."""
    text = None
    if tok is not None:
        text = tok.eos_token if token_id == tok.eos_id else None
        text = text or next((t for t, i in tok.special_tokens.items() if i == token_id), None)
    return f"{token_id} ({text!r})" if text else str(token_id)


def is_legacy_default(s: Subject) -> bool:
    """get_bos_id=1/get_eos_ids=[2] on a tokenizer that disagrees (inference's rule)."""
    tok = s.tokenizer
    bos = as_int(s.constant_methods.get("get_bos_id"))
    eos, _ = program_eos(s.constant_methods)
    if tok is None or (bos is None and eos is None):
        return False
    if bos not in (None, LEGACY_DEFAULT_BOS_ID) or eos not in (None, list(LEGACY_DEFAULT_EOS_IDS)):
        return False
    return (bos is not None and tok.bos_id != LEGACY_DEFAULT_BOS_ID) or (
        eos is not None and tok.eos_id not in LEGACY_DEFAULT_EOS_IDS
    )


# --- tokenizer vs model ---------------------------------------------------------------------


def check_vocab(s: Subject) -> list[Finding]:
    """The tokenizer's vocabulary against every declared model vocabulary size."""
    tok = s.tokenizer
    if tok is None:
        return []
    out: list[Finding] = []
    for size, source in dict.fromkeys(s.model_vocab):
        if tok.vocab_size > size:
            out.append(
                finding(
                    "vocab-tokenizer-larger",
                    "error",
                    f"the tokenizer has {tok.vocab_size} tokens but {source} says the model has "
                    f"{size}; ids {size}..{tok.vocab_size - 1} would index past the embedding",
                    "pair the program with the tokenizer it was trained with (or re-export the "
                    "model with the tokenizer's vocab_size)",
                    s.tokenizer_label,
                    source,
                )
            )
        elif tok.vocab_size < size:
            out.append(
                finding(
                    "vocab-model-larger",
                    "info",
                    f"the model has {size} embedding rows ({source}) and the tokenizer "
                    f"{tok.vocab_size} tokens: the extra rows are padding",
                    "nothing to do: models often pad the embedding (Qwen ships it this way)",
                    s.tokenizer_label,
                    source,
                )
            )
    return out


def check_special_ids(s: Subject) -> list[Finding]:
    """bos/eos/stop ids from every source must be inside the tokenizer's vocabulary."""
    tok = s.tokenizer
    if tok is None:
        return []
    n = tok.vocab_size
    pte_vocab = as_int(s.constant_methods.get("get_vocab_size"))
    inference_limit = max(n, pte_vocab) if pte_vocab is not None else n
    candidates: list[tuple[str, int, str]] = []
    if tok.bos_id is not None:
        candidates.append(("bos", tok.bos_id, s.tokenizer_label))
    if tok.eos_id is not None:
        candidates.append(("eos", tok.eos_id, s.tokenizer_label))
    if not is_legacy_default(s):
        bos = as_int(s.constant_methods.get("get_bos_id"))
        if bos is not None:
            candidates.append(("bos", bos, s.program_label))
        eos, _ = program_eos(s.constant_methods)
        candidates += [("eos", e, s.program_label) for e in eos or []]
    candidates += list(s.config_ids)
    if s.kind == "archive":
        candidates += [("stop", i, s.program_label) for i in s.stop_ids]
    out: list[Finding] = []
    for role, token_id, source in dict.fromkeys(candidates):
        if 0 <= token_id < n:
            continue
        # Inference already reports stop ids beyond max(tokenizer, program) vocab for a deployment.
        if (
            s.kind == "deployment"
            and role == "eos"
            and "stop-token-out-of-range" in s.prior_codes
            and (token_id < 0 or token_id >= inference_limit)
        ):
            continue
        out.append(
            finding(
                "special-id-out-of-range",
                "error",
                f"{source} gives {role} id {token_id}, outside the tokenizer's vocabulary "
                f"(0..{n - 1})",
                "fix the id in that file, or pair the program with its own tokenizer",
                source,
                s.tokenizer_label,
            )
        )
    return out


def end_of_turn_id(s: Subject, template_eot: str | None) -> tuple[str, int] | None:
    """The end-of-turn token (text, id): the template's own, else the family's."""
    tok = s.tokenizer
    if tok is None:
        return None
    for text in (template_eot, s.family.end_of_turn if s.family is not None else None):
        if text:
            found = tok.token_id(text)
            if found is not None:
                return text, found
    return None


def check_eos(s: Subject, eot: tuple[str, int] | None) -> list[Finding]:
    """The program's eos ids against the tokenizer and the end of turn, and the stop set the
    runner really uses (:func:`~etm_compat.infer.runner.runner_truth`: ``get_eos_ids``, else
    the tokenizer's eos; a singular ``get_eos_id`` is never read)."""
    tok = s.tokenizer
    if tok is None:
        return []
    out: list[Finding] = []
    eos = _ints(s.constant_methods.get("get_eos_ids"))
    legacy = is_legacy_default(s)
    runner = runner_truth(s.constant_methods, tok)
    if eos is not None and not legacy:
        wanted = {i for i in (tok.eos_id, eot[1] if eot else None) if i is not None}
        if wanted and not wanted & set(eos):
            out.append(
                finding(
                    "eos-ids-mismatch",
                    "warning",
                    f"{s.program_label} declares get_eos_ids={eos}, which holds neither the "
                    f"tokenizer's eos ({tok.eos_id})"
                    + (f" nor the end-of-turn token {eot[0]!r} ({eot[1]})" if eot else ""),
                    "the runner replaces the tokenizer's eos by these ids; re-export with "
                    "--metadata giving the right get_eos_ids (the archive's stop set is corrected)",
                    s.program_label,
                    s.tokenizer_label,
                )
            )
    if not legacy:
        out += _singular_eos(s, runner)
    if eot is None:
        return out
    if s.kind == "archive":
        if eot[1] not in s.stop_ids:
            out.append(
                finding(
                    "stop-missing-end-of-turn",
                    "error",
                    f"the archive's stop set {list(s.stop_ids)} lacks the end-of-turn token "
                    f"{eot[0]!r} ({eot[1]}): generation would run to the length limit",
                    "re-pack the deployment (pack adds the end-of-turn id), or pass --family",
                    "metadata.json",
                )
            )
        return out
    stops = runner.eos_ids.value or []
    if eot[1] not in stops:
        source = (
            f"get_eos_ids={stops}"
            if runner.eos_ids.source == "get_eos_ids"
            else f"the tokenizer's eos {', '.join(str(i) for i in stops) or '(none)'}"
        )
        out.append(
            finding(
                "stop-missing-end-of-turn",
                "warning" if s.template_from_files else "info",
                f"the ExecuTorch runner stops only at {source}, not at the end-of-turn token "
                f"{eot[0]!r} ({eot[1]}): a chat reply would run on to the length limit"
                + ("" if s.template_from_files else " (if this is a chat model)"),
                "the packed archive's stop set includes it; to fix the program itself re-export "
                "it with get_eos_ids listing the end-of-turn id",
                s.program_label,
                s.tokenizer_label,
            )
        )
    return out


def _singular_eos(s: Subject, runner: RunnerTruth) -> list[Finding]:
    """A singular ``get_eos_id`` without ``get_eos_ids``: the 1.x runner never reads it."""
    meant = _ints(s.constant_methods.get("get_eos_id"))
    if meant is None or "get_eos_ids" in s.constant_methods:
        return []
    used = list(runner.eos_ids.value or [])
    missed = [i for i in meant if i not in used]
    shown = ", ".join(token_label(s.tokenizer, i) for i in used) or "none"
    raw = s.constant_methods["get_eos_id"]
    consequence = (
        f", not {', '.join(str(i) for i in missed)}: generation will not stop where the "
        "exporter meant"
        if missed
        else " (the same id, so nothing is lost)"
    )
    return [
        finding(
            "eos-id-ignored",
            "warning" if missed else "info",
            f"{s.program_label} declares get_eos_id={raw} but no get_eos_ids; the ExecuTorch "
            f"1.x runner reads only get_eos_ids, so it will use eos {shown} from the tokenizer"
            + consequence,
            "re-export with get_eos_ids listing these ids (export_llm --metadata "
            "'{\"get_eos_ids\": [...]}', or constant_methods); the packed archive's stop set "
            "includes them",
            s.program_label,
            s.tokenizer_label,
        )
    ]


def check_runner_tokenizer(s: Subject) -> list[Finding]:
    """Can pytorch_tokenizers (the on-device runner) load it, and does it find bos/eos alone?"""
    tok = s.tokenizer
    if tok is None or tok.runner is None or tok.runner.loadable is None:
        return []
    runner = tok.runner
    if not runner.loadable:
        if tok.variant == "llama2c_original":
            return [
                finding(
                    "tokenizer-needs-conversion",
                    "warning",
                    f"{s.tokenizer_label} is a llama2.c tokenizer in the original llama2.c layout, "
                    "which the ExecuTorch runner cannot load",
                    "`etm-compat pack` converts it to the pytorch-tokenizers layout (recorded as "
                    "tokenizer.converted_from); for a loose deployment regenerate it with "
                    "`python -m pytorch_tokenizers.tools.llama2c.convert -t tokenizer.model -o tokenizer.bin`",
                    s.tokenizer_label,
                )
            ]
        return [
            finding(
                "tokenizer-not-loadable",
                "error",
                f"pytorch_tokenizers cannot load {s.tokenizer_label}: {runner.error}",
                "the on-device runner would fail too; ship the tokenizer in a format it loads "
                "(tokenizer.json, SentencePiece .model, tiktoken, llama2.c tokenizer.bin)",
                s.tokenizer_label,
            )
        ]
    if tok.format != "hf_json" or s.has_tokenizer_config:
        return []
    # The eos it should find: its own, else the program's get_eos_ids, else the stop set's.
    program_ids = None if is_legacy_default(s) else program_eos(s.constant_methods)[0]
    expected = tok.eos_id
    if expected is None:
        found = program_ids or list(s.stop_ids)
        expected = found[0] if found else None
    if tok.bos_id is not None and tok.eos_id is not None and runner.eos_id == expected:
        return []
    return [
        finding(
            "hf-tokenizer-config-missing",
            "warning",
            f"{s.tokenizer_label} does not name its bos/eos by itself and tokenizer_config.json "
            f"is missing: the runner guesses bos={runner.bos_id}, eos={runner.eos_id}"
            + (f" (expected eos {expected})" if expected is not None else ""),
            "ship tokenizer_config.json (with bos_token/eos_token) next to tokenizer.json",
            s.tokenizer_label,
        )
    ]


__all__ = [
    "check_eos",
    "check_runner_tokenizer",
    "check_special_ids",
    "check_vocab",
    "end_of_turn_id",
    "is_legacy_default",
    "program_eos",
    "token_label",
]
