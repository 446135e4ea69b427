"""Bounded reads of untrusted tokenizer files: size caps, JSON nesting depth."""

from __future__ import annotations

import os
from typing import Any

from etm_compat.constants import (
    TOKENIZER_JSON_MAX_DEPTH,
    TOKENIZER_MAX_VOCAB,
    TOKENIZER_SNIFF_BYTES,
)
from etm_compat.errors import TokenizerFormatError, UnreadableError
from etm_compat.fileio import FileStamp, open_regular, read_stamped
from etm_compat.jsonlimits import json_loads, json_nesting
from etm_compat.remembered import read_parsed

StrPath = str | os.PathLike[str]
_HINT = "this is not a tokenizer, or pass the right file"


def is_token_id(value: object) -> bool:
    """Whether ``value`` can be a token id: an int (not a bool) below ``TOKENIZER_MAX_VOCAB``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < TOKENIZER_MAX_VOCAB


def read_head(path: StrPath, limit: int = TOKENIZER_SNIFF_BYTES) -> bytes:
    """The first ``limit`` bytes of ``path`` (fewer if the file is shorter)."""
    try:
        with open_regular(path) as f:
            return f.read(limit)
    except OSError as exc:
        raise UnreadableError(f"cannot read tokenizer file: {exc.strerror or exc}", path=path) from exc


def read_bounded(path: StrPath, limit: int, *, what: str = "tokenizer file") -> bytes:
    """All of ``path``, refusing files larger than ``limit`` bytes before reading them."""
    return read_whole(path, limit, what=what)[0]


def read_whole(path: StrPath, limit: int, *, what: str = "tokenizer file") -> tuple[bytes, FileStamp]:
    """:func:`read_bounded`, with the file's stamp when it was read
    (:func:`~etm_compat.fileio.read_stamped`)."""
    return read_stamped(path, limit, what=what, too_large=TokenizerFormatError, hint=_HINT)


def read_json_once(path: StrPath, limit: int, *, what: str) -> Any:
    """:func:`load_json` of :func:`read_bounded`'s bytes, parsed once per process while the file
    is unchanged (:func:`~etm_compat.remembered.read_parsed`): the value is shared, not to be
    modified."""
    return read_parsed(
        path, limit, ("tokenizer json", what), lambda data: load_json(data, path, what=what),
        what=what, too_large=TokenizerFormatError, hint=_HINT,
    )  # fmt: skip


def load_json(data: bytes, path: StrPath, *, what: str = "tokenizer JSON") -> Any:
    """Parse JSON bytes with a nesting limit; every failure is a :class:`TokenizerFormatError`."""
    if json_nesting(data, TOKENIZER_JSON_MAX_DEPTH) > TOKENIZER_JSON_MAX_DEPTH:
        raise TokenizerFormatError(
            f"{what} is nested more than the {TOKENIZER_JSON_MAX_DEPTH} levels accepted", path=path
        )
    try:
        return json_loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise TokenizerFormatError(f"{what} is not valid JSON: {exc}", path=path) from exc
