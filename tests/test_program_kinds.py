"""Tests of what a program is (formats/program_kinds, signatures), the data keys it needs
(formats/delegates, weights_pairing) and what a .ptd holds (formats/ptd entry kinds).

Ground truth comes from the real tools: executorch.runtime's MethodMeta for signatures, and
flatc with XNNPACK's own schema (plus XNNPACK's own header class) for the keys inside delegate
payloads. Hostile cases mutate one thing of a good fixture, or build a small program with the
``flatbuffers`` builder (inline delegate payloads need no segments).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from conftest import FIXTURES, fixture_file, fixture_glob
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etm_compat.errors import PteFormatError
from etm_compat.formats.delegates import read_delegate_keys
from etm_compat.formats.program_kinds import ProgramKind, read_program_kind, read_program_kind_bytes
from etm_compat.formats.ptd import PtdInfo, PtdTensor, entry_kind, ptd_content, read_ptd
from etm_compat.formats.pte import describe_program, open_program, open_program_bytes, read_pte
from etm_compat.formats.weights_pairing import (
    ProgramKeys,
    pair_weights,
    program_keys,
    read_program_keys,
)

FOLDERS = ("programs", "llama", "legacy", "field", "multimodal", "lora")
PROGRAMS = [p for folder in FOLDERS for p in fixture_glob(f"{folder}/**/*.pte")]
LLM_STAND_INS = (  # Linear(4, 3) programs that carry LLM metadata: text LLMs by metadata only
    "programs/constants_all.pte", "programs/ext_weights.pte", "programs/legacy_keys.pte",
    "programs/xnnpack.pte", "legacy/with_ptd/program.pte", "field/tekken/model.pte",
    "field/per_chip/Llama-3.2-3B-Instruct.SM8650.pte",
    "field/per_chip/Llama-3.2-3B-Instruct.SM8750.pte",
    "field/nested_shared/0_6b/xnnpack/qwen3_0_6b_xnnpack_8da4w.pte",
    "field/nested_shared/1_7b/xnnpack/qwen3_1_7b_xnnpack_8da4w.pte",
    *(f"field/dialects/{n}.pte" for n in ("export_llm", "mlx", "mlx_custom_components",
                                          "mlx_offgraph_cache", "optimum", "qualcomm")),
    "field/dialects/stale_llama2_defaults/stale_llama2_defaults.pte",
)  # fmt: skip
#: Every fixture program's kind; programs not listed are text LLMs with a token-id signature.
KINDS = {
    "programs/constants_none.pte": "unknown",
    "multimodal/vision/model.pte": "multimodal_llm",
    "multimodal/voxtral_like/model.pte": "multimodal_llm",
    "multimodal/voxtral_like/preprocessor.pte": "audio_preprocessor",
    "multimodal/whisper_like/model.pte": "seq2seq",
    "multimodal/whisper_like/whisper_preprocessor.pte": "audio_preprocessor",
    **dict.fromkeys(LLM_STAND_INS, "text_llm"),
}
RUNTIME = pytest.mark.filterwarnings("ignore::DeprecationWarning:importlib.*")


def _rel(path: Path) -> str:
    return path.relative_to(FIXTURES).as_posix()


# --- kinds of every fixture program -----------------------------------------------------------


@pytest.mark.parametrize("path", PROGRAMS, ids=_rel)
def test_every_fixture_program_has_its_kind(path: Path) -> None:
    kind = read_program_kind(path)
    expected = KINDS.get(_rel(path), "text_llm")
    assert kind.kind == expected, kind.evidence
    assert kind.evidence
    json.dumps(kind.to_json())
    if expected == "text_llm" and _rel(path) not in LLM_STAND_INS:
        assert any("takes token ids int64" in line for line in kind.evidence), kind.evidence
    if _rel(path) in LLM_STAND_INS:
        assert not any("token ids" in line for line in kind.evidence)
        assert any(line.startswith("LLM metadata") for line in kind.evidence)


def test_kinds_come_from_content_not_file_names(tmp_path: Path) -> None:
    renamed = tmp_path / "llama3_2-1B.pte"  # a name the demo apps read as a Llama
    renamed.write_bytes(
        fixture_file("multimodal/whisper_like/whisper_preprocessor.pte").read_bytes()
    )
    assert read_program_kind(renamed).kind == "audio_preprocessor"
    data = fixture_file("multimodal/vision/model.pte").read_bytes()
    assert read_program_kind_bytes(data, name="tokenizer.model").kind == "multimodal_llm"


def test_vision_llm() -> None:
    kind = read_program_kind(fixture_file("multimodal/vision/model.pte"))
    assert kind.modalities == ("vision",)
    assert set(kind.methods) == {"vision_encoder", "token_embedding", "text_decoder"}
    spec = kind.encoders["vision_encoder"]
    assert (spec.torch_dtype, spec.sizes, str(spec)) == (
        "uint8",
        (1, 3, 32, 32),
        "uint8[1,3,32,32]",
    )
    assert kind.n_mels is None and kind.modality is None and not kind.media_token_ids


def test_audio_llm_with_optimum_metadata() -> None:
    kind = read_program_kind(fixture_file("multimodal/voxtral_like/model.pte"))
    assert kind.modalities == ("audio",)
    spec = kind.encoders["audio_encoder"]
    assert (spec.dtype, spec.sizes, spec.dynamism) == ("FLOAT", (2, 128, 3000), "dynamic_bound")
    assert kind.n_mels == 128
    assert kind.modality == "audio" and dict(kind.media_token_ids) == {"audio": 517}
    assert kind.other_constants["feature_size"] == 128
    assert kind.other_constants["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert "get_max_seq_len" not in kind.other_constants  # dialect keys are the dialect view's
    assert any("feature_size=128 agrees" in line for line in kind.evidence)


def test_seq2seq_asr_model() -> None:
    kind = read_program_kind(fixture_file("multimodal/whisper_like/model.pte"))
    assert (kind.kind, kind.modalities, kind.n_mels) == ("seq2seq", ("audio",), 80)
    assert str(kind.encoders["encoder"]) == "float32[1,80,3000]"
    decoder = kind.methods["text_decoder"]
    assert [str(v) for v in decoder.inputs] == ["int64[1,1]", "float32[1,30,32]", "int64[1]"]


@pytest.mark.parametrize(
    ("relative", "n_mels", "samples"),
    [
        ("multimodal/whisper_like/whisper_preprocessor.pte", 80, 480_000),
        ("multimodal/voxtral_like/preprocessor.pte", 128, 960_000),
    ],
)
def test_audio_preprocessor_n_mels(relative: str, n_mels: int, samples: int) -> None:
    kind = read_program_kind(fixture_file(relative))
    assert (kind.kind, kind.n_mels, kind.modalities) == ("audio_preprocessor", n_mels, ("audio",))
    forward = kind.methods["forward"]
    assert forward.inputs[0].sizes == (samples,) and forward.outputs[0].sizes[-2:] == (n_mels, 3000)
    assert forward.backends == ("XnnpackBackend",)


# --- signatures equal the runtime's MethodMeta ------------------------------------------------


@pytest.mark.runtime
@RUNTIME
@pytest.mark.parametrize("path", PROGRAMS, ids=_rel)
def test_signatures_equal_runtime_method_meta(path: Path) -> None:
    runtime = pytest.importorskip("executorch.runtime").Runtime.get()
    program = runtime.load_program(path)
    kind = read_program_kind(path)
    assert set(kind.methods) <= set(program.method_names)
    for name, spec in kind.methods.items():
        meta = program.metadata(name)
        pairs = [(spec.inputs, meta.num_inputs(), meta.input_tensor_meta),
                 (spec.outputs, meta.num_outputs(), meta.output_tensor_meta)]  # fmt: skip
        for values, count, tensor_meta in pairs:
            assert len(values) == count
            for index, value in enumerate(values):
                assert value.is_tensor, value
                info = tensor_meta(index)
                assert (value.scalar_type, value.sizes) == (info.dtype(), tuple(info.sizes()))


# --- keys inside delegate payloads ------------------------------------------------------------


def test_lora_programs_need_foundation_and_their_own_adapter() -> None:
    foundation = read_ptd(fixture_file("lora/foundation.ptd")).keys
    for name in ("a", "b"):
        keys = read_program_keys(fixture_file(f"lora/adapter_{name}.pte"))
        adapter = read_ptd(fixture_file(f"lora/adapter_{name}.ptd")).keys
        assert keys.complete and not keys.internal
        assert keys.needed == foundation | adapter
        assert set(keys.external) < foundation  # the head alone names only foundation tensors
        assert adapter <= set(keys.delegate)


def test_pairing_picks_foundation_and_the_right_adapter() -> None:
    programs = [read_program_keys(p) for p in fixture_glob("lora/*.pte")]
    pairing = pair_weights(programs, [read_ptd(p) for p in fixture_glob("lora/*.ptd")])
    roles = {Path(f.path).name: f.role for f in pairing.files}
    assert roles == {
        "foundation.ptd": "foundation",
        "adapter_a.ptd": "adapter",
        "adapter_b.ptd": "adapter",
    }
    files = {Path(p.program).name: sorted(Path(f).name for f in p.files) for p in pairing.programs}
    assert files == {
        "adapter_a.pte": ["adapter_a.ptd", "foundation.ptd"],
        "adapter_b.pte": ["adapter_b.ptd", "foundation.ptd"],
    }
    assert all(p.complete and not p.missing and not p.duplicated for p in pairing.programs)
    assert not pairing.notes
    json.dumps(pairing.to_json())


def test_pairing_with_names_that_say_nothing(tmp_path: Path) -> None:
    for source, target in [("adapter_a.pte", "x.pte"), ("adapter_b.pte", "y.pte"),
                           ("foundation.ptd", "1.ptd"), ("adapter_a.ptd", "2.ptd"),
                           ("adapter_b.ptd", "3.ptd")]:  # fmt: skip
        (tmp_path / target).write_bytes(fixture_file(f"lora/{source}").read_bytes())
    pairing = pair_weights(
        [read_program_keys(tmp_path / n) for n in ("x.pte", "y.pte")],
        [read_ptd(tmp_path / n) for n in ("1.ptd", "2.ptd", "3.ptd")],
    )
    files = [[Path(f).name for f in p.files] for p in pairing.programs]
    assert files == [["1.ptd", "2.ptd"], ["1.ptd", "3.ptd"]]
    assert [f.role for f in pairing.files] == ["foundation", "adapter", "adapter"]


def test_in_file_named_data_is_not_needed_from_ptd_files() -> None:
    keys = read_program_keys(fixture_file("programs/xnnpack.pte"))
    assert len(keys.delegate) == 2 and set(keys.delegate) == set(keys.internal)
    assert keys.needed == frozenset()
    optimum = read_program_keys(fixture_file("field/optimum_out/model.pte"))
    assert set(optimum.delegate) == set(optimum.internal) and not optimum.needed


def test_external_weights_pair_by_key() -> None:
    whisper = read_program_keys(fixture_file("multimodal/whisper_like/model.pte"))
    assert whisper.needed == read_ptd(fixture_file("multimodal/whisper_like/model.ptd")).keys
    pairing = pair_weights([whisper], [read_ptd(fixture_file("multimodal/whisper_like/model.ptd"))])
    assert pairing.files[0].role == "weights"


def test_opaque_payloads_fall_back_to_known_keys_and_the_shared_foundation(tmp_path: Path) -> None:
    programs = []
    for name in ("a", "b"):  # every XNNPACK payload becomes one of a backend nobody reads
        data = fixture_file(f"lora/adapter_{name}.pte").read_bytes()
        programs.append(_keys_of(data.replace(b"XnnpackBackend", b"OpaqueBackend_"), name))
    assert not programs[0].complete and "OpaqueBackend_" in programs[0].unread[0]
    ptds = [read_ptd(p) for p in fixture_glob("lora/*.ptd")]
    pairing = pair_weights(programs, ptds)
    assert [[Path(f).name for f in p.files] for p in pairing.programs] == [["foundation.ptd"]] * 2
    roles = {Path(f.path).name: f.role for f in pairing.files}
    assert roles == {"foundation.ptd": "foundation", "adapter_a.ptd": None, "adapter_b.ptd": None}
    assert not any(p.complete for p in pairing.programs)
    assert any("not read" in n for n in pairing.notes) and any(
        "not shown to be unused" in n for n in pairing.notes
    )


def _flatc_named_keys(payload: bytes, tmp: Path) -> list[str]:
    """The constant_data named keys of one XNNPACK payload, read by XNNPACK's header class and flatc."""
    serialize = pytest.importorskip(
        "executorch.backends.xnnpack.serialization.xnnpack_graph_serialize"
    )
    flatbuffer = pytest.importorskip("executorch.exir._serialize._flatbuffer")
    header = serialize.XNNHeader.from_bytes(payload[: serialize.XNNHeader.EXPECTED_LENGTH])
    graph = payload[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    schema = Path(serialize.__file__).with_name("schema.fbs")
    (tmp / "graph.bin").write_bytes(graph)
    subprocess.run([flatbuffer._get_flatc_path(), "--json", "--strict-json", "--raw-binary",
                    "-o", str(tmp), str(schema), "--", str(tmp / "graph.bin")], check=True)  # fmt: skip
    # flatc writes inf/nan (not JSON) for min/max clamps; named_key occurs only in constant_data.
    text = (tmp / "graph.json").read_text()
    return [k for k in re.findall(r'"named_key": "([^"]*)"', text) if k]


XNNPACK_PROGRAMS = [p for p in PROGRAMS if "XnnpackBackend" in read_pte(p).backends]


@pytest.mark.runtime
@RUNTIME
@pytest.mark.parametrize("path", XNNPACK_PROGRAMS, ids=_rel)
def test_delegate_keys_equal_flatc_with_the_xnnpack_schema(path: Path, tmp_path: Path) -> None:
    exir = pytest.importorskip("executorch.exir._serialize._program")
    program = exir.deserialize_pte_binary(path.read_bytes()).program
    expected = [
        (
            plan.name,
            i,
            _flatc_named_keys(program.backend_delegate_data[d.processed.index].data, tmp_path),
        )
        for plan in program.execution_plan
        for i, d in enumerate(plan.delegates)
    ]
    found = [(d.method, d.index, list(d.keys)) for d in read_delegate_keys(open_program(path))]
    assert found == expected
    assert all(d.readable for d in read_delegate_keys(open_program(path)))


# --- .ptd entries: weights or a backend's blobs -----------------------------------------------


def test_entry_kinds_of_the_lora_foundation() -> None:
    foundation = read_ptd(fixture_file("lora/foundation.ptd"))
    kinds = [entry_kind(t) for t in foundation.tensors]
    assert (kinds.count("tensor"), kinds.count("delegate_constant"), len(kinds)) == (14, 15, 29)
    assert {ptd_content(read_ptd(p)) for p in fixture_glob("**/*.ptd")} == {"weights"}


def _ptd(*keys: str, layout: bool = False) -> PtdInfo:
    tensors = tuple(
        PtdTensor(k, "FLOAT" if layout else None, (1,) if layout else None, 4, 0) for k in keys
    )
    return PtdInfo("blob.ptd", 0, "v0.7", 0, 0, tensors)


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        (("0" * 64 + "_so_blob", "f" * 64 + "_weights_blob"), "backend_blob"),  # AOTI 1.0-1.4
        (("cuda_fqn_weight:cuda:layers.0.w",), "backend_blob"),  # CUDA 1.5
        (("coreml_0",), "backend_blob"),
        (("scale_" + "a" * 64, "b" * 64), "weights"),  # XNNPACK constants
        (("some_blob",), "opaque"),
        ((), "empty"),
    ],
)
def test_ptd_content_by_entry_keys(keys: tuple[str, ...], kind: str) -> None:
    assert ptd_content(_ptd(*keys)) == kind
    if keys:
        assert ptd_content(_ptd(*keys, layout=True)) == "weights"  # a layout makes a tensor


# --- small programs built with the flatbuffers builder ---------------------------------------

Tensor = tuple[int, Sequence[int], int]  # scalar_type, sizes, shape_dynamism


def _build(
    tensors: Sequence[Tensor],
    inputs: Sequence[int],
    outputs: Sequence[int],
    delegates: Sequence[tuple[str, int]] = (),
    inline: Sequence[bytes] = (),
    named: Sequence[str] = (),
    constant_spec: str | None = None,
) -> bytes:
    """A Program with a method ``forward`` over ``tensors`` and delegates with inline payloads;
    with ``constant_spec``, also a constant method ``get`` returning Int 7 under that spec."""
    b = flatbuffers.Builder(1024)

    def vector(items: Sequence[int], prepend: Any, size: int = 4) -> int:
        b.StartVector(size, len(items), size)
        for item in reversed(items):
            prepend(item)
        return int(b.EndVector())

    def table(fields: Sequence[tuple[str, int, Any]]) -> int:
        b.StartObject(max((slot for _, slot, _ in fields), default=-1) + 1)
        for kind, slot, value in fields:
            getattr(b, f"Prepend{kind}Slot")(slot, value, 0)
        return int(b.EndObject())

    values = []
    for scalar_type, sizes, dynamism in tensors:
        size_vec = vector(list(sizes), b.PrependInt32)
        tensor = table(
            [("Int8", 0, scalar_type), ("UOffsetTRelative", 2, size_vec), ("Int8", 8, dynamism)]
        )
        values.append(table([("Uint8", 0, 5), ("UOffsetTRelative", 1, tensor)]))
    datas = [table([("UOffsetTRelative", 0, b.CreateByteVector(d))]) for d in inline]
    refs = []
    for backend, index in delegates:
        ref = table([("Uint8", 0, 0), ("Uint32", 1, index)])
        refs.append(
            table([("UOffsetTRelative", 0, b.CreateString(backend)), ("UOffsetTRelative", 1, ref)])
        )
    named_tables = [table([("UOffsetTRelative", 0, b.CreateString(k))]) for k in named]
    plans = [table([
        ("UOffsetTRelative", 0, b.CreateString("forward")),
        ("UOffsetTRelative", 2, vector(values, b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 3, vector(list(inputs), b.PrependInt32)),
        ("UOffsetTRelative", 4, vector(list(outputs), b.PrependInt32)),
        ("UOffsetTRelative", 7, vector(refs, b.PrependUOffsetTRelative)),
    ])]  # fmt: skip
    if constant_spec is not None:  # one chain without instructions, no inputs: a constant method
        meta = table([("UOffsetTRelative", 1, b.CreateString(constant_spec))])
        seven = table([("Int64", 0, 7)])
        value = table([("Uint8", 0, 2), ("UOffsetTRelative", 1, seven)])
        chain = table([])
        plans.append(table([
            ("UOffsetTRelative", 0, b.CreateString("get")),
            ("UOffsetTRelative", 1, meta),
            ("UOffsetTRelative", 2, vector([value], b.PrependUOffsetTRelative)),
            ("UOffsetTRelative", 4, vector([0], b.PrependInt32)),
            ("UOffsetTRelative", 5, vector([chain], b.PrependUOffsetTRelative)),
        ]))  # fmt: skip
    program = table([
        ("UOffsetTRelative", 1, vector(plans, b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 3, vector(datas, b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 7, vector(named_tables, b.PrependUOffsetTRelative)),
    ])  # fmt: skip
    b.Finish(program, file_identifier=b"ET12")
    return bytes(b.Output())


FLOAT, LONG, STATIC, BOUND = 6, 4, 0, 1
WAVE_TO_MEL = ([(FLOAT, (16000,), BOUND), (FLOAT, (1, 64, 100), BOUND)], [0], [1])


def _xnn_payload(keys: Sequence[str], repeat: int = 1) -> bytes:
    """XH00 header + an XNNGraph whose constant_data names ``keys`` (``repeat``: the same table)."""
    b = flatbuffers.Builder(1024)
    entries = []
    for key in keys:
        name = b.CreateString(key)
        b.StartObject(3)
        b.PrependUint64Slot(0, 2**64 - 1, 0)
        b.PrependUOffsetTRelativeSlot(2, name, 0)
        entries.append(b.EndObject())
    b.StartVector(4, len(entries) * repeat, 4)
    for entry in reversed(entries * repeat):
        b.PrependUOffsetTRelative(entry)
    constant_data = b.EndVector()
    b.StartObject(9)
    b.PrependUOffsetTRelativeSlot(8, constant_data, 0)
    b.Finish(b.EndObject(), file_identifier=b"XN01")
    graph = bytes(b.Output())
    padded = graph + bytes(-len(graph) % 16)
    header = struct.pack("<4s4sHIIIQ", bytes(4), b"XH00", 30, 32, len(graph), 32 + len(padded), 0)
    return header + bytes(2) + padded


def _keys_of(data: bytes, name: str = "<bytes>") -> ProgramKeys:
    head = open_program_bytes(data, name=name)
    return program_keys(head, describe_program(head))


def test_built_programs_read_back() -> None:
    kind = read_program_kind_bytes(_build(*WAVE_TO_MEL))
    assert (kind.kind, kind.n_mels) == ("audio_preprocessor", 64)
    tokens = read_program_kind_bytes(
        _build([(LONG, (1, 8), BOUND), (FLOAT, (1, 32), STATIC)], [0], [1])
    )
    assert tokens.kind == "text_llm" and not tokens.other_constants
    keys = _keys_of(_build(*WAVE_TO_MEL, [("XnnpackBackend", 0)], [_xnn_payload(["k1", "k2"])]))
    assert keys.delegate == ("k1", "k2") and keys.complete
    headerless = _xnn_payload(["k3"])[32:]  # an XNNGraph at byte 0, as before the XH00 header
    assert _keys_of(_build(*WAVE_TO_MEL, [("XnnpackBackend", 0)], [headerless])).delegate == ("k3",)


def test_aoti_key_lines_and_backend_blob_pairing() -> None:
    so, weights = "a" * 64 + "_so_blob", "b" * 64 + "_weights_blob"
    data = _build(*WAVE_TO_MEL, [("CudaBackend", 0)], [f"{so}\n{weights}".encode()], named=[so])
    keys = _keys_of(data)
    assert keys.delegate == (so, weights) and keys.needed == {weights}
    pairing = pair_weights([keys], [_ptd(weights)])
    assert pairing.files[0].role == "backend_blob" and not pairing.programs[0].missing


@pytest.mark.runtime
def test_cuda_weight_table_written_by_executorch() -> None:
    cuda = pytest.importorskip("executorch.backends.cuda.cuda_weight_collector")
    entry = cuda.CudaWeightEntry("w", "cuda_fqn_weight:cuda:w", 48, 6, 1, 0, (3, 4), (4, 1))
    payload = cuda.encode_cuda_weight_metadata("lib_so_blob", [entry])
    keys = _keys_of(_build(*WAVE_TO_MEL, [("CudaBackend", 0)], [payload]))
    assert keys.delegate == ("lib_so_blob", "cuda_fqn_weight:cuda:w")


def test_opaque_backend_is_reported_not_guessed() -> None:
    keys = _keys_of(_build(*WAVE_TO_MEL, [("CoreMLBackend", 0)], [b"\x00" * 64]))
    assert not keys.complete and keys.delegate == () and "CoreMLBackend" in keys.unread[0]


# --- hostile programs: one PteFormatError each, bounded ---------------------------------------

HOSTILE_BUILDS = {
    "rank_17": ([(FLOAT, (1,) * 17, STATIC)], [0], [0]),
    "dims_past_2_63_bytes": ([(FLOAT, (2**31 - 1,) * 16, STATIC)], [0], [0]),
    "negative_dim": ([(FLOAT, (1, -3), STATIC)], [0], [0]),
    "input_index_out_of_range": ([(FLOAT, (1,), STATIC)], [5], [0]),
    "unknown_shape_dynamism": ([(FLOAT, (1,), 7)], [0], [0]),
}


@pytest.mark.parametrize("case", list(HOSTILE_BUILDS))
def test_hostile_signatures_are_refused(case: str) -> None:
    with pytest.raises(PteFormatError):
        read_program_kind_bytes(_build(*HOSTILE_BUILDS[case]))


@pytest.mark.parametrize(
    ("delegates", "inline", "match"),
    [
        ([("XnnpackBackend", 3)], [b""], "inline data 3"),
        ([("XnnpackBackend", 0)], [b"\x00" * 40], "not an XH00 header"),
        ([("XnnpackBackend", 0)], [_xnn_payload(["k"])[:-8]], "past the 120-byte payload"),
        ([("XnnpackBackend", 0)], [_xnn_payload(["k"], repeat=600_000)], "tables"),
        ([("CudaBackend", 0)], [b"ETCUDAFQN3" + struct.pack("<I", 2**31)], "truncated"),
        ([("CudaBackend", 0)], [b"\xff\xfe" * 8], "neither key lines"),
    ],
    ids=[
        "inline_index",
        "xh00_magic",
        "xnngraph_past_payload",
        "offset_loop",
        "cuda_table_cut",
        "aoti_not_text",
    ],
)
def test_hostile_payloads_are_refused(delegates: Any, inline: Any, match: str) -> None:
    with pytest.raises(PteFormatError, match=match):
        _keys_of(_build(*WAVE_TO_MEL, delegates, inline))


def _xnn_segment(data: bytes) -> int:
    """File offset of the first XNNPACK payload of a program with segments (via eh00 + fixture)."""
    base = struct.unpack_from("<Q", data, 24)[0]
    return base + open_program_bytes(data).segments[1].offset


@pytest.mark.parametrize(
    ("at", "value", "match"),
    [(4, b"XH01", "not an XH00 header"), (14, struct.pack("<I", 2**31), "do not fit")],
)
def test_mutated_xnnpack_header_of_a_real_program(at: int, value: bytes, match: str) -> None:
    data = bytearray(fixture_file("lora/adapter_a.pte").read_bytes())
    start = _xnn_segment(bytes(data))
    data[start + at : start + at + len(value)] = value
    with pytest.raises(PteFormatError, match=match):
        read_delegate_keys(open_program_bytes(bytes(data)))


def test_truncated_programs_are_refused() -> None:
    good = fixture_file("lora/adapter_a.pte").read_bytes()
    program_size = struct.unpack_from("<Q", good, 16)[0]
    for cut in (4, 40, program_size - 1, _xnn_segment(good) + 10, len(good) - 1):
        with pytest.raises(PteFormatError):
            read_program_kind_bytes(good[:cut])


def test_deep_constant_spec_is_read_bounded() -> None:
    """Nothing here recurses: a 100k-deep pytree spec reads as a plain value, no error."""
    kind = read_program_kind_bytes(
        _build(*WAVE_TO_MEL, constant_spec="L1(" * 100_000 + "$" + ")" * 100_000)
    )
    assert kind.kind == "audio_preprocessor" and kind.other_constants == {"get": 7}


def test_random_corruption_only_raises_pte_format_error() -> None:
    good = fixture_file("lora/adapter_a.pte").read_bytes()
    program_size = struct.unpack_from("<Q", good, 16)[0]
    segment = _xnn_segment(good)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(
        flips=st.lists(
            st.tuples(
                st.one_of(st.integers(0, program_size - 1), st.integers(segment, segment + 2143)),
                st.integers(0, 255),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def check(flips: list[tuple[int, int]]) -> None:
        data = bytearray(good)
        for pos, byte in flips:
            data[pos] = byte
        try:
            head = open_program_bytes(bytes(data))
            kind = read_program_kind_bytes(bytes(data))
            keys = program_keys(head, describe_program(head))
        except PteFormatError:
            return
        assert isinstance(kind, ProgramKind)
        json.dumps(kind.to_json())
        json.dumps(keys.to_json())

    check()
