"""Tokenizer files by content: sniff the format, read what the file defines, cross-check.

Five formats (``constants.TOKENIZER_FORMATS``), decided by content and never by file name: a
Llama 3 ``tokenizer.model`` is tiktoken, a ``tokenizer.json`` may be anything.

>>> info = read_tokenizer("fixtures/tokenizers/sp.model")  # doctest: +SKIP
>>> info.format, info.vocab_size, info.bos_id, info.eos_id  # doctest: +SKIP
('sentencepiece', 512, 1, 2)

The per-format readers live in :mod:`etm_compat.formats.tokenizer`; this module is the import point.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import sys
import threading

from etm_compat.constants import (
    BACKGROUND_HASH_MIN,
    TOKENIZER_FORMATS,
    TOKENIZER_MAX_BYTES,
    TOKENIZER_SNIFF_BYTES,
)
from etm_compat.errors import EtmError, TokenizerFormatError
from etm_compat.formats.tokenizer import hf_json, json_document, json_formats
from etm_compat.formats.tokenizer import runner as _runner
from etm_compat.formats.tokenizer.bounded import (
    StrPath,
    load_json,
    read_head,
    read_whole,
)
from etm_compat.formats.tokenizer.model import TokenizerFormat, TokenizerInfo
from etm_compat.remembered import remember_hashed


def _debug(message: str, *args: object) -> None:
    """A debug record, without importing ``logging`` for it (a tenth of a tokenizer inspect's
    imports): a program that has not imported logging has configured none, and so would see
    no debug record anyway."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(__name__).debug(message, *args)


def sniff_tokenizer_bytes(head: bytes) -> TokenizerFormat | None:
    """The format of a file from its first ``TOKENIZER_SNIFF_BYTES`` bytes, or None.

    ``head`` is taken to be the whole file when shorter than the sniff limit, so a short file
    must be complete (llama2.c records end at its end, no truncated protobuf field).

    >>> sniff_tokenizer_bytes(b"IQ== 0\\nIg== 1\\n")
    'tiktoken'
    """
    head = head[:TOKENIZER_SNIFF_BYTES]
    complete = len(head) < TOKENIZER_SNIFF_BYTES
    if not head:
        return None
    json_kind = json_formats.sniff(head)
    if json_kind is not None:
        return json_kind
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        return None
    # Lazy: the binary formats' readers load only for a file that is no JSON (a tokenizer.json,
    # the largest to read, never pays for them).
    from etm_compat.formats.tokenizer import llama2c, sentencepiece_model, tiktoken_file

    # The strictest structural check first: a consistent header and records.
    if llama2c.sniff(head, complete, original=False):
        return "llama2c"
    if sentencepiece_model.sniff(head, complete):
        return "sentencepiece"
    if tiktoken_file.sniff(head, complete):
        return "tiktoken"
    if llama2c.sniff(head, complete, original=True):
        return "llama2c"
    return None


def sniff_tokenizer_format(path: StrPath) -> TokenizerFormat:
    """The format of the tokenizer file at ``path``, from a bounded prefix.

    Raises :class:`TokenizerFormatError` when it is none of the known formats.

    >>> sniff_tokenizer_format("fixtures/tokenizers/tiktoken.model")  # doctest: +SKIP
    'tiktoken'
    """
    head = read_head(path)
    found = sniff_tokenizer_bytes(head)
    if found is not None:
        return found
    if not head:
        raise TokenizerFormatError("tokenizer file is empty", path=path)
    complete = len(head) < TOKENIZER_SNIFF_BYTES
    # Lazy: as in sniff_tokenizer_bytes.
    from etm_compat.formats.tokenizer import llama2c, sentencepiece_model, tiktoken_file

    for explain in (llama2c.explain, sentencepiece_model.explain, tiktoken_file.explain):
        reason = explain(head, complete)
        if reason is not None:
            raise TokenizerFormatError(reason, path=path)
    expected = ", ".join(TOKENIZER_FORMATS)
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        raise TokenizerFormatError(
            'JSON file is neither an HF tokenizer.json (an object with "model") nor a '
            'tekken.json ("config" and a "vocab" list)',
            path=path,
            hint="pass the tokenizer.json itself, not a config or vocab file",
        )
    raise TokenizerFormatError(
        f"not a tokenizer file of a known format (expected one of: {expected})",
        path=path,
        hint="check that this is the tokenizer the model was exported with",
    )


def looks_like_tokenizer(path: StrPath) -> bool:
    """True if ``path`` sniffs as a tokenizer; cheap and never raises (for folder scans)."""
    try:
        sniff_tokenizer_format(path)
    except (EtmError, OSError, ValueError):
        return False
    return True


def read_tokenizer(
    path: StrPath,
    *,
    config_path: StrPath | None = None,
    special_tokens_map_path: StrPath | None = None,
    check_runner: bool = True,
) -> TokenizerInfo:
    """Read a tokenizer file whole (bounded) and describe it.

    ``config_path`` (a ``tokenizer_config.json``) and ``special_tokens_map_path`` only matter
    for an HF tokenizer.json: they give bos/eos as the runner reads them from a folder. With
    ``check_runner`` the file is also loaded through ``pytorch_tokenizers`` (see
    :class:`RunnerCheck`).

    >>> read_tokenizer("tokenizer.model").to_json()["format"]  # doctest: +SKIP
    'tiktoken'
    """
    fmt = sniff_tokenizer_format(path)
    data, stamp = read_whole(path, TOKENIZER_MAX_BYTES)
    # The key of both caches (parses and runner checks). Hashed while the file is parsed, unless
    # a parse of the same size is remembered: then the key decides whether to parse at all.
    background = len(data) >= BACKGROUND_HASH_MIN and not _may_be_parsed(fmt, len(data))
    digest = _Sha256(data, background=background)
    info: TokenizerInfo
    try:
        if fmt in ("hf_json", "tekken"):
            info = _read_json(path, fmt, data, digest, config_path, special_tokens_map_path)
        else:
            info = _parse_binary(path, fmt, data, digest)
    finally:
        content = digest.hexdigest()  # never leaves the hashing thread behind
    remember_hashed(stamp, data, content)  # an archive of it stores it without hashing it again
    _debug("tokenizer %s: %s, vocab %d", path, info.format, info.vocab_size)
    if check_runner:
        check = _runner.check_runner_once(
            path,
            info.format,
            content,
            config_path=config_path,
            special_tokens_map_path=special_tokens_map_path,
        )
        info = dataclasses.replace(info, runner=check)
    return info


class _Sha256:
    """The sha256 of ``data``, computed now or (``background``) in a thread, read by
    :meth:`hexdigest`, which waits for it."""

    def __init__(self, data: bytes, *, background: bool) -> None:
        self._data: bytes | None = data
        self._hex: str | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._hash_quietly, name="etm-tokenizer-sha256", daemon=True
            )
            self._thread.start()
        else:
            self._hash()

    def _hash(self) -> None:
        assert self._data is not None
        self._hex = hashlib.sha256(self._data).hexdigest()

    def _hash_quietly(self) -> None:
        with contextlib.suppress(Exception):  # hexdigest() hashes again, and raises, in the caller
            self._hash()

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._hex is None:  # the thread died (out of memory): hash here, raising what it raises
            self._hash()
        self._data = None
        assert self._hex is not None
        return self._hex


#: Parsed tokenizers by content: a bulk upgrade meets the same tokenizer in many folders
#: (variants, quantizations), and a parse costs milliseconds (SentencePiece in Python) to a
#: quarter of a second (Gemma 3's 33 MB tokenizer.json). HF files are kept before their configs
#: are applied (:class:`~.hf_json.HFTokens`), every other format as its TokenizerInfo; each with
#: the size of its file, so that a file of another size is parsed without waiting for its hash.
_PARSED: collections.OrderedDict[tuple[str, str], tuple[int, TokenizerInfo | hf_json.HFTokens]] = (
    collections.OrderedDict()
)
_PARSED_MAX = 8


def _may_be_parsed(fmt: TokenizerFormat, size: int) -> bool:
    """Whether a remembered parse could be this file's: one of the same format and size."""
    with _PARSED_LOCK:
        return any(key[0] == fmt and entry[0] == size for key, entry in _PARSED.items())


def _recall(
    fmt: TokenizerFormat, data: bytes, digest: _Sha256
) -> TokenizerInfo | hf_json.HFTokens | None:
    if not _may_be_parsed(fmt, len(data)):
        return None
    key = (fmt, digest.hexdigest())
    with _PARSED_LOCK:
        cached = _PARSED.get(key)
        if cached is not None:
            _PARSED.move_to_end(key)
    return cached[1] if cached is not None else None


def _remember(
    fmt: TokenizerFormat, data: bytes, digest: _Sha256, parsed: TokenizerInfo | hf_json.HFTokens
) -> None:
    key = (fmt, digest.hexdigest())
    with _PARSED_LOCK:
        _PARSED[key] = (len(data), parsed)
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)


def _read_json(
    path: StrPath,
    fmt: TokenizerFormat,
    data: bytes,
    digest: _Sha256,
    config_path: StrPath | None,
    special_tokens_map_path: StrPath | None,
) -> TokenizerInfo:
    cached = _recall(fmt, data, digest)
    if isinstance(cached, TokenizerInfo):  # a tekken.json seen before
        return dataclasses.replace(cached, path=os.fspath(path))
    document = None
    if cached is None:
        document = json_document.decode_document(data, path)
        if document.kind == "tekken":
            info = json_formats.parse_tekken(path, load_json(data, path))
            _remember(fmt, data, digest, info)
            return info
        if document.kind != "hf_json":
            raise TokenizerFormatError(
                f'JSON sniffed as {fmt} lacks its structure ("model" object for HF, '
                '"config" object and "vocab" list for tekken)',
                path=path,
            )
    configs = [  # read before the tokens, so that a broken config is the error named first
        json_formats.read_config(special_tokens_map_path),
        json_formats.read_config(config_path),
    ]
    if document is not None:
        cached = hf_json.read_tokens(path, document)
        _remember(fmt, data, digest, cached)
    assert isinstance(cached, hf_json.HFTokens)
    return hf_json.tokenizer_info(path, cached, configs)


def _parse_binary(
    path: StrPath, fmt: TokenizerFormat, data: bytes, digest: _Sha256
) -> TokenizerInfo:
    cached = _recall(fmt, data, digest)
    if isinstance(cached, TokenizerInfo):
        return dataclasses.replace(cached, path=os.fspath(path))
    # Lazy: as in sniff_tokenizer_bytes.
    from etm_compat.formats.tokenizer import llama2c, sentencepiece_model, tiktoken_file

    if fmt == "sentencepiece":
        info = sentencepiece_model.parse(path, data)
    elif fmt == "tiktoken":
        info = tiktoken_file.parse(path, data)
    else:
        info = llama2c.parse(path, data)
    _remember(fmt, data, digest, info)
    return info


_PARSED_LOCK = threading.Lock()


__all__ = [
    "looks_like_tokenizer",
    "read_tokenizer",
    "sniff_tokenizer_bytes",
    "sniff_tokenizer_format",
]
