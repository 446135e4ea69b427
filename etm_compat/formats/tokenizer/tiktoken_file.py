"""tiktoken rank files: one ``<base64 token> <rank>`` line per token (Llama 3's tokenizer.model).

Ids follow pytorch_tokenizers' ``Tiktoken`` given no special tokens, as the runner loads it
(``tiktoken.h``): the file's N ranks, then 256 Llama 3 special tokens at ids N..N+255, bos is
N (``<|begin_of_text|>``) and eos is N+1 (``<|end_of_text|>``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from etm_compat.constants import (
    TIKTOKEN_NUM_SPECIAL_TOKENS,
    TOKENIZER_MAX_VOCAB,
    TOKENIZER_VOCAB_LOOKUP_MAX,
)
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.model import TokenizerInfo

_LINE = re.compile(rb"([A-Za-z0-9+/]+={0,2}) ([0-9]{1,10})\r?")
_BASIC_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
)  # fmt: skip
#: The default special tokens of the C++ ``Tiktoken`` (the Python wrapper's list differs).
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = _BASIC_SPECIALS + tuple(
    f"<|reserved_special_token_{i}|>"
    for i in range(2, 2 + TIKTOKEN_NUM_SPECIAL_TOKENS - len(_BASIC_SPECIALS))
)


def _lines(data: bytes, complete: bool) -> list[bytes]:
    lines = data.split(b"\n")
    if complete:
        if lines and lines[-1] == b"":
            lines.pop()  # the final newline
    else:
        lines.pop()  # possibly cut short by the sniff limit
    return lines


def sniff(head: bytes, complete: bool) -> bool:
    """True if every whole line of ``head`` is ``<base64> <rank>`` (and there is one)."""
    lines = _lines(head, complete)
    return bool(lines) and all(_LINE.fullmatch(line) for line in lines)


def explain(head: bytes, complete: bool) -> str | None:
    """Which line breaks a file whose first line is a tiktoken line, else None."""
    lines = _lines(head, complete)
    if not lines or not _LINE.fullmatch(lines[0]):
        return None
    for number, line in enumerate(lines, start=1):
        if not _LINE.fullmatch(line):
            return _bad_line(number, line)
    return None


def _bad_line(number: int, line: bytes) -> str:
    shown = line[:60].decode("ascii", "backslashreplace")
    return f"tiktoken line {number} is {shown!r}, expected '<base64 token> <rank>'"


def parse(path: StrPath, data: bytes) -> TokenizerInfo:
    """TokenizerInfo of a whole rank file; a bad line raises TokenizerFormatError naming it."""
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for number, line in enumerate(_lines(data, True), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise TokenizerFormatError(
                _bad_line(number, line),
                path=path,
                hint="blank or malformed lines make the runner refuse the file",
            )
        try:
            token = base64.b64decode(match[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TokenizerFormatError(
                f"tiktoken line {number}: the token is not valid base64", path=path
            ) from exc
        rank = int(match[2])
        if token in ranks or rank in seen_ranks:
            raise TokenizerFormatError(
                f"tiktoken line {number}: duplicate {'token' if token in ranks else 'rank'}",
                path=path,
            )
        ranks[token] = rank
        seen_ranks.add(rank)
        if len(ranks) > TOKENIZER_MAX_VOCAB:
            raise TokenizerFormatError("tiktoken file has too many lines", path=path)
    if not ranks:
        raise TokenizerFormatError("tiktoken file has no tokens", path=path)
    base = len(ranks)
    specials = {name: base + i for i, name in enumerate(DEFAULT_SPECIAL_TOKENS)}
    vocab: dict[str, int] | None = None
    if base <= TOKENIZER_VOCAB_LOOKUP_MAX:
        vocab = {}
        for token, rank in ranks.items():
            try:
                vocab[token.decode("utf-8")] = rank
            except UnicodeDecodeError:
                continue
    return TokenizerInfo(
        path=os.fspath(path), format="tiktoken", variant=None,
        vocab_size=base + len(DEFAULT_SPECIAL_TOKENS),
        bos_id=base, bos_token=DEFAULT_SPECIAL_TOKENS[0],
        eos_id=base + 1, eos_token=DEFAULT_SPECIAL_TOKENS[1],
        special_tokens=specials, runner=None, vocab=vocab,
    )
