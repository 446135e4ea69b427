"""The constant-method dialects of ExecuTorch LLM programs, read into one normalized view.

Exporters name the same facts differently. export_llm writes ``get_eos_ids`` (a list),
optimum-executorch and Qualcomm's static Llama a singular ``get_eos_id``, MLX's exporter
``get_max_ctx_len`` where the runner reads ``get_max_context_len``, Qualcomm ``get_use_kv_cache``
for ``use_kv_cache``; v0.2/0.3 exports wrote ``get_eos_id``, ``get_n_bos``, ``get_n_eos`` and
``append_eos_to_prompt``. :func:`read_dialects` maps every key it knows to one normalized field
(``eos_ids``, ``max_context_len``...), keeps the raw name each value came from, says which
dialect(s) the program speaks, and which keys the ExecuTorch 1.x LLM runner reads, replaces with
the tokenizer's values, or ignores (``extension/llm/runner/constants.h`` and
``llm_runner_helper.cpp``; see shared/research/executorch-format.md section 4).

>>> view = read_dialects({"get_max_seq_len": 2048, "get_eos_id": 2, "get_dtype": 5})
>>> view.dialects, view.fields["eos_ids"].value, view.fields["eos_ids"].key
(('optimum',), [2], 'get_eos_id')
>>> view.runner_ignores
('get_eos_id', 'get_dtype')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

Dialect = Literal["export_llm", "optimum", "qualcomm", "mlx", "legacy"]
#: How the 1.x runner treats a key: reads it, names it but takes the value from the tokenizer
#: instead (``get_bos_id``, ``get_vocab_size``), or never looks at it.
RunnerUse = Literal["read", "overridden", "ignored"]
Kind = Literal["int", "ids", "bool", "number", "ints", "str"]

#: Every dialect, in the order a view lists them.
DIALECTS: Final[tuple[Dialect, ...]] = ("export_llm", "optimum", "qualcomm", "mlx", "legacy")
#: The constant methods the 1.x runner names (constants.h); get_bos_id and get_vocab_size are
#: overwritten with the tokenizer's values, the others are read from the program.
RUNNER_KEYS: Final = (
    "get_bos_id", "get_eos_ids", "get_max_seq_len", "get_max_context_len", "get_vocab_size",
    "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape",
)  # fmt: skip
#: The seven keys export_llm always writes: together they identify it without get_eos_ids.
EXPORT_LLM_ALWAYS: Final = frozenset(
    {
        "get_max_seq_len", "get_max_context_len", "get_n_layers", "get_vocab_size",
        "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape",
    }
)  # fmt: skip


@dataclass(frozen=True)
class KeySpec:
    """What one raw constant-method name means.

    ``marker``: only its dialect(s) write it, so its presence identifies them. ``stands_for``:
    for a key the runner ignores although it carries a runner setting, what the runner uses
    instead (a runner key, or a ``GenerationConfig`` field).
    """

    field: str
    kind: Kind
    dialects: tuple[Dialect, ...]
    runner: RunnerUse = "ignored"
    marker: bool = False
    stands_for: str | None = None


_ALL: Final = DIALECTS
# MLX's default export path writes optimum's keys (and get_max_ctx_len): it speaks both.
_OQ: Final[tuple[Dialect, ...]] = ("optimum", "qualcomm")
_RUNNER_FLAGS: Final[tuple[Dialect, ...]] = ("export_llm", "optimum", "legacy")
#: Every key of the known dialects (field.md Topic 4; optimum-executorch utils.py;
#: Qualcomm static_llama get_metadata; MLX export_llm_hf.py; ExecuTorch v0.2-v0.4 runners).
KEYS: Final[Mapping[str, KeySpec]] = MappingProxyType(
    {
        "get_bos_id": KeySpec("bos_id", "int", _ALL, "overridden"),
        "get_eos_ids": KeySpec("eos_ids", "ids", ("export_llm",), "read", marker=True),
        "get_eos_id": KeySpec(
            "eos_ids", "ids", ("optimum", "qualcomm", "legacy"), stands_for="get_eos_ids"
        ),
        "get_max_seq_len": KeySpec("max_seq_len", "int", _ALL, "read"),
        "get_max_context_len": KeySpec(
            "max_context_len", "int", ("export_llm", "qualcomm"), "read"
        ),
        "get_max_ctx_len": KeySpec(
            "max_context_len", "int", ("mlx",), marker=True, stands_for="get_max_context_len"
        ),
        "get_vocab_size": KeySpec("vocab_size", "int", _ALL, "overridden"),
        "get_n_layers": KeySpec("n_layers", "int", ("export_llm", "optimum", "qualcomm")),
        "get_num_kv_shared_layers": KeySpec(
            "n_kv_shared_layers", "int", ("export_llm",), marker=True
        ),
        "use_kv_cache": KeySpec("use_kv_cache", "bool", _RUNNER_FLAGS, "read"),
        "get_use_kv_cache": KeySpec(
            "use_kv_cache", "bool", ("qualcomm",), marker=True, stands_for="use_kv_cache"
        ),
        "use_sdpa_with_kv_cache": KeySpec("use_sdpa_with_kv_cache", "bool", _RUNNER_FLAGS, "read"),
        "enable_dynamic_shape": KeySpec(
            "enable_dynamic_shape", "bool", ("export_llm", "optimum"), "read"
        ),
        "get_n_bos": KeySpec(
            "num_bos", "int", ("qualcomm", "legacy"), stands_for="GenerationConfig.num_bos"
        ),
        "get_n_eos": KeySpec(
            "num_eos", "int", ("qualcomm", "legacy"), stands_for="GenerationConfig.num_eos"
        ),
        "append_eos_to_prompt": KeySpec(
            "append_eos_to_prompt",
            "bool",
            ("legacy",),
            marker=True,
            stands_for="GenerationConfig.num_eos",
        ),
        "get_dtype": KeySpec("dtype", "int", ("optimum",), marker=True),
        "get_head_dim": KeySpec("head_dim", "number", _OQ),
        "get_n_kv_heads": KeySpec("n_kv_heads", "int", _OQ),
        "get_max_batch_size": KeySpec("max_batch_size", "int", _OQ),
        "sliding_window": KeySpec("sliding_window", "int", ("optimum",), marker=True),
        "decoder_start_token_id": KeySpec(
            "decoder_start_token_id", "int", ("optimum",), marker=True
        ),
        "modality": KeySpec("modality", "str", ("optimum",), marker=True),
        "audio_token_id": KeySpec("audio_token_id", "int", ("optimum",), marker=True),
        "vision_token_id": KeySpec("vision_token_id", "int", ("optimum",), marker=True),
        "get_ar_len": KeySpec("ar_len", "int", ("qualcomm",), marker=True),
        "get_dim": KeySpec("dim", "int", ("qualcomm",), marker=True),
        "get_kv_io_bit_width": KeySpec("kv_io_bit_width", "int", ("qualcomm",), marker=True),
        "get_sink_size": KeySpec("sink_size", "int", ("qualcomm",), marker=True),
        "get_sliding_window": KeySpec("sliding_window", "int", ("qualcomm",), marker=True),
        "get_prefill_chunk_size": KeySpec("prefill_chunk_size", "int", ("mlx",), marker=True),
        "get_n_caches": KeySpec("n_caches", "int", ("mlx",), marker=True),
        "get_kv_heads": KeySpec("kv_heads", "ints", ("mlx",), marker=True),
        "get_head_dims": KeySpec("head_dims", "ints", ("mlx",), marker=True),
        "get_windows": KeySpec("windows", "ints", ("mlx",), marker=True),
        "get_mask_token_id": KeySpec("mask_token_id", "int", ("mlx",), marker=True),
        "get_vision_hidden_size": KeySpec("vision_hidden_size", "int", ("mlx",), marker=True),
        "get_max_vision_patches": KeySpec("max_vision_patches", "int", ("mlx",), marker=True),
    }
)
_RANK: Final[Mapping[RunnerUse, int]] = {"read": 0, "overridden": 1, "ignored": 2}


@dataclass(frozen=True)
class DialectKey:
    """One constant method of the program: its raw name and value, and what it means.

    ``field`` is None for a key no known dialect writes; ``value`` is the normalized value
    (None when the raw value does not have the field's type).
    """

    key: str
    raw: Any
    field: str | None
    value: Any
    dialects: tuple[Dialect, ...]
    runner: RunnerUse
    stands_for: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "raw": self.raw,
            "field": self.field,
            "value": self.value,
            "dialects": list(self.dialects),
            "runner": self.runner,
            "stands_for": self.stands_for,
        }


@dataclass(frozen=True)
class DialectField:
    """A normalized field, and the raw key its value came from."""

    value: Any
    key: str


@dataclass(frozen=True)
class DialectView:
    """What a program's constant methods say, whatever dialect wrote them.

    ``fields`` picks, for each normalized field, the key the runner reads first, then the
    others in :data:`KEYS` order; ``keys`` lists every constant method in program order.
    """

    dialects: tuple[Dialect, ...]
    fields: Mapping[str, DialectField]
    keys: tuple[DialectKey, ...]

    def value(self, field: str) -> Any:
        """The normalized value of ``field``, or None."""
        found = self.fields.get(field)
        return found.value if found is not None else None

    def keys_for(self, field: str) -> tuple[DialectKey, ...]:
        """Every key of the program that gives ``field`` (with a valid value)."""
        return tuple(k for k in self.keys if k.field == field and k.value is not None)

    @property
    def runner_reads(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.keys if k.runner == "read")

    @property
    def runner_overrides(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.keys if k.runner == "overridden")

    @property
    def runner_ignores(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.keys if k.runner == "ignored")

    def to_json(self) -> dict[str, Any]:
        """``{"dialects": [...], "fields": {field: {value, key}}, "keys": [...], "runner_*": [...]}``."""
        return {
            "dialects": list(self.dialects),
            "fields": {n: {"value": f.value, "key": f.key} for n, f in self.fields.items()},
            "keys": [k.to_json() for k in self.keys],
            "runner_reads": list(self.runner_reads),
            "runner_overrides": list(self.runner_overrides),
            "runner_ignores": list(self.runner_ignores),
        }


def normalize(kind: Kind, raw: Any) -> Any:
    """``raw`` as a value of ``kind``, or None if it is not one.

    A one-element list stands for its element where a scalar is expected (the runner reads the
    first output); a float head_dim that is whole becomes an int.
    """
    if isinstance(raw, list) and len(raw) == 1 and kind not in ("ids", "ints"):
        raw = raw[0]
    is_int = isinstance(raw, int) and not isinstance(raw, bool)
    if kind == "int":
        return raw if is_int else None
    if kind == "bool":
        return raw if isinstance(raw, bool) else bool(raw) if is_int else None
    if kind == "number":
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return raw if is_int or isinstance(raw, float) else None
    if kind == "str":
        return raw if isinstance(raw, str) else None
    items = [raw] if is_int else raw
    ints = isinstance(items, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in items
    )
    return list(items) if ints and (items or kind == "ints") else None


def read_dialects(constant_methods: Mapping[str, Any]) -> DialectView:
    """Read a program's constant methods (raw names and values) into one normalized view.

    >>> read_dialects({"get_max_ctx_len": 1024}).fields["max_context_len"]
    DialectField(value=1024, key='get_max_ctx_len')
    """
    present = [name for name in constant_methods if name in KEYS]
    spoken: set[Dialect] = {d for n in present if KEYS[n].marker for d in KEYS[n].dialects}
    if set(constant_methods) >= EXPORT_LLM_ALWAYS:
        spoken.add("export_llm")
    # A key of v0.2-v0.4 exports that export_llm no longer writes (singular get_eos_id,
    # get_n_bos...) and no detected dialect explains.
    for name in present:
        writers = set(KEYS[name].dialects)
        if "legacy" in writers and "export_llm" not in writers and not spoken & writers:
            spoken.add("legacy")
    keys = []
    for name, raw in constant_methods.items():
        spec = KEYS.get(name)
        if spec is None:
            keys.append(DialectKey(name, raw, None, None, (), "ignored", None))
            continue
        value = normalize(spec.kind, raw)
        keys.append(
            DialectKey(name, raw, spec.field, value, spec.dialects, spec.runner, spec.stands_for)
        )
    order = {name: i for i, name in enumerate(KEYS)}
    fields: dict[str, DialectField] = {}
    valid = (e for e in keys if e.field is not None and e.value is not None)
    for entry in sorted(valid, key=lambda e: (_RANK[e.runner], order[e.key])):
        assert entry.field is not None
        fields.setdefault(entry.field, DialectField(entry.value, entry.key))
    return DialectView(
        dialects=tuple(d for d in DIALECTS if d in spoken),
        fields=MappingProxyType(dict(sorted(fields.items()))),
        keys=tuple(keys),
    )


__all__ = [
    "DIALECTS",
    "KEYS",
    "RUNNER_KEYS",
    "Dialect",
    "DialectField",
    "DialectKey",
    "DialectView",
    "KeySpec",
    "RunnerUse",
    "normalize",
    "read_dialects",
]
