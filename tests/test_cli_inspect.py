"""`etm-compat inspect`: JSON for every kind, and one clear error line + exit code for bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import FIXTURES, fixture_file

from etm_compat.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE
from etm_compat.cli.main import main


def run_json(capsys, *args: str) -> dict:
    assert main(["inspect", "--json", *args]) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def run_error(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def test_inspect_pte_json_has_constant_methods_methods_backends_keys(capsys):
    pte = fixture_file("programs/constants_all.pte")
    info = run_json(capsys, str(pte))
    assert info["kind"] == "pte"
    assert info["constant_methods"]["get_eos_ids"] == [2, 3]
    assert info["constant_methods"]["stop_ids"] == [2]
    assert info["constant_methods"]["use_kv_cache"] is True
    assert info["methods"] == ["forward"]
    assert info["backends"] == [] and info["external_keys"] == []


def test_inspect_xnnpack_pte_names_the_backend(capsys):
    info = run_json(capsys, str(fixture_file("programs/xnnpack.pte")))
    assert info["backends"] == ["XnnpackBackend"]


def test_inspect_ptd_json_lists_tensors(capsys):
    info = run_json(capsys, str(fixture_file("programs/ext_weights.ptd")))
    assert info["kind"] == "ptd"
    assert {t["key"] for t in info["tensors"]} == set(
        run_json(capsys, str(fixture_file("programs/ext_weights.pte")))["external_keys"]
    )
    for t in info["tensors"]:
        assert set(t) >= {"key", "dtype", "shape", "nbytes"}


@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("tokenizers/sp.model", "sentencepiece"),
        ("tokenizers/hf_bpe/tokenizer.json", "hf_json"),
        ("tokenizers/tiktoken.model", "tiktoken"),
        ("tokenizers/tokenizer.bin", "llama2c"),
    ],
)
def test_inspect_tokenizer_json(capsys, tmp_path, rel, fmt):
    src = fixture_file(rel)
    # A misleading name must not matter: detection is by content.
    renamed = tmp_path / "weights.ptd"
    shutil.copy(src, renamed)
    info = run_json(capsys, str(renamed))
    assert info["kind"] == "tokenizer"
    assert info["format"] == fmt
    assert {"vocab_size", "bos_id", "eos_id"} <= set(info)


def test_inspect_folder_json_lists_deployments(capsys):
    legacy = FIXTURES / "legacy"
    if not legacy.is_dir():
        pytest.skip("fixtures/legacy missing")
    info = run_json(capsys, str(legacy))
    assert info["kind"] == "folder"
    names = sorted(d["name"] for d in info["deployments"])
    assert names == sorted(str(p.relative_to(legacy)) for p in legacy.rglob("*.pte"))
    for d in info["deployments"]:
        assert "error" not in d, d.get("error")
        assert d["pte"]["kind"] == "pte"
        assert d["tokenizer_info"]["kind"] == "tokenizer"


def _mutated(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bad_inputs(tmp_path):
    good = fixture_file("llama/tiny_llama.pte").read_bytes()
    head = good[:64]
    corrupt = bytearray(good)
    corrupt[0:4] = struct.pack("<I", len(good) * 4)  # root table offset far past the end
    return {
        "non_pte": (_mutated(tmp_path, "notes.pte", b"hello, this is text\n" * 10), "ET12"),
        "truncated_pte": (_mutated(tmp_path, "short.pte", good[: len(good) // 2]), "truncated"),
        "corrupt_flatbuffer": (_mutated(tmp_path, "corrupt.pte", bytes(corrupt)), "offset"),
        "unknown_identifier": (_mutated(tmp_path, "future.pte", head[:4] + b"ET99" + good[8:]), "ET99"),
        "empty_tokenizer": (_mutated(tmp_path, "tokenizer.model", b""), "empty"),
        "garbage_tokenizer": (_mutated(tmp_path, "tokenizer.bin", bytes(range(256)) * 7), "tokenizer"),
    }


@pytest.mark.parametrize(
    "case",
    ["non_pte", "truncated_pte", "corrupt_flatbuffer", "unknown_identifier", "empty_tokenizer", "garbage_tokenizer"],
)
def test_malformed_input_gives_one_line_and_exit_3(capsys, tmp_path, case):
    path, needle = bad_inputs(tmp_path)[case]
    code, err = run_error(capsys, "inspect", str(path))
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("etm-compat: error: ")
    assert str(path) in lines[0]
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in err


def test_console_script_has_no_traceback_on_bad_input(tmp_path):
    path = tmp_path / "x.pte"
    path.write_bytes(b"\x00" * 3)
    proc = subprocess.run(
        [sys.executable, "-m", "etm_compat", "inspect", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_missing_path_and_bad_usage(capsys, tmp_path):
    code, err = run_error(capsys, "inspect", str(tmp_path / "nope.pte"))
    assert code == EXIT_BAD_INPUT and "no such file" in err
    assert main(["frobnicate"]) == EXIT_USAGE
    assert main([]) == EXIT_USAGE


def test_control_characters_in_names_are_escaped(capsys, tmp_path):
    path = tmp_path / "evil\x1b[31mname.pte"
    path.write_bytes(b"plain text, not a program")
    code, err = run_error(capsys, "inspect", str(path))
    assert code == EXIT_BAD_INPUT
    assert "\x1b" not in err and "\\x1b" in err


def test_inspect_does_not_import_torch_or_executorch(tmp_path):
    pte = fixture_file("programs/constants_all.pte")
    code = (
        f"import sys; from etm_compat.cli.main import main; rc = main(['inspect', '--json', {str(pte)!r}]);"
        "bad = [m for m in ('torch', 'executorch') if m in sys.modules]; print(bad); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"



def test_a_tokenizer_is_read_ahead_of_its_readers_and_a_program_is_not(capsys, monkeypatch, tmp_path):
    """The read ahead starts before the tokenizer readers load, and the reader takes its bytes;
    nothing is left behind, even when the file proves no tokenizer. A program (read in parts,
    and possibly huge) is never read ahead."""
    from etm_compat import fileio, inspection

    started: list[str] = []
    taken: list[bool] = []
    real_ahead, real_take = fileio.read_ahead, fileio._ReadAhead.take

    def spy(path, limit):  # type: ignore[no-untyped-def]
        started.append(path.name)
        assert limit <= inspection.READ_AHEAD_MAX_BYTES
        return real_ahead(path, limit)

    def take(self, size, mtime_ns):  # type: ignore[no-untyped-def]
        data = real_take(self, size, mtime_ns)
        taken.append(data is not None)
        return data

    monkeypatch.setattr(inspection, "read_ahead", spy)
    monkeypatch.setattr(fileio._ReadAhead, "take", take)
    tokenizer = tmp_path / "tokenizer.json"
    shutil.copy(fixture_file("tokenizers/hf_bpe/tokenizer.json"), tokenizer)
    for path in (tokenizer, fixture_file("programs/constants_all.pte")):
        assert main(["inspect", "--json", str(path)]) == EXIT_OK
        capsys.readouterr()
    assert started == ["tokenizer.json"] and taken == [True] and fileio._AHEAD == {}
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"\x00not a tokenizer" * 100)
    assert main(["inspect", "--json", str(bogus)]) == EXIT_BAD_INPUT
    assert started[-1] == "bogus.model" and fileio._AHEAD == {}
