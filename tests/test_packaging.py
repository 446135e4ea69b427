"""The wheel must carry every subpackage (setuptools is given an explicit list)."""

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
    assert on_disk | {"etm_compat.adapters"} <= listed
    assert config["package-dir"]["etm_compat.adapters"] == "adapters"


def test_adapters_import_under_the_package_name():
    import etm_compat.adapters as adapters

    assert Path(adapters.__file__).resolve().parent == ROOT / "adapters"
