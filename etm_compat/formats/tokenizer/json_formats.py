"""The two JSON tokenizer formats: sniffing them, Mistral ``tekken.json``, HF tokenizer configs.

The HF ``tokenizer.json`` itself is read by :mod:`.hf_json`, from the outline
:mod:`.json_document` decodes for both formats.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Mapping
from typing import Any

from etm_compat.constants import (
    TOKENIZER_CONFIG_MAX_BYTES,
    TOKENIZER_MAX_VOCAB,
    TOKENIZER_VOCAB_LOOKUP_MAX,
)
from etm_compat.errors import TokenizerFormatError
from etm_compat.formats.tokenizer.bounded import StrPath, is_token_id, read_json_once
from etm_compat.formats.tokenizer.model import TokenizerFormat, TokenizerInfo

_HF_KEYS = (b'"added_tokens"', b'"model"', b'"pre_tokenizer"', b'"normalizer"', b'"truncation"')
_TEKKEN_KEYS = (b'"token_bytes"', b'"default_num_special_tokens"', b'"default_vocab_size"')
#: Special tokens ``Tekken`` assumes when a file has no "special_tokens" (older tekken versions).
_TEKKEN_DEFAULT_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)  # fmt: skip


def sniff(head: bytes) -> TokenizerFormat | None:
    """``"tekken"`` or ``"hf_json"`` if the head is a JSON object naming their keys."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text.startswith(b"{"):
        return None
    if any(key in text for key in _TEKKEN_KEYS):
        return "tekken"
    if any(key in text for key in _HF_KEYS):
        return "hf_json"
    return None


def _bad(path: StrPath, message: str) -> TokenizerFormatError:
    return TokenizerFormatError(message, path=path)


def read_config(path: StrPath | None) -> Mapping[str, Any] | None:
    """A ``tokenizer_config.json``-like object, or None when no path is given (an unchanged
    file is parsed once per process, :func:`~etm_compat.remembered.read_parsed`: not to be
    modified)."""
    if path is None:
        return None
    obj = read_json_once(path, TOKENIZER_CONFIG_MAX_BYTES, what="tokenizer config")
    if not isinstance(obj, dict):
        raise _bad(path, "tokenizer config is not a JSON object")
    return obj


def _int_field(path: StrPath, obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or not is_token_id(value):
        raise _bad(path, f'tekken "config.{key}" is {value!r}, expected a count')
    return value


def parse_tekken(path: StrPath, doc: Mapping[str, Any]) -> TokenizerInfo:
    """TokenizerInfo of a parsed tekken.json, with the ids pytorch_tokenizers' ``Tekken`` gives.

    Special tokens keep their rank as id; vocabulary rank r gets id ``r + num_special``; only the
    first ``default_vocab_size - default_num_special_tokens`` vocabulary entries are used.
    """
    config = doc["config"]
    if not isinstance(config.get("pattern"), str):
        raise _bad(path, 'tekken "config.pattern" is missing or not text')
    num_special = _int_field(path, config, "default_num_special_tokens")
    total = _int_field(path, config, "default_vocab_size")
    raw_specials = doc.get("special_tokens")
    specials: dict[str, int] = {}
    if raw_specials is None:
        specials = {name: rank for rank, name in enumerate(_TEKKEN_DEFAULT_SPECIALS)}
    elif isinstance(raw_specials, list) and len(raw_specials) <= TOKENIZER_MAX_VOCAB:
        for entry in raw_specials:
            if not (isinstance(entry, dict) and isinstance(entry.get("token_str"), str)
                    and is_token_id(entry.get("rank"))):
                raise _bad(path, f'tekken special token {str(entry)[:80]} lacks "rank"/"token_str"')
            specials[entry["token_str"]] = entry["rank"]
    else:
        raise _bad(path, 'tekken "special_tokens" is not a list')
    entries = doc["vocab"][: max(total - num_special, 0)]
    vocab: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and entry.get("rank") == index
                and isinstance(entry.get("token_bytes"), str)):
            raise _bad(path, f"tekken vocab entry {index} lacks rank {index} or token_bytes")
        try:
            token = base64.b64decode(entry["token_bytes"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(path, f"tekken vocab entry {index}: token_bytes is not base64") from exc
        with contextlib.suppress(UnicodeDecodeError):  # byte tokens have no text form
            vocab.setdefault(token.decode("utf-8"), index + num_special)
    bos, eos = specials.get("<s>"), specials.get("</s>")
    return TokenizerInfo(
        path=os.fspath(path), format="tekken", variant=None,
        vocab_size=len(entries) + max(len(specials), num_special),
        bos_id=bos, bos_token="<s>" if bos is not None else None,
        eos_id=eos, eos_token="</s>" if eos is not None else None,
        special_tokens=specials, runner=None,
        vocab=vocab if len(entries) <= TOKENIZER_VOCAB_LOOKUP_MAX else None,
    )
