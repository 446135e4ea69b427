"""Names a package re-exports, imported on first use (PEP 562): the one ``__getattr__``.

A package lists ``{name: defining module}``; importing the package then costs nothing beyond
itself, and ``from package import name`` or ``package.name`` imports the defining module when it
is first asked for, then keeps the value in the package's namespace::

    _EXPORTS = {"read_pte": "etm_compat.formats.pte"}
    __getattr__ = lazy_exports(__name__, _EXPORTS, globals())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving each of ``exports`` from its module on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


__all__ = ["lazy_exports"]
