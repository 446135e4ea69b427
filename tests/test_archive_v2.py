"""Format version 2 on real fixtures: several programs sharing one foundation, a preprocessor
program, processor configs, a tokenizer folder, modalities; hostile version-2 metadata; the
version rule, checked against the real version-1 reader and writer from git history."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

from etm_compat.archive import (
    MemberSpec,
    open_archive,
    required_version,
    version_features,
    write_archive,
)
from etm_compat.archive.metadata import check_version, new_metadata, serialize_metadata
from etm_compat.archive.names import role_of
from etm_compat.archive.zipfmt import central_entry, end_records, local_header
from etm_compat.errors import ArchiveError, MetadataError, UnsupportedVersionError, UsageError
from etm_compat.formats.ptd import read_ptd
from etm_compat.formats.pte import read_pte
from etm_compat.verification import verify

LORA = FIXTURES / "lora"
VOX = FIXTURES / "multimodal" / "voxtral_like"
WHISPER = FIXTURES / "multimodal" / "whisper_like"
VISION = FIXTURES / "multimodal" / "vision"
FOUNDATION, ADAPTER_A, ADAPTER_B = "weights/foundation.ptd", "weights/adapter_a.ptd", "weights/adapter_b.ptd"
#: The last commit whose reader and writer know only format version 1.
V1_COMMIT = "1fa89b77445466b5a5cfb6196a6a2989333006f2"
ROOT = FIXTURES.parent


def need(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            pytest.skip(f"fixture {path.relative_to(ROOT)} missing (run ./dev.sh fixtures)")


def ptd_keys(path: Path) -> tuple[str, ...]:
    return tuple(sorted(read_ptd(path).keys))


def snapshot(path: Path) -> dict[str, Any]:
    info = read_pte(path)
    return {"constant_methods": dict(info.constant_methods), "methods": list(info.methods),
            "backends": list(info.backends), "external_keys": list(info.external_keys),
            "size": info.file_size}  # fmt: skip


def lora_specs() -> list[MemberSpec]:
    """Two LoRA programs sharing one foundation, a mel preprocessor program, a processor config."""
    need(LORA / "adapter_a.pte", LORA / "foundation.ptd", VOX / "preprocessor.pte")
    return [
        MemberSpec("model.pte", LORA / "adapter_a.pte", "program", data=(FOUNDATION, ADAPTER_A)),
        MemberSpec("programs/adapter_b.pte", LORA / "adapter_b.pte", "program", kind="model",
                   data=(FOUNDATION, ADAPTER_B), snapshot=snapshot(LORA / "adapter_b.pte")),
        MemberSpec("programs/preprocessor.pte", VOX / "preprocessor.pte", "program",
                   kind="preprocessor", snapshot=snapshot(VOX / "preprocessor.pte")),
        MemberSpec("tokenizer.model", LORA / "tokenizer.model", "tokenizer"),
        MemberSpec("processors/preprocessor_config.json", VOX / "preprocessor_config.json",
                   "processor_config"),
        MemberSpec(FOUNDATION, LORA / "foundation.ptd", "weights", ptd_keys(LORA / "foundation.ptd"),
                   kind="foundation"),
        MemberSpec(ADAPTER_A, LORA / "adapter_a.ptd", "weights", ptd_keys(LORA / "adapter_a.ptd"),
                   kind="adapter"),
        MemberSpec(ADAPTER_B, LORA / "adapter_b.ptd", "weights", ptd_keys(LORA / "adapter_b.ptd"),
                   kind="adapter"),
    ]  # fmt: skip


def lora_meta() -> dict[str, Any]:
    meta = new_metadata(tool_version="0.1.0")
    meta["program"] = snapshot(LORA / "adapter_a.pte")
    return meta


def write_lora(dest: Path, specs: list[MemberSpec] | None = None) -> Path:
    write_archive(dest, metadata=lora_meta(), members=specs or lora_specs(), fsync=False)
    return dest


@pytest.fixture(scope="module")
def lora_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lora(tmp_path_factory.mktemp("lora") / "lora.etm")


def test_two_programs_share_one_foundation_stored_once(lora_archive: Path) -> None:
    with open_archive(lora_archive) as etm:
        meta, layout = etm.metadata, etm.layout
        assert list(etm.members) == [
            "metadata.json", "model.pte", "programs/adapter_b.pte", "programs/preprocessor.pte",
            "tokenizer.model", "processors/preprocessor_config.json", ADAPTER_A, ADAPTER_B,
            FOUNDATION,
        ]  # fmt: skip
        assert (meta["format_version"], meta["min_reader_version"], layout.format_version) == (2, 2, 2)
        assert [(p.name, p.member, p.role, p.data) for p in layout.programs] == [
            ("model", "model.pte", "model", (FOUNDATION, ADAPTER_A)),
            ("adapter_b", "programs/adapter_b.pte", "model", (FOUNDATION, ADAPTER_B)),
            ("preprocessor", "programs/preprocessor.pte", "preprocessor", ()),
        ]
        assert [w.member for w in layout.program_weights("adapter_b")] == [FOUNDATION, ADAPTER_B]
        shared = next(w for w in layout.weights if w.member == FOUNDATION)
        assert (shared.role, shared.programs) == ("foundation", ("model", "adapter_b"))
        assert shared.keys == ptd_keys(LORA / "foundation.ptd")
        assert sum(1 for m in etm.members if m.endswith("foundation.ptd")) == 1
        assert layout.program("preprocessor").snapshot == snapshot(VOX / "preprocessor.pte")
        assert layout.program().snapshot == meta["program"]
        assert dict(layout.processors) == {"preprocessor_config": "processors/preprocessor_config.json"}
        with pytest.raises(UsageError, match=r"no program 'vocoder'.*'adapter_b'"):
            layout.program("vocoder")
        for spec in lora_specs():
            assert bytes(etm.member_view(spec.name)) == spec.source.read_bytes(), spec.name
            want = 16384 if spec.name.endswith((".pte", ".ptd")) else 64
            assert etm.members[spec.name].offset % want == 0, spec.name
        assert etm.verify() == []
    assert verify(lora_archive).ok


def test_deterministic_whatever_the_spec_order_and_times(tmp_path: Path, lora_archive: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    moved = []
    for spec in reversed(lora_specs()):
        copy_ = src / spec.name.replace("/", "_")
        shutil.copyfile(spec.source, copy_)
        os.utime(copy_, ns=(1, 1))
        moved.append(MemberSpec(spec.name, copy_, spec.role, spec.keys, None, spec.kind, spec.data,
                                spec.snapshot))  # fmt: skip
    again = write_lora(tmp_path / "again.etm", moved)
    assert again.read_bytes() == lora_archive.read_bytes()
    assert write_lora(tmp_path / "third.etm").read_bytes() == lora_archive.read_bytes()


def test_real_multimodal_layouts_round_trip(tmp_path: Path) -> None:
    need(VOX / "model.pte", WHISPER / "model.ptd", VISION / "model.pte")
    tok = WHISPER / "tokenizer"
    whisper = [
        MemberSpec("model.pte", WHISPER / "model.pte", "program"),
        MemberSpec("programs/whisper_preprocessor.pte", WHISPER / "whisper_preprocessor.pte",
                   "program", kind="preprocessor"),
        MemberSpec("tokenizer.json", tok / "tokenizer.json", "tokenizer"),
        MemberSpec("tokenizer_config.json", tok / "tokenizer_config.json", "tokenizer_config"),
        MemberSpec("special_tokens_map.json", tok / "special_tokens_map.json", "tokenizer_config"),
        MemberSpec("weights/model.ptd", WHISPER / "model.ptd", "weights", ptd_keys(WHISPER / "model.ptd")),
    ]  # fmt: skip
    write_archive(tmp_path / "w.etm", metadata=new_metadata(tool_version="0"), members=whisper)
    with open_archive(tmp_path / "w.etm") as etm:
        layout = etm.layout
        assert layout.program().data == ("weights/model.ptd",)  # data=None: the version-1 rule
        assert layout.program("whisper_preprocessor").data == ()
        assert layout.tokenizer_configs == ("tokenizer_config.json", "special_tokens_map.json")
        etm.extract(tmp_path / "loose")
    assert sorted(p.name for p in (tmp_path / "loose").iterdir()) == [
        "model.ptd", "model.pte", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "whisper_preprocessor.pte",
    ]  # fmt: skip

    meta = new_metadata(tool_version="0")
    meta["program"] = snapshot(VOX / "model.pte")
    meta["tokenizer"] = {"member": "tokenizer.json", "format": "hf_json", "variant": None,
                         "vocab_size": 518, "bos_id": 512, "bos_token": "<s>", "eos_ids": [513],
                         "eos_tokens": ["</s>"]}  # fmt: skip
    meta["modalities"] = [
        {"modality": "text", "token_id": None, "method": "token_embedding"},
        {"modality": "audio", "token_id": 517, "special_token_ids": {"begin_audio": 516},
         "method": "audio_encoder", "preprocessor": "preprocessor",
         "processor": "processors/preprocessor_config.json"},
    ]  # fmt: skip
    voxtral = [
        MemberSpec("model.pte", VOX / "model.pte", "program"),
        MemberSpec("programs/preprocessor.pte", VOX / "preprocessor.pte", "program", kind="preprocessor"),
        MemberSpec("tokenizer.json", VOX / "tokenizer.json", "tokenizer"),
        MemberSpec("tokenizer_config.json", VOX / "tokenizer_config.json", "tokenizer_config"),
        MemberSpec("processors/preprocessor_config.json", VOX / "preprocessor_config.json", "processor_config"),
    ]  # fmt: skip
    write_archive(tmp_path / "v.etm", metadata=meta, members=voxtral)
    with open_archive(tmp_path / "v.etm") as etm:
        audio = etm.layout.modality("audio")
        assert audio is not None and etm.layout.modality("vision") is None
        assert (audio.token_id, dict(audio.special_token_ids), audio.program, audio.method) == (
            517, {"begin_audio": 516}, "model", "audio_encoder")  # fmt: skip
        assert dict(etm.layout.processors) == {"preprocessor_config": audio.processor}

    vision = [MemberSpec("model.pte", VISION / "model.pte", "program"),
              MemberSpec("tokenizer.model", VISION / "tokenizer.model", "tokenizer"),
              MemberSpec("processors/preprocessor_config.json", VISION / "preprocessor_config.json",
                         "processor_config")]  # fmt: skip
    result = write_archive(tmp_path / "i.etm", metadata=new_metadata(tool_version="0"), members=vision)
    assert result.metadata["min_reader_version"] == 2  # a processor config alone needs version 2


def test_version_is_decided_by_the_features_used() -> None:
    base = [MemberSpec("model.pte", Path("m.pte"), "program"),
            MemberSpec("weights/b.ptd", Path("b.ptd"), "weights"),
            MemberSpec("weights/a.ptd", Path("a.ptd"), "weights")]  # fmt: skip
    assert required_version({}, base) == 1 and version_features({}, base) == []
    explicit_v1 = [MemberSpec("model.pte", Path("m.pte"), "program", kind="model",
                              data=("weights/a.ptd", "weights/b.ptd")), *base[1:]]  # fmt: skip
    assert required_version({}, explicit_v1) == 1  # the version-1 rule spelled out
    cases = {
        "programs/": [*base, MemberSpec("programs/p.pte", Path("p.pte"), "program")],
        "processors/": [*base, MemberSpec("processors/c.json", Path("c.json"), "processor_config")],
        "special_tokens_map": [*base, MemberSpec("special_tokens_map.json", Path("s"), "tokenizer_config")],
        "role 'foundation'": [*base[:2], MemberSpec("weights/a.ptd", Path("a.ptd"), "weights", kind="foundation")],
        "loads ['weights/b.ptd']": [MemberSpec("model.pte", Path("m.pte"), "program", data=("weights/b.ptd",)), *base[1:]],
    }  # fmt: skip
    for needle, specs in cases.items():
        assert required_version({}, specs) == 2, needle
        assert needle in " ".join(version_features({}, specs)), needle
    assert version_features({"modalities": []}, base) == ["$.modalities"]


def test_version_1_archives_stay_version_1(tmp_path: Path) -> None:
    need(LORA / "adapter_a.pte")
    plain = [MemberSpec("model.pte", LORA / "adapter_a.pte", "program"),
             MemberSpec("tokenizer.model", LORA / "tokenizer.model", "tokenizer"),
             MemberSpec(FOUNDATION, LORA / "foundation.ptd", "weights", ptd_keys(LORA / "foundation.ptd"))]  # fmt: skip
    result = write_archive(tmp_path / "p.etm", metadata=new_metadata(tool_version="0"), members=plain)
    meta = result.metadata
    assert (meta["format_version"], meta["min_reader_version"]) == (1, 1)
    assert "programs" not in meta and all(set(w) == {"member", "keys"} for w in meta["weights"])
    with open_archive(result.path) as etm:
        assert [(p.name, p.role, p.data) for p in etm.layout.programs] == [("model", "model", (FOUNDATION,))]
        assert etm.layout.weights[0].role == "weights" and etm.layout.modalities == ()


def test_every_shipped_archive_still_opens() -> None:
    shipped = sorted(FIXTURES.rglob("*.etm"))
    if not shipped:
        pytest.skip("no .etm fixtures (run ./dev.sh fixtures)")
    for path in shipped:
        with open_archive(path) as etm:
            assert etm.metadata["min_reader_version"] == 1
            assert etm.layout.program().member == "model.pte"


# --- the writer refuses bad version-2 specs, every problem at once -------------------------------


def _replace(target: str, **changes: Any) -> Callable[[list[MemberSpec]], list[MemberSpec]]:
    def edit(specs: list[MemberSpec]) -> list[MemberSpec]:
        out = []
        for s in specs:
            fields = {"name": s.name, "source": s.source, "role": s.role, "keys": s.keys,
                      "kind": s.kind, "data": s.data, "snapshot": s.snapshot}  # fmt: skip
            out.append(MemberSpec(**(fields | changes)) if s.name == target else s)
        return out

    return edit


SPEC_CASES = {
    "data_not_weights": (_replace("model.pte", data=(FOUNDATION, "tokenizer.model")), "not weights members"),
    "unloaded_weights": (_replace("programs/adapter_b.pte", data=(FOUNDATION,)), f"{ADAPTER_B!r}: loaded by no program"),
    "bad_program_role": (_replace("programs/preprocessor.pte", kind="modle"), "not a program role"),
    "bad_weights_role": (_replace(ADAPTER_A, kind="lora"), "not a weights role"),
    "kind_on_tokenizer": (_replace("tokenizer.model", kind="model"), "programs and weights only"),
    "main_role": (_replace("model.pte", kind="encoder"), "main program's role is 'model'"),
    "main_snapshot": (_replace("model.pte", snapshot={"methods": []}), "snapshot applies"),
    "program_named_model": (_replace("programs/preprocessor.pte", name="programs/model.pte"), "not an allowed member name"),
    "traversal": (_replace("programs/preprocessor.pte", name="programs/../x.pte"), "path traversal"),
    "duplicate": (lambda s: [*s, s[1]], "given twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_writer_refuses_bad_specs(tmp_path: Path, case: str) -> None:
    edit, needle = SPEC_CASES[case]
    with pytest.raises(UsageError, match="cannot pack these members") as info:
        write_lora(tmp_path / "x.etm", edit(lora_specs()))
    assert needle in info.value.message and info.value.message.count(";") == 0
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_shared_file_stored_twice(tmp_path: Path) -> None:
    specs = lora_specs()
    specs[1] = _replace("programs/adapter_b.pte", data=("weights/foundation_copy.ptd", ADAPTER_B))(specs)[1]
    specs.append(MemberSpec("weights/foundation_copy.ptd", LORA / "foundation.ptd", "weights", kind="foundation"))
    with pytest.raises(UsageError, match=r"holds the same bytes as 'weights/foundation\.ptd'"):
        write_lora(tmp_path / "x.etm", specs)
    assert list(tmp_path.iterdir()) == []


# --- hostile version-2 metadata: each refused at open with one clear error ---------------------


Mutation = Callable[[dict[str, Any]], None]
Extra = tuple[tuple[str, "bytes | Path"], ...]


def rebuild(src: Path, dest: Path, mutate: Mutation | None = None, extra: Extra = ()) -> Path:
    """``src`` rewritten with its metadata mutated and ``extra`` members added (and listed)."""
    with open_archive(src) as etm:
        meta = copy.deepcopy(etm.metadata)
        blobs = [(n, bytes(etm.member_view(n))) for n in etm.members if n != "metadata.json"]
    added = [(n, d.read_bytes() if isinstance(d, Path) else d) for n, d in extra]
    for name, data in added:
        meta["members"].append({"name": name, "size": len(data), "role": role_of(name) or "program",
                                "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    if mutate is not None:
        mutate(meta)
    out, central = bytearray(), bytearray()
    entries = [("metadata.json", serialize_metadata(meta)), *blobs, *added]
    for name, data in entries:
        offset, crc = len(out), zlib.crc32(data)
        out += local_header(name.encode(), len(data), crc, offset, 64) + data
        central += central_entry(name.encode(), len(data), crc, offset)
    out += central + end_records(len(entries), len(out), len(central))
    dest.write_bytes(bytes(out))
    return dest


def _set(path: str, value: Any) -> Mutation:
    def mutate(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = meta
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(meta: dict[str, Any]) -> None:
        for one in mutations:
            one(meta)

    return mutate


def _store_foundation_twice(meta: dict[str, Any]) -> None:
    meta["programs"][1]["data"] = ["weights/zcopy.ptd", ADAPTER_B]
    meta["weights"].append({"member": "weights/zcopy.ptd", "keys": [], "role": "foundation"})


PTE = b"\x1c\x00\x00\x00ET12" + bytes(56)
HOSTILE: dict[str, tuple[Mutation | None, Extra, type[Exception], str]] = {
    "missing_data_member": (_set("programs.1.data", [FOUNDATION, ADAPTER_B, "weights/nope.ptd"]), (), MetadataError, "'weights/nope.ptd' is not a weights member"),
    "unreferenced_weights": (_set("programs.1.data", [FOUNDATION]), (), MetadataError, f"weights member {ADAPTER_B!r} is loaded by no program"),
    "bad_program_role": (_set("programs.2.role", "modle"), (), MetadataError, "'modle' is not a program role"),
    "bad_weights_role": (_set("weights.0.role", "lora"), (), MetadataError, "'lora' is not a weights role"),
    "weights_role_missing": (lambda m: m["weights"][0].pop("role"), (), MetadataError, "missing required key 'role'"),
    "duplicate_program": (lambda m: m["programs"].append(copy.deepcopy(m["programs"][1])), (), MetadataError, "program 'adapter_b' is listed twice"),
    "traversal_program_name": (_set("programs.2.name", "../evil"), (), MetadataError, "'../evil' is not a program name"),
    "program_wrong_member": (_set("programs.2.member", "model.pte"), (), MetadataError, "is stored as 'programs/preprocessor.pte'"),
    "program_unlisted": (lambda m: m["programs"].pop(2), (), MetadataError, "program member 'programs/preprocessor.pte' is not listed"),
    "main_not_model": (_set("programs.0.role", "encoder"), (), MetadataError, "the main program's role is 'model'"),
    "programs_missing": (lambda m: m.pop("programs"), (), MetadataError, "missing required key 'programs'"),
    "key_in_two_data_files": (_both(_set("weights.0.keys", ["k"]), _set("weights.2.keys", ["k"])), (), MetadataError, "ExecuTorch refuses a key found in two data files"),
    "modality_missing_preprocessor": (_set("modalities", [{"modality": "audio", "token_id": 3, "preprocessor": "mel"}]), (), MetadataError, "no program 'mel'"),
    "modality_not_preprocessor": (_set("modalities", [{"modality": "audio", "token_id": 3, "preprocessor": "adapter_b"}]), (), MetadataError, "has role 'model', not 'preprocessor'"),
    "modality_token_outside_vocab": (_both(_set("tokenizer", {"member": "tokenizer.model", "format": "sentencepiece", "variant": None, "vocab_size": 512, "bos_id": 1, "bos_token": None, "eos_ids": [2], "eos_tokens": [None]}), _set("modalities", [{"modality": "vision", "token_id": 600}])), (), MetadataError, "600 is outside the tokenizer's vocabulary (512)"),
    "modality_unknown_method": (_set("modalities", [{"modality": "vision", "token_id": None, "method": "vision_encoder"}]), (), MetadataError, "program 'model' has no method 'vision_encoder'"),
    "modality_twice": (_set("modalities", [{"modality": "text", "token_id": None}, {"modality": "text", "token_id": None}]), (), MetadataError, "'text' is listed twice"),
    "features_with_reader_1": (_set("min_reader_version", 1), (), MetadataError, "uses format-2 features"),
    "foundation_stored_twice": (_store_foundation_twice, (("weights/zcopy.ptd", LORA / "foundation.ptd"),), MetadataError, "'weights/zcopy.ptd' holds the same bytes as 'weights/foundation.ptd'"),
    "duplicate_member_name": (None, (("programs/preprocessor.pte", PTE),), ArchiveError, "duplicate name"),
    "traversal_member": (None, (("programs/../evil.pte", PTE),), ArchiveError, "path traversal"),
    "newer_reader": (_both(_set("format_version", 3), _set("min_reader_version", 3)), (), UnsupportedVersionError, "reads format versions 1, 2"),
    "newer_members": (_both(_set("format_version", 3), _set("min_reader_version", 3)), (("graphs/decoder.bin", b"x"),), UnsupportedVersionError, "reads format versions 1, 2"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_version_2_metadata(tmp_path: Path, lora_archive: Path, case: str) -> None:
    mutate, extra, error, needle = HOSTILE[case]
    bad = rebuild(lora_archive, tmp_path / "bad.etm", mutate, extra)
    with pytest.raises(error) as info:
        open_archive(bad).close()
    message = str(info.value)
    assert type(info.value) is error and needle in message, message
    assert str(bad) in message and info.value.hint  # type: ignore[attr-defined]
    if error is MetadataError:  # one problem, one clear error
        assert message.split(" (hint: ")[0].count("; ") == 0, message


def test_rebuild_without_changes_opens(tmp_path: Path, lora_archive: Path) -> None:
    with open_archive(rebuild(lora_archive, tmp_path / "same.etm")) as etm:
        assert etm.verify() == [] and len(etm.layout.programs) == 3


# --- the version-1 reader and writer, as they were ---------------------------------------------


@pytest.fixture(scope="module")
def v1_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """etm_compat's archive package and leaves from the last version-1 commit, in a temp folder."""
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", f"{V1_COMMIT}^{{commit}}"],
                                     capture_output=True).returncode:  # fmt: skip
        pytest.skip(f"git history with {V1_COMMIT[:7]} is not available")
    root = tmp_path_factory.mktemp("v1code")
    files = subprocess.run([git, "-C", str(ROOT), "ls-tree", "-r", "--name-only", V1_COMMIT,
                            "etm_compat/archive"], capture_output=True, text=True, check=True)  # fmt: skip
    wanted = files.stdout.split() + [f"etm_compat/{m}.py" for m in
                                     ("constants", "errors", "fileio", "jsonlimits", "findings")]  # fmt: skip
    for name in wanted:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = subprocess.run([git, "-C", str(ROOT), "show", f"{V1_COMMIT}:{name}"],
                              capture_output=True, check=True).stdout  # fmt: skip
        target.write_bytes(text)
    (root / "etm_compat" / "__init__.py").write_text("")
    return root


V1_SCRIPT = """
import json, sys
from pathlib import Path
import etm_compat.archive as archive
assert archive.__file__.startswith(sys.argv[1]), archive.__file__
from etm_compat.archive import MemberSpec, open_archive, write_archive
from etm_compat.archive.metadata import new_metadata
if sys.argv[2] == "open":
    try:
        with open_archive(sys.argv[3]) as etm:
            print(json.dumps({"error": None, "version": etm.metadata["format_version"]}))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    specs = [MemberSpec(n, Path(s), r, tuple(k)) for n, s, r, k in json.loads(sys.argv[4])]
    write_archive(sys.argv[3], metadata=new_metadata(tool_version="0.1.0"), members=specs)
"""


def run_v1(code: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", V1_SCRIPT, str(code), *args], cwd=code, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def test_version_1_reader_refuses_a_version_2_archive_with_its_version_message(tmp_path: Path, v1_code: Path) -> None:
    # Only version-1 member names, but weight roles and a main program loading a subset: format 2.
    need(LORA / "adapter_a.pte")
    specs = [MemberSpec("model.pte", LORA / "adapter_a.pte", "program", data=(FOUNDATION, ADAPTER_A)),
             MemberSpec(FOUNDATION, LORA / "foundation.ptd", "weights", kind="foundation"),
             MemberSpec(ADAPTER_A, LORA / "adapter_a.ptd", "weights", kind="adapter")]  # fmt: skip
    write_archive(tmp_path / "v2.etm", metadata=lora_meta(), members=specs)
    found = run_v1(v1_code, "open", str(tmp_path / "v2.etm"))
    assert found["error"] == "UnsupportedVersionError", found
    assert "needs reader version 2" in found["message"]
    assert "this etm-compat reads format versions 1 " in found["message"] + " "
    assert "upgrade etm-compat" in found["message"]


def test_version_1_reader_checks_names_before_the_version(tmp_path: Path, v1_code: Path, lora_archive: Path) -> None:
    # What the shipped version-1 reader does with new member names (documented in FORMAT.md):
    # it refuses them as names, before reading the version. This reader judges the version first.
    found = run_v1(v1_code, "open", str(lora_archive))
    assert found["error"] == "ArchiveError", found
    assert "'programs/adapter_b.pte': not an allowed member name" in found["message"]


def test_current_reader_as_a_version_1_reader_names_the_supported_versions() -> None:
    meta = lora_meta() | {"format_version": 2, "min_reader_version": 2}
    with pytest.raises(UnsupportedVersionError) as info:
        check_version(meta, name="m.etm!metadata.json", supported=(1,))
    assert "needs reader version 2" in info.value.message
    assert info.value.message.endswith("this etm-compat reads format versions 1")
    check_version(meta, name="m", supported=(1, 2))


def test_version_1_writer_and_this_one_write_the_same_bytes(tmp_path: Path, v1_code: Path) -> None:
    need(LORA / "adapter_a.pte", FIXTURES / "programs" / "ext_weights.pte")
    hf = FIXTURES / "tokenizers" / "hf_bpe"
    sets = {
        "lora_as_v1": [("model.pte", LORA / "adapter_a.pte", "program", ()),
                       ("tokenizer.model", LORA / "tokenizer.model", "tokenizer", ()),
                       (FOUNDATION, LORA / "foundation.ptd", "weights", ptd_keys(LORA / "foundation.ptd")),
                       (ADAPTER_A, LORA / "adapter_a.ptd", "weights", ptd_keys(LORA / "adapter_a.ptd"))],
        "hf": [("weights/ext_weights.ptd", FIXTURES / "programs" / "ext_weights.ptd", "weights", ("linear.weight",)),
               ("tokenizer_config.json", hf / "tokenizer_config.json", "tokenizer_config", ()),
               ("tokenizer.json", hf / "tokenizer.json", "tokenizer", ()),
               ("model.pte", FIXTURES / "programs" / "ext_weights.pte", "program", ())],
    }  # fmt: skip
    for label, entries in sets.items():
        old, new = tmp_path / f"{label}-v1.etm", tmp_path / f"{label}-now.etm"
        run_v1(v1_code, "write", str(old), json.dumps([[n, str(s), r, list(k)] for n, s, r, k in entries]))
        specs = [MemberSpec(n, s, r, tuple(k)) for n, s, r, k in entries]  # type: ignore[arg-type]
        write_archive(new, metadata=new_metadata(tool_version="0.1.0"), members=specs)
        assert new.read_bytes() == old.read_bytes(), label
        assert run_v1(v1_code, "open", str(new))["error"] is None
