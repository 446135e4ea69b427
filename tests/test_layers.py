"""The architecture, checked: import-linter's layer contract, module-level imports, dependencies.

The contract lives in pyproject.toml (``[tool.importlinter]``); these tests run it on the real
tree, show that it catches a lower layer importing a higher one, and check what import-linter
cannot see: which imports sit inside functions (only the lazy runtime ones, each with a reason).
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
#: The only modules the library may import inside a function: they cost seconds or are optional.
LAZY = ("torch", "executorch", "pytorch_tokenizers", "distributed", "dask")


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


def test_function_local_imports_are_only_the_lazy_runtime_ones_with_a_reason():
    offenders = []
    for path in _library_files():
        lines = path.read_text().splitlines()
        for node in _function_imports(ast.parse("\n".join(lines))):
            names = _top_name(node)
            before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not all(n in LAZY for n in names) or not before.startswith("# Lazy:"):
                offenders.append(f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not offenders, "function-local imports (only lazy runtime imports with a '# Lazy:' reason):\n" + "\n".join(offenders)


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
