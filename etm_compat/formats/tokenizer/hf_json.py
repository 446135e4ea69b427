"""HF ``tokenizer.json``: vocabulary size, added tokens and bos/eos, from a decoded outline.

:mod:`.json_document` has checked the file and left ``model.vocab`` and ``added_tokens`` as raw
spans. A ``{text: id}`` vocabulary is first read from its ids alone (the bytes outside its
strings, C-level passes): when every id is plain and the last is the largest, that gives the
size exactly, and the ``dict[str, int]`` itself (a quarter of a million texts for Gemma 3, the
dearest part of reading the file) is not built for lookups of a few texts
(:class:`~etm_compat.formats.tokenizer.vocab_index.Vocabulary`).
Otherwise it is decoded straight into ``dict[str, int]`` (msgspec, typed: no intermediate
objects), and only an entry of an unusual shape sends it down the checking path, which names
the entry at fault. ``merges`` is never built.

bos/eos follow pytorch_tokenizers' ``HFTokenizer`` (``src/hf_tokenizer.cpp``,
``setup_special_token_ids``; checked against the installed 1.5.0): the configured
``bos_token``/``eos_token`` when a config gives them and they are added tokens; otherwise the one
added token whose text contains ``bos``/``begin`` (``eos``/``end``), none when several match;
if only one of the two is found it is used for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from etm_compat.constants import TOKENIZER_MAX_VOCAB, TOKENIZER_VOCAB_LOOKUP_MAX
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath, is_token_id
from etm_compat.formats.tokenizer.json_document import (
    JsonTokenizerDocument,
    decode_value,
    span_kind,
)
from etm_compat.formats.tokenizer.model import TokenizerInfo
from etm_compat.formats.tokenizer.vocab_index import VOCAB_OBJECT, Vocabulary
from etm_compat.jsonlimits import STRUCTURE_AND_NUMBERS, json_outside_strings

#: Unigram vocabularies: ``[[piece, score], ...]``, the id of a piece is its position.
_VOCAB_PIECES = msgspec.json.Decoder(list[tuple[str, float]])
#: Ids in range, checked as they are decoded (in C).
_IDS = msgspec.json.Decoder(list[Annotated[int, msgspec.Meta(ge=0, lt=TOKENIZER_MAX_VOCAB)]])
#: Braces as brackets: with the colons dropped, an object's outside becomes the list of its
#: values (see :func:`_as_list`).
_AS_ARRAY = bytes.maketrans(b"{}", b"[]")
_ENCODE = msgspec.json.Encoder()


def _bad(path: StrPath, message: str) -> TokenizerFormatError:
    return TokenizerFormatError(message, path=path)


def _typed_vocab(raw: msgspec.Raw) -> dict[str, int] | None:
    """The vocabulary when every entry has the usual shape and range; None to check it entry by
    entry (for the message)."""
    first = span_kind(raw)
    try:
        if first == b"{":
            vocab = VOCAB_OBJECT.decode(raw)
        elif first == b"[":
            pieces = _VOCAB_PIECES.decode(raw)
            if len(pieces) > TOKENIZER_MAX_VOCAB:
                return None
            vocab = {piece: index for index, (piece, _) in enumerate(pieces)}
        else:
            return None
    except msgspec.ValidationError:
        return None
    if len(vocab) > TOKENIZER_MAX_VOCAB or (
        vocab and not (min(vocab.values()) >= 0 and max(vocab.values()) < TOKENIZER_MAX_VOCAB)
    ):
        return None
    return vocab


def _checked_vocab(path: StrPath, vocab: object) -> dict[str, int]:
    """The vocabulary entry by entry, refusing the first that is not text -> id."""
    pairs: list[tuple[object, object]]
    if isinstance(vocab, dict):
        pairs = list(vocab.items())
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        pairs = [(e[0] if isinstance(e, list) and e else None, i) for i, e in enumerate(vocab)]
    else:
        raise _bad(path, 'tokenizer.json has no "model.vocab" object or list')
    if len(pairs) > TOKENIZER_MAX_VOCAB:
        raise _bad(path, f"tokenizer.json vocabulary has {len(pairs)} entries, too many")
    out: dict[str, int] = {}
    for text, token_id in pairs:
        if not isinstance(text, str) or not is_token_id(token_id):
            raise _bad(path, f"tokenizer.json vocabulary entry {text!r}: {token_id!r} is not text -> id")
        out[text] = token_id  # type: ignore[assignment]  # is_token_id checked it is an int
    return out


def _vocab(path: StrPath, raw: msgspec.Raw) -> dict[str, int]:
    if not raw:
        raise _bad(path, 'tokenizer.json has no "model.vocab" object or list')
    typed = _typed_vocab(raw)
    return typed if typed is not None else _checked_vocab(path, decode_value(raw, path))


def _vocab_outline(outside: bytes) -> tuple[int, int] | None:
    r"""(entries, largest id) of a ``{text: id}`` vocabulary read from its ids alone
    (``outside``: what lies outside the strings of the checked object, numbers kept), or None
    when that would not be exact.

    Exact when every value is a plain id (an int in range) and the last entry's id is the
    largest: a repeated key, of which the last one wins, can then hide no larger id, and
    ``entries`` bounds the distinct texts (at most ``TOKENIZER_VOCAB_LOOKUP_MAX`` here, so the
    vocabulary is always kept for lookups). Real files list their vocabulary in id order.

    >>> _vocab_outline(b"{:0,:1,:2}"), _vocab_outline(b"{:1,:0}"), _vocab_outline(b"{:,:1.5}")
    ((3, 2), None, None)
    """
    if not outside.startswith(b"{"):
        return None
    entries = outside.count(b":")
    listed = _as_list(outside)
    if 0 < entries <= min(TOKENIZER_VOCAB_LOOKUP_MAX, TOKENIZER_MAX_VOCAB) and _in_order(listed, entries):
        return entries, entries - 1
    try:
        ids = _IDS.decode(listed)
    except msgspec.MsgspecError:  # a value that is no id: 1.5, -1, a list, or "," left by a string
        return None
    if len(ids) != entries:  # b"{:}": a lone string or null value left nothing
        return None
    if len(ids) > min(TOKENIZER_VOCAB_LOOKUP_MAX, TOKENIZER_MAX_VOCAB):
        return None
    if not ids:
        return 0, -1
    if ids[-1] != max(ids):
        return None
    return len(ids), ids[-1]


def _as_list(outside: bytes) -> bytes:
    """An object's outside as the JSON text of the list of its values: ``{:0,:1}`` -> ``[0,1]``.
    Dropping a colon joins nothing: each follows a key, whose string is gone, so it comes right
    after ``{`` or ``,``. Nested objects turn into lists, and fail as ids either way."""
    return outside.translate(_AS_ARRAY, b":")


def _in_order(listed: bytes, entries: int) -> bool:
    """Whether ``listed`` (:func:`_as_list` of a vocabulary's outside) is exactly the ids
    ``0, 1, ..., entries - 1`` in this order, as real files list them: it is then, byte for byte,
    the JSON text of that list (one comparison in C, where decoding 128k ids costs twice as
    much). Any other value leaves a byte the list's text lacks (a sign, a point, an exponent, a
    bracket, or nothing where a string or literal stood), so anything else reads through
    :data:`_IDS`.

    >>> [_in_order(_as_list(o), 3) for o in (b"{:0,:1,:2}", b"{:0,:2,:1}", b"{:0,:,:1}")]
    [True, False, False]
    """
    return listed == _ENCODE.encode(list(range(entries)))


class _AddedToken(msgspec.Struct):
    """An ``added_tokens`` entry: what is read of it (its flags are skipped)."""

    id: int
    content: str


_ADDED = msgspec.json.Decoder(list[_AddedToken])


def _typed_added(raw: msgspec.Raw) -> dict[str, int] | None:
    """The added tokens when every entry has the usual shape and range; None to check them one
    by one (for the message). A repeated key in an entry: the last one wins, as in json.loads."""
    try:
        entries = _ADDED.decode(raw)
    except msgspec.MsgspecError:
        return None
    if len(entries) > TOKENIZER_MAX_VOCAB:
        return None
    if not all(0 <= entry.id < TOKENIZER_MAX_VOCAB for entry in entries):
        return None
    return {entry.content: entry.id for entry in entries}


def _added(path: StrPath, raw: msgspec.Raw) -> dict[str, int]:
    typed = _typed_added(raw) if raw else None
    if typed is not None:
        return typed
    added = decode_value(raw, path) if raw else []
    if added is None:
        added = []
    if not isinstance(added, list) or len(added) > TOKENIZER_MAX_VOCAB:
        raise _bad(path, '"added_tokens" of tokenizer.json is not a list of tokens')
    out: dict[str, int] = {}
    for entry in added:
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)
                and is_token_id(entry.get("id"))):
            raise _bad(path, f'"added_tokens" entry {str(entry)[:80]} lacks "content" text or an "id"')
        out[entry["content"]] = entry["id"]
    return out


class _StopFile(Exception):
    """A config value the runner's JSON library would refuse: it stops reading that file."""


def _token_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        if not isinstance(value["content"], str):
            raise _StopFile
        return value["content"]
    return ""


def _config_tokens(
    unk_token: tuple[bool, object], configs: list[Mapping[str, Any] | None]
) -> tuple[str, str]:
    """bos/eos text from special_tokens_map.json then tokenizer_config.json, as the runner reads.

    ``unk_token``: whether ``model`` has an ``unk_token`` key, and its value.
    """
    bos = eos = unk = ""
    unk_null = False
    has_unk, model_unk = unk_token
    if has_unk:
        unk_null = model_unk is None
        unk = model_unk if isinstance(model_unk, str) else ""
    for index, cfg in enumerate(configs):
        if cfg is None or (index > 0 and bos and eos and (unk or unk_null)):
            continue
        try:
            if "bos_token" in cfg:
                bos = _token_text(cfg["bos_token"])
            if "eos_token" in cfg:
                eos = _token_text(cfg["eos_token"])
            if not unk and not unk_null and "unk_token" in cfg:
                unk_null = cfg["unk_token"] is None
                unk = "" if unk_null else _token_text(cfg["unk_token"])
        except _StopFile:
            pass
    return bos, eos


def _pick(added: Mapping[str, int], configured: str, needles: tuple[str, str]) -> str | None:
    if configured and configured in added:
        return configured
    candidates = [t for t in added if needles[0] in t or needles[1] in t]
    return candidates[0] if len(candidates) == 1 else None


@dataclass(frozen=True)
class HFTokens:
    """What an HF tokenizer.json defines on its own, before any config is read (the same for
    every copy of the same bytes: :mod:`.detect` keeps it by content).

    ``largest_id`` is -1 for a file without tokens; ``lookup`` is the vocabulary when it is
    small enough to keep (``TOKENIZER_VOCAB_LOOKUP_MAX``), a dict or a :class:`Vocabulary`
    built on first use; ``unk_token``: whether ``model`` has an ``unk_token`` key, and its value.
    """

    largest_id: int
    added: dict[str, int]
    lookup: Mapping[str, int] | None
    unk_token: tuple[bool, object]


def read_tokens(path: StrPath, document: JsonTokenizerDocument) -> HFTokens:
    """The vocabulary and added tokens of a decoded HF tokenizer.json, every entry checked."""
    model = document.model
    if model is None:
        raise _bad(path, 'tokenizer.json has no "model" object')
    outline = None
    if span_kind(model.vocab) == b"{":
        outside = document.vocab_outside
        if outside is None:
            outside = json_outside_strings(bytes(model.vocab), STRUCTURE_AND_NUMBERS)
        outline = _vocab_outline(outside)
    lookup: Mapping[str, int] | None
    if outline is not None:
        entries, vocab_largest = outline
        lookup = Vocabulary(memoryview(model.vocab))
    else:
        vocab = _vocab(path, model.vocab)
        entries, vocab_largest = len(vocab), max(vocab.values(), default=-1)
        lookup = vocab if len(vocab) <= TOKENIZER_VOCAB_LOOKUP_MAX else None
    added = _added(path, document.added_tokens)
    if not entries and not added:
        raise _bad(path, "tokenizer.json defines no tokens")
    largest = max(vocab_largest, max(added.values(), default=-1))
    unk = (bool(model.unk_token), decode_value(model.unk_token, path) if model.unk_token else None)
    return HFTokens(largest, added, lookup, unk)


def tokenizer_info(
    path: StrPath, tokens: HFTokens, configs: list[Mapping[str, Any] | None]
) -> TokenizerInfo:
    """TokenizerInfo of an HF tokenizer.json (``configs``: special_tokens_map, tokenizer_config).

    vocab_size is the largest id over ``model.vocab`` and ``added_tokens`` plus one, the size an
    embedding table needs (the runner counts entries instead; see ``RunnerCheck.vocab_size``).

    >>> from etm_compat.formats.tokenizer.json_document import decode_document
    >>> doc = decode_document(b'{"model": {"vocab": {"a": 0}}, "added_tokens": '
    ...                       b'[{"id": 1, "content": "<eos>"}]}', "t.json")
    >>> info = tokenizer_info("t.json", read_tokens("t.json", doc), [None, None])
    >>> info.vocab_size, info.eos_id
    (2, 1)
    """
    added = tokens.added
    bos_cfg, eos_cfg = _config_tokens(tokens.unk_token, configs)
    bos = _pick(added, bos_cfg, ("bos", "begin"))
    eos = _pick(added, eos_cfg, ("eos", "end"))
    if bos is None:
        bos = eos
    elif eos is None:
        eos = bos
    return TokenizerInfo(
        path=os.fspath(path), format="hf_json", variant=None, vocab_size=tokens.largest_id + 1,
        bos_id=added[bos] if bos is not None else None, bos_token=bos,
        eos_id=added[eos] if eos is not None else None, eos_token=eos,
        special_tokens=added, runner=None, vocab=tokens.lookup,
    )


__all__ = ["HFTokens", "Vocabulary", "read_tokens", "tokenizer_info"]
