"""Bounded, safe readers of a deployment's configuration files (JSON, YAML, Jinja).

Every file a legacy folder carries besides the program and the tokenizer is untrusted input:
a ``config.json`` may be gigabytes, a yaml file may hold alias bombs, a JSON file may nest ten
thousand levels. These readers refuse all of that up front with an
:class:`~etm_compat.errors.InputError` that names the file and the limit, and return plain
Python values (dicts, lists, strings, numbers) otherwise.

>>> read_config("config", "fixtures/legacy/hf_style/config.json")["model_type"]  # doctest: +SKIP
'qwen2'
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from etm_compat.errors import InputError
from etm_compat.fileio import read_capped
from etm_compat.jsonlimits import json_loads, json_nesting
from etm_compat.remembered import read_parsed

StrPath = str | os.PathLike[str]

#: Largest configuration file read (real tokenizer_config.json files with inlined templates
#: stay under 1 MiB; export yamls and HF configs are a few KiB).
CONFIG_MAX_BYTES: Final = 8 * 1024 * 1024
#: Deepest nesting of lists/objects accepted (real configs stay under 6).
CONFIG_MAX_DEPTH: Final = 32
#: Largest chat template read from its own file.
TEMPLATE_MAX_BYTES: Final = 1024 * 1024

_YAML_SUFFIXES: Final = (".yaml", ".yml")


_HINT: Final = "pass the right file, or remove it from the folder"


def read_bytes(path: StrPath, limit: int, *, what: str) -> bytes:
    """All of ``path``, refusing a file larger than ``limit`` bytes before reading it."""
    return read_capped(path, limit, what=what, hint=_HINT)


def _decode(data: bytes, path: StrPath, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what} is not UTF-8 text (byte {exc.start})",
            path=path,
            hint="save the file as UTF-8",
        ) from exc




def value_depth(value: Any, limit: int = CONFIG_MAX_DEPTH) -> int:
    """Nesting depth of a parsed value (a scalar is 0), counted without recursion.

    Stops counting once ``limit`` is exceeded, so a hostile structure stays cheap.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: list[Any] = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend((child, depth) for child in children)
    return deepest


def read_json_config(
    path: StrPath,
    *,
    max_bytes: int = CONFIG_MAX_BYTES,
    max_depth: int = CONFIG_MAX_DEPTH,
    what: str = "JSON config",
) -> Any:
    """Parse a JSON file with a size and a nesting limit.

    Raises :class:`InputError` for a file that is too large, too deep, not UTF-8 or not JSON.
    NaN/Infinity literals are refused: they are not JSON and no real config uses them. An
    unchanged file is parsed once per process (:func:`~etm_compat.remembered.read_parsed`;
    inference and the checks read the same configs): the value is shared, not to be modified.
    """

    def parse(data: bytes) -> Any:
        text = _decode(data, path, what)
        depth = json_nesting(text)
        if depth > max_depth:
            raise InputError(
                f"{what} is nested {depth} levels deep, more than the {max_depth} accepted", path=path
            )
        try:
            # In C where msgspec can (Gemma 3's 1.1 MB tokenizer_config.json: 3 ms, not 12).
            return json_loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError; int digit limit
            raise InputError(
                f"{what} is not valid JSON: {exc}", path=path, hint="fix or remove the file"
            ) from exc

    return read_parsed(path, max_bytes, ("json config", max_depth), parse, what=what, hint=_HINT)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@functools.cache
def _no_alias_loader() -> Any:
    """``yaml.SafeLoader`` that refuses anchors and aliases (made on first use: only a YAML
    config needs PyYAML, and a tokenizer or a program never loads it)."""
    # Lazy: PyYAML loads only where a YAML file is read.
    import yaml

    class NoAliasLoader(yaml.SafeLoader):  # type: ignore[misc]
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"aliases are not accepted (line {event.start_mark.line + 1})")
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_yaml_config(
    path: StrPath,
    *,
    max_bytes: int = CONFIG_MAX_BYTES,
    max_depth: int = CONFIG_MAX_DEPTH,
    what: str = "YAML config",
) -> Any:
    """Parse a YAML file with ``yaml.safe_load`` semantics, a size and a nesting limit.

    Anchors and aliases are refused (they are how YAML "billion laughs" documents blow up, and
    export_llm configs never use them).
    """
    text = _decode(read_bytes(path, max_bytes, what=what), path, what)
    loader = _no_alias_loader()
    # Lazy: as in _no_alias_loader (loaded by now).
    import yaml

    try:
        value = yaml.load(text, Loader=loader)  # a SafeLoader subclass: safe
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise InputError(
            f"{what} is not valid YAML: {exc}", path=path, hint="fix or remove the file"
        ) from exc
    depth = value_depth(value, max_depth)
    if depth > max_depth:
        raise InputError(f"{what} is nested more than the {max_depth} levels accepted", path=path)
    return value


def read_template_file(path: StrPath, *, max_bytes: int = TEMPLATE_MAX_BYTES) -> str:
    """The text of a ``chat_template.jinja`` file, size-capped and decoded as UTF-8."""
    what = "chat template"
    return _decode(read_bytes(path, max_bytes, what=what), path, what)


def read_config(role: str, path: StrPath) -> Any:
    """Read one deployment config file by its role (see ``deployment.ConfigRole``).

    ``export_config`` and any ``.yaml``/``.yml`` file go through :func:`read_yaml_config`;
    a ``chat_template`` ending in ``.jinja`` (or any non-JSON name) is returned as text;
    everything else is JSON. JSON configs that must be objects (all roles but
    ``chat_template`` text) raise :class:`InputError` when they are not.

    >>> read_config("params", "fixtures/llama/params.json")["vocab_size"]  # doctest: +SKIP
    512
    """
    suffix = Path(path).suffix.lower()
    what = f"{role} file"
    value: Any
    if role == "chat_template" and suffix != ".json":
        return read_template_file(path)
    if role == "export_config" or suffix in _YAML_SUFFIXES:
        value = read_yaml_config(path, what=what)
    else:
        value = read_json_config(path, what=what)
    if not isinstance(value, dict):
        raise InputError(
            f"{what} holds a {type(value).__name__}, expected a mapping at the top level",
            path=path,
            hint="fix or remove the file",
        )
    return value


def template_from_config(role: str, value: Any) -> str | None:
    """The chat template a parsed config carries, or None.

    ``tokenizer_config`` may hold ``chat_template`` as a string or as a named list
    (``[{"name": "default", "template": ...}]``, the legacy transformers form): the ``default``
    entry is taken, else the only entry. ``chat_template`` holds text (a ``.jinja`` file) or
    ``{"chat_template": ...}`` (``chat_template.json``).

    >>> template_from_config("tokenizer_config", {"chat_template": [
    ...     {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})
    'D'
    """
    if role == "chat_template" and isinstance(value, str):
        return value
    if role not in ("chat_template", "tokenizer_config") or not isinstance(value, Mapping):
        return None
    found = value.get("chat_template")
    if isinstance(found, str):
        return found
    if isinstance(found, Mapping):  # a name -> template dict (newer processor configs)
        found = [{"name": k, "template": v} for k, v in found.items()]
    if isinstance(found, list):
        named = {
            str(item.get("name")): item.get("template")
            for item in found
            if isinstance(item, Mapping) and isinstance(item.get("template"), str)
        }
        if "default" in named:
            return named["default"]
        if len(named) == 1:
            return next(iter(named.values()))
    return None


__all__ = [
    "CONFIG_MAX_BYTES",
    "CONFIG_MAX_DEPTH",
    "TEMPLATE_MAX_BYTES",
    "json_nesting",
    "read_bytes",
    "read_config",
    "read_json_config",
    "read_template_file",
    "read_yaml_config",
    "template_from_config",
    "value_depth",
]
