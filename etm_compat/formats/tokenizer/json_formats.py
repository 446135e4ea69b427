"""The two JSON tokenizer formats: HF ``tokenizer.json`` and Mistral ``tekken.json``.

bos/eos of an HF file follow pytorch_tokenizers' ``HFTokenizer`` (``src/hf_tokenizer.cpp``,
``setup_special_token_ids``; checked against the installed 1.5.0): the configured
``bos_token``/``eos_token`` when a config gives them and they are added tokens; otherwise the one
added token whose text contains ``bos``/``begin`` (``eos``/``end``), none when several match;
if only one of the two is found it is used for both.
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
from etm_compat.formats.tokenizer.bounded import StrPath, load_json, read_bounded
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


def kind_of(obj: object) -> TokenizerFormat | None:
    """Decide between the JSON formats on the parsed document."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("config"), dict) and isinstance(obj.get("vocab"), list):
        return "tekken"
    if isinstance(obj.get("model"), dict):
        return "hf_json"
    return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < TOKENIZER_MAX_VOCAB


def _bad(path: StrPath, message: str, hint: str | None = None) -> TokenizerFormatError:
    return TokenizerFormatError(message, path=path, hint=hint)


def _hf_vocab(path: StrPath, model: Mapping[str, Any]) -> dict[str, int]:
    vocab = model.get("vocab")
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
        if not isinstance(text, str) or not _is_id(token_id):
            raise _bad(path, f"tokenizer.json vocabulary entry {text!r}: {token_id!r} is not text -> id")
        out[text] = token_id  # type: ignore[assignment]  # _is_id checked it is an int
    return out


def _hf_added(path: StrPath, doc: Mapping[str, Any]) -> dict[str, int]:
    added = doc.get("added_tokens", [])
    if added is None:
        added = []
    if not isinstance(added, list) or len(added) > TOKENIZER_MAX_VOCAB:
        raise _bad(path, '"added_tokens" of tokenizer.json is not a list of tokens')
    out: dict[str, int] = {}
    for entry in added:
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)
                and _is_id(entry.get("id"))):
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
    model: Mapping[str, Any], configs: list[Mapping[str, Any] | None]
) -> tuple[str, str]:
    """bos/eos text from special_tokens_map.json then tokenizer_config.json, as the runner reads."""
    bos = eos = unk = ""
    unk_null = False
    if "unk_token" in model:
        unk_null = model["unk_token"] is None
        unk = model["unk_token"] if isinstance(model["unk_token"], str) else ""
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


def read_config(path: StrPath | None) -> Mapping[str, Any] | None:
    """A ``tokenizer_config.json``-like object, or None when no path is given."""
    if path is None:
        return None
    obj = load_json(read_bounded(path, TOKENIZER_CONFIG_MAX_BYTES, what="tokenizer config"), path,
                    what="tokenizer config")
    if not isinstance(obj, dict):
        raise _bad(path, "tokenizer config is not a JSON object")
    return obj


def parse_hf(
    path: StrPath, doc: Mapping[str, Any], configs: list[Mapping[str, Any] | None]
) -> TokenizerInfo:
    """TokenizerInfo of a parsed HF tokenizer.json (``configs``: special_tokens_map, config).

    vocab_size is the largest id over ``model.vocab`` and ``added_tokens`` plus one, the size an
    embedding table needs (the runner counts entries instead; see ``RunnerCheck.vocab_size``).
    """
    model = doc["model"]
    vocab = _hf_vocab(path, model)
    added = _hf_added(path, doc)
    if not vocab and not added:
        raise _bad(path, "tokenizer.json defines no tokens")
    vocab_size = max(max(vocab.values(), default=-1), max(added.values(), default=-1)) + 1
    bos_cfg, eos_cfg = _config_tokens(model, configs)
    bos = _pick(added, bos_cfg, ("bos", "begin"))
    eos = _pick(added, eos_cfg, ("eos", "end"))
    if bos is None:
        bos = eos
    elif eos is None:
        eos = bos
    return TokenizerInfo(
        path=os.fspath(path), format="hf_json", variant=None, vocab_size=vocab_size,
        bos_id=added[bos] if bos is not None else None, bos_token=bos,
        eos_id=added[eos] if eos is not None else None, eos_token=eos,
        special_tokens=added, runner=None,
        vocab=vocab if len(vocab) <= TOKENIZER_VOCAB_LOOKUP_MAX else None,
    )


def _int_field(path: StrPath, obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or not _is_id(value):
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
                    and _is_id(entry.get("rank"))):
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
