"""The records tokenizer reading returns: :class:`TokenizerInfo` and :class:`RunnerCheck`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TokenizerFormat = Literal["hf_json", "tekken", "sentencepiece", "tiktoken", "llama2c"]


@dataclass(frozen=True)
class RunnerCheck:
    """How the on-device runner's tokenizer library (``pytorch_tokenizers``) took the file.

    ``loadable`` is None when ``pytorch_tokenizers`` is not installed. ``loader`` names the class
    that loaded it (``"SPTokenizer"``...). ``vocab_size``/``bos_id``/``eos_id`` are the runner's
    own values, which can differ from the file's (an HF json loaded without its
    ``tokenizer_config.json`` reports bos=eos=0 when it finds no candidate; a missing
    SentencePiece bos is reported as 2**64-1). ``error`` says why it could not load.
    """

    loadable: bool | None
    loader: str | None
    vocab_size: int | None
    bos_id: int | None
    eos_id: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON-ready dict (field name -> value)."""
        return {
            "loadable": self.loadable,
            "loader": self.loader,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "error": self.error,
        }


@dataclass(frozen=True)
class TokenizerInfo:
    """What a tokenizer file defines, read by content.

    ``vocab`` holds the ordinary vocabulary (text -> id) when keeping it is cheap: formats whose
    vocabulary has at most ``TOKENIZER_VOCAB_LOOKUP_MAX`` entries. Byte tokens that are not valid
    UTF-8 (tiktoken, llama2.c) are left out. It is None otherwise, and then :meth:`token_id`
    only knows the special tokens.

    >>> info = TokenizerInfo("t.model", "tiktoken", None, 258, 256, "<|begin_of_text|>",
    ...                      257, "<|end_of_text|>", {"<|begin_of_text|>": 256}, None)
    >>> info.token_id("<|begin_of_text|>")
    256
    """

    path: str
    format: TokenizerFormat
    variant: str | None
    vocab_size: int
    bos_id: int | None
    bos_token: str | None
    eos_id: int | None
    eos_token: str | None
    special_tokens: Mapping[str, int]
    runner: RunnerCheck | None
    vocab: Mapping[str, int] | None = field(default=None, repr=False, compare=False)

    def token_id(self, text: str) -> int | None:
        """The id of ``text`` as one token: special/added tokens first, then the vocabulary."""
        found = self.special_tokens.get(text)
        if found is None and self.vocab is not None:
            found = self.vocab.get(text)
        return found

    def to_json(self) -> dict[str, Any]:
        """The info as a JSON-ready dict with ``"kind": "tokenizer"`` (vocabulary left out)."""
        return {
            "kind": "tokenizer",
            "format": self.format,
            "variant": self.variant,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "bos_token": self.bos_token,
            "eos_id": self.eos_id,
            "eos_token": self.eos_token,
            "special_tokens": dict(self.special_tokens),
            "runner": self.runner.to_json() if self.runner is not None else None,
        }
