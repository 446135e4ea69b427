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

import itertools

#: Escapes are found one ``bytes.find`` at a time while they are sparse (real files: one per
#: kilobyte or so); once they come closer than this on average, two ``bytes.replace`` passes (in
#: C) do the rest, so dense escapes cost no more than sparse ones.
_SPARSE_ESCAPE_GAP = 64
_ESCAPE_BATCH = 4096
#: What structure is made of: quotes (to tell strings apart), brackets, and the separators that
#: keep two strings from touching (``"a","b"`` and ``"k":"v"``: adjacent quotes open and close
#: one string with nothing structural inside).
_STRUCTURE = b'"[]{},:'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_CHUNK = 1 << 16


def _structure(data: bytes) -> bytes:
    r"""The structural characters of ``data`` (quotes, brackets, separators), escaped quotes left
    out. Two escapes can hide structure: ``\"`` (an escaped quote) and ``\\`` (an escaped
    backslash, which would make the quote after it look escaped); every other escape is letters
    and digits, dropped with the rest of a string's text."""
    if b"\\" not in data:
        return data.translate(None, _NOT_STRUCTURE)
    parts: list[bytes] = []
    start = pos = seen = 0
    while seen * _SPARSE_ESCAPE_GAP <= pos:
        for _ in range(_ESCAPE_BATCH):
            found = data.find(b"\\", pos)
            if found < 0:
                parts.append(data[start:].translate(None, _NOT_STRUCTURE))
                return b"".join(parts)
            if data[found + 1 : found + 2] in (b"\\", b'"'):
                parts.append(data[start:found].translate(None, _NOT_STRUCTURE))
                start = found + 2
            pos = found + 2
        seen += _ESCAPE_BATCH
    # Dense escapes. ``start`` is just past an escape, so each run of backslashes from there on
    # starts with an escaping one: removing backslash pairs left to right leaves exactly the
    # backslashes that escape the next character, and then the escaped quotes can go.
    rest = data[start:].replace(b"\\\\", b"").replace(b'\\"', b"")
    parts.append(rest.translate(None, _NOT_STRUCTURE))
    return b"".join(parts)


def _outside_strings(structure: bytes) -> bytes:
    """What lies outside strings in text of quotes and structural characters only: quotes
    alternate opening and closing (a raw quote never sits inside a JSON string). Split in
    chunks, so that memory stays bounded whatever the number of strings."""
    if b'"' not in structure:
        return structure
    kept: list[bytes] = []
    inside = False
    for start in range(0, len(structure), _CHUNK):
        parts = structure[start : start + _CHUNK].split(b'"')
        kept += parts[inside::2]
        inside ^= len(parts) % 2 == 0
    return b"".join(kept)


def _bracket_depth(brackets: bytes, limit: int | None) -> int:
    """Deepest nesting of a sequence of ``[]{}``: innermost pairs peeled one level per pass while
    that removes much, then a running sum in C over what is left (deep or unbalanced input)."""
    depth = 0
    while brackets:
        # A pair becomes "." so that a pass peels exactly one level: "{[]}" -> "{.}", not "".
        marked = brackets.replace(b"[]", b".").replace(b"{}", b".")
        if (len(brackets) - len(marked)) * 8 < len(brackets):
            break
        brackets = marked.replace(b".", b"")
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
    structure = _structure(data)
    # Most strings hold no structural character: their quotes now touch. Between two strings
    # there is always a "," or ":", so touching quotes are always one string's.
    structure = structure.replace(b'""', b"")
    brackets = _outside_strings(structure).translate(None, b",:")
    return _bracket_depth(brackets, limit)


__all__ = ["json_nesting"]
