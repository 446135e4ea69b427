"""A JSON tokenizer file decoded only as far as etm-compat needs it, within bounds.

A tokenizer.json is mostly ``model.merges`` (Gemma 3: 26 of its 33 MB) and ``model.vocab``;
building it whole as Python objects (``json.loads``) costs seconds and hundreds of megabytes.
Here msgspec decodes it into typed Structs: fields nobody reads (``merges``, ``normalizer``,
``decoder``...) are checked and skipped by its C scanner without building anything, and the parts
read later (``model.vocab``, ``added_tokens``) stay raw spans of the input (:class:`msgspec.Raw`,
zero-copy) until :mod:`.hf_json` decodes them with their own types. A tekken.json is only told
apart here; its reader takes the whole document.

The bounds of every JSON tokenizer read hold here, for the whole document, skipped parts
included: the file is UTF-8 (checked in chunks, nothing kept), its syntax is valid (msgspec's
scanner), and it nests at most ``TOKENIZER_JSON_MAX_DEPTH`` levels (msgspec stops runaway
nesting at the interpreter's recursion limit, and :func:`~etm_compat.jsonlimits.json_nesting`
measures the depth of the valid document). Every failure is one :class:`TokenizerFormatError`.

What is read means what ``json.loads`` made of it (a repeated key: the last one wins; integers
of any size in the values read, through :func:`decode_value`), with what the runner's own JSON
library refuses refused too: NaN/Infinity (not JSON) and unpaired UTF-16 surrogate escapes. A
number in a skipped part is checked for its syntax, never converted, so its size costs nothing.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any

import msgspec

from etm_compat.constants import TOKENIZER_JSON_MAX_DEPTH
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.model import TokenizerFormat
from etm_compat.jsonlimits import json_nesting

_BOM = b"\xef\xbb\xbf"
_UTF8_CHUNK = 1 << 20
#: An absent field (an empty span: no JSON value is empty).
ABSENT = msgspec.Raw()


class HFModel(msgspec.Struct):
    """``model`` of an HF tokenizer.json: what is read from it, every other key skipped."""

    vocab: msgspec.Raw = ABSENT
    unk_token: msgspec.Raw = ABSENT


class _Document(msgspec.Struct):
    # ``model`` is typed, so that its merges are skipped in the same single pass; a model that
    # is not an object (or null) fails validation, and :class:`_Outline` then tells the kinds.
    model: HFModel | None = None
    added_tokens: msgspec.Raw = ABSENT
    config: msgspec.Raw = ABSENT
    vocab: msgspec.Raw = ABSENT


class _Outline(msgspec.Struct):
    config: msgspec.Raw = ABSENT
    vocab: msgspec.Raw = ABSENT


_DOCUMENT = msgspec.json.Decoder(_Document)
_OUTLINE = msgspec.json.Decoder(_Outline)


@dataclass(frozen=True)
class JsonTokenizerDocument:
    """The top of a JSON tokenizer file: its kind, and the parts its reader needs, as raw spans.

    ``kind`` follows the runner's reading of the two formats: tekken when ``config`` is an object
    and ``vocab`` a list, else HF when ``model`` is an object, else None (neither structure).
    """

    kind: TokenizerFormat | None
    model: HFModel | None
    added_tokens: msgspec.Raw


def _span_kind(raw: msgspec.Raw) -> bytes:
    """The first byte of a raw JSON value (``b"{"`` for an object, ``b"["`` for a list)."""
    return bytes(memoryview(raw)[:1])


def _check_utf8(data: bytes, path: StrPath, what: str) -> None:
    """Refuse bytes that are not UTF-8, as the runner's JSON library does in any string (msgspec
    checks only the strings it builds). Decoded in chunks and dropped: memory stays flat."""
    if data.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    view = memoryview(data)
    for start in range(0, len(data), _UTF8_CHUNK):
        try:
            decoder.decode(view[start : start + _UTF8_CHUNK], final=start + _UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            raise TokenizerFormatError(
                f"{what} is not valid JSON: not UTF-8 text (near byte {start + exc.start})", path=path
            ) from exc


def _too_deep(path: StrPath, what: str) -> TokenizerFormatError:
    return TokenizerFormatError(
        f"{what} is nested more than the {TOKENIZER_JSON_MAX_DEPTH} levels accepted", path=path
    )


def decode_document(data: bytes, path: StrPath, *, what: str = "tokenizer JSON") -> JsonTokenizerDocument:
    """Check ``data`` (a whole JSON tokenizer file) and decode its top, every bound enforced.

    >>> decode_document(b'{"model": {"vocab": {"a": 0}}}', "t.json").kind
    'hf_json'
    """
    _check_utf8(data, path, what)
    body = memoryview(data)[len(_BOM) :] if data.startswith(_BOM) else data
    outline: _Document | _Outline
    try:
        try:
            outline = _DOCUMENT.decode(body)
        except msgspec.ValidationError:  # the top or its "model" is not an object: which kind?
            outline = _OUTLINE.decode(body)
    except msgspec.ValidationError:  # the document is not an object
        return JsonTokenizerDocument(None, None, ABSENT)
    except msgspec.DecodeError as exc:
        raise TokenizerFormatError(f"{what} is not valid JSON: {exc}", path=path) from exc
    except RecursionError as exc:
        raise _too_deep(path, what) from exc
    if json_nesting(data, TOKENIZER_JSON_MAX_DEPTH) > TOKENIZER_JSON_MAX_DEPTH:
        raise _too_deep(path, what)
    model = outline.model if isinstance(outline, _Document) else None
    added = outline.added_tokens if isinstance(outline, _Document) else ABSENT
    kind: TokenizerFormat | None = None
    if _span_kind(outline.config) == b"{" and _span_kind(outline.vocab) == b"[":
        kind = "tekken"
    elif model is not None:
        kind = "hf_json"
    return JsonTokenizerDocument(kind, model, added)


def decode_value(raw: msgspec.Raw, path: StrPath, *, what: str = "tokenizer JSON") -> Any:
    """A small part of a checked document as plain Python values (dicts, lists, str, numbers).

    msgspec first; ``json.loads`` for what it cannot hold (integers beyond 64 bits, as the
    ``model_max_length`` of many HF configs), so a value reads as it always did.
    """
    try:
        return msgspec.json.decode(raw)
    except msgspec.ValidationError:
        try:
            return json.loads(bytes(raw))
        except (ValueError, RecursionError) as exc:  # int digit limit
            raise TokenizerFormatError(f"{what} is not valid JSON: {exc}", path=path) from exc


__all__ = ["ABSENT", "HFModel", "JsonTokenizerDocument", "decode_document", "decode_value"]
