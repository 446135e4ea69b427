"""Deployments of several programs or weight files pack into one version-2 archive and come back
byte for byte: multimodal programs with their preprocessors and processor configs, a whisper-like
model with a tokenizer folder and external weights, and LoRA programs sharing one foundation."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.legacy.resolve import resolve_source
from etm_compat.packing import pack, pack_view, unpack
from etm_compat.verification import verify
from etm_compat.view import describe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: source -> (members of the archive, (program name, role, data) of each program)
CASES = {
    "multimodal/vision": (
        {"metadata.json", "model.pte", "tokenizer.model", "processors/preprocessor_config.json"},
        [("model", "model", [])],
    ),
    "multimodal/voxtral_like": (
        {"metadata.json", "model.pte", "programs/preprocessor.pte", "tokenizer.json",
         "tokenizer_config.json", "processors/preprocessor_config.json"},
        [("model", "model", []), ("preprocessor", "preprocessor", [])],
    ),
    "multimodal/whisper_like": (
        {"metadata.json", "model.pte", "programs/whisper_preprocessor.pte", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "processors/preprocessor_config.json",
         "weights/model.ptd"},
        [("model", "model", ["weights/model.ptd"]), ("whisper_preprocessor", "preprocessor", [])],
    ),
    "lora/adapter_a.pte": (
        {"metadata.json", "model.pte", "programs/adapter_b.pte", "tokenizer.model",
         "weights/foundation.ptd", "weights/adapter_a.ptd", "weights/adapter_b.ptd"},
        [("model", "model", ["weights/foundation.ptd", "weights/adapter_a.ptd"]),
         ("adapter_b", "model", ["weights/foundation.ptd", "weights/adapter_b.ptd"])],
    ),
}  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", sorted(CASES))
def test_round_trip(tmp_path: Path, source: str) -> None:
    members, programs = CASES[source]
    archive = tmp_path / "m.etm"
    pack(FIXTURES / source, archive, default_adapters())
    assert verify(archive).ok
    with open_archive(archive) as etm:
        assert set(etm.members) == members
        meta = etm.metadata
    assert (meta["format_version"], meta["min_reader_version"]) == (2, 2)
    assert [(p["name"], p["role"], p["data"]) for p in meta["programs"]] == programs
    out = tmp_path / "out"
    written = unpack(archive, out)
    folder = FIXTURES / source if (FIXTURES / source).is_dir() else (FIXTURES / source).parent
    sources = {_sha(p) for p in folder.rglob("*") if p.is_file()}
    assert written and all(_sha(p) in sources for p in written), "an unpacked file differs from every source"
    # Packing twice gives the same bytes.
    again = tmp_path / "again.etm"
    pack(FIXTURES / source, again, default_adapters())
    assert again.read_bytes() == archive.read_bytes()


def test_lora_programs_share_one_copy_of_their_foundation(tmp_path: Path) -> None:
    both = tmp_path / "both.etm"
    pack(FIXTURES / "lora" / "adapter_a.pte", both, default_adapters())
    dep = resolve_source(FIXTURES / "lora" / "adapter_a.pte", default_adapters())
    (part,) = dep.parts
    alone_a = pack_view(describe(dataclasses.replace(dep, parts=())), tmp_path / "a.etm")
    dep_b = dataclasses.replace(dep, program=part.path, weights=part.weights, parts=())
    alone_b = pack_view(describe(dep_b), tmp_path / "b.etm")
    foundation = (FIXTURES / "lora" / "foundation.ptd").stat().st_size
    assert alone_a.size + alone_b.size - both.stat().st_size >= foundation
    with open_archive(both) as etm:
        assert sum(1 for name in etm.members if name.endswith(".ptd")) == 3


def test_version_one_archives_stay_version_one(tmp_path: Path) -> None:
    archive = tmp_path / "m.etm"
    pack(FIXTURES / "legacy" / "with_ptd", archive, default_adapters())
    with open_archive(archive) as etm:
        assert (etm.metadata["format_version"], etm.metadata["min_reader_version"]) == (1, 1)
        assert "programs" not in etm.metadata


@pytest.mark.runtime
@pytest.mark.parametrize("source", sorted(CASES))
def test_verify_runtime_loads_every_program_it_can(tmp_path: Path, source: str) -> None:
    archive = tmp_path / "m.etm"
    pack(FIXTURES / source, archive, default_adapters())
    result = verify(archive, runtime=True)
    assert result.ok and not result.findings, result.to_json()


@pytest.mark.runtime
@pytest.mark.parametrize(
    ("source", "program", "loose", "data", "method", "make_input"),
    [
        ("multimodal/voxtral_like", "preprocessor", "preprocessor.pte", None, "forward", "wave"),
        ("multimodal/whisper_like", "whisper_preprocessor", "whisper_preprocessor.pte", None, "forward", "wave"),
        ("multimodal/whisper_like", "model", "model.pte", "model.ptd", "encoder", "mel80"),
    ],
)
def test_programs_from_the_archive_compute_what_the_loose_files_compute(
    tmp_path: Path, source: str, program: str, loose: str, data: str | None, method: str, make_input: str
) -> None:
    import torch
    from executorch.runtime import Runtime

    from etm_compat.compat.runtime import load_program_from_archive

    if make_input == "wave":
        t = torch.arange(24000, dtype=torch.float64) / 16000
        args = [(0.3 * torch.sin(2 * torch.pi * 440 * t)).float()]
    else:
        args = [torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(7))]
    folder = FIXTURES / source
    data_path = str(folder / data) if data else None
    # Outputs alias the method's memory: keep program and method alive and copy the outputs.
    loose_program = Runtime.get().load_program(str(folder / loose), data_path=data_path)
    loose_method = loose_program.load_method(method)
    expected = [t.clone() for t in loose_method.execute(args)]
    archive = tmp_path / "m.etm"
    pack(folder, archive, default_adapters())
    with open_archive(archive) as etm:
        archived_program = load_program_from_archive(etm, program=program)
        archived_method = archived_program.load_method(method)
        got = [t.clone() for t in archived_method.execute(args)]
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    del archived_method, archived_program, loose_method, loose_program


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_load_gives_every_program_and_its_data(tmp_path: Path, packed: bool) -> None:
    from etm_compat.compat.loader import load

    source = FIXTURES / "lora" / "adapter_a.pte"
    target: Path = source
    if packed:
        target = tmp_path / "lora.etm"
        pack(source, target, default_adapters())
    foundation = (FIXTURES / "lora" / "foundation.ptd").read_bytes()
    with load(target) as bundle:
        assert bundle.programs == ("model", "adapter_b")
        assert bytes(bundle.program_bytes("adapter_b")) == (FIXTURES / "lora" / "adapter_b.pte").read_bytes()
        data = [bytes(v) for v in bundle.program_data("adapter_b")]
        assert foundation in data and (FIXTURES / "lora" / "adapter_b.ptd").read_bytes() in data
        paths = bundle.legacy_paths(cache_root=tmp_path / "cache")
        assert set(paths.programs) == {"model", "adapter_b"}
        assert {p.read_bytes() for p in paths.data["adapter_b"]} == set(data)
        assert paths.programs["adapter_b"].read_bytes() == (FIXTURES / "lora" / "adapter_b.pte").read_bytes()


@pytest.mark.runtime
@pytest.mark.parametrize("program", ["model", "adapter_b"])
def test_lora_programs_from_the_archive_compute_what_the_loose_files_compute(tmp_path: Path, program: str) -> None:
    """Each LoRA program with its foundation and its own adapter: the archive (data merged in
    memory) against the loose files merged by executorch's own serializer."""
    import torch
    from executorch.exir._serialize._cord import Cord
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer
    from executorch.runtime import Runtime

    from etm_compat.compat.runtime import load_program_from_archive

    lora = FIXTURES / "lora"
    stem = "adapter_a" if program == "model" else "adapter_b"
    serializer, buffers, named = FlatTensorSerializer(), [], {}
    for path in (lora / "foundation.ptd", lora / f"{stem}.ptd"):
        payload = serializer.deserialize(Cord(path.read_bytes()))
        base = len(buffers)
        buffers.extend(payload.buffers)
        named.update({k: DataEntry(base + e.buffer_index, 1, e.tensor_layout) for k, e in payload.named_data.items()})
    merged = tmp_path / "merged.ptd"
    merged.write_bytes(bytes(serializer.serialize(DataPayload(buffers=buffers, named_data=named))))
    args = [torch.tensor([[1, 2, 3]], dtype=torch.long), torch.tensor([0], dtype=torch.long)]
    loose_program = Runtime.get().load_program(str(lora / f"{stem}.pte"), data_path=str(merged))
    loose_method = loose_program.load_method("forward")
    expected = [t.clone() for t in loose_method.execute(args)]
    archive = tmp_path / "lora.etm"
    pack(lora / "adapter_a.pte", archive, default_adapters())
    with open_archive(archive) as etm:
        archived_program = load_program_from_archive(etm, program=program)
        archived_method = archived_program.load_method("forward")
        got = [t.clone() for t in archived_method.execute(args)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    del archived_method, archived_program, loose_method, loose_program


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("multimodal/vision", [{"modality": "vision", "token_id": None, "method": "vision_encoder",
                                "processor": "processors/preprocessor_config.json"}]),
        ("multimodal/voxtral_like", [{"modality": "audio", "token_id": 517, "method": "audio_encoder",
                                      "preprocessor": "preprocessor", "processor": "processors/preprocessor_config.json"}]),
        ("multimodal/whisper_like", [{"modality": "audio", "token_id": None, "method": "encoder",
                                      "preprocessor": "whisper_preprocessor", "processor": "processors/preprocessor_config.json"}]),
    ],
)  # fmt: skip
def test_modalities_are_read_from_the_program(tmp_path: Path, source: str, expected: list[dict[str, object]]) -> None:
    archive = tmp_path / "m.etm"
    pack(FIXTURES / source, archive, default_adapters())
    with open_archive(archive) as etm:
        assert etm.metadata["modalities"] == expected
        assert [m.modality for m in etm.layout.modalities] == [e["modality"] for e in expected]
