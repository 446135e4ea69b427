"""The runner check (pytorch_tokenizers, the on-device runner's own loader): run in the isolation
worker, so a tokenizer that crashes the loader is a finding; run once per distinct tokenizer
content in a process, however many deployments share it; remembered on disk across runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, hang_guard
from test_isolation import backtracking_tokenizer, crashing_tokenizer, greedy_llama2c

from etm_compat import cachedir, isolation
from etm_compat.adapters import default_adapters
from etm_compat.compat import cache_admin
from etm_compat.diagnosis import diagnose
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer import runner
from etm_compat.formats.tokenizer.detect import read_tokenizer

pytest.importorskip("pytorch_tokenizers")

HF_BPE = FIXTURES / "tokenizers" / "hf_bpe"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache folder per test, and nothing remembered from earlier tests."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ETM_CACHE_DIR", str(root))
    runner.forget_checks()
    return root


def _unique_tokenizer(dest: Path, indent: int) -> Path:
    """hf_bpe's tokenizer.json re-written with another indent: same tokenizer, new bytes."""
    doc = json.loads((HF_BPE / "tokenizer.json").read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=indent))
    return dest


def _records(root: Path) -> list[Path]:
    return cachedir.record_files("runner-checks", root)


def test_a_tree_sharing_one_tokenizer_runs_the_check_once(tmp_path):
    source = _unique_tokenizer(tmp_path / "tokenizer.json", indent=7)
    for i in range(20):
        folder = tmp_path / "tree" / f"dep{i:02d}"
        folder.mkdir(parents=True)
        shutil.copyfile(FIXTURES / "legacy" / "hf_style" / "model.pte", folder / "model.pte")
        shutil.copyfile(source, folder / "tokenizer.json")
    before = runner.native_checks
    report = diagnose(tmp_path / "tree", default_adapters())
    assert len(report.deployments) == 20
    assert runner.native_checks - before == 1


def test_a_repeat_names_its_own_file(tmp_path):
    broken = tmp_path / "a" / "tokenizer.json"
    broken.parent.mkdir()
    doc = json.loads((HF_BPE / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = {"type": "Whitespace"}  # a pre-tokenizer the runner lacks
    broken.write_text(json.dumps(doc, indent=5))
    other = tmp_path / "b" / "tokenizer.json"
    other.parent.mkdir()
    shutil.copyfile(broken, other)
    first = read_tokenizer(broken).runner
    before = runner.native_checks
    second = read_tokenizer(other).runner
    assert runner.native_checks == before  # answered from the first check
    assert first is not None and second is not None and first.loadable is False
    assert second.loadable is False and str(other) in (second.error or "") and str(broken) not in (second.error or "")
    runner.forget_checks()
    third = read_tokenizer(other).runner  # from the record on disk, still naming its own file
    assert runner.native_checks == before and third == second


# --- across runs ---------------------------------------------------------------------------------

_COUNT = """
import json, sys
from etm_compat.formats.tokenizer import runner
from etm_compat.formats.tokenizer.detect import read_tokenizer
check = read_tokenizer(sys.argv[1], config_path=sys.argv[2]).runner
print(json.dumps({"native": runner.native_checks, "check": check.to_json()}))
"""


def _run_in_a_new_process(tok: Path, config: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _COUNT, str(tok), str(config)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_a_second_run_is_served_from_disk(tmp_path, cache):
    tok = _unique_tokenizer(tmp_path / "dep" / "tokenizer.json", indent=3)
    config = shutil.copyfile(HF_BPE / "tokenizer_config.json", tmp_path / "dep" / "tokenizer_config.json")
    first = _run_in_a_new_process(tok, config)
    assert first["native"] == 1 and first["check"]["loadable"] is True  # type: ignore[index]
    assert len(_records(cache)) == 1
    second = _run_in_a_new_process(tok, config)
    assert second == {"native": 0, "check": first["check"]}


def test_the_record_key_covers_the_bytes_the_configs_and_the_library(tmp_path, monkeypatch, cache):
    tok = _unique_tokenizer(tmp_path / "tokenizer.json", indent=4)
    config = tmp_path / "tokenizer_config.json"
    config.write_text((HF_BPE / "tokenizer_config.json").read_text())
    before = runner.native_checks
    read_tokenizer(tok, config_path=config)
    runner.forget_checks()
    read_tokenizer(tok, config_path=config)
    assert runner.native_checks - before == 1  # same bytes, same config, same library: one load
    config.write_text(json.dumps({**json.loads(config.read_text()), "eos_token": "<s>"}))
    runner.forget_checks()
    read_tokenizer(tok, config_path=config)
    assert runner.native_checks - before == 2  # another config: checked again
    monkeypatch.setattr(runner, "_library_version", lambda: "0.0.0-another")
    runner.forget_checks()
    read_tokenizer(tok, config_path=config)
    assert runner.native_checks - before == 3  # another pytorch_tokenizers: checked again
    assert len(_records(cache)) == 3


@pytest.mark.parametrize(
    "damage",
    [
        b"not json",
        b"[1, 2, 3]",
        b'{"schema": 1, "path": "x", "check": {"loadable": "yes"}}',
        b'{"schema": 1, "path": "x", "check": {"loadable": true, "loader": "os.system", "error": null}}',
        b'{"schema": 1, "path": "x", "check": {"loadable": true, "loader": "SPTokenizer", "vocab_size": -5}}',
        b'{"schema": 99, "path": "x", "check": {"loadable": true, "loader": "SPTokenizer"}}',
        b"[" * 100_000,
        b'{"schema": 1, "path": "' + b"x" * 100_000 + b'"}',
    ],
    ids=["not-json", "a-list", "bad-type", "unknown-loader", "negative", "other-schema", "deep", "huge"],
)
def test_a_damaged_record_is_ignored_and_replaced(tmp_path, cache, damage):
    tok = _unique_tokenizer(tmp_path / "tokenizer.json", indent=2)
    good = read_tokenizer(tok).runner
    (record,) = _records(cache)
    record.write_bytes(damage)
    runner.forget_checks()
    before = runner.native_checks
    again = read_tokenizer(tok).runner
    assert runner.native_checks == before + 1 and again == good  # checked again, same answer
    assert json.loads(record.read_text())["check"] == good.to_json()  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["cache-is-a-file", "records-folder-is-a-file"])
def test_an_unusable_cache_folder_only_means_checking_again(tmp_path, cache, where):
    if where == "cache-is-a-file":
        cache.write_text("not a folder")
    else:
        cache.mkdir()
        (cache / "runner-checks").write_text("not a folder")
    tok = _unique_tokenizer(tmp_path / "tokenizer.json", indent=6)
    before = runner.native_checks
    assert read_tokenizer(tok).runner.loadable is True  # type: ignore[union-attr]
    runner.forget_checks()
    assert read_tokenizer(tok).runner.loadable is True  # type: ignore[union-attr]
    assert runner.native_checks == before + 2


def test_cache_list_and_prune_take_the_records(tmp_path, cache):
    tok = _unique_tokenizer(tmp_path / "tokenizer.json", indent=1)
    read_tokenizer(tok)
    (entry,) = cache_admin.list_entries()
    assert entry.kind == "runner-checks" and entry.folder == _records(cache)[0] and entry.size > 0
    assert cache_admin.prune(older_than_days=1).removed == ()
    pruned = cache_admin.prune(remove_all=True)
    assert [e.key for e in pruned.removed] == [entry.key] and not _records(cache)
    runner.forget_checks()
    before = runner.native_checks
    read_tokenizer(tok)
    assert runner.native_checks == before + 1  # pruned: checked again


# --- hostile tokenizers: the process survives ----------------------------------------------------


def test_a_tokenizer_that_crashes_the_loader_is_a_failed_check(tmp_path, cache):
    crasher = crashing_tokenizer(tmp_path / "tokenizer.json")
    check = runner.check_runner(crasher, "hf_json")
    assert check.loadable is False and check.loader is None
    assert (check.error or "").startswith("HFTokenizer crashed (SIGSEGV: Segmentation fault) while loading it")
    assert "Tiktoken" not in (check.error or "")  # the runner never gets past a crash
    before = runner.native_checks
    first = runner.check_runner_once(crasher, "hf_json", "c" * 64)
    runner.forget_checks()
    assert runner.check_runner_once(crasher, "hf_json", "c" * 64) == first  # a crash is remembered
    assert runner.native_checks == before + 1


def test_a_memory_blow_up_is_a_failed_check_that_is_not_remembered(tmp_path, monkeypatch, cache):
    greedy = greedy_llama2c(tmp_path / "tokenizer.bin")
    monkeypatch.setenv(isolation.ENV_MEMORY_MB, "400")
    check = runner.check_runner_once(greedy, "llama2c", "d" * 64)
    assert check.loadable is False
    assert "Llama2cTokenizer ran out of memory (limit 400 MiB) while loading it" in (check.error or "")
    assert not _records(cache)  # another machine (or limit) may load it: not recorded


def test_encoding_that_hangs_is_an_error_naming_the_time_limit(tmp_path, monkeypatch):
    tok = backtracking_tokenizer(tmp_path / "tokenizer.json")
    assert runner.encode_with_runner(tok, "aaaa").tokenizer_class == "HFTokenizer"
    monkeypatch.setenv(isolation.ENV_TIMEOUT, "2")
    with hang_guard(120), pytest.raises(TokenizerFormatError, match="did not finish within 2 s"):
        runner.encode_with_runner(tok, "a" * 40)


def test_encoding_with_a_tokenizer_that_crashes_names_the_signal(tmp_path):
    crasher = crashing_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerFormatError, match=r"cannot load it: HFTokenizer crashed \(SIGSEGV"):
        runner.encode_with_runner(crasher, "hello")


def test_encode_with_runner_is_the_runner_library_s_own_encoding():
    sp = FIXTURES / "tokenizers" / "sp.model"
    enc = runner.encode_with_runner(sp, "The cat walked", bos=1, eos=1)
    assert enc.tokenizer_class == "SPTokenizer" and (enc.bos_id, enc.eos_id) == (1, 2)
    assert enc.ids[0] == 1 and enc.ids[-1] == 2 and len(enc.pieces) == len(enc.ids)
    hf = runner.encode_with_runner(HF_BPE / "tokenizer.json", "héllo", config_path=HF_BPE / "tokenizer_config.json")
    assert hf.tokenizer_class == "HFTokenizer"
    # A byte-level piece that is half a UTF-8 character is shown as its byte.
    assert hf.pieces[:3] == ("h", "<0xC3>", "<0xA9>")


# --- the command line, in a fresh process each, with the crashing tokenizer ----------------------


@pytest.fixture(scope="module")
def crashing_deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crashing")
    shutil.copyfile(FIXTURES / "legacy" / "hf_style" / "model.pte", folder / "model.pte")
    crashing_tokenizer(folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["inspect", "{dep}/tokenizer.json"], 0),
        (["inspect", "{dep}"], 0),
        (["diagnose", "{dep}"], 1),  # an error finding
        (["pack", "{dep}", "-o", "{tmp}/m.etm"], 0),  # packed, with the finding
    ],
    ids=["inspect-file", "inspect-folder", "diagnose", "pack"],
)
def test_the_commands_survive_a_crashing_tokenizer(tmp_path, crashing_deployment, command, code):
    args = [a.format(dep=crashing_deployment, tmp=tmp_path) for a in command]
    env = {**os.environ, "ETM_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}  # a fresh cache: a real crash
    proc = subprocess.run(
        [sys.executable, "-m", "etm_compat", *args], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    named = [line for line in proc.stdout.splitlines() if "crashed (SIGSEGV: Segmentation fault)" in line]
    assert len(named) == 1, proc.stdout
    assert len(_records(tmp_path / "cache")) == 1  # the crash is remembered for the next run
    if command[0] == "pack":
        assert (tmp_path / "m.etm").is_file()
