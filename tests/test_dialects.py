"""Tests of etm_compat.formats.dialects: every known dialect's keys in one normalized view.

Inputs are the dialect programs of fixtures/field (made by fixtures/gen_field.py with the real
exporters' key sets). Each view is checked against the values the generator documents, and every
raw value against what executorch.runtime returns when the constant method runs; an archive
packed from each program passes ``verify --runtime``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, fixture_file

from etm_compat.archive import open_archive
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import main
from etm_compat.formats.dialects import KEYS, RUNNER_KEYS, normalize, read_dialects
from etm_compat.formats.pte import read_pte

RUNTIME_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:importlib.*")
SP_MODEL = FIXTURES / "tokenizers" / "sp.model"

#: program -> (dialects, {field: (normalized value, raw key)}) as fixtures/gen_field.py writes them.
EXPECTED: dict[str, tuple[tuple[str, ...], dict[str, tuple[Any, str]]]] = {
    "dialects/export_llm.pte": (
        ("export_llm",),
        {
            "bos_id": (128000, "get_bos_id"),
            "eos_ids": ([128009, 128001], "get_eos_ids"),
            "max_seq_len": (2048, "get_max_seq_len"),
            "max_context_len": (4096, "get_max_context_len"),
            "vocab_size": (128256, "get_vocab_size"),
            "n_layers": (16, "get_n_layers"),
            "n_kv_shared_layers": (8, "get_num_kv_shared_layers"),
            "use_kv_cache": (True, "use_kv_cache"),
            "use_sdpa_with_kv_cache": (True, "use_sdpa_with_kv_cache"),
            "enable_dynamic_shape": (True, "enable_dynamic_shape"),
        },
    ),
    "dialects/optimum.pte": (
        ("optimum",),
        {
            "dtype": (5, "get_dtype"),
            "bos_id": (1, "get_bos_id"),
            "eos_ids": ([2], "get_eos_id"),
            "head_dim": (128, "get_head_dim"),
            "n_kv_heads": (8, "get_n_kv_heads"),
            "n_layers": (32, "get_n_layers"),
            "vocab_size": (32000, "get_vocab_size"),
            "max_batch_size": (1, "get_max_batch_size"),
            "max_seq_len": (2048, "get_max_seq_len"),
            "use_kv_cache": (True, "use_kv_cache"),
            "sliding_window": (4096, "sliding_window"),
            "decoder_start_token_id": (1, "decoder_start_token_id"),
            "use_sdpa_with_kv_cache": (True, "use_sdpa_with_kv_cache"),
            "enable_dynamic_shape": (True, "enable_dynamic_shape"),
        },
    ),
    "dialects/qualcomm.pte": (
        ("qualcomm",),
        {
            "ar_len": (32, "get_ar_len"),
            "bos_id": (1, "get_bos_id"),
            "eos_ids": ([2], "get_eos_id"),
            "dim": (2048, "get_dim"),
            "head_dim": (64, "get_head_dim"),
            "max_batch_size": (1, "get_max_batch_size"),
            "max_seq_len": (1024, "get_max_seq_len"),
            "max_context_len": (1024, "get_max_context_len"),
            "num_bos": (1, "get_n_bos"),
            "num_eos": (1, "get_n_eos"),
            "n_kv_heads": (8, "get_n_kv_heads"),
            "n_layers": (16, "get_n_layers"),
            "vocab_size": (128256, "get_vocab_size"),
            "use_kv_cache": (True, "get_use_kv_cache"),
            "kv_io_bit_width": (8, "get_kv_io_bit_width"),
            "sink_size": (4, "get_sink_size"),
        },
    ),
    "dialects/mlx.pte": (
        ("optimum", "mlx"),
        {
            "dtype": (6, "get_dtype"),
            "bos_id": (128000, "get_bos_id"),
            "eos_ids": ([128001, 128008, 128009], "get_eos_id"),
            "head_dim": (64, "get_head_dim"),
            "max_seq_len": (1024, "get_max_seq_len"),
            "max_context_len": (1024, "get_max_ctx_len"),
            "use_sdpa_with_kv_cache": (False, "use_sdpa_with_kv_cache"),
        },
    ),
    "dialects/mlx_custom_components.pte": (
        ("mlx",),
        {
            "max_context_len": (1024, "get_max_ctx_len"),
            "prefill_chunk_size": (1024, "get_prefill_chunk_size"),
        },
    ),
    "dialects/mlx_offgraph_cache.pte": (
        ("mlx",),
        {
            "n_caches": (16, "get_n_caches"),
            "kv_heads": ([8] * 16, "get_kv_heads"),
            "head_dims": ([64] * 16, "get_head_dims"),
            "windows": ([0] * 16, "get_windows"),
            "prefill_chunk_size": (1024, "get_prefill_chunk_size"),
            "max_context_len": (1024, "get_max_ctx_len"),
        },
    ),
    "dialects/stale_llama2_defaults/stale_llama2_defaults.pte": (
        ("export_llm",),
        {
            "bos_id": (1, "get_bos_id"),
            "eos_ids": ([2], "get_eos_ids"),
            "vocab_size": (512, "get_vocab_size"),
        },
    ),
    "eos_singular/model.pte": (
        ("export_llm", "legacy"),
        {
            "bos_id": (1, "get_bos_id"),
            "eos_ids": ([495], "get_eos_id"),
            "max_seq_len": (128, "get_max_seq_len"),
        },
    ),
    "optimum_out/model.pte": (
        ("optimum",),
        {
            "bos_id": (0, "get_bos_id"),
            "eos_ids": ([2], "get_eos_id"),
            "head_dim": (8, "get_head_dim"),
        },
    ),
    "per_chip/Llama-3.2-3B-Instruct.SM8650.pte": (
        ("qualcomm",),
        {
            "eos_ids": ([2], "get_eos_id"),
            "max_context_len": (128, "get_max_context_len"),
            "num_bos": (1, "get_n_bos"),
        },
    ),
}
PROGRAMS = sorted(EXPECTED)


def _program(rel: str) -> Path:
    return fixture_file(f"field/{rel}")


@pytest.mark.parametrize("rel", PROGRAMS)
def test_normalized_view_of_each_dialect(rel: str) -> None:
    dialects, fields = EXPECTED[rel]
    view = read_dialects(read_pte(_program(rel)).constant_methods)
    assert view.dialects == dialects
    got = {name: (f.value, f.key) for name, f in view.fields.items() if name in fields}
    assert got == fields
    # Every key is kept under its raw name, and the runner's use follows constants.h.
    assert [k.key for k in view.keys] == list(read_pte(_program(rel)).constant_methods)
    assert set(view.runner_reads) | set(view.runner_overrides) <= set(RUNNER_KEYS)
    assert set(view.runner_overrides) <= {"get_bos_id", "get_vocab_size"}
    assert "get_eos_id" not in view.runner_reads


def test_runner_key_is_preferred_and_others_stay_visible() -> None:
    view = read_dialects(
        {"get_max_ctx_len": 512, "get_max_context_len": 256, "get_eos_id": 7, "get_eos_ids": [8]}
    )
    assert view.fields["max_context_len"].key == "get_max_context_len"
    assert view.fields["eos_ids"].value == [8]
    assert {k.key: k.runner for k in view.keys_for("eos_ids")} == {
        "get_eos_id": "ignored",
        "get_eos_ids": "read",
    }
    assert view.runner_ignores == ("get_max_ctx_len", "get_eos_id")
    ignored = next(k for k in view.keys if k.key == "get_max_ctx_len")
    assert ignored.stands_for == "get_max_context_len"


def test_unknown_and_mistyped_keys() -> None:
    view = read_dialects({"get_max_seq_len": "long", "my_key": 3, "use_kv_cache": 1})
    assert view.dialects == ()
    assert "max_seq_len" not in view.fields  # a string is no length
    assert view.fields["use_kv_cache"].value is True  # the runner reads an Int as a bool
    mine = next(k for k in view.keys if k.key == "my_key")
    assert (mine.field, mine.runner, mine.dialects) == (None, "ignored", ())
    assert json.dumps(view.to_json())  # JSON-ready


def test_legacy_program_speaks_legacy() -> None:
    view = read_dialects(read_pte(fixture_file("programs/legacy_keys.pte")).constant_methods)
    assert view.dialects == ("legacy",)
    assert view.fields["eos_ids"].key == "get_eos_id"


def test_inspect_of_a_lone_program_shows_its_dialect_view(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", "--json", str(_program("dialects/qualcomm.pte"))]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["dialects"]["dialects"] == ["qualcomm"]
    assert info["dialects"]["fields"]["use_kv_cache"] == {"value": True, "key": "get_use_kv_cache"}
    assert "get_use_kv_cache" in info["dialects"]["runner_ignores"]
    assert main(["inspect", str(_program("dialects/qualcomm.pte"))]) == EXIT_OK
    text = capsys.readouterr().out  # the table wraps at the captured width: look at words
    assert "(dialect:" in text and "qualcomm)" in text and "get_use_kv_cache" in text


# --- agreement with the real runtime ---------------------------------------------------------


def _runtime_value(outputs: list[Any]) -> Any:
    """A constant method's outputs as one value: tensors as tolist(), one output as a scalar."""
    values = [o.tolist() if hasattr(o, "tolist") else o for o in outputs]
    return values[0] if len(values) == 1 else values


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize("rel", PROGRAMS)
def test_view_agrees_with_the_runtime(rel: str) -> None:
    from executorch.runtime import Runtime

    path = _program(rel)
    view = read_dialects(read_pte(path).constant_methods)
    program = Runtime.get().load_program(path)
    for key in view.keys:
        got = _runtime_value(list(program.load_method(key.key).execute([])))
        expected = key.raw if not (isinstance(key.raw, list) and len(key.raw) == 1) else key.raw[0]
        assert got == expected and type(got) is type(expected), (key.key, got, key.raw)
        if key.key in KEYS:
            assert normalize(KEYS[key.key].kind, got) == key.value, key.key


@pytest.mark.runtime
@RUNTIME_WARNINGS
@pytest.mark.parametrize("rel", PROGRAMS)
def test_verify_runtime_agrees_on_an_archive_packed_from_each(
    rel: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.etm"
    assert (
        main(["pack", str(_program(rel)), "-o", str(out), "--tokenizer", str(SP_MODEL)]) == EXIT_OK
    )
    capsys.readouterr()
    assert main(["verify", "--runtime", "--json", str(out)]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["findings"] == []
    with open_archive(out) as archive:
        program = archive.metadata["program"]
    assert tuple(program["dialects"]) == EXPECTED[rel][0]
    assert program["constant_methods"] == dict(read_pte(_program(rel)).constant_methods)
