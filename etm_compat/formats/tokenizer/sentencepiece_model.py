"""SentencePiece ``.model`` files: a serialized ``ModelProto``, read by a tiny protobuf walker.

Field numbers (sentencepiece_model.proto, checked against the descriptor the ``sentencepiece``
package ships): ModelProto{pieces=1, trainer_spec=2, normalizer_spec=3, self_test_data=4,
denormalizer_spec=5}; SentencePiece{piece=1, score=2, type=3 (NORMAL=1, UNKNOWN=2, CONTROL=3,
USER_DEFINED=4, UNUSED=5, BYTE=6)}; TrainerSpec{unk_id=40, bos_id=41, eos_id=42, pad_id=43,
unk_piece=45, bos_piece=46, eos_piece=47}.

bos/eos are what ``SentencePieceProcessor.bos_id()`` returns, which the runner's ``SPTokenizer``
uses: the piece named ``trainer_spec.bos_piece`` (default ``<s>``) if it is a CONTROL piece, else
none. ``trainer_spec.bos_id`` is not consulted by the library (verified by editing a model).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from etm_compat.constants import TOKENIZER_MAX_VOCAB, TOKENIZER_VOCAB_LOOKUP_MAX
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.model import TokenizerInfo

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED = 1, 2, 3, 4
PIECE_TYPES = range(1, 7)
_MODEL_LEN_FIELDS = (1, 2, 3, 4, 5)
_TRAINER_STRINGS = {45: "unk_piece", 46: "bos_piece", 47: "eos_piece"}


class ProtoError(Exception):
    """Malformed protobuf; ``offset`` is where, ``truncated`` if it just ran out of bytes."""

    def __init__(self, message: str, offset: int, *, truncated: bool = False) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset
        self.truncated = truncated


@dataclass(frozen=True)
class Field:
    """One protobuf field: number, wire type, and a value (int) or a byte span (LEN)."""

    number: int
    wire: int
    value: int
    start: int = 0
    end: int = 0


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            raise ProtoError("varint runs past the end", pos, truncated=True)
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtoError("varint longer than 10 bytes", pos)


def walk(buf: bytes, start: int, end: int) -> Iterator[Field]:
    """The fields of one message in ``buf[start:end]``; raises ProtoError on malformed input."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0 or number >= 1 << 29:
            raise ProtoError(f"field number {number} is invalid", pos)
        if wire == WIRE_VARINT:
            value, pos = _varint(buf, pos, end)
            yield Field(number, wire, value)
        elif wire in (WIRE_I64, WIRE_I32):
            size = 8 if wire == WIRE_I64 else 4
            if pos + size > end:
                raise ProtoError("fixed-size field runs past the end", pos, truncated=True)
            yield Field(number, wire, int.from_bytes(buf[pos : pos + size], "little"))
            pos += size
        elif wire == WIRE_LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ProtoError(f"field of {length} bytes runs past the end", pos, truncated=True)
            yield Field(number, wire, length, pos, pos + length)
            pos += length
        else:
            raise ProtoError(f"wire type {wire} is not used by SentencePiece models", pos)


def _text(buf: bytes, f: Field) -> str:
    if f.wire != WIRE_LEN:
        raise ProtoError(f"field {f.number} should be a string", f.start)
    try:
        return buf[f.start : f.end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtoError(f"field {f.number} is not UTF-8", f.start) from exc


def _piece(buf: bytes, f: Field) -> tuple[str, int]:
    if f.wire != WIRE_LEN:
        raise ProtoError("pieces entry is not a message", f.start)
    text, kind = None, PIECE_NORMAL
    for sub in walk(buf, f.start, f.end):
        if sub.number == 1:
            text = _text(buf, sub)
        elif sub.number == 2 and sub.wire != WIRE_I32:
            raise ProtoError("piece score is not a float", f.start)
        elif sub.number == 3:
            if sub.wire != WIRE_VARINT or sub.value not in PIECE_TYPES:
                raise ProtoError(f"piece type {sub.value} is not 1..6", f.start)
            kind = sub.value
    if text is None:
        raise ProtoError("a piece has no text", f.start)
    return text, kind


#: Fields the sniffer checks before deciding: plenty of evidence, and it keeps folder scans
#: cheap (a 64 KiB prefix holds thousands of pieces; the full read checks every one anyway).
SNIFF_FIELDS = 16


def sniff(head: bytes, complete: bool) -> bool:
    """True if ``head`` starts like a ModelProto: well-formed fields and at least one piece."""
    pieces = 0
    try:
        for index, f in enumerate(walk(head, 0, len(head))):
            if index >= SNIFF_FIELDS:
                break
            if index == 0 and (f.number not in (1, 2) or f.wire != WIRE_LEN):
                return False
            if f.number in _MODEL_LEN_FIELDS and f.wire != WIRE_LEN:
                return False
            if f.number == 1:
                _piece(head, f)
                pieces += 1
    except ProtoError as exc:
        if complete or not exc.truncated:
            return False
    return pieces > 0


def explain(head: bytes, complete: bool) -> str | None:
    """Why a head that starts with a pieces field is not a usable ModelProto, else None."""
    if not head.startswith(b"\x0a"):
        return None
    try:
        for f in walk(head, 0, len(head)):
            if f.number == 1:
                _piece(head, f)
    except ProtoError as exc:
        if complete or not exc.truncated:
            what = "truncated" if exc.truncated else "corrupt"
            return f"SentencePiece model is {what}: {exc}"
    return None


def parse(path: StrPath, data: bytes) -> TokenizerInfo:
    """TokenizerInfo of a whole ``.model`` file; malformed input raises TokenizerFormatError."""
    pieces: list[tuple[str, int]] = []
    trainer: dict[str, str] = {}
    try:
        for f in walk(data, 0, len(data)):
            if f.number in _MODEL_LEN_FIELDS and f.wire != WIRE_LEN:
                raise ProtoError(f"ModelProto field {f.number} is not a message", f.start)
            if f.number == 1:
                pieces.append(_piece(data, f))
                if len(pieces) > TOKENIZER_MAX_VOCAB:
                    raise ProtoError("more pieces than accepted", f.start)
            elif f.number == 2:
                for sub in walk(data, f.start, f.end):
                    if sub.number in _TRAINER_STRINGS:
                        trainer[_TRAINER_STRINGS[sub.number]] = _text(data, sub)
    except ProtoError as exc:
        what = "truncated" if exc.truncated else "corrupt"
        raise TokenizerFormatError(
            f"SentencePiece model is {what}: {exc}", path=path,
            hint="re-copy the tokenizer.model from the model's original files",
        ) from exc
    if not pieces:
        raise TokenizerFormatError("SentencePiece model has no pieces", path=path)
    ids: dict[str, int] = {}
    for index, (text, _) in enumerate(pieces):
        ids.setdefault(text, index)

    def control(name: str) -> int | None:
        found = ids.get(name)
        return found if found is not None and pieces[found][1] == PIECE_CONTROL else None

    bos = control(trainer.get("bos_piece", "<s>"))
    eos = control(trainer.get("eos_piece", "</s>"))
    specials = {
        text: index
        for index, (text, kind) in enumerate(pieces)
        if kind in (PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED)
    }
    return TokenizerInfo(
        path=os.fspath(path), format="sentencepiece", variant=None, vocab_size=len(pieces),
        bos_id=bos, bos_token=pieces[bos][0] if bos is not None else None,
        eos_id=eos, eos_token=pieces[eos][0] if eos is not None else None,
        special_tokens=specials, runner=None,
        vocab=ids if len(pieces) <= TOKENIZER_VOCAB_LOOKUP_MAX else None,
    )
