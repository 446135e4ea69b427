"""Which model family a deployment is: votes from every source, then one decision.

Each source casts a :class:`Vote` for the families it is consistent with, weighted by how much
it says: a shipped template that matches a registry template exactly outweighs everything; a
template marker, ``config.json`` ``model_type``/``architectures``, the export config's
``model_class``, the tokenizer's special-token fingerprint and a tiktoken rank count equal to a
family's are *strong*; vocabulary sizes, the tokenizer format, RoPE theta and file names are
*weak*. :func:`decide_family` adds the weights up and records what it could not separate, what
disagreed, and why.

Only what the files hold counts. pytorch-tokenizers appends Llama 3's 256 special tokens to *any*
tiktoken rank file, so those (and ids computed from them) are no vote; the rank count is. A
tokenizer whose own vocabulary contradicts a family *vetoes* it (:meth:`VoteBox.tokenizer`):
weak hints for it are dropped, and strong evidence from other files names it only when no
unvetoed family has any, one confidence step lower, with a ``family-tokenizer-mismatch`` note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from etm_compat.constants import TIKTOKEN_NUM_SPECIAL_TOKENS
from etm_compat.errors import UsageError
from etm_compat.findings import Confidence, Severity
from etm_compat.formats.pte import PteInfo
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer.records import (
    Evidence,
    FamilyDecision,
    Ledger,
    Vote,
    as_int,
    as_number,
    lower_confidence,
)
from etm_compat.prompt.families import Family, detect_family_from_template, match_template

# Vote weights (see the module docstring). A weak vote alone never names a family unless it
# narrows the candidates to one family or one group.
W_TEMPLATE_EXACT: Final = 100
W_TEMPLATE_MARKER: Final = 10
W_FINGERPRINT: Final = 8
W_CONFIG: Final = 6
W_VOCAB: Final = 2
W_ROPE: Final = 2
W_FORMAT: Final = 1
W_FILE_NAME: Final = 1

#: RoPE theta of the Llama 3 generation (params.json ``rope_theta``).
LLAMA3_ROPE_THETA: Final = 500000.0


def _ordered(registry: Mapping[str, Family], ids: Iterable[str]) -> tuple[str, ...]:
    wanted = set(ids)
    return tuple(fid for fid in registry if fid in wanted)


def _squash(text: str) -> str:
    """Whitespace-insensitive form, as the registry compares templates."""
    return " ".join(text.split())


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


class VoteBox:
    """Collects votes against one registry; every vote is also recorded in the ledger."""

    def __init__(self, registry: Mapping[str, Family], ledger: Ledger) -> None:
        self.registry = registry
        self.ledger = ledger
        self.votes: list[Vote] = []
        #: Families the tokenizer rules out: ``{family: (source, why)}``.
        self.vetoes: dict[str, tuple[str, str]] = {}

    def cast(
        self, families: Iterable[str], weight: int, strong: bool, source: str, detail: str
    ) -> None:
        ids = _ordered(self.registry, families)
        if not ids:
            return
        evidence = self.ledger.note(source, "family", ids, detail)
        self.votes.append(Vote(ids, weight, strong, evidence))

    def where(self, pred: Any) -> tuple[str, ...]:
        return tuple(fid for fid, fam in self.registry.items() if pred(fam))

    # --- sources ---------------------------------------------------------------------------
    def template(self, text: str, source: str) -> str | None:
        """Vote from a shipped (or overriding) template; return the family it matches exactly.

        Every family publishing this exact template gets the exact-match vote (gemma and gemma2
        share one). Otherwise each family whose marker occurs votes, the first in detection
        order (the most specific) a little more than the rest.
        """
        exact = match_template(text)
        if exact is not None and exact in self.registry:
            wanted = _squash(text)
            same = [
                fid
                for fid, fam in self.registry.items()
                if any(_squash(t) == wanted for t in fam.templates().values())
            ]
            self.cast(
                same or [exact], W_TEMPLATE_EXACT, True, source, f"chat template matches {exact}"
            )
            return exact
        for rank, (family_id, marker) in enumerate(detect_family_from_template(text)):
            weight = W_TEMPLATE_MARKER + (2 if rank == 0 else 0)
            self.cast([family_id], weight, True, source, f"chat template contains {marker!r}")
        return None

    def hf_config(self, config: Mapping[str, Any], source: str) -> None:
        model_type = config.get("model_type")
        if isinstance(model_type, str) and model_type:
            fits = self.where(lambda f: model_type in f.model_types)
            self.cast(fits, W_CONFIG, True, source, f"model_type {model_type!r}")
        archs = config.get("architectures")
        if isinstance(archs, list):
            names = [a for a in archs if isinstance(a, str)]
            fits = self.where(lambda f: any(a in f.architectures for a in names))
            self.cast(fits, W_CONFIG, True, source, f"architectures {names!r}")
        self.vocab(as_int(config.get("vocab_size")), source, "vocab_size")

    def export_config(self, export: Mapping[str, Any], source: str) -> None:
        base = export.get("base")
        model_class = base.get("model_class") if isinstance(base, Mapping) else None
        if isinstance(model_class, str) and model_class:
            fits = self.where(lambda f: _class_fits(model_class, f.model_classes))
            self.cast(fits, W_CONFIG, True, source, f"base.model_class {model_class!r}")

    def params(self, params: Mapping[str, Any], source: str) -> None:
        self.vocab(as_int(params.get("vocab_size")), source, "vocab_size")
        theta = as_number(params.get("rope_theta"))
        if theta is not None and float(theta) == LLAMA3_ROPE_THETA and "llama3" in self.registry:
            group = self.registry["llama3"].group
            fits = self.where(lambda f: f.id == "llama3" or (group and f.group == group))
            self.cast(fits, W_ROPE, False, source, f"rope_theta {theta} (Llama 3 generation)")

    def tokenizer(self, tok: TokenizerInfo, source: str) -> None:
        """Vetoes, fingerprint votes, then the format and the vocabulary size.

        A tokenizer may hold several families' fingerprints (a Qwen3 tokenizer also has
        Qwen2.5's ``<tool_call>``; a Gemma 3 one has Gemma's ``<bos>``/``<eos>``). Each matched
        family then gains one point per token it has that another matched family does not
        know (:meth:`Family.token_texts`): the more specific family wins. Among matched families the
        size decides first: those far from it drop out when one that fits remains (a Qwen3
        tokenizer holds Qwen3.5's ChatML tokens, but its size is Qwen3's).
        """
        rank_file = tok.format == "tiktoken"  # holds no special tokens: the runner adds them

        def present(text: str) -> bool:
            return not rank_file and (text in tok.special_tokens or tok.token_id(text) is not None)

        misfits = {
            i: f.vocabulary_misfit(tok.format, tok.vocab_size) for i, f in self.registry.items()
        }
        far = {fid for fid, why in misfits.items() if why is not None}
        for fid in far:  # a veto: the size says no, and no special token of the family says yes
            if not any(present(t) for t in self.registry[fid].special_token_fingerprint):
                why = "; the runner's Llama 3 tokens on any rank file are no evidence"
                why = why if rank_file else ", and none of its special tokens"
                self.vetoes[fid] = (source, f"{misfits[fid]}{why}")
        fits = self.where(
            lambda f: (
                bool(f.special_token_fingerprint)
                and all(present(t) for t in f.special_token_fingerprint)
            )
        )
        if any(fid not in far for fid in fits):
            fits = tuple(fid for fid in fits if fid not in far)
        by_bonus: dict[tuple[int, tuple[str, ...]], list[str]] = {}
        for fid in fits:
            mine = {t for t in self.registry[fid].token_texts() if present(t)}
            others = [self.registry[o].token_texts() for o in fits if o != fid]
            extra = tuple(sorted(t for t in mine if any(t not in known for known in others)))
            by_bonus.setdefault((len(extra), extra), []).append(fid)
        for (bonus, extra), ids in sorted(by_bonus.items(), reverse=True):
            prints = sorted(
                {t for fid in ids for t in self.registry[fid].special_token_fingerprint}
            )
            detail = f"special tokens {prints}"
            if extra:
                detail += f"; also {list(extra)}, which other matching families lack"
            self.cast(ids, W_FINGERPRINT + bonus, True, source, detail)
        if rank_file:
            ranks = tok.vocab_size - TIKTOKEN_NUM_SPECIAL_TOKENS
            same = self.where(lambda f: "tiktoken" in f.tokenizer_formats and f.id not in far)
            self.cast(same, W_FINGERPRINT, True, source, f"a tiktoken rank file of {ranks} ranks")
        formats = self.where(
            lambda f: tok.format in f.tokenizer_formats and f.id not in self.vetoes
        )
        if formats and len(formats) < len(self.registry):
            self.cast(formats, W_FORMAT, False, source, f"tokenizer format {tok.format!r}")
        if not rank_file:  # a rank file's size counts the runner's 256 special tokens
            self.vocab(tok.vocab_size, source, "tokenizer vocabulary size")

    def pte(self, pte: PteInfo, source: str) -> None:
        self.vocab(as_int(pte.constant_methods.get("get_vocab_size")), source, "get_vocab_size")

    def vocab(self, size: int | None, source: str, what: str) -> None:
        if size is None:
            return
        fits = self.where(lambda f: size in f.vocab_sizes)
        self.cast(fits, W_VOCAB, False, source, f"{what} {size}")

    def file_names(self, names: Sequence[str]) -> None:
        # Longest id first, so "llama3_2" wins over "llama3" inside "llama-3.2-1b.pte".
        keys = sorted(((_norm(fid), fid) for fid in self.registry), key=lambda kv: -len(kv[0]))
        for name in names:
            norm = _norm(name)
            hit = next((fid for key, fid in keys if key and key in norm), None)
            if hit is not None:
                self.cast([hit], W_FILE_NAME, False, name, f"file name mentions {hit!r}")


def _class_fits(model_class: str, classes: Iterable[str]) -> bool:
    """Exact, or export_llm's sized id of the class (``qwen3_1_7b`` fits ``qwen3``).

    Only a size suffix (``_<n>b``/``_<n>_<m>b``) counts: ``llama3_2`` does not fit ``llama3``.
    """
    return any(
        model_class == c or re.fullmatch(re.escape(c) + r"_\d+(?:_\d+)?b", model_class)
        for c in classes
    )


def decide_family(
    registry: Mapping[str, Family],
    votes: Sequence[Vote],
    ledger: Ledger,
    *,
    override: str | None = None,
    vetoes: Mapping[str, tuple[str, str]] | None = None,
) -> FamilyDecision:
    """Add the votes up and choose; record conflicts and findings in ``ledger``.

    ``vetoes`` (from :attr:`VoteBox.vetoes`) are families the tokenizer rules out: their weak
    votes never count, and their strong ones only when no unvetoed family has a strong vote.

    >>> decide_family({}, [], Ledger()).confidence
    'none'
    """
    if override is not None:
        if override not in registry:
            raise UsageError(
                f"unknown family {override!r}",
                hint=f"use one of: {', '.join(registry)}",
            )
        ev = ledger.note("override", "family", (override,), f"--family {override}")
        against = [v for v in votes if v.strong and override not in v.families]
        if against:
            ledger.find(
                "family-override-disagrees",
                "info",
                f"--family {override} overrides what the files suggest: "
                + "; ".join(f"{v.evidence.source} {v.evidence.detail}" for v in against),
                paths=sorted({v.evidence.source for v in against}),
            )
        return FamilyDecision(override, "high", (ev, *(v.evidence for v in votes)), ())

    all_evidence = tuple(v.evidence for v in votes)
    vetoes = vetoes or {}
    counted = _without_vetoed(votes, set(vetoes))
    scores: dict[str, int] = {}
    for vote in counted:
        for fid in vote.families:
            scores[fid] = scores.get(fid, 0) + vote.weight
    if not scores:
        hinted = {f for v in votes for f in v.families}
        ruled = _ordered(registry, (f for f in vetoes if f in hinted or "tiktoken" in vetoes[f][1]))
        why = "no source names a known family"
        if ruled:  # say why the hints, or the rank file's default Llama 3 tokens, do not count
            why = f"the tokenizer rules out {', '.join(ruled)} ({vetoes[ruled[0]][1]})"
        return _unknown(ledger, all_evidence, (), why)
    top = max(scores.values())
    tied = _ordered(registry, (fid for fid, s in scores.items() if s == top))
    strong_for = {
        fid: {v.evidence.source for v in counted if v.strong and fid in v.families} for fid in tied
    }
    groups = {registry[fid].group for fid in tied}
    one_group = len(groups) == 1 and None not in groups
    if not any(strong_for.values()) and len(tied) > 1 and not one_group:
        return _unknown(
            ledger, all_evidence, tied, "only weak hints, and they fit several families"
        )

    chosen, alternatives = tied[0], tied[1:]
    if len(tied) > 1 and one_group:
        defaults = [fid for fid in tied if registry[fid].group_default]
        chosen = defaults[0] if defaults else tied[0]
        alternatives = tuple(fid for fid in tied if fid != chosen)
    exact = any(v.weight >= W_TEMPLATE_EXACT and chosen in v.families for v in counted)
    sources = strong_for[chosen]
    confidence: Confidence = (
        "high" if exact or len(sources) >= 2 else "medium" if sources else "low"
    )

    # A source that also voted for the chosen family (a weaker fingerprint tier) is not against it.
    backing = {v.evidence.source for v in votes if chosen in v.families}
    against = [
        v
        for v in votes
        if v.strong and chosen not in v.families and v.evidence.source not in backing
    ]
    # A tie across groups whose every alternative a disagreeing source names is that
    # disagreement: one fault, reported once, as family-conflict (which says how it chose).
    tie_is_conflict = (
        bool(alternatives)
        and not one_group
        and all(any(fid in v.families for v in against) for fid in alternatives)
    )
    if alternatives:
        confidence = "medium" if confidence == "high" else confidence
        severity: Severity = "info" if one_group else "warning"
        why = (
            f"the {registry[chosen].group!r} group's default"
            if one_group
            else "the first in registry order"
        )
        if not tie_is_conflict:
            ledger.find(
                "family-ambiguous",
                severity,
                f"the evidence fits {', '.join(tied)} equally; chose {chosen}, {why}",
                hint=f"if it is not {chosen}, pass --family with one of {', '.join(alternatives)}",
            )
        ledger.note(
            "registry",
            "family",
            (chosen,),
            f"{chosen} chosen among {', '.join(tied)}; override with --family",
        )

    if against:
        support = [v for v in votes if v.strong and chosen in v.families]
        pairs = [(chosen, v.evidence.source) for v in support] or [(chosen, "inferred")]
        pairs += [(",".join(v.families), v.evidence.source) for v in against]
        ledger.compare("family", pairs)
        confidence = "medium" if confidence == "high" else "low"
        ledger.find(
            "family-conflict",
            "warning",
            "sources disagree about the model family: "
            + "; ".join(
                f"{v.evidence.source} {v.evidence.detail} suggests {', '.join(v.families)}"
                for v in against
            )
            + f"; chose {chosen}"
            + (
                f" (the evidence fits {', '.join(tied)} equally: {chosen} is the first in "
                "registry order)"
                if tie_is_conflict
                else ""
            ),
            hint=f"check the files, or pass --family to choose (inferred {chosen})",
            paths=sorted({v.evidence.source for v in against}),
        )
    if chosen in vetoes:
        source, why = vetoes[chosen]
        confidence = lower_confidence(confidence)
        ledger.note(source, "family", (chosen,), f"does not fit {chosen}: {why}")
        ledger.find(
            "family-tokenizer-mismatch",
            "info",
            f"{source} does not fit {chosen} ({why}); {chosen} comes from "
            + ", ".join(sorted(strong_for[chosen])),
            hint="check that the tokenizer belongs to this model",
            paths=(source,),
        )
    used = tuple(e for e in ledger.evidence if e.field == "family" and e not in all_evidence)
    return FamilyDecision(chosen, confidence, all_evidence + used, alternatives)


def _without_vetoed(votes: Sequence[Vote], vetoed: set[str]) -> list[Vote]:
    """The votes that count: vetoed families drop out, unless only they have strong votes."""
    strong = {fid for v in votes if v.strong for fid in v.families}
    drop = vetoed if strong - vetoed else vetoed - strong
    kept = [replace(v, families=tuple(f for f in v.families if f not in drop)) for v in votes]
    return [v for v in kept if v.families]


def _unknown(
    ledger: Ledger, evidence: tuple[Evidence, ...], candidates: tuple[str, ...], why: str
) -> FamilyDecision:
    message = f"the model family could not be inferred: {why}"
    if candidates:
        message += f" ({', '.join(candidates)})"
    ledger.find(
        "family-unknown",
        "warning",
        message,
        hint="pass --family <id> and/or --chat-template <file>; without them the archive has no "
        "chat template and only the stop tokens the files declare",
    )
    return FamilyDecision(None, "none", evidence, candidates)


__all__ = ["VoteBox", "decide_family"]
