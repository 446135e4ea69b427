"""`pack` / `unpack` / `verify` end to end on the legacy fixtures, through `main([...])`."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURES

from etm_compat.archive import open_archive
from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE
from etm_compat.cli.main import main
from etm_compat.formats.pte import read_pte
from etm_compat.formats.tokenizer.detect import read_tokenizer

LEGACY = FIXTURES / "legacy"
SINGLE = ["et_example", "hf_style", "with_ptd", "export_llm", "tiktoken_llama3"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def pack(src: Path | str, out: Path, *extra: str) -> int:
    return main(["pack", str(src), "-o", str(out), *extra])


@pytest.fixture(params=SINGLE)
def legacy(request) -> Path:
    folder = LEGACY / request.param
    if not folder.is_dir():
        pytest.skip(f"fixtures/legacy/{request.param} missing")
    return folder


def test_pack_unpack_roundtrip_is_byte_identical(legacy, tmp_path, capsys):
    before = tree_digest(legacy)
    out = tmp_path / "m.etm"
    assert pack(legacy, out) == EXIT_OK
    assert main(["unpack", str(out), "-o", str(tmp_path / "un")]) == EXIT_OK
    restored = tree_digest(tmp_path / "un")
    with open_archive(out) as archive:
        meta = archive.metadata
    # Every archived file comes back with the bytes of its source.
    sources = {Path(s["path"]).name: s["sha256"] for s in meta["provenance"]["sources"]}
    program = next(p for p in legacy.iterdir() if p.suffix == ".pte")
    assert restored["model.pte"] == sha(program)
    tok_member = meta["tokenizer"]["member"]
    if meta["tokenizer"].get("converted_from") is None:
        assert restored[tok_member] in sources.values()
    for w in meta["weights"]:
        assert restored[Path(w["member"]).name] in sources.values()
    # Sources untouched.
    assert tree_digest(legacy) == before


def test_packing_twice_gives_identical_archives(legacy, tmp_path, capsys):
    a, b = tmp_path / "a.etm", tmp_path / "sub" / "b.etm"
    b.parent.mkdir()
    assert pack(legacy, a) == EXIT_OK
    assert pack(legacy, b) == EXIT_OK
    assert a.read_bytes() == b.read_bytes()


def test_archive_is_a_standard_zip_with_metadata_first_and_stored_members(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "with_ptd", out) == EXIT_OK
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert infos[0].filename == "metadata.json"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.testzip() is None
        names = {i.filename for i in infos}
    assert {"metadata.json", "model.pte", "tokenizer.model"} <= names
    assert any(n.startswith("weights/") and n.endswith(".ptd") for n in names)
    with open_archive(out) as archive:
        for name in ("model.pte", *[n for n in names if n.endswith(".ptd")]):
            offset, _ = archive.member_range(name)
            assert offset % 16384 == 0, (name, offset)


def test_metadata_snapshot_matches_the_readers(tmp_path, capsys):
    folder = LEGACY / "hf_style"
    out = tmp_path / "m.etm"
    assert pack(folder, out) == EXIT_OK
    with open_archive(out) as archive:
        meta = archive.metadata
    pte = read_pte(folder / "model.pte")
    tok = read_tokenizer(folder / "tokenizer.json", config_path=folder / "tokenizer_config.json")
    assert meta["program"]["constant_methods"] == json.loads(json.dumps(dict(pte.constant_methods)))
    assert meta["tokenizer"]["format"] == "hf_json"
    assert meta["tokenizer"]["vocab_size"] == tok.vocab_size
    assert "tokenizer_config.json" in {m["name"] for m in meta["members"]}
    shipped = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["chat_template"] == shipped  # a shipped template is kept verbatim
    gen = json.loads((folder / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert set(eos) <= set(meta["generation"]["stop_token_ids"])


def test_llama2c_original_layout_is_converted_and_recorded(tmp_path, capsys):
    src = FIXTURES / "tokenizers" / "llama2c_original.bin"
    if not src.is_file():
        pytest.skip("fixture missing")
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(LEGACY / "et_example" / "model.pte", folder / "model.pte")
    shutil.copy(src, folder / "tokenizer.bin")
    before = sha(folder / "tokenizer.bin")
    out = tmp_path / "m.etm"
    assert pack(folder, out) == EXIT_OK
    assert sha(folder / "tokenizer.bin") == before
    with open_archive(out) as archive:
        meta = archive.metadata
        member = bytes(archive.member_view("tokenizer.bin"))
    assert meta["tokenizer"]["converted_from"] == "llama2c_original"
    assert member != src.read_bytes()
    converted = tmp_path / "converted.bin"
    converted.write_bytes(member)
    info = read_tokenizer(converted)
    assert info.variant == "pytorch_tokenizers"
    if info.runner is not None and info.runner.loadable is not None:
        assert info.runner.loadable


def test_pack_overrides(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "et_example", out, "--family", "qwen3") == EXIT_OK
    with open_archive(out) as archive:
        assert archive.metadata["family"]["id"] == "qwen3"
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    out2 = tmp_path / "m2.etm"
    assert pack(LEGACY / "et_example", out2, "--chat-template", str(template)) == EXIT_OK
    with open_archive(out2) as archive:
        assert archive.metadata["chat_template"] == template.read_text()


def test_pack_refuses_to_overwrite_and_names_the_fix(tmp_path, capsys):
    out = tmp_path / "m.etm"
    out.write_bytes(b"precious")
    assert pack(LEGACY / "et_example", out) == EXIT_OUTPUT
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert pack(LEGACY / "et_example", out, "--force") == EXIT_OK


def test_pack_of_folder_with_variants_asks_which_one(tmp_path, capsys):
    assert pack(LEGACY / "variants", tmp_path / "m.etm") == EXIT_USAGE
    assert "several programs" in capsys.readouterr().err
    assert pack(LEGACY / "variants" / "model_b.pte", tmp_path / "b.etm") == EXIT_OK


def test_pack_failure_leaves_no_output(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(LEGACY / "et_example" / "model.pte", folder / "model.pte")
    (folder / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    assert pack(folder, tmp_path / "m.etm", "--tokenizer", str(folder / "tokenizer.model")) == EXIT_BAD_INPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_unpack_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "et_example", out) == EXIT_OK
    dest = tmp_path / "un"
    dest.mkdir()
    (dest / "model.pte").write_bytes(b"keep me")
    assert main(["unpack", str(out), "-o", str(dest)]) == EXIT_OUTPUT
    assert (dest / "model.pte").read_bytes() == b"keep me"
    assert main(["unpack", str(out), "-o", str(dest), "--force"]) == EXIT_OK
    assert (dest / "model.pte").read_bytes() == (LEGACY / "et_example" / "model.pte").read_bytes()


def test_verify_detects_a_flipped_byte(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "with_ptd", out) == EXIT_OK
    assert main(["verify", str(out)]) == EXIT_OK
    with open_archive(out) as archive:
        offset, length = archive.member_range("model.pte")
    data = bytearray(out.read_bytes())
    data[offset + length - 1] ^= 0xFF
    bad = tmp_path / "bad.etm"
    bad.write_bytes(bytes(data))
    capsys.readouterr()
    code = main(["verify", "--json", str(bad)])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False
    assert any("model.pte" in f["message"] for f in report["findings"])


@pytest.mark.runtime
def test_verify_runtime_loads_program_and_checks_snapshot(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "with_ptd", out) == EXIT_OK
    capsys.readouterr()
    assert main(["verify", "--runtime", "--json", str(out)]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_inspect_archive_json(tmp_path, capsys):
    out = tmp_path / "m.etm"
    assert pack(LEGACY / "with_ptd", out) == EXIT_OK
    capsys.readouterr()
    assert main(["inspect", "--json", str(out)]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "etm"
    assert info["metadata"]["format"] == "etm"
    members = {m["name"]: m for m in info["members"]}
    assert members["model.pte"]["size"] == (LEGACY / "with_ptd" / "program.pte").stat().st_size


def test_no_fsync_writes_the_same_archive(tmp_path, capsys):
    durable, quick = tmp_path / "a.etm", tmp_path / "b.etm"
    assert pack(LEGACY / "with_ptd", durable) == EXIT_OK
    assert pack(LEGACY / "with_ptd", quick, "--no-fsync") == EXIT_OK
    assert durable.read_bytes() == quick.read_bytes()


@pytest.mark.parametrize("name", ["hf_style", "with_ptd", "export_llm"])
def test_provenance_records_every_source_with_its_real_digest(tmp_path, capsys, name):
    # Program, tokenizer and weights get their digest from the writer's copy pass; config files
    # are hashed on their own. Either way the recorded digest is the file's sha256.
    folder = LEGACY / name
    out = tmp_path / "m.etm"
    assert pack(folder, out) == EXIT_OK
    with open_archive(out) as archive:
        sources = archive.metadata["provenance"]["sources"]
    assert {s["path"] for s in sources} == {p.name for p in folder.iterdir() if p.is_file()}
    for source in sources:
        path = folder / source["path"]
        assert source["sha256"] == sha(path), source["path"]
        assert source["size"] == path.stat().st_size


def test_converted_tokenizer_keeps_the_original_files_digest(tmp_path, capsys):
    src = FIXTURES / "tokenizers" / "llama2c_original.bin"
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(LEGACY / "et_example" / "model.pte", folder / "model.pte")
    shutil.copy(src, folder / "tokenizer.bin")
    out = tmp_path / "m.etm"
    assert pack(folder, out) == EXIT_OK
    with open_archive(out) as archive:
        recorded = {s["path"]: s["sha256"] for s in archive.metadata["provenance"]["sources"]}
        member = {m["name"]: m["sha256"] for m in archive.metadata["members"]}
    assert recorded["tokenizer.bin"] == sha(src)  # the source as found, not the converted member
    assert member["tokenizer.bin"] != recorded["tokenizer.bin"]


def _pack_watching(monkeypatch, source, out, *, sniffed=None):
    """pack ``source`` to ``out/m.etm``, listing ``out`` when the files start being read and
    when inference starts; ``sniffed`` replaces the tokenizer format pack sniffs up front."""
    from etm_compat import packing

    seen: dict[str, list[str]] = {}

    def watching(name, real):
        def call(*args, **kwargs):
            seen[name] = sorted(p.name for p in out.iterdir())
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(packing, "read_files", watching("read", packing.read_files))
    monkeypatch.setattr(packing, "describe", watching("describe", packing.describe))
    if sniffed is not None:
        monkeypatch.setattr(packing, "sniff_tokenizer_format", lambda path: sniffed)
    assert pack(source, out / "m.etm") == EXIT_OK
    monkeypatch.undo()
    return seen


def _as_pack_view_writes(source, tmp_path):
    from etm_compat import packing
    from etm_compat.adapters import default_adapters
    from etm_compat.legacy.resolve import resolve_source
    from etm_compat.view import describe

    view = describe(resolve_source(source, default_adapters()))
    packing.pack_view(view, tmp_path / "whole.etm")
    return (tmp_path / "whole.etm").read_bytes()


def test_pack_copies_the_members_while_it_reads_and_infers_and_writes_what_pack_view_writes(
    legacy, tmp_path, monkeypatch
):
    """The archive's temp file exists before the tokenizer is read (its format sniffed, the
    members known): the copy and its sync run beside the parse and inference. A llama2c
    tokenizer may need converting: its draft starts once the files are read."""
    from etm_compat.adapters import default_adapters
    from etm_compat.formats.tokenizer.detect import sniff_tokenizer_format
    from etm_compat.legacy.resolve import resolve_source

    out = tmp_path / "out"
    out.mkdir()
    seen = _pack_watching(monkeypatch, legacy, out)
    assert len(seen["describe"]) == 1 and seen["describe"][0].startswith(".m.etm.")
    tokenizer = resolve_source(legacy, default_adapters()).tokenizer
    assert tokenizer is not None
    early = sniff_tokenizer_format(tokenizer) != "llama2c"
    assert seen["read"] == (seen["describe"] if early else [])  # the same draft, kept
    assert (out / "m.etm").read_bytes() == _as_pack_view_writes(legacy, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["m.etm"]


def test_a_tokenizer_read_otherwise_than_sniffed_gets_a_draft_of_its_own(legacy, tmp_path, monkeypatch):
    """Sniffed as tekken, read as an HF tokenizer.json: the members differ (the tokenizer's name),
    so the first draft is dropped and another one copies the right members; the archive is
    still the one pack_view writes, and no temp file is left."""
    out = tmp_path / "out"
    out.mkdir()
    seen = _pack_watching(monkeypatch, legacy, out, sniffed="tekken")
    assert len(seen["read"]) == 1 and len(seen["describe"]) == 1
    assert seen["describe"] != seen["read"]  # another temp file: another draft
    assert (out / "m.etm").read_bytes() == _as_pack_view_writes(legacy, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["m.etm"]
