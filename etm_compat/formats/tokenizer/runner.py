"""Cross-check a tokenizer file with ``pytorch_tokenizers``, the library the ExecuTorch runner uses.

The runner (``extension/llm/runner/llm_runner_helper.cpp``) tries, in order: ``Tekken`` (only for
a path ending in ``tekken.json``), ``HFTokenizer``, ``Tiktoken``, ``SPTokenizer``,
``Llama2cTokenizer``, and keeps the first that loads. This module does the same, gating Tekken on
the detected format (the name the file gets inside an ``.etm`` archive), and reports the class
that won. ``pytorch_tokenizers`` is imported only here, only when a check is asked for.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etm_compat.errors import EtmError
from etm_compat.fileio import sha256_file
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.model import RunnerCheck, TokenizerFormat

#: The runner's loader order, with the pytorch_tokenizers class of each format.
RUNNER_ORDER: tuple[tuple[TokenizerFormat, str], ...] = (
    ("tekken", "Tekken"),
    ("hf_json", "HFTokenizer"),
    ("tiktoken", "Tiktoken"),
    ("sentencepiece", "SPTokenizer"),
    ("llama2c", "Llama2cTokenizer"),
)


_CAPTURE_LOCK = threading.Lock()
_LOG_CHARS = 400


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Collect what the C++ loaders write to fds 1 and 2 (the library must not print).

    The loaders explain failures only in their log lines, so these become the error text.
    The file descriptors are process-wide: other threads' output in this short window lands
    here too; the lock keeps concurrent checks from interleaving.
    """
    out: list[str] = []
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield out
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read(64 * 1024).decode("utf-8", "replace")
            out.append(" ".join(text.split())[:_LOG_CHARS])


def _bindings() -> Any:
    # Lazy: the C++ bindings are an optional extra, needed only for the runner check.
    from pytorch_tokenizers import pytorch_tokenizers_cpp

    return pytorch_tokenizers_cpp


def _hf_folder(tmp: str, path: StrPath, config_path: StrPath | None,
               special_tokens_map_path: StrPath | None) -> str:
    """A folder holding tokenizer.json and its configs under the names HFTokenizer looks for."""
    for src, name in ((path, "tokenizer.json"), (config_path, "tokenizer_config.json"),
                      (special_tokens_map_path, "special_tokens_map.json")):
        if src is None:
            continue
        link = Path(tmp, name)
        try:
            link.symlink_to(Path(src).resolve())
        except OSError:
            shutil.copyfile(src, link)
    return tmp


def native_path(path: StrPath) -> str | bytes:
    """``path`` as the bindings can take it: a str, or the name's bytes when it is not UTF-8.

    A name that is not valid UTF-8 reaches Python surrogate-escaped; pybind11 cannot convert
    such a str to ``std::string`` (the load would fail for the name, not the file), but takes
    the raw bytes.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def check_runner(
    path: StrPath,
    detected: TokenizerFormat,
    *,
    config_path: StrPath | None = None,
    special_tokens_map_path: StrPath | None = None,
) -> RunnerCheck:
    """Load ``path`` as the runner would; ``loadable`` is None without pytorch_tokenizers.

    With a ``config_path`` an HF file is loaded as a folder (tokenizer.json +
    tokenizer_config.json), the way the runner reads bos/eos from the config.
    """
    try:
        with _captured_output():  # the bindings log a line when first imported
            cpp = _bindings()
    except ImportError as exc:
        return RunnerCheck(None, None, None, None, None, f"pytorch_tokenizers not importable: {exc}")
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="etm-tok-") as tmp:
        for fmt, class_name in RUNNER_ORDER:
            if fmt == "tekken" and detected != "tekken":
                continue
            target = native_path(path)
            if fmt == "hf_json" and (config_path is not None or special_tokens_map_path is not None):
                target = native_path(_hf_folder(tmp, path, config_path, special_tokens_map_path))
            tokenizer = getattr(cpp, class_name)()
            failure: str | None = None
            with _captured_output() as log:
                try:
                    tokenizer.load(target)
                    if not tokenizer.is_loaded():
                        failure = "not loaded"
                except Exception as exc:  # any failure of the foreign loader is a finding
                    failure = str(exc)
            if failure is not None:
                detail = f" ({log[0]})" if log and log[0] else ""
                errors.append(f"{class_name}: {failure}{detail}")
                continue
            return RunnerCheck(
                loadable=True,
                loader=class_name,
                vocab_size=int(tokenizer.vocab_size()),
                bos_id=int(tokenizer.bos_tok()),
                eos_id=int(tokenizer.eos_tok()),
                error=None,
            )
    return RunnerCheck(False, None, None, None, None, "; ".join(errors) or "no loader tried")


#: Runner checks by content: a tree of deployments that share one tokenizer (variants,
#: quantizations, a shared root tokenizer) loads it in the native library once per run.
_CHECKED: collections.OrderedDict[tuple[str, ...], tuple[str, RunnerCheck]] = collections.OrderedDict()
_CHECKED_MAX = 64
_CHECKED_LOCK = threading.Lock()
#: How many checks actually loaded a tokenizer in the native library (work counted for tests).
native_checks = 0


def _digest(path: StrPath | None) -> str:
    if path is None:
        return ""
    try:
        return sha256_file(path)
    except (OSError, EtmError):
        return f"unreadable:{os.fspath(path)!r}"


def check_runner_once(
    path: StrPath,
    detected: TokenizerFormat,
    content: str,
    *,
    config_path: StrPath | None = None,
    special_tokens_map_path: StrPath | None = None,
) -> RunnerCheck:
    """:func:`check_runner`, run once per distinct content (``content``: the tokenizer bytes'
    sha256; the config files are hashed here). A repeat gets the first answer, its error text
    naming this path."""
    global native_checks
    key = (detected, content, _digest(config_path), _digest(special_tokens_map_path))
    with _CHECKED_LOCK:
        hit = _CHECKED.get(key)
        if hit is not None:
            _CHECKED.move_to_end(key)
    if hit is not None:
        first, check = hit
        if check.error:
            check = dataclasses.replace(check, error=check.error.replace(first, os.fspath(path)))
        return check
    check = check_runner(
        path, detected, config_path=config_path, special_tokens_map_path=special_tokens_map_path
    )
    with _CHECKED_LOCK:
        native_checks += 1
        _CHECKED[key] = (os.fspath(path), check)
        while len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.popitem(last=False)
    return check
