"""File and folder names that are not valid UTF-8 (legal on Linux): every command copes.

The deployment folder and its program are named with bytes 0xFF/0xFE; each command must exit as
it does for an ASCII name, print no traceback, leave no temporary file, and record the names in
metadata.json as docs/FORMAT.md says (``\\udcXX`` text plus ``path_bytes_b64``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.bulk.task import archive_status
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.cli.main import main
from etm_compat.fileio import metadata_path, metadata_safe, metadata_text
from etm_compat.formats.tokenizer.runner import check_runner, native_path
from etm_compat.legacy.resolve import resolve_source
from tests.conftest import FIXTURES

BAD_DIR = b"dep\xff\xfeold"
BAD_PROGRAM = b"model\xff.pte"


def fs(raw: bytes) -> str:
    """A bytes name as Python hands it over (sys.argv, os.listdir): surrogate-escaped."""
    return os.fsdecode(raw)


def make_tree(base: Path, folder: bytes, program: bytes) -> Path:
    """``base/tree/<folder>`` holding fixtures/legacy/et_example with the program named ``program``."""
    src = FIXTURES / "legacy" / "et_example"
    if not (src / "model.pte").is_file():
        pytest.skip("fixture legacy/et_example is missing")
    tree = os.fsencode(base) + b"/tree"
    os.mkdir(tree)
    dep = tree + b"/" + folder
    os.mkdir(dep)
    shutil.copyfile(os.fsencode(src / "model.pte"), dep + b"/" + program)
    shutil.copyfile(os.fsencode(src / "tokenizer.model"), dep + b"/tokenizer.model")
    return Path(fs(dep))


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    if not os.path.supports_unicode_filenames and os.name != "posix":
        pytest.skip("needs byte file names")
    try:
        return make_tree(tmp_path, BAD_DIR, BAD_PROGRAM)
    except (OSError, UnicodeError) as exc:  # a filesystem that insists on UTF-8 names
        pytest.skip(f"this filesystem refuses non-UTF-8 names: {exc}")


@pytest.fixture
def ascii_dep(tmp_path: Path) -> Path:
    base = tmp_path / "ascii"
    base.mkdir()
    return make_tree(base, b"dep", b"model.pte")


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "internal error" not in err
    return code, out, err


def leftovers(*folders: Path) -> list[str]:
    """Temporary files (``.tmp``, ``.etm-*``) anywhere under ``folders``; the upgrade's own
    state folder (``.etm-upgrade``, kept on purpose) is not one, but what is inside it is checked."""
    found = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*(d for d in dirnames if d != ".etm-upgrade"), *filenames]:
                if name.endswith(".tmp") or name.startswith((".etm-", "etm-tok-")) or ".tmp" in name:
                    found.append(os.path.join(dirpath, name))
    return found


def codes(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["code"] for f in findings)


# --- the one rule ---------------------------------------------------------------------------------


def test_metadata_path_escapes_and_keeps_the_bytes() -> None:
    rel = fs(b"sub/" + BAD_PROGRAM)
    record = metadata_path(rel)
    assert record["path"] == "sub/model\\udcff.pte"
    assert base64.b64decode(record["path_bytes_b64"]) == b"sub/" + BAD_PROGRAM
    record["path"].encode("utf-8")  # valid UTF-8 text
    assert metadata_path("tokenizer.model") == {"path": "tokenizer.model"}
    assert metadata_path("modèle.pte") == {"path": "modèle.pte"}  # valid UTF-8 stays as it is
    assert metadata_text("ok") == "ok"
    assert metadata_safe({fs(b"\xff"): [fs(b"a\xfe"), 1, None]}) == {"\\udcff": ["a\\udcfe", 1, None]}


def test_native_path_gives_pybind_bytes_only_when_needed() -> None:
    assert native_path("a/b.model") == "a/b.model"
    assert native_path(fs(b"a\xff/b.model")) == b"a\xff/b.model"


def test_runner_check_same_answer_as_for_an_ascii_path(bad: Path, ascii_dep: Path) -> None:
    pytest.importorskip("pytorch_tokenizers")
    ascii_check = check_runner(ascii_dep / "tokenizer.model", "sentencepiece")
    bad_check = check_runner(bad / "tokenizer.model", "sentencepiece")
    assert ascii_check.loadable is True
    assert (bad_check.loadable, bad_check.loader, bad_check.vocab_size) == (
        ascii_check.loadable, ascii_check.loader, ascii_check.vocab_size,
    )


# --- every command --------------------------------------------------------------------------------


def test_inspect_matches_an_ascii_folder(bad: Path, ascii_dep: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "inspect", str(ascii_dep), "--json")
    assert code == EXIT_OK
    ascii_info = json.loads(out)
    code, out, _ = run(capfd, "inspect", str(bad), "--json")
    assert code == EXIT_OK
    info = json.loads(out)
    assert "tokenizer-not-loadable" not in out
    assert json.dumps(info["deployments"][0].get("findings", []), sort_keys=True).count("code") == json.dumps(
        ascii_info["deployments"][0].get("findings", []), sort_keys=True
    ).count("code")
    code, _, _ = run(capfd, "inspect", str(bad))  # the terminal view
    assert code == EXIT_OK


def test_pack_unpack_verify(bad: Path, ascii_dep: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / fs(b"out\xff.etm")
    code, _, _ = run(capfd, "pack", str(bad), "-o", str(archive))
    assert code == EXIT_OK
    code, _, _ = run(capfd, "pack", str(bad), "-o", str(archive), "--json", "--force")
    assert code == EXIT_OK
    ascii_archive = tmp_path / "ascii.etm"
    assert run(capfd, "pack", str(ascii_dep), "-o", str(ascii_archive))[0] == EXIT_OK
    with open_archive(archive) as etm:
        meta = etm.metadata
        assert not etm.verify()
    with open_archive(ascii_archive) as etm:
        ascii_meta = etm.metadata
    sources = {s["path"]: s for s in meta["provenance"]["sources"]}
    assert set(sources) == {"model\\udcff.pte", "tokenizer.model"}
    assert base64.b64decode(sources["model\\udcff.pte"]["path_bytes_b64"]) == BAD_PROGRAM
    assert "path_bytes_b64" not in sources["tokenizer.model"]
    assert codes(meta["diagnostics"]) == codes(ascii_meta["diagnostics"])
    assert meta["tokenizer"] == ascii_meta["tokenizer"]
    # deterministic: the same folder packs to the same bytes
    again = tmp_path / "again.etm"
    assert run(capfd, "pack", str(bad), "-o", str(again))[0] == EXIT_OK
    assert again.read_bytes() == archive.read_bytes()

    code, out, _ = run(capfd, "verify", str(archive))
    assert code == EXIT_OK and "OK" in out
    assert run(capfd, "verify", str(archive), "--json")[0] == EXIT_OK
    dest = tmp_path / fs(b"unpacked\xfe")
    code, _, _ = run(capfd, "unpack", str(archive), "-o", str(dest))
    assert code == EXIT_OK
    assert (dest / "model.pte").read_bytes() == (bad / fs(BAD_PROGRAM)).read_bytes()
    assert run(capfd, "unpack", str(archive), "-o", str(dest), "--force", "--json")[0] == EXIT_OK
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ext", ["json", "md", "html"])
def test_diagnose_with_output(
    bad: Path, ascii_dep: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], ext: str
) -> None:
    ascii_code, _, _ = run(capfd, "diagnose", str(ascii_dep), "-o", str(tmp_path / f"ascii.{ext}"))
    report = tmp_path / fs(b"report\xff." + ext.encode())
    code, _, _ = run(capfd, "diagnose", str(bad), "-o", str(report))
    assert code == ascii_code
    text = report.read_bytes().decode("utf-8")  # valid UTF-8
    assert "tokenizer-not-loadable" not in text
    if ext == "json":
        ascii_report = json.loads((tmp_path / "ascii.json").read_text())
        assert json.dumps(ascii_report).count('"code"') == json.dumps(json.loads(text)).count('"code"')
    assert leftovers(tmp_path) == []


def test_render(bad: Path, ascii_dep: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    messages = tmp_path / fs(b"msgs\xff.json")
    messages.write_text('[{"role": "user", "content": "hi"}]')
    code, out, _ = run(capfd, "render", str(bad), "--messages", str(messages))
    assert code == EXIT_OK
    assert run(capfd, "render", str(ascii_dep), "--messages", str(messages))[1] == out
    archive = tmp_path / "r.etm"
    assert run(capfd, "pack", str(bad), "-o", str(archive))[0] == EXIT_OK
    assert run(capfd, "render", str(archive), "--messages", str(messages))[1] == out


def test_upgrade_with_reports_then_up_to_date(bad: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    root = bad.parent
    out_dir = tmp_path / fs(b"out\xfe")
    reports = [tmp_path / fs(b"up\xff." + ext) for ext in (b"json", b"md", b"html")]
    args = ["upgrade", str(root), "--out", str(out_dir), "-j", "1"]
    code, _, _ = run(capfd, *args, *(a for r in reports for a in ("--report", str(r))))
    assert code == EXIT_OK
    for report in reports:
        report.read_bytes().decode("utf-8")
    written = json.loads(reports[0].read_text())
    assert "failed" not in json.dumps(written).lower() or '"failed": 0' in json.dumps(written)
    archives = [Path(d, f) for d, _, files in os.walk(out_dir) for f in files if f.endswith(".etm")]
    assert len(archives) == 1
    with open_archive(archives[0]) as etm:
        assert not etm.verify()
        paths = sorted(s["path"] for s in etm.metadata["provenance"]["sources"])
    assert paths == ["model\\udcff.pte", "tokenizer.model"]
    (deployment,) = [resolve_source(bad, list(default_adapters()))]
    assert archive_status(archives[0], deployment).status == "up_to_date"
    assert archive_status(archives[0], deployment, deep=True).status == "up_to_date"
    code, out, _ = run(capfd, *args, "--json")
    assert code == EXIT_OK
    assert json.loads(out)  # a second run: nothing to redo
    code, out, _ = run(capfd, *args, "--dry-run", "--json")
    assert '"up_to_date"' in out
    assert run(capfd, *args, "--dry-run")[0] == EXIT_OK
    assert leftovers(tmp_path) == []


def test_the_loader_gives_a_folder_the_metadata_pack_writes(bad: Path) -> None:
    from etm_compat.compat.loader import load

    with load(bad) as bundle:
        members = {m["name"]: m for m in bundle.metadata["members"]}
        assert members["model.pte"]["sha256"] == hashlib.sha256(bundle.legacy_paths().program.read_bytes()).hexdigest()
        sources = bundle.metadata["provenance"]["sources"]
        assert any("path_bytes_b64" in s for s in sources)


def test_the_shim_finds_the_archive_that_replaced_an_undecodable_file(bad: Path, tmp_path: Path) -> None:
    from etm_compat.shim import find_archive

    program = bad / fs(BAD_PROGRAM)
    archive = bad / "model.etm"
    assert main(["pack", str(program), "-o", str(archive), "--json"]) == EXIT_OK
    # A second archive in the folder: only the provenance can say which one replaced the file.
    assert main(["pack", str(FIXTURES / "legacy" / "variants" / "model_b.pte"), "-o", str(bad / "other.etm"), "--json"]) == EXIT_OK
    program.unlink()
    assert find_archive(program) == archive
