"""llama2.c ``tokenizer.bin`` in its two layouts, told apart by walking the records.

* ``pytorch_tokenizers`` (what the ExecuTorch runner's ``Llama2cTokenizer`` loads): int32 LE
  header ``vocab_size, bos, eos, max_token_length``, then ``vocab_size`` records.
* ``llama2c_original`` (Karpathy's llama2.c export): int32 ``max_token_length``, then records up
  to the end of the file. The header has no bos/eos (llama2.c's run.c hard-codes 1 and 2), but
  the exporter (``tokenizer.py export``) writes the SentencePiece bos/eos pieces as ``"\n<s>\n"``
  and ``"\n</s>\n"``: the records holding those pieces are the bos and eos.

In both layouts a bos/eos piece written that way is named ``<s>``/``</s>`` (the SentencePiece
piece llama2.c wrapped in newlines), so a converted file reads the same as its original.

A record is ``float32 score, int32 len, len bytes``; here a record must have a finite score and
``0 <= len <= max_token_length`` (the runner's encoder buffer is sized by max_token_length).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Final

from etm_compat.constants import (
    LLAMA2C_MAX_TOKEN_LENGTH,
    TOKENIZER_MAX_BYTES,
    TOKENIZER_MAX_VOCAB,
    TOKENIZER_VOCAB_LOOKUP_MAX,
)
from etm_compat.errors import OutputError, TokenizerFormatError, UsageError
from etm_compat.formats.tokenizer.bounded import StrPath, read_bounded
from etm_compat.formats.tokenizer.model import TokenizerInfo

_HEADER = struct.Struct("<4i")
_RECORD = struct.Struct("<fi")
#: The bos/eos pieces llama2.c's exporter writes, and the SentencePiece names they stand for.
_EXPORTED_BOS: Final = b"\n<s>\n"
_EXPORTED_EOS: Final = b"\n</s>\n"
_EXPORTED_NAMES: Final = {_EXPORTED_BOS: "<s>", _EXPORTED_EOS: "</s>"}


class _Bad(Exception):
    """Why the bytes are not records of this layout."""


def _records(
    data: bytes, pos: int, max_len: int, count: int | None, *, partial: bool
) -> list[tuple[float, bytes]]:
    """Walk records from ``pos``: ``count`` of them ending at EOF, or (None) as many as reach EOF.

    With ``partial`` the data is a prefix: stop quietly where it is cut.
    """
    out: list[tuple[float, bytes]] = []
    limit = TOKENIZER_MAX_VOCAB if count is None else count
    while len(out) < limit and (count is not None or pos < len(data)):
        index = len(out)
        if pos + _RECORD.size > len(data):
            if partial:
                return out
            raise _Bad(f"record {index} at byte {pos} runs past the end of the file")
        score, length = _RECORD.unpack_from(data, pos)
        if not math.isfinite(score):
            raise _Bad(f"record {index} at byte {pos} has a score that is not a number")
        if not 0 <= length <= max_len:
            raise _Bad(f"record {index} at byte {pos} has length {length}, not 0..{max_len}")
        end = pos + _RECORD.size + length
        if end > len(data):
            if partial:
                return out
            raise _Bad(f"record {index} at byte {pos}: length {length} runs past the end of the file")
        out.append((score, data[pos + _RECORD.size : end]))
        pos = end
    if not partial and pos != len(data):
        raise _Bad(f"{len(data) - pos} bytes follow the last of {len(out)} records")
    return out


def _pytorch_layout(data: bytes, partial: bool) -> tuple[tuple[int, int, int, int], list[tuple[float, bytes]]]:
    if len(data) < _HEADER.size:
        raise _Bad("shorter than the 16-byte header")
    header = vocab_size, bos, eos, max_len = _HEADER.unpack_from(data)
    if not 0 < vocab_size <= TOKENIZER_MAX_VOCAB:
        raise _Bad(f"header vocab_size {vocab_size} is not 1..{TOKENIZER_MAX_VOCAB}")
    if not (0 <= bos < vocab_size and 0 <= eos < vocab_size):
        raise _Bad(f"header bos {bos} / eos {eos} are not below vocab_size {vocab_size}")
    if not 0 < max_len <= LLAMA2C_MAX_TOKEN_LENGTH:
        raise _Bad(f"header max_token_length {max_len} is not 1..{LLAMA2C_MAX_TOKEN_LENGTH}")
    records = _records(data, _HEADER.size, max_len, vocab_size, partial=partial)
    return header, records


def _original_layout(data: bytes, partial: bool) -> tuple[int, list[tuple[float, bytes]]]:
    if len(data) < 4:
        raise _Bad("shorter than the 4-byte header")
    (max_len,) = struct.unpack_from("<i", data)
    if not 0 < max_len <= LLAMA2C_MAX_TOKEN_LENGTH:
        raise _Bad(f"header max_token_length {max_len} is not 1..{LLAMA2C_MAX_TOKEN_LENGTH}")
    return max_len, _records(data, 4, max_len, None, partial=partial)


def sniff(head: bytes, complete: bool, *, original: bool) -> bool:
    """True if ``head`` walks as records of the chosen layout (at least one record)."""
    try:
        if original:
            return len(_original_layout(head, not complete)[1]) > 0
        return len(_pytorch_layout(head, not complete)[1]) > 0
    except _Bad:
        return False


def explain(head: bytes, complete: bool) -> str | None:
    """Why a head with a plausible pytorch-tokenizers header fails to walk, else None."""
    if len(head) < _HEADER.size:
        return None
    vocab_size, bos, eos, max_len = _HEADER.unpack_from(head)
    plausible = (0 < vocab_size <= TOKENIZER_MAX_VOCAB and 0 <= bos < vocab_size
                 and 0 <= eos < vocab_size and 0 < max_len <= LLAMA2C_MAX_TOKEN_LENGTH)
    if not plausible:
        return None
    try:
        _pytorch_layout(head, not complete)
    except _Bad as exc:
        return f"llama2.c tokenizer is corrupt: {exc}"
    return None


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", "backslashreplace")


def _special_text(piece: bytes) -> str:
    """A bos/eos piece's name: ``<s>`` for llama2.c's exported ``"\\n<s>\\n"``, else its text."""
    return _EXPORTED_NAMES.get(piece) or _text(piece)


def _exported_id(records: list[tuple[float, bytes]], piece: bytes) -> int:
    """The first record holding ``piece`` (an original-layout bos/eos), or -1."""
    return next((i for i, (_, p) in enumerate(records) if p == piece), -1)


def parse(path: StrPath, data: bytes) -> TokenizerInfo:
    """TokenizerInfo of a whole file, variant ``pytorch_tokenizers`` or ``llama2c_original``.

    special_tokens holds the bos/eos pieces (the format has no token types). The original
    layout's bos/eos are the records holding llama2.c's exported ``"\\n<s>\\n"``/``"\\n</s>\\n"``
    (None when the file has no such piece).
    """
    try:
        (_, bos, eos, _), records = _pytorch_layout(data, False)
        variant: str = "pytorch_tokenizers"
    except _Bad as first:
        try:
            records = _original_layout(data, False)[1]
        except _Bad as second:
            raise TokenizerFormatError(
                f"not a llama2.c tokenizer: as the pytorch-tokenizers layout, {first}; "
                f"as the original layout, {second}",
                path=path,
            ) from None
        variant = "llama2c_original"
        bos, eos = _exported_id(records, _EXPORTED_BOS), _exported_id(records, _EXPORTED_EOS)
    vocab: dict[str, int] = {}
    for index, (_, piece) in enumerate(records):
        vocab.setdefault(_text(piece), index)
    specials = {_special_text(records[i][1]): i for i in (bos, eos) if i >= 0}
    return TokenizerInfo(
        path=os.fspath(path), format="llama2c", variant=variant, vocab_size=len(records),
        bos_id=bos if bos >= 0 else None,
        bos_token=_special_text(records[bos][1]) if bos >= 0 else None,
        eos_id=eos if eos >= 0 else None,
        eos_token=_special_text(records[eos][1]) if eos >= 0 else None,
        special_tokens=specials, runner=None,
        vocab=vocab if len(records) <= TOKENIZER_VOCAB_LOOKUP_MAX else None,
    )


def convert_llama2c_original(
    src: StrPath, dest: StrPath, *, bos_id: int = 1, eos_id: int = 2
) -> None:
    """Rewrite an original-layout llama2.c file into the layout the ExecuTorch runner loads.

    The records are copied unchanged behind a header ``vocab_size, bos_id, eos_id,
    max_token_length``. ``dest`` is written atomically (a temp file in its folder, then
    ``os.replace``); ``src`` is never modified.

    >>> convert_llama2c_original("llama2c/tokenizer.bin", "out/tokenizer.bin")  # doctest: +SKIP
    """
    data = read_bounded(src, TOKENIZER_MAX_BYTES)
    try:
        _pytorch_layout(data, False)
    except _Bad:
        pass
    else:
        raise TokenizerFormatError(
            "already in the pytorch-tokenizers llama2.c layout", path=src,
            hint="the runner loads it as is; copy it instead of converting",
        )
    try:
        max_len, records = _original_layout(data, False)
    except _Bad as exc:
        raise TokenizerFormatError(f"not an original-layout llama2.c tokenizer: {exc}", path=src) from None
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not 0 <= value < len(records):
            raise UsageError(f"{name} {value} is not a token id of this {len(records)}-token file", path=src)
    dest_path = Path(dest)
    if dest_path.exists() and os.path.samefile(src, dest_path):
        raise UsageError("destination is the source file; choose another path", path=dest)
    header = _HEADER.pack(len(records), bos_id, eos_id, max_len)
    # Lazy: tempfile (random, shutil...) is for writing a conversion; reading a tokenizer never needs it.
    import tempfile

    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=dest_path.parent, prefix=f".{dest_path.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(header)
            tmp.write(data[4:])
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dest_path)
        tmp_name = None
    except OSError as exc:
        raise OutputError(f"cannot write converted tokenizer: {exc.strerror or exc}", path=dest) from exc
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
