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
nesting at the interpreter's recursion limit, and :mod:`~etm_compat.jsonlimits` measures the
depth of the valid document from what lies outside its strings; the ``model.vocab`` object's
part is read keeping its numbers, which :mod:`.hf_json` reads the vocabulary's ids from).
Every failure is one :class:`TokenizerFormatError`.

What is read means what ``json.loads`` made of it (a repeated key: the last one wins; integers
of any size in the values read, through :func:`decode_value`), with what the runner's own JSON
library refuses refused too: NaN/Infinity (not JSON) and unpaired UTF-16 surrogate escapes. A
number in a skipped part is checked for its syntax, never converted, so its size costs nothing.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from etm_compat.constants import TOKENIZER_JSON_MAX_DEPTH
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.model import TokenizerFormat
from etm_compat.jsonlimits import (
    STRUCTURE,
    STRUCTURE_AND_NUMBERS,
    json_outside_strings,
    outside_nesting,
    valid_json_outside_brackets,
)

_BOM = b"\xef\xbb\xbf"
#: How many ``"vocab"`` keys are tried to find the vocabulary's place in the file.
_VOCAB_KEY_TRIES = 8
_BLANKS = re.compile(rb"[ \t\n\r]*")
_UTF8_CHUNK = 1 << 15
#: What the vocabulary's part keeps to read its ids: numbers, but for a lowercase ``e``. Token
#: texts are full of it, and a text keeping a byte stays as a string to split out (Gemma 3: ten
#: times as many). Without it, an exponent reads as a plain id only when a digit follows the
#: ``e`` (``1e5`` -> ``15``; ``1e+5``, ``1.5e3``, ``1E5`` and the literals still fail as ids):
#: so it is dropped only from a part in which no ``e`` is followed by a digit (:data:`_E_DIGIT`).
_IDS_KEEP = STRUCTURE + b"0123456789-+.E"
_E_DIGIT = re.compile(rb"e[0-9]")
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
    #: What lies outside the strings of ``model.vocab`` when it is an object, numbers kept
    #: (``b'{:0,:1}'``; a lowercase ``e`` only where a digit may follow it, see ``_IDS_KEEP``:
    #: the ids read the same), read with the nesting check; None when it was not read.
    vocab_outside: bytes | None = None


def span_kind(raw: msgspec.Raw) -> bytes:
    """The first byte of a raw JSON value (``b"{"`` for an object, ``b"["`` for a list)."""
    return bytes(memoryview(raw)[:1])


def _check_utf8(data: bytes, path: StrPath, what: str) -> None:
    """Refuse bytes that are not UTF-8, as the runner's JSON library does in any string (msgspec
    checks only the strings it builds). Decoded in chunks and dropped: memory stays flat. Each
    chunk starts where the last one's characters ended (no copy of a carried tail), and chunks
    are small enough that the text decoded stays in the CPU cache (32 KiB: twice as fast as
    1 MiB, a sixth faster than 64 KiB on Gemma 3)."""
    if data.isascii():
        return
    view = memoryview(data)
    start, size = 0, len(data)
    while start < size:
        end = min(start + _UTF8_CHUNK, size)
        try:
            consumed = codecs.utf_8_decode(view[start:end], "strict", end == size)[1]
        except UnicodeDecodeError as exc:
            raise TokenizerFormatError(
                f"{what} is not valid JSON: not UTF-8 text (near byte {start + exc.start})", path=path
            ) from exc
        start += consumed  # a character cut at the chunk's end starts the next chunk


def _vocab_place(data: bytes, vocab: msgspec.Raw) -> tuple[int, int] | None:
    """Where the bytes of the vocabulary object lie in ``data``: after a ``"vocab"`` key (whose
    closing quote ends a string, so what follows its colon is outside strings) and equal to them.
    Any such place is a value exactly like the vocabulary, so it reads the same."""
    pos = 0
    for _ in range(_VOCAB_KEY_TRIES):
        key = data.find(b'"vocab"', pos)
        if key < 0:
            return None
        pos = key + len(b'"vocab"')
        start = _after_blanks(data, pos)
        if data[start : start + 1] == b":":
            start = _after_blanks(data, start + 1)
            if data.startswith(vocab, start):
                return start, start + len(vocab)
    return None


def _after_blanks(data: bytes, pos: int) -> int:
    """The first position from ``pos`` on that is not JSON whitespace (a C-level scan)."""
    blanks = _BLANKS.match(data, pos)
    return blanks.end() if blanks is not None else pos


def _nesting(data: bytes, model: HFModel | None) -> tuple[int, bytes | None]:
    """The nesting of a valid document (counted up to one level past the limit) and, when an
    object ``model.vocab`` was found in it, what lies outside its strings with its numbers: the
    vocabulary's bytes are read once, for both."""
    place = None
    if model is not None and span_kind(model.vocab) == b"{":
        place = _vocab_place(data, model.vocab)
    if place is None:
        return outside_nesting(valid_json_outside_brackets(data), TOKENIZER_JSON_MAX_DEPTH), None
    start, end = place
    keep = STRUCTURE_AND_NUMBERS if _E_DIGIT.search(data, start, end) else _IDS_KEEP
    vocab = json_outside_strings(data, keep, start, end)
    before = valid_json_outside_brackets(data, 0, start)
    after = valid_json_outside_brackets(data, end)
    return outside_nesting(before + vocab + after, TOKENIZER_JSON_MAX_DEPTH), vocab


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
    model = outline.model if isinstance(outline, _Document) else None
    depth, vocab_outside = _nesting(data, model)
    if depth > TOKENIZER_JSON_MAX_DEPTH:
        raise _too_deep(path, what)
    added = outline.added_tokens if isinstance(outline, _Document) else ABSENT
    kind: TokenizerFormat | None = None
    if span_kind(outline.config) == b"{" and span_kind(outline.vocab) == b"[":
        kind = "tekken"
    elif model is not None:
        kind = "hf_json"
    return JsonTokenizerDocument(kind, model, added, vocab_outside)


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


__all__ = ["ABSENT", "HFModel", "JsonTokenizerDocument", "decode_document", "decode_value", "span_kind"]
