"""The curated public surface: every advertised name resolves, lazily, to the real object."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import etm_compat


def test_every_public_name_resolves_and_is_not_a_module():
    # Import every submodule first: a name that collides with a submodule would then be shadowed.
    for info in pkgutil.walk_packages(etm_compat.__path__, "etm_compat."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    for name in etm_compat.__all__:
        value = getattr(etm_compat, name)
        assert not isinstance(value, types.ModuleType), name


def test_importing_the_package_loads_nothing_heavy():
    code = "import sys, etm_compat; print(sorted(m for m in ('jinja2', 'rich', 'torch', 'executorch', 'flatbuffers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error():
    try:
        etm_compat.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
