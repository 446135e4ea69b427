"""Limits for untrusted JSON: nesting depth measured at the speed of the bytes.

``json.loads`` recurses once per nesting level, so a file of ten thousand ``[`` exhausts the
stack (``RecursionError``) before any schema check runs; a limit on nesting is also part of what
every reader of untrusted JSON (tokenizer files, deployment configs, an archive's metadata.json)
promises. :func:`json_nesting` measures it with a handful of C-level passes (``bytes.find``,
``bytes.translate``, ``bytes.replace``, ``bytes.split``), never a Python step per byte: Gemma 3's
33 MB tokenizer.json costs under a tenth of a second of CPU (a tenth of the regex pass over every
string that it replaces), and the work stays linear in the input whatever its shape (escapes, strings full of
brackets, deep or unbalanced nesting).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

#: Escapes are found one ``bytes.find`` at a time while they are sparse (real files: one per
#: kilobyte or so); once they come closer than this on average, two ``bytes.replace`` passes (in
#: C) take the next window, so dense escapes cost no more than sparse ones.
_SPARSE_ESCAPE_GAP = 64
_ESCAPE_BATCH = 4096
#: What one switch to the bulk passes covers before escapes are looked at one at a time again.
_DENSE_WINDOW = 1 << 20
_NOT_BACKSLASH = re.compile(rb"[^\\]")
#: What structure is made of: quotes (to tell strings apart), brackets and separators.
STRUCTURE = b'"[]{},:'
#: What JSON text is made of outside its strings: structure, and every byte of a number (the
#: literals true/false/null leave an ``e`` or nothing, so they never pass for a number).
STRUCTURE_AND_NUMBERS = STRUCTURE + b"0123456789-+.eE"
_STEP = [0] * 256
_STEP[ord("[")] = 1
_STEP[ord("]")] = -1
#: Braces as brackets: the depth of a sequence of both kinds is that of its running sum.
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_CHUNK = 1 << 16
#: The most input one segment of the outside-strings pass covers (translated, a few tens of
#: kilobytes), and about how much kept text one piece joins: the passes over a piece stay in
#: the CPU cache, and its strings are split out in bounded memory.
_PIECE = 1 << 18
_PIECE_TEXT = 1 << 15
#: What the nesting alone needs kept: quotes (to tell strings apart) and brackets.
QUOTES_AND_BRACKETS = b'"[]{}'


def _pieces_without_quoting_escapes(data: bytes, delete: bytes, begin: int, end: int) -> Iterator[bytes]:
    """The segments of :func:`_segments_without_quoting_escapes` joined into pieces of about
    ``_PIECE_TEXT`` bytes: what follows takes a few calls per piece, not per escape, on text
    that stays in the CPU cache."""
    parts: list[bytes] = []
    size = 0
    for segment in _segments_without_quoting_escapes(data, delete, begin, end):
        parts.append(segment)
        size += len(segment)
        if size >= _PIECE_TEXT:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def _segments_without_quoting_escapes(data: bytes, delete: bytes, begin: int, end: int) -> Iterator[bytes]:
    r"""``data[begin:end]`` with the bytes of ``delete`` dropped and the escapes that can hide
    structure left out: ``\"`` (an escaped quote) and ``\\`` (an escaped backslash, which would
    make the quote after it look escaped); every other escape is a backslash and letters or
    digits. ``begin`` must lie outside strings. In segments cut at those escapes and every
    ``_PIECE`` input bytes."""
    if data.find(b"\\", begin, end) < 0:
        yield from _translated(data, delete, begin, end)
        return
    start = pos = phase = begin  # phase: where escapes were last found one at a time from
    seen = 0
    while True:
        found = data.find(b"\\", pos, end)  # one byte: memchr, where a two-byte find is 5x slower
        if found < 0:
            yield from _translated(data, delete, start, end)
            return
        if found + 1 < end and data[found + 1 : found + 2] in (b"\\", b'"'):
            if found - start <= _PIECE:  # the usual case, without a generator of its own
                yield data[start:found].translate(None, delete)
            else:
                yield from _translated(data, delete, start, found)
            start = found + 2
        pos = found + 2
        seen += 1
        if seen % _ESCAPE_BATCH == 0 and seen * _SPARSE_ESCAPE_GAP > pos - phase:
            # Dense escapes: the next window goes through bytes.replace (in C). ``start`` is
            # just past an escape and the window ends past a byte that is no backslash, so each
            # run of backslashes in it starts with an escaping one: removing backslash pairs left
            # to right leaves exactly the backslashes that escape the next byte, and then the
            # escaped quotes can go. Then one at a time again: a cluster (Gemma 3's newline
            # merges) does not send the whole rest of a file through two slower passes.
            stop = _window_end(data, start + _DENSE_WINDOW, end)
            rest = data[start:stop].replace(b"\\\\", b"").replace(b'\\"', b"")
            yield rest.translate(None, delete)
            start = pos = phase = stop
            seen = 0


def _translated(data: bytes, delete: bytes, start: int, end: int) -> Iterator[bytes]:
    """``data[start:end]`` with the bytes of ``delete`` dropped, ``_PIECE`` input bytes at a time
    (translating is byte by byte: any cut gives the same bytes)."""
    for at in range(start, end, _PIECE):
        yield data[at : min(at + _PIECE, end)].translate(None, delete)


def _window_end(data: bytes, target: int, end: int) -> int:
    """The first position from ``target`` on (at most ``end``) whose previous byte is no
    backslash: no escape is cut there."""
    if target >= end:
        return end
    plain = _NOT_BACKSLASH.search(data, target - 1, end)
    return end if plain is None else plain.start() + 1


def _bracket_depth(brackets: bytes, limit: int | None) -> int:
    """Deepest nesting of a sequence of ``[`` and ``]`` (a ``{}`` pair nests as a ``[]`` pair
    does: :func:`outside_nesting` makes them one kind): innermost pairs peeled one level per
    pass while that removes much, then a running sum in C over what is left (deep or unbalanced
    input). One ``bytes.replace`` peels exactly one level: it never looks again at a pair that
    its own removals made touch (``[[]]`` -> ``[]``)."""
    depth = 0
    while brackets:
        peeled = brackets.replace(b"[]", b"")
        if (len(brackets) - len(peeled)) * 4 < len(brackets):
            break
        brackets = peeled
        depth += 1
        if limit is not None and depth > limit:
            return depth
    deepest = level = depth
    for start in range(0, len(brackets), _CHUNK):
        levels = list(
            itertools.accumulate(map(_STEP.__getitem__, brackets[start : start + _CHUNK]), initial=level)
        )
        deepest, level = max(deepest, max(levels)), levels[-1]
        if limit is not None and deepest > limit:
            break
    return deepest


def json_nesting(text: bytes | str, limit: int | None = None) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, not counting brackets inside strings.

    Exact for valid JSON; for invalid JSON it measures the brackets outside what pairs up as
    strings (a parser stops at the first error, never deeper). With ``limit``, counting may stop
    as soon as the depth is known to exceed it (the result is then some value above ``limit``).

    >>> json_nesting('{"a": [1, {"b": "[[["}]}')
    3
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return outside_nesting(json_outside_strings(data, QUOTES_AND_BRACKETS), limit)


def outside_nesting(outside: bytes, limit: int | None = None) -> int:
    """:func:`json_nesting` of JSON text from what lies outside its strings
    (:func:`json_outside_strings`, whatever else was kept)."""
    return _bracket_depth(outside.translate(_ONE_KIND, _deletion(b"[]{}")), limit)


@functools.lru_cache(maxsize=8)
def _deletion(keep: bytes) -> bytes:
    return bytes(b for b in range(256) if b not in keep)


def json_outside_strings(data: bytes, keep: bytes, start: int = 0, end: int | None = None) -> bytes:
    """The bytes of ``keep`` that lie outside the strings of JSON text, in order: the same C-level
    passes as :func:`json_nesting`. ``keep`` must hold the quote and the brackets
    (:data:`QUOTES_AND_BRACKETS`, all the nesting needs); add ``,:`` (:data:`STRUCTURE`) to read
    the separators, and digits to read numbers. Exact for valid JSON. ``data[start:end]`` (no
    copy made of it) must begin and end outside strings: the outside of consecutive parts is the
    outside of the whole.

    >>> json_outside_strings(b'{"a": 10, "b[": [-1.5e3, "7"]}', STRUCTURE_AND_NUMBERS)
    b'{:10,:[-1.5e3,]}'
    """
    end = len(data) if end is None else end
    kept: list[bytes] = []
    inside = False
    for piece in _pieces_without_quoting_escapes(data, _deletion(keep), start, end):
        # With escaped quotes gone, quotes alternate opening and closing (a raw quote never sits
        # inside a JSON string). Most strings hold no kept byte, so their quotes now touch:
        # dropping two touching quotes first leaves every other byte on its side of the strings.
        piece = piece.replace(b'""', b"")
        if b'"' not in piece:
            if not inside:
                kept.append(piece)
            continue
        parts = piece.split(b'"')
        kept += parts[inside::2]
        inside ^= len(parts) % 2 == 0
    return b"".join(kept)


#: :func:`valid_json_outside_brackets` reads line by line while at most one bracket byte (inside
#: strings or not) comes per this many bytes: past that density the line-by-line reading costs
#: more than the full pass. What it counts first stops at this many brackets per part.
_SPARSE_BRACKET_GAP = 512
_SPARSE_BRACKETS_FIRST = 256
_BRACKET_BYTES = (b"[", b"]", b"{", b"}")


def valid_json_outside_brackets(data: bytes, start: int = 0, end: int | None = None) -> bytes:
    r"""The brackets outside the strings of ``data[start:end]``, in order (what
    :func:`outside_nesting` reads), for JSON text that a strict parser has accepted.

    In such text no string holds a raw line break (JSON escapes every control character; msgspec
    refuses a raw one even in what it skips), so every line starts outside strings. When bracket
    bytes are sparse (a tokenizer whose merges are strings: Llama 3 has one per kilobyte), only
    the lines that hold one are read, joined, through :func:`json_outside_strings`; otherwise
    (Gemma 3's merges are pairs) that function reads the whole part. ``data[start:end]`` must
    begin and end outside strings. Work stays linear in the part: each bracket is found once,
    and each line is read once.

    >>> valid_json_outside_brackets(b'{"a": [1,\n  "[["],\n "b": {}}')
    b'{[]{}}'
    """
    end = len(data) if end is None else end
    most = (end - start) // _SPARSE_BRACKET_GAP
    positions: list[int] = []
    for byte in _BRACKET_BYTES:
        found = 0
        pos = data.find(byte, start, end)
        while pos >= 0:
            found += 1
            positions.append(pos)
            if len(positions) > most or (found > _SPARSE_BRACKETS_FIRST and found * _SPARSE_BRACKET_GAP > pos - start):
                return json_outside_strings(data, QUOTES_AND_BRACKETS, start, end)
            pos = data.find(byte, pos + 1, end)
    positions.sort()
    lines: list[bytes] = []
    line_end = start
    for pos in positions:
        if pos < line_end:  # on the line just read
            continue
        line_start = data.rfind(b"\n", line_end, pos) + 1 or line_end
        line_end = data.find(b"\n", pos, end)
        if line_end < 0:
            line_end = end
        lines.append(data[line_start:line_end])
    # Lines start and end outside strings: joined, they keep the brackets they had outside.
    return json_outside_strings(b"\n".join(lines), QUOTES_AND_BRACKETS)


#: From this much JSON text on, msgspec does the work even when nothing has imported it yet:
#: past it, its import (~10 ms) costs less than what it saves over the ``json`` module (decoding;
#: indenting ``--json`` output, where Gemma 3's 180 kB tokenizer inspect took ~12 ms).
MSGSPEC_WORTH_FROM = 64 * 1024


def msgspec_for(length: int) -> ModuleType | None:
    """msgspec, for JSON text of ``length`` characters: when something has imported it already,
    or the text is long enough for its import to pay (:data:`MSGSPEC_WORTH_FROM`); else None,
    and the ``json`` module does the work."""
    msgspec = sys.modules.get("msgspec")
    if msgspec is None and length >= MSGSPEC_WORTH_FROM:
        # Lazy: only large JSON pays for msgspec's import.
        import msgspec
    return msgspec


def json_loads(text: str, **json_options: Any) -> Any:
    """``json.loads(text, **json_options)``, decoded in C by msgspec where it can: msgspec reads
    JSON into the same values (integers of any size, the last of repeated keys), and what it
    refuses (NaN, a lone surrogate escape, bad syntax) goes to ``json.loads``, which decides and
    says why. msgspec is used as :func:`msgspec_for` says. The nesting must have been checked:
    neither bounds it."""
    msgspec = msgspec_for(len(text))
    if msgspec is not None:
        try:
            return msgspec.json.decode(text)
        except msgspec.MsgspecError:
            pass
    return json.loads(text, **json_options)


__all__ = [
    "MSGSPEC_WORTH_FROM",
    "QUOTES_AND_BRACKETS",
    "STRUCTURE",
    "STRUCTURE_AND_NUMBERS",
    "json_loads",
    "json_nesting",
    "json_outside_strings",
    "msgspec_for",
    "outside_nesting",
    "valid_json_outside_brackets",
]
