"""The small checker behind :func:`~etm_compat.archive.metadata_check.validate_metadata`: it
collects every problem of a JSON value as ``<json path>: <what is wrong>``.

>>> c = Checker()
>>> c.field({"size": -1}, "size", "$.program", "uint")
>>> c.problems
['$.program.size: expected uint, got a number']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["Checker", "describe_kind", "is_kind"]

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class Checker:
    """Collects every problem as ``<json path>: <what is wrong>``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def obj(self, value: Any, path: str, required: Sequence[str]) -> bool:
        if not isinstance(value, dict):
            self.bad(path, f"expected an object, got {describe_kind(value)}")
            return False
        for key in required:
            if key not in value:
                self.bad(path, f"missing required key {key!r}")
        return True

    def typed(self, value: Any, path: str, kinds: str) -> None:
        """Check ``value`` against ``kinds``: '|'-joined of str, int, uint, number, bool, null."""
        for kind in kinds.split("|"):
            if is_kind(value, kind):
                return
        self.bad(path, f"expected {kinds.replace('|', ' or ')}, got {describe_kind(value)}")

    def field(self, parent: Any, key: str, path: str, kinds: str) -> None:
        if isinstance(parent, dict) and key in parent:
            self.typed(parent[key], f"{path}.{key}", kinds)

    def enum(self, parent: Any, key: str, path: str, allowed: Sequence[Any]) -> None:
        if isinstance(parent, dict) and key in parent and parent[key] not in allowed:
            self.bad(f"{path}.{key}", f"{parent[key]!r} is not one of {list(allowed)}")

    def array(self, parent: Any, key: str, path: str) -> list[Any]:
        if not isinstance(parent, dict) or key not in parent:
            return []
        value = parent[key]
        if not isinstance(value, list):
            self.bad(f"{path}.{key}", f"expected an array, got {describe_kind(value)}")
            return []
        return value

    def array_of(self, parent: Any, key: str, path: str, kinds: str) -> None:
        for i, item in enumerate(self.array(parent, key, path)):
            self.typed(item, f"{path}.{key}[{i}]", kinds)

    def sha(self, parent: Any, key: str, path: str) -> None:
        if isinstance(parent, dict) and key in parent:
            value = parent[key]
            if not isinstance(value, str) or not _SHA256.match(value):
                self.bad(f"{path}.{key}", "expected 64 lowercase hex digits (sha256)")


def is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "uint":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(kind)


def describe_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
