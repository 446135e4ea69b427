"""The architecture, checked: import-linter's layer contract, module-level imports, dependencies.

The contract lives in pyproject.toml (``[tool.importlinter]``); these tests run it on the real
tree, show that it catches a lower layer importing a higher one, and check what import-linter
cannot see: that every import inside a function says why it is there (``# Lazy: <reason>``: the
runtime costs seconds, a verb loads only what it uses, rich only for terminals), and that the
runtime is never imported at module level. Lazy imports still obey the layers (import-linter sees
them).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The modules the library imports only inside a function: they cost seconds or are optional.
LAZY = ("torch", "executorch", "pytorch_tokenizers", "distributed", "dask")
#: What the comment above a function-local import (or above the group of imports it is in) says.
REASON = "# Lazy:"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _copy_tree(dest: Path) -> None:
    shutil.copytree(
        ROOT / "etm_compat", dest / "etm_compat", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "adapters", dest / "adapters", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


@pytest.mark.parametrize(
    ("low", "high", "contract"),
    [
        ("etm_compat.formats.pte", "etm_compat.cli.main", "Layers"),
        ("etm_compat.checks.run", "etm_compat.view", "Layers"),
        ("etm_compat.adapters._common", "etm_compat.packing", "Layers"),
        ("etm_compat.prompt.chat", "rich.console", "never imports the command line or rich"),
        ("etm_compat.formats.pte", "torch", "The runtime"),
    ],
)
def test_the_contract_fails_when_a_lower_layer_imports_a_higher_one(tmp_path, low, high, contract):
    _copy_tree(tmp_path)
    module = tmp_path.joinpath(*low.split(".")).with_suffix(".py")
    module.write_text(module.read_text() + f"\nimport {high}  # noqa\n")
    proc = _lint_imports(tmp_path)  # lint-imports puts its working folder first on sys.path
    assert proc.returncode != 0, proc.stdout
    broken = [" ".join(line.split()) for line in proc.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), proc.stdout
    imported = high.split(".")[0] if high.split(".")[0] in ("rich", "torch") else high
    assert f"{low} -> {imported}" in proc.stdout, proc.stdout


def _library_files() -> list[Path]:
    files = [*(ROOT / "etm_compat").rglob("*.py"), *(ROOT / "adapters").glob("*.py")]
    return sorted({p.resolve() for p in files})


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def _top_name(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [(node.module or "").split(".")[0]] if node.level == 0 else ["."]
    return [alias.name.split(".")[0] for alias in node.names]


def _has_reason(lines: list[str], node: ast.Import | ast.ImportFrom, import_lines: set[int]) -> bool:
    """Whether a ``# Lazy:`` comment stands above ``node``: directly, or above the comment lines
    and imports of the group it belongs to (one reason may cover a few imports)."""
    index = node.lineno - 2  # 0-based: the line before the import
    while index >= 0:
        line = lines[index].strip()
        if line.startswith(REASON):
            return True
        if not (line.startswith("#") or index + 1 in import_lines):
            return False
        index -= 1
    return False


def test_every_function_local_import_gives_its_reason():
    offenders = []
    for path in _library_files():
        lines = path.read_text().splitlines()
        local = _function_imports(ast.parse("\n".join(lines)))
        import_lines = {n for node in local for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}
        offenders += [
            f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            for node in local
            if not _has_reason(lines, node, import_lines)
        ]
    assert not offenders, f"function-local imports without a '{REASON} <reason>' comment above:\n" + "\n".join(offenders)


def test_the_reason_rule_catches_a_bare_function_local_import():
    source = "def f():\n    x = 1\n    import json\n    return json, x\n"
    lines = source.splitlines()
    (node,) = _function_imports(ast.parse(source))
    assert not _has_reason(lines, node, {3})
    fixed = source.replace("    import json", f"    {REASON} only f needs it\n    import json")
    lines = fixed.splitlines()
    (node,) = _function_imports(ast.parse(fixed))
    assert _has_reason(lines, node, {4})


def test_no_module_imports_the_runtime_at_module_level():
    offenders = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        local = {id(n) for n in _function_imports(tree)}
        offenders += [
            f"{path}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and id(node) not in local
            and any(n in LAZY for n in _top_name(node))
        ]
    assert not offenders


def test_declared_dependencies_are_the_imported_ones():
    proc = subprocess.run(
        [str(BIN / "deptry"), "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
