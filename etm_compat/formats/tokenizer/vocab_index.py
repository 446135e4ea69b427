"""A checked ``{text: id}`` vocabulary of an HF ``tokenizer.json``, looked up without building it.

Describing a tokenizer needs the vocabulary's size, which :mod:`.hf_json` reads from the ids
alone; inferring the family asks whether a few dozen special-looking texts (``<|im_start|>``,
``<start_of_turn>``, ``[INST]``) are in it. Building the whole ``dict[str, int]`` for that
(a quarter of a million texts for Gemma 3) costs a tenth of a second; :class:`Vocabulary` answers
a lookup from the keys that start with the same byte, read from the raw object (each found by
``bytes.find`` of that byte, or all of them by one regex pass in C where the byte is common), and
builds the dict only for what needs it all (iteration, length) or when that bucket would be
large.

Why a byte-level read is exact here. The object was checked by the caller: valid JSON, an
object whose every value is a non-negative integer (so every string in it is a key).

* A key is found at its opening quote followed by its first byte. A quote followed by a byte
  other than whitespace or ``:`` is never a closing one (after a key comes ``:``), so it opens a
  key unless it is escaped, which an odd run of backslashes before it tells. Keys that start
  with whitespace or ``:`` are not looked up this way (the dict is built).
* One text has many spellings (``<`` or ``\\u003c``; ``/`` or ``\\/``), but only the first
  byte picks the bucket: a key whose spelling starts with a raw byte starts with that byte;
  every key whose spelling starts with an escape is decoded (there are few) and filed under its
  text's first byte.
* A repeated key: the last one wins, as in ``json.loads`` and msgspec: matches are kept in
  file order.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

#: A checked vocabulary object decoded whole (here, and by :mod:`.hf_json`).
VOCAB_OBJECT = msgspec.json.Decoder(dict[str, int])
_TEXT = msgspec.json.Decoder(str)
#: The rest of a key after its first byte (raw bytes and escapes), then ``: id``.
_REST = rb'((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*(-?[0-9]+)'
#: A key at its opening quote: its spelling between the quotes, and its id.
_KEY = re.compile(b'"' + _REST, re.DOTALL)
#: Occurrences of a first byte looked at one ``bytes.find`` at a time before one regex pass
#: takes the rest.
_SPARSE_STEPS = 8192
#: First bytes a closing quote may also be followed by: such keys are looked up in the dict.
_AMBIGUOUS = frozenset(b" \t\n\r:")
#: A bucket of more keys than this is left to the dict (msgspec builds it faster, in C).
BUCKET_MAX = 20_000
#: How many vocabularies were built as dicts, and how many buckets were read (work counted for
#: tests).
vocabularies_built = 0
buckets_read = 0
_COUNT_LOCK = threading.Lock()

Entry = tuple[int, str, int]  # (where the key starts, its text, its id)


def _escaped(span: bytes, at: int) -> bool:
    """Whether the byte at ``at`` follows an odd run of backslashes (it is escaped)."""
    run = 0
    while at - run > 0 and span[at - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1


def _keys_from(span: bytes, first: bytes) -> Iterator[Entry]:
    """The keys of ``span`` whose spelling starts with the byte ``first``, in file order: at
    each ``"`` followed by it that no odd run of backslashes escapes. The byte is found with
    ``bytes.find`` (memchr, in C) and each key there read with one anchored match, while that
    takes few steps (most first bytes are rare); past :data:`_SPARSE_STEPS` occurrences, one
    regex pass reads the rest (a Python step per occurrence would then cost more than the
    regex engine's scan)."""
    at = span.find(first)
    steps = 0
    while at >= 0:
        steps += 1
        if steps > _SPARSE_STEPS:
            start = rb"\\." if first == b"\\" else re.escape(first)  # an escape is one unit
            pattern = re.compile(b'"(' + start + b")" + _REST, re.DOTALL)
            for found in pattern.finditer(span, at - 1):
                if not _escaped(span, found.start()):
                    yield found.start(), _text(found[1] + found[2]), int(found[3])
            return
        quote = at - 1
        if quote >= 0 and span[quote] == 0x22 and not _escaped(span, quote):
            key = _KEY.match(span, quote)
            if key is not None:
                yield quote, _text(key[1]), int(key[2])
                at = span.find(first, key.end())
                continue
        at = span.find(first, at + 1)


def _text(raw: bytes) -> str:
    """A key's text from its spelling between the quotes (valid UTF-8, checked by the caller)."""
    return raw.decode("utf-8") if b"\\" not in raw else _TEXT.decode(b'"' + raw + b'"')


class Vocabulary(Mapping[str, int]):
    """A checked ``{text: id}`` vocabulary object (its bytes; every value an integer id): the
    same mapping as ``json.loads`` gives. A lookup reads only the keys that start with the same
    byte as the text; iterating or measuring it builds the dict once."""

    def __init__(self, span: bytes | memoryview) -> None:
        # A view (of the file read whole) is copied out at the first lookup: what only reads
        # the size (``inspect`` of one file) never copies a quarter of the file.
        self._span: bytes | memoryview = span
        self._built: dict[str, int] | None = None
        self._buckets: dict[int, dict[str, int]] = {}
        self._escape_first: dict[int, list[Entry]] | None = None
        self._lock = threading.Lock()

    def _vocab(self) -> dict[str, int]:
        global vocabularies_built
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    self._built = VOCAB_OBJECT.decode(self._span)  # checked: cannot fail
                    self._span = b""
                    self._buckets.clear()
                    with _COUNT_LOCK:
                        vocabularies_built += 1
                built = self._built
        return built

    def _table(self, text: str) -> Mapping[str, int]:
        """Where ``text`` is looked up: the dict once built, else its first byte's bucket."""
        if self._built is not None:
            return self._built
        try:
            first = text[:1].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: whatever the dict makes of it
            return self._vocab()
        if not first or first[0] in _AMBIGUOUS:
            return self._vocab()
        with self._lock:
            if self._built is not None:
                return self._built
            bucket = self._buckets.get(first[0])
            if bucket is None:
                bucket = self._bucket(first[0])
                if bucket is not None:
                    self._buckets[first[0]] = bucket
        return bucket if bucket is not None else self._vocab()

    def _bucket(self, byte: int) -> dict[str, int] | None:
        """Every key whose text starts with ``byte``, with its id; None when there are too many
        (the dict is cheaper). The keys spelled from that byte are read at each ``"`` and the
        byte (:func:`_keys_from`), and, the first time, every key spelled from an escape (filed
        for all bytes)."""
        global buckets_read
        if isinstance(self._span, memoryview):  # under the lock (see _table)
            self._span = bytes(self._span)
        span = self._span
        entries: list[Entry] = []
        if byte >= 0x20 and byte not in b'"\\':  # a byte that may start a spelling raw
            for entry in _keys_from(span, bytes([byte])):
                entries.append(entry)
                if len(entries) > BUCKET_MAX:
                    return None
        if self._escape_first is None:
            escape_first: dict[int, list[Entry]] = {}
            for entry in _keys_from(span, b"\\"):
                escape_first.setdefault(entry[1][:1].encode("utf-8")[0], []).append(entry)
            self._escape_first = escape_first
        entries += self._escape_first.get(byte, ())
        entries.sort(key=lambda entry: entry[0])
        with _COUNT_LOCK:
            buckets_read += 1
        return {text: value for _, text, value in entries}

    def __getitem__(self, text: str) -> int:
        return self._table(text)[text]

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text in self._table(text)

    def __iter__(self) -> Iterator[str]:
        return iter(self._vocab())

    def __len__(self) -> int:
        return len(self._vocab())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._vocab(),))


__all__ = ["BUCKET_MAX", "VOCAB_OBJECT", "Vocabulary"]
