"""Runner truth: what the ExecuTorch 1.x LLM runner will actually use, beside what files claim.

``extension/llm/runner`` (``llm_runner_helper.cpp`` ``get_llm_metadata``/``get_eos_ids``, the
same from release/1.0 to main; research notes executorch-format.md section 4):

* ``get_max_seq_len`` is required: without it the runner refuses to load the program;
* ``get_max_context_len`` if the program has it, else the max_seq_len;
* ``use_kv_cache`` (default true), ``use_sdpa_with_kv_cache`` and ``enable_dynamic_shape``
  (default false) from the program;
* bos and vocab size always from the **tokenizer** (a program's ``get_bos_id``/
  ``get_vocab_size`` are overwritten);
* eos: the program's ``get_eos_ids`` when it has that method, else the tokenizer's eos. A
  singular ``get_eos_id`` (optimum, Qualcomm, v0.2/0.3 exports) is never read.

The tokenizer's values are pytorch_tokenizers' own (the runner's library) when that check ran,
else what etm-compat's reader found. Nothing here runs the runtime.

>>> truth = runner_truth({"get_max_seq_len": 128, "get_eos_id": 495}, None)
>>> truth.eos_ids.source, truth.eos_ids.ignored
('tokenizer', {'get_eos_id': 495})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from etm_compat.formats.dialects import DialectView, read_dialects
from etm_compat.formats.tokenizer.model import TokenizerInfo

#: Which runner this describes (recorded with the values, since older runners differ).
RUNNER: Final = "ExecuTorch 1.x extension/llm/runner (TextLLMRunner, llama_main)"
#: The runner's defaults for the flags it reads (get_llm_metadata).
_FLAG_DEFAULTS: Final = {
    "use_kv_cache": True,
    "use_sdpa_with_kv_cache": False,
    "enable_dynamic_shape": False,
}


@dataclass(frozen=True)
class RunnerValue:
    """One value the runner uses: ``source`` is a constant method, ``"tokenizer"``, or
    ``"default"``; ``ignored`` is what the program says about it that the runner never reads
    (raw key -> raw value)."""

    value: Any
    source: str
    ignored: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "ignored": dict(self.ignored)}


@dataclass(frozen=True)
class RunnerTruth:
    """What the 1.x runner takes from a program and its tokenizer. ``loads`` is False when it
    refuses the program (``refusal`` says why)."""

    loads: bool
    refusal: str | None
    bos_id: RunnerValue
    eos_ids: RunnerValue
    vocab_size: RunnerValue
    max_seq_len: RunnerValue
    max_context_len: RunnerValue
    use_kv_cache: RunnerValue
    use_sdpa_with_kv_cache: RunnerValue
    enable_dynamic_shape: RunnerValue

    @property
    def values(self) -> dict[str, RunnerValue]:
        """Every value by name, in a stable order."""
        return {
            "bos_id": self.bos_id,
            "eos_ids": self.eos_ids,
            "vocab_size": self.vocab_size,
            "max_seq_len": self.max_seq_len,
            "max_context_len": self.max_context_len,
            "use_kv_cache": self.use_kv_cache,
            "use_sdpa_with_kv_cache": self.use_sdpa_with_kv_cache,
            "enable_dynamic_shape": self.enable_dynamic_shape,
        }

    def to_json(self) -> dict[str, Any]:
        """``{"runner", "loads", "refusal", <name>: {"value", "source", "ignored"}...}`` (the
        ``runner`` section of metadata.json)."""
        out: dict[str, Any] = {"runner": RUNNER, "loads": self.loads, "refusal": self.refusal}
        out.update({name: v.to_json() for name, v in self.values.items()})
        return out


def tokenizer_ids(tok: TokenizerInfo | None) -> tuple[int | None, int | None, int | None]:
    """(bos, eos, vocab size) as the runner's tokenizer library reports them, when it was asked
    and loaded the file; else as etm-compat's reader found them."""
    if tok is None:
        return None, None, None
    run = tok.runner
    if run is not None and run.loadable:
        return run.bos_id, run.eos_id, run.vocab_size
    return tok.bos_id, tok.eos_id, tok.vocab_size


def _ignored(view: DialectView, name: str) -> dict[str, Any]:
    return {k.key: k.raw for k in view.keys_for(name) if k.runner != "read"}


def _read(view: DialectView, name: str, default: Any, default_source: str) -> RunnerValue:
    """The value of the runner key for ``name``, else ``default``."""
    read = [k for k in view.keys_for(name) if k.runner == "read"]
    if read:
        return RunnerValue(read[0].value, read[0].key, _ignored(view, name))
    return RunnerValue(default, default_source, _ignored(view, name))


def runner_truth(
    constant_methods: Mapping[str, Any], tokenizer: TokenizerInfo | None
) -> RunnerTruth:
    """What the ExecuTorch 1.x LLM runner uses for a program and a tokenizer.

    >>> runner_truth({}, None).refusal
    'no get_max_seq_len constant method: the runner stops with "Required metadata method get_max_seq_len not found in model"'
    """
    view = read_dialects(constant_methods)
    bos, eos, vocab = tokenizer_ids(tokenizer)
    seq = _read(view, "max_seq_len", None, "missing")
    ctx = _read(
        view,
        "max_context_len",
        seq.value,
        "get_max_seq_len" if seq.value is not None else "missing",
    )
    refusal = None
    if seq.value is None and "get_max_seq_len" in constant_methods:
        refusal = "get_max_seq_len does not return an integer"
    elif seq.value is None:
        refusal = (
            "no get_max_seq_len constant method: the runner stops with "
            '"Required metadata method get_max_seq_len not found in model"'
        )
    if "get_eos_ids" in constant_methods:  # replaces the tokenizer's eos, whatever it holds
        eos_ids = _read(view, "eos_ids", None, "get_eos_ids")
    else:
        eos_ids = RunnerValue(
            [eos] if eos is not None else [], "tokenizer", _ignored(view, "eos_ids")
        )
    flags = {name: _read(view, name, value, "default") for name, value in _FLAG_DEFAULTS.items()}
    return RunnerTruth(
        loads=refusal is None,
        refusal=refusal,
        bos_id=RunnerValue(bos, "tokenizer", _ignored(view, "bos_id")),
        eos_ids=eos_ids,
        vocab_size=RunnerValue(vocab, "tokenizer", _ignored(view, "vocab_size")),
        max_seq_len=seq,
        max_context_len=ctx,
        use_kv_cache=flags["use_kv_cache"],
        use_sdpa_with_kv_cache=flags["use_sdpa_with_kv_cache"],
        enable_dynamic_shape=flags["enable_dynamic_shape"],
    )


__all__ = ["RUNNER", "RunnerTruth", "RunnerValue", "runner_truth", "tokenizer_ids"]
