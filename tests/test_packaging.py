"""The wheel must carry every subpackage (setuptools is given an explicit list), and installing
prints no packaging warning."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"etm_compat"} | {
        "etm_compat." + p.parent.relative_to(ROOT / "etm_compat").as_posix().replace("/", ".")
        for p in (ROOT / "etm_compat").rglob("__init__.py")
        if p.parent != ROOT / "etm_compat"
    }
    assert on_disk <= listed and "etm_compat.adapters" in listed
    # adapters/ stays at the top of the repository; the package sees it through a symlink.
    link = ROOT / "etm_compat" / "adapters"
    assert link.is_symlink() and link.resolve() == ROOT / "adapters"


def test_adapters_import_under_the_package_name():
    import etm_compat.adapters as adapters

    assert Path(adapters.__file__).resolve().parent == ROOT / "adapters"


def test_built_wheel_carries_adapters_templates_and_schemas(tmp_path):
    import subprocess
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    # The build is quiet: no deprecation or missing-package warnings from setuptools.
    noise = [line for line in proc.stderr.splitlines() if "Warning" in line]
    assert not noise, proc.stderr
    (wheel,) = tmp_path.glob("etm_compat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (ROOT / "etm_compat" / "prompt" / "families" / "templates").glob("*.jinja")}
    assert templates and all(f"etm_compat/prompt/families/templates/{t}" in names for t in templates)
    assert "etm_compat/schemas/metadata.schema.json" in names
    assert "etm_compat/adapters/__init__.py" in names
    assert "etm_compat/py.typed" in names
    assert not any(n.startswith("adapters/") for n in names)
