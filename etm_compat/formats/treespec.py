"""Rebuilding a constant method's value from its flat outputs and its pytree spec.

ExecuTorch flattens every constant method's value with pytree: ``[2, 3]`` is stored as two ``Int``
EValues, and only ``ContainerMetadata.encoded_out_str`` tells ``[2]`` from ``2``. This module parses
that spec, bounded in size and depth, and never raises: an unknown spec falls back to
"one output -> scalar, several -> list".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Union

ConstantValue = Union[  # noqa: UP007 (a recursive alias must stay a runtime Union)
    int, bool, float, str, None, list["ConstantValue"], dict[str, "ConstantValue"]
]


# --- the pytree spec of a constant method's outputs (ContainerMetadata.encoded_out_str) ----------
# Two spellings exist: torch's ``treespec_dumps`` JSON (``[1, {"type": "builtins.list",
# "context": "null", "children_spec": [...]}]``, written by pip builds of executorch) and the
# C++ pytree string (``L2#1#1($,$)``, ``D1#1('k':$)``). Both are parsed with bounded size and
# depth; anything else falls back to "one output -> scalar, several -> list".
_MAX_SPEC_CHARS: Final = 1 << 20
_MAX_SPEC_DEPTH: Final = 64
_DICT_TYPES: Final = frozenset(
    {
        "builtins.dict",
        "collections.OrderedDict",
        "collections.defaultdict",
        "torch.fx.immutable_collections.immutable_dict",
    }
)


class _BadSpec(Exception):
    """The spec string is not one this reader understands (never leaves this module)."""


@dataclass(frozen=True)
class _Node:
    kind: str  # "leaf", "none", "list" or "dict"
    keys: tuple[str, ...] = ()
    children: tuple[_Node, ...] = ()

    def leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(child.leaves() for child in self.children)

    def fill(self, flat: Iterator[ConstantValue]) -> ConstantValue:
        if self.kind == "leaf":
            return next(flat)
        if self.kind == "none":
            return None
        items = [child.fill(flat) for child in self.children]
        return dict(zip(self.keys, items, strict=True)) if self.kind == "dict" else items


def unflatten(spec: str | None, flat: list[ConstantValue]) -> ConstantValue:
    """Rebuild a constant method's value from its flat outputs and its pytree spec."""
    tree: _Node | None = None
    if spec is not None and len(spec) <= _MAX_SPEC_CHARS:
        try:
            tree = _json_spec(spec) if spec.startswith("[") else _cpp_spec(spec)
        except (_BadSpec, ValueError, TypeError, KeyError, IndexError, RecursionError):
            tree = None
    if tree is not None and tree.leaves() == len(flat):
        return tree.fill(iter(flat))
    return flat[0] if len(flat) == 1 else list(flat)


def _json_spec(spec: str) -> _Node:
    doc = json.loads(spec)
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1):
        raise _BadSpec(spec)
    return _json_node(doc[1], 0)


def _json_node(obj: object, depth: int) -> _Node:
    if depth > _MAX_SPEC_DEPTH or not isinstance(obj, dict):
        raise _BadSpec("too deep or not an object")
    kids_raw = obj["children_spec"]
    if not isinstance(kids_raw, list):
        raise _BadSpec("children_spec is not a list")
    kids = tuple(_json_node(kid, depth + 1) for kid in kids_raw)
    kind = obj["type"]
    if kind is None:
        if kids:
            raise _BadSpec("a leaf with children")
        return _Node("leaf")
    if kind == "builtins.NoneType":
        return _Node("none")
    if kind in _DICT_TYPES:
        context = json.loads(obj["context"])
        if isinstance(context, dict):  # defaultdict: {"dict_context": [...], ...}
            context = context["dict_context"]
        if not isinstance(context, list) or len(context) != len(kids):
            raise _BadSpec("dict keys do not match children")
        return _Node("dict", tuple(str(key) for key in context), kids)
    return _Node("list", (), kids)


def _cpp_spec(spec: str) -> _Node:
    node, end = _cpp_node(spec, 0, 0)
    if end != len(spec):
        raise _BadSpec("trailing characters")
    return node


def _cpp_number(spec: str, pos: int) -> tuple[int, int]:
    end = pos
    while end < len(spec) and spec[end].isdigit():
        end += 1
    if end == pos or end - pos > 9:
        raise _BadSpec("expected a number")
    return int(spec[pos:end]), end


def _cpp_node(spec: str, pos: int, depth: int) -> tuple[_Node, int]:
    if depth > _MAX_SPEC_DEPTH:
        raise _BadSpec("too deep")
    kind = spec[pos]
    if kind == "$":
        return _Node("leaf"), pos + 1
    if kind not in "LTND":
        raise _BadSpec(f"unknown node kind {kind!r}")
    count, pos = _cpp_number(spec, pos + 1)
    while spec[pos] == "#":  # per-child leaf counts: recomputed from the children instead
        _, pos = _cpp_number(spec, pos + 1)
    if spec[pos] != "(":
        raise _BadSpec("expected '('")
    pos += 1
    keys: list[str] = []
    kids: list[_Node] = []
    while spec[pos] != ")":
        if kids:
            if spec[pos] != ",":
                raise _BadSpec("expected ','")
            pos += 1
        if kind == "D":
            if spec[pos] == "'":
                end = spec.index("'", pos + 1)
                keys.append(spec[pos + 1 : end])
                pos = end + 1
            else:
                number, pos = _cpp_number(spec, pos)
                keys.append(str(number))
            if spec[pos] != ":":
                raise _BadSpec("expected ':'")
            pos += 1
        kid, pos = _cpp_node(spec, pos, depth + 1)
        kids.append(kid)
    if len(kids) != count:
        raise _BadSpec("child count mismatch")
    return _Node("dict" if kind == "D" else "list", tuple(keys), tuple(kids)), pos + 1


__all__ = ["ConstantValue", "unflatten"]
