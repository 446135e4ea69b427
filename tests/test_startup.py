"""Start-up: each command imports only what it uses.

Every check runs the real command line in a child process (``python -c`` running
``etm_compat.cli.main.main([...])``, or ``python -X importtime -m etm_compat``) and looks at the
modules it imported: counted, never timed (the machine is shared). Parsing the arguments loads no
verb; ``inspect --json`` of a program, a tokenizer or an archive loads no template machinery, no
rich, no deployment scanning and no archive writer; only terminal output loads rich; the
``upgrade`` parent leaves describing and packing to the processes that run the tasks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import APP_CHOICES, VERBS, build_parser, main
from etm_compat.prompt.apps import APP_IDS
from tests.conftest import FIXTURES, fixture_file

#: Runs ``main(argv)`` and writes its exit code and every imported module's name to a file.
PROBE = """
import json, sys
from etm_compat.cli.main import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""

#: What no ``inspect --json`` of a single file may import: the template machinery, terminal
#: output, configs in YAML, the runtime, process pools, and every layer above the file readers.
HEAVY: tuple[str, ...] = (
    "jinja2",
    "rich",
    "yaml",
    "torch",
    "executorch",
    "pytorch_tokenizers",
    "multiprocessing",
    "concurrent",
    "etm_compat.adapters",
    "etm_compat.bulk",
    "etm_compat.checks",
    "etm_compat.compat",
    "etm_compat.diagnosis",
    "etm_compat.infer",
    "etm_compat.legacy",
    "etm_compat.packing",
    "etm_compat.prompt",
    "etm_compat.view",
    "etm_compat.archive.write",
)
#: The modules ``etm-compat --help`` may load: the parser, the exit codes and the leaves.
PARSER_MODULES = frozenset(
    {
        "etm_compat",
        "etm_compat.__main__",
        "etm_compat.cli",
        "etm_compat.cli.main",
        "etm_compat.cli.exit_codes",
        "etm_compat.constants",
        "etm_compat.errors",
        "etm_compat.findings",
        "etm_compat.fileio",
        "etm_compat.jsonlimits",
        "etm_compat.lazy",  # the package's names resolve on first use
    }
)


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    """The modules of :data:`HEAVY` (and below them) in ``modules``, but for ``allowed``."""
    return sorted(m for m in modules if _within(m, HEAVY) and not _within(m, allowed))


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    """``etm-compat ARGV`` in a fresh interpreter: its exit code, imported modules and stdout."""
    record = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(record), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and record.is_file(), proc.stderr[-2000:]
    data = json.loads(record.read_text())
    return int(data["code"]), set(data["modules"]), proc.stdout


def inspect_json(tmp_path: Path, path: Path) -> tuple[dict[str, Any], set[str]]:
    code, modules, out = run_cli(tmp_path, "inspect", "--json", str(path))
    assert code == EXIT_OK
    return json.loads(out), modules


# --- parsing ------------------------------------------------------------------------------------


def _imported_by(argv: list[str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "argv",
    [["-m", "etm_compat", "--help"], ["-m", "etm_compat", "inspect", "--help"], ["-c", "import etm_compat.cli.main"]],
    ids=["help", "verb-help", "import"],
)
def test_parsing_the_arguments_loads_no_verb(argv: list[str]) -> None:
    modules = _imported_by(argv)
    assert "etm_compat.cli.main" in modules
    ours = {m for m in modules if m.startswith("etm_compat")}
    assert ours <= PARSER_MODULES, sorted(ours - PARSER_MODULES)
    assert heavy(modules) == []
    assert "argparse" in modules and "importlib.resources" not in modules


@pytest.mark.parametrize("columns", ["40", "100", "", "junk"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    """The formatter sizes itself without shutil, and to the same width as argparse's own."""
    monkeypatch.setenv("COLUMNS", columns)
    for verb in (None, "upgrade"):
        ours = build_parser(verb)
        stock = build_parser(verb)
        for parser in [stock, *stock._subparsers._group_actions[0].choices.values()]:  # type: ignore[union-attr]
            parser.formatter_class = argparse.HelpFormatter
        assert ours.format_help() == stock.format_help()
        if verb is not None:
            mine, theirs = (p._subparsers._group_actions[0].choices[verb] for p in (ours, stock))  # type: ignore[union-attr]
            assert mine.format_help() == theirs.format_help()


def test_every_verb_of_the_parser_has_a_module_that_runs_it() -> None:
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(verbs.choices) == set(VERBS)
    for name, module in VERBS.items():
        assert callable(importlib.import_module(module).run), name


#: Command lines of every verb, each parsed by the whole parser and by the one its verb builds.
COMMAND_LINES = [
    ["inspect", "x.pte"],
    ["--traceback", "inspect", "--json", "x.pte"],
    ["pack", "d", "-o", "a.etm", "--ptd", "a.ptd", "--ptd", "b.ptd", "--no-fsync"],
    ["unpack", "a.etm", "-o", "out", "--for", "ios"],
    ["verify", "a.etm", "--runtime"],
    ["diagnose", "tree", "--fail-on", "warning", "--app", "android", "-o", "r.md"],
    ["render", "a.etm", "--user", "hi", "--var", "x=1", "--tokens", "--num-bos", "0"],
    ["families", "show", "llama3", "--variant", "default"],
    ["upgrade", "tree", "--out", "o", "-j", "2", "--report", "r.json", "--scheduler-timeout", "2.5"],
    ["cache", "prune", "--older-than", "3", "--max-size", "2G"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv))
def test_a_command_line_parses_the_same_with_only_its_verb_declared(argv: list[str]) -> None:
    verb = next(arg for arg in argv if not arg.startswith("-"))
    assert vars(build_parser(verb).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_verb_declared_alone_has_the_same_help_and_usage_errors(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for parser in (build_parser(verb), build_parser()):
        for argv in ([verb, "--help"], [verb, "--no-such-option"]):
            with pytest.raises(SystemExit):
                parser.parse_args(argv)
        outputs.append(capsys.readouterr())
    assert outputs[0] == outputs[1]
    assert f"usage: etm-compat {verb}" in outputs[0].out


def test_main_declares_only_the_named_verb_and_all_of_them_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert all(f"    {verb} " in listed for verb in VERBS)  # the whole list
    assert main(["inspek", "x"]) == 2  # a misspelt verb is named among the real ones
    assert "invalid choice: 'inspek' (choose from 'inspect', 'pack'," in capsys.readouterr().err
    assert main(["--help", "inspect"]) == EXIT_OK  # --help before a verb: the whole list
    assert capsys.readouterr().out == listed


#: Runs the console entry point on ``sys.argv[2:]``, counting the collector's passes from
#: there; at exit (atexit runs after ``run`` has frozen the heap) writes what it saw.
RUN_PROBE = """
import atexit, gc, json, sys
from etm_compat.cli import main as cli
passes, out = [], sys.argv[1]
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
def report():
    with open(out, "w") as fh:
        json.dump({"passes": len(passes), "frozen": gc.get_freeze_count(),
                   "threshold": gc.get_threshold()[0]}, fh)
atexit.register(report)
sys.argv[1:] = sys.argv[2:]
cli.run()
"""


def test_the_console_entry_point_collects_rarely_and_leaves_the_heap_frozen_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    tokenizer = fixture_file("tokenizers/hf_bpe/tokenizer.json")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, str(out), "inspect", "--json", str(tokenizer)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["kind"] == "tokenizer"
    seen = json.loads(out.read_text())
    from etm_compat.cli.main import CLI_GC_THRESHOLD

    assert seen["threshold"] == CLI_GC_THRESHOLD
    assert seen["frozen"] > 10_000  # everything the command left: not traversed again at exit
    # The same command under the default threshold (700) collects dozens of times.
    assert seen["passes"] <= 3, seen


def test_the_app_choices_are_the_registry_apps() -> None:
    assert tuple(APP_CHOICES) == tuple(APP_IDS)


# --- inspect of one file ------------------------------------------------------------------------


def test_inspect_json_of_a_program_loads_only_the_program_readers(tmp_path: Path) -> None:
    info, modules = inspect_json(tmp_path, fixture_file("llama/tiny_llama.pte"))
    assert info["kind"] == "pte" and info["constant_methods"]
    assert heavy(modules) == []
    assert not any(m.startswith(("etm_compat.archive", "etm_compat.formats.tokenizer")) for m in modules)


@pytest.mark.parametrize(
    "relative",
    ["tokenizers/hf_bpe/tokenizer.json", "tokenizers/sp.model", "tokenizers/tiktoken.model", "tokenizers/tokenizer.bin"],
)
def test_inspect_json_of_a_tokenizer_loads_no_heavy_module(tmp_path: Path, relative: str) -> None:
    info, modules = inspect_json(tmp_path, fixture_file(relative))
    assert info["kind"] == "tokenizer" and info["vocab_size"] > 0
    assert heavy(modules) == []
    assert "etm_compat.archive.read" not in modules  # is_archive alone decides it is no archive
    # A program's or weights' identifier is read without their readers (nor the dialects).
    readers = ("etm_compat.formats.pte", "etm_compat.formats.ptd", "etm_compat.formats.dialects")
    assert not any(m.startswith(readers) for m in modules), sorted(m for m in modules if m.startswith(readers))
    if relative.endswith(".json"):  # a JSON tokenizer loads no binary format's reader
        assert "shutil" not in modules  # argparse's formatter would, for the terminal's width
        binary = {f"etm_compat.formats.tokenizer.{name}" for name in ("llama2c", "sentencepiece_model", "tiktoken_file")}
        assert not binary & modules


def test_inspect_json_of_an_archive_loads_the_reader_not_the_writer(tmp_path: Path) -> None:
    archive = tmp_path / "model.etm"
    assert main(["pack", str(FIXTURES / "legacy" / "et_example"), "-o", str(archive), "--no-fsync", "--json"]) == EXIT_OK
    info, modules = inspect_json(tmp_path, archive)
    assert info["kind"] == "etm" and info["metadata"]["format"]
    assert "etm_compat.archive.read" in modules
    assert heavy(modules) == []
    assert not any(m.startswith("etm_compat.formats.tokenizer") for m in modules)


def test_only_terminal_output_loads_rich(tmp_path: Path) -> None:
    pte = fixture_file("llama/tiny_llama.pte")
    code, modules, out = run_cli(tmp_path, "inspect", str(pte))
    assert code == EXIT_OK and "get_max_seq_len" in out
    assert "rich" in modules and "etm_compat.cli.console" in modules
    assert heavy(modules, allowed=("rich",)) == []


def test_inspect_of_a_folder_still_describes_its_deployments(tmp_path: Path) -> None:
    info, modules = inspect_json(tmp_path, FIXTURES / "legacy")
    assert info["kind"] == "folder"
    described = [d for d in info["deployments"] if "inference" in d]
    assert len(described) >= 6, [d.get("error") for d in info["deployments"]]
    assert "rich" not in modules  # a folder describes its deployments (templates included), --json still no rich
    assert "etm_compat.view" in modules and "jinja2" in modules


# --- upgrade ------------------------------------------------------------------------------------

#: What packing loads: the parent of ``upgrade --jobs 2`` loads it only when it packs (it runs
#: queued tasks while it waits, etm_compat/bulk/executor.py), so never on a re-run with nothing to pack.
TASK_MODULES: tuple[str, ...] = (
    "jinja2",
    "etm_compat.view",
    "etm_compat.packing",
    "etm_compat.diagnosis",
    "etm_compat.checks",
    "etm_compat.infer",
    "etm_compat.prompt",
    "etm_compat.archive.write",
)
#: What only terminal output needs: never loaded with --json.
TERMINAL_MODULES: tuple[str, ...] = (
    "rich",
    "etm_compat.cli.console",
    "etm_compat.cli.upgrade_view",
    "etm_compat.cli.report_html",
)


def test_the_upgrade_parent_imports_what_planning_the_pool_and_its_output_need(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(FIXTURES / "legacy", tree)
    out = tmp_path / "out"
    argv = ("upgrade", str(tree), "--out", str(out), "--jobs", "2", "--json")
    for run in ("first", "re-run"):
        code, modules, stdout = run_cli(tmp_path, *argv, "--report", str(tmp_path / f"{run}.md"))
        result = json.loads(stdout)
        outcomes = {item["outcome"] for item in result["items"]}
        assert code == EXIT_OK and outcomes == ({"written"} if run == "first" else {"up_to_date"}), outcomes
        assert "etm_compat.bulk.executor" in modules and "multiprocessing" in modules
        assert sorted(m for m in modules if _within(m, TERMINAL_MODULES)) == [], run
        if run == "re-run":  # nothing to pack: nothing of packing is loaded
            assert sorted(m for m in modules if _within(m, TASK_MODULES)) == [], run
    assert len(list(out.rglob("*.etm"))) == len(result["items"])
    assert "etm-compat upgrade report" in (tmp_path / "re-run.md").read_text()


# --- the packages' names resolve on first use ---------------------------------------------------


@pytest.mark.parametrize(
    ("package", "name", "defined_in", "not_loaded"),
    [
        ("etm_compat.formats", "read_pte", "etm_compat.formats.pte", "etm_compat.formats.tokenizer"),
        ("etm_compat.formats", "TokenizerInfo", "etm_compat.formats.tokenizer.model", "etm_compat.formats.pte"),
        ("etm_compat.archive", "open_archive", "etm_compat.archive.read", "etm_compat.archive.write"),
        ("etm_compat.archive", "write_archive", "etm_compat.archive.write", "etm_compat.formats"),
        ("etm_compat.infer", "infer", "etm_compat.infer.inference", "etm_compat.cli"),
    ],
)
def test_a_package_export_stays_reachable_and_loads_only_its_module(
    package: str, name: str, defined_in: str, not_loaded: str
) -> None:
    code = (
        "import importlib, json, sys;"
        f"value = getattr(importlib.import_module({package!r}), {name!r});"
        "print(json.dumps([value.__module__, sorted(m for m in sys.modules if m.startswith('etm_compat'))]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    module, loaded = json.loads(proc.stdout)
    assert module == defined_in and defined_in in loaded
    # The package's __init__ loads no sibling of the name's module (as an eager one did).
    assert not any(_within(m, (not_loaded,)) for m in loaded), loaded


def test_an_unknown_package_name_is_an_attribute_error() -> None:
    formats = importlib.import_module("etm_compat.formats")
    with pytest.raises(AttributeError, match="no attribute 'read_gguf'"):
        _ = formats.read_gguf
    assert os.path.basename(formats.__file__ or "") == "__init__.py"
