"""Which model family a deployment is: votes from every source, then one decision.

Each source casts a :class:`Vote` for the families it is consistent with, weighted by how much
it says: a shipped template that matches a registry template exactly outweighs everything; a
template marker, ``config.json`` ``model_type``/``architectures``, the export config's
``model_class`` and the tokenizer's special-token fingerprint are *strong*; vocabulary sizes,
the tokenizer format, RoPE theta and file names are *weak*. :func:`decide_family` adds the
weights up and records what it could not separate, what disagreed, and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from etm_compat.errors import UsageError
from etm_compat.findings import Confidence, Severity
from etm_compat.formats.pte import PteInfo
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.infer.records import Evidence, Ledger, as_int, as_number
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


@dataclass(frozen=True)
class Vote:
    """One source's opinion: the families it fits, how much it weighs, the evidence behind it."""

    families: tuple[str, ...]
    weight: int
    strong: bool
    evidence: Evidence


@dataclass(frozen=True)
class FamilyDecision:
    """The family chosen, how sure, the evidence, and the families left unseparated."""

    family_id: str | None
    confidence: Confidence
    evidence: tuple[Evidence, ...]
    alternatives: tuple[str, ...]


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
        """Fingerprint votes, then the format and the vocabulary size.

        A tokenizer may hold several families' fingerprints (a Qwen3 tokenizer also has
        Qwen2.5's ``<tool_call>``; a Gemma 3 one has Gemma's ``<bos>``/``<eos>``). Each matched
        family then gains one point per token it has that another matched family does not
        know (:func:`family_tokens`): the more specific family wins.
        """

        def present(text: str) -> bool:
            return text in tok.special_tokens or tok.token_id(text) is not None

        fits = self.where(
            lambda f: (
                bool(f.special_token_fingerprint)
                and all(present(t) for t in f.special_token_fingerprint)
            )
        )
        by_bonus: dict[tuple[int, tuple[str, ...]], list[str]] = {}
        # A tiktoken file holds no special tokens: the reader supplies the runner's Llama 3
        # defaults, so which of them are present says nothing about the release.
        synthetic = tok.format == "tiktoken"
        for fid in fits:
            if synthetic:
                by_bonus.setdefault((0, ()), []).append(fid)
                continue
            mine = {t for t in family_tokens(self.registry[fid]) if present(t)}
            others = [family_tokens(self.registry[o]) for o in fits if o != fid]
            extra = tuple(sorted(t for t in mine if any(t not in known for known in others)))
            by_bonus.setdefault((len(extra), extra), []).append(fid)
        for (bonus, extra), ids in sorted(by_bonus.items(), reverse=True):
            prints = sorted(
                {t for fid in ids for t in self.registry[fid].special_token_fingerprint}
            )
            detail = f"special tokens {prints}"
            if synthetic:
                detail += " (the tiktoken reader's default Llama 3 specials)"
            if extra:
                detail += f"; also {list(extra)}, which other matching families lack"
            self.cast(ids, W_FINGERPRINT + bonus, True, source, detail)
        formats = self.where(lambda f: tok.format in f.tokenizer_formats)
        if formats and len(formats) < len(self.registry):
            self.cast(formats, W_FORMAT, False, source, f"tokenizer format {tok.format!r}")
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


def family_tokens(family: Family) -> frozenset[str]:
    """Every token text the registry names for a family (fingerprint, bos, eos, stops)."""
    named = (family.bos_token, family.eos_token, family.end_of_turn)
    return frozenset(
        [*family.special_token_fingerprint, *family.stop_tokens, *(t for t in named if t)]
    )


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
) -> FamilyDecision:
    """Add the votes up and choose; record conflicts and findings in ``ledger``.

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
    scores: dict[str, int] = {}
    for vote in votes:
        for fid in vote.families:
            scores[fid] = scores.get(fid, 0) + vote.weight
    if not scores:
        return _unknown(ledger, all_evidence, (), "no source names a known family")
    top = max(scores.values())
    tied = _ordered(registry, (fid for fid, s in scores.items() if s == top))
    strong_for = {
        fid: {v.evidence.source for v in votes if v.strong and fid in v.families} for fid in tied
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
    exact = any(v.weight >= W_TEMPLATE_EXACT and chosen in v.families for v in votes)
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
    used = tuple(e for e in ledger.evidence if e.field == "family" and e not in all_evidence)
    return FamilyDecision(chosen, confidence, all_evidence + used, alternatives)


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


__all__ = ["FamilyDecision", "Vote", "VoteBox", "decide_family", "family_tokens"]
