"""Cross-check a tokenizer file with ``pytorch_tokenizers``, the library the ExecuTorch runner uses.

The runner (``extension/llm/runner/llm_runner_helper.cpp``) tries, in order: ``Tekken`` (only for
a path ending in ``tekken.json``), ``HFTokenizer``, ``Tiktoken``, ``SPTokenizer``,
``Llama2cTokenizer``, and keeps the first that loads. This module does the same, gating Tekken on
the detected format (the name the file gets inside an ``.etm`` archive), and reports the class
that won.

The C++ loaders run on untrusted bytes, so they run in the isolation worker
(:mod:`etm_compat.isolation`; the tasks themselves are in :mod:`etm_compat.isolation_tasks`),
one task per loader: a loader that crashes, hangs or runs out of memory is reported as such (the
runner would crash there too, so later loaders are not tried), and this process goes on.
``pytorch_tokenizers`` is imported only in the worker, only when a check is asked for. Checks are
remembered by content, in the process and on disk (``runner-checks`` records in the cache folder,
:mod:`etm_compat.cachedir`): a tree of deployments that share a tokenizer, and every later run,
load it once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from etm_compat import cachedir
from etm_compat.constants import TOKENIZER_MAX_BYTES
from etm_compat.errors import EtmError, RuntimeUnavailableError, TokenizerFormatError, UsageError
from etm_compat.fileio import sha256_file
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.installed import installed_version
from etm_compat.formats.tokenizer.model import RunnerCheck, TokenizerFormat

if TYPE_CHECKING:
    from etm_compat import isolation

#: The runner's loader order, with the pytorch_tokenizers class of each format.
RUNNER_ORDER: tuple[tuple[TokenizerFormat, str], ...] = (
    ("tekken", "Tekken"),
    ("hf_json", "HFTokenizer"),
    ("tiktoken", "Tiktoken"),
    ("sentencepiece", "SPTokenizer"),
    ("llama2c", "Llama2cTokenizer"),
)
#: The pytorch_tokenizers classes the runner tries.
CLASSES: Final = frozenset(name for _, name in RUNNER_ORDER)
_ID_MAX: Final = 2**64


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


def _id(value: Any) -> int | None:
    """An id or size from the worker's reply (None unless a plain int in range)."""
    return value if type(value) is int and 0 <= value < _ID_MAX else None


def _args(path: StrPath, config_path: StrPath | None, special: StrPath | None) -> dict[str, Any]:
    return {
        "path": os.fspath(path),
        "config_path": os.fspath(config_path) if config_path is not None else None,
        "special_tokens_map_path": os.fspath(special) if special is not None else None,
    }


def _abnormal(class_name: str, outcome: isolation.Outcome, doing: str) -> str:
    """A crash, hang or memory blow-up of a native call, in one line with its log."""
    consequence = {
        "crashed": "the on-device runner would crash too",
        "timeout": "the on-device runner may hang too",
        "memory": "the on-device runner may run out of memory too",
    }.get(outcome.status, "")
    text = f"{class_name} {outcome.describe()} while {doing}"
    text += f": {consequence}" if consequence else ""
    return text + (f" (log: {outcome.log_line()})" if outcome.log.strip() else "")


def _run_order(
    path: StrPath, try_tekken: bool, config_path: StrPath | None, special: StrPath | None
) -> tuple[RunnerCheck, bool]:
    """The runner's loader loop, each loader in the worker: (the check, whether it depends only
    on the bytes, so may be remembered on disk)."""
    # Lazy: the worker machinery (processes, signals, resource limits) is only for a check that
    # runs; the check recorded in the cache folder, as on every run after the first, never needs it.
    from etm_compat import isolation

    errors: list[str] = []
    base = _args(path, config_path, special)
    for fmt, class_name in RUNNER_ORDER:
        if fmt == "tekken" and not try_tekken:
            continue
        try:
            outcome = isolation.run_task("tokenizer.load", {**base, "class": class_name})
        except RuntimeUnavailableError as exc:
            return RunnerCheck(None, None, None, None, None, f"the runner check cannot run: {exc}"), False
        if outcome.status in ("crashed", "timeout", "memory"):
            errors.append(_abnormal(class_name, outcome, "loading it"))
            # The runner stops where it crashes: no later loader is tried.
            return RunnerCheck(False, None, None, None, None, "; ".join(errors)), outcome.status == "crashed"
        value = outcome.value if isinstance(outcome.value, dict) else {}
        if outcome.status == "ok" and "unavailable" in value:
            return RunnerCheck(None, None, None, None, None, str(value["unavailable"])), False
        if outcome.status != "ok" or value.get("loaded") is not True:
            failure = outcome.describe() if outcome.status != "ok" else str(value.get("error"))
            detail = f" ({outcome.log_line()})" if outcome.log.strip() else ""
            errors.append(f"{class_name}: {failure}{detail}")
            continue
        check = RunnerCheck(
            loadable=True,
            loader=class_name,
            vocab_size=_id(value.get("vocab_size")),
            bos_id=_id(value.get("bos_id")),
            eos_id=_id(value.get("eos_id")),
            error=None,
        )
        return check, True
    return RunnerCheck(False, None, None, None, None, "; ".join(errors) or "no loader tried"), True


def check_runner(
    path: StrPath,
    detected: TokenizerFormat,
    *,
    config_path: StrPath | None = None,
    special_tokens_map_path: StrPath | None = None,
) -> RunnerCheck:
    """Load ``path`` as the runner would; ``loadable`` is None without pytorch_tokenizers.

    With a ``config_path`` an HF file is loaded as a folder (tokenizer.json +
    tokenizer_config.json), the way the runner reads bos/eos from the config. A loader that
    crashes gives ``loadable=False`` and an error naming the signal.
    """
    return _run_order(path, detected == "tekken", config_path, special_tokens_map_path)[0]


#: Runner checks by content: a tree of deployments that share one tokenizer (variants,
#: quantizations, a shared root tokenizer) loads it in the native library once per run.
_CHECKED: collections.OrderedDict[tuple[str, ...], tuple[str, RunnerCheck]] = collections.OrderedDict()
_CHECKED_MAX = 64
_CHECKED_LOCK = threading.Lock()
#: How many checks actually loaded a tokenizer in the native library (work counted for tests).
native_checks = 0
#: The on-disk records' layout version: a record of another version is ignored.
RECORD_SCHEMA: Final = 1
_RECORD_KIND: Final = "runner-checks"
_ERROR_MAX: Final = 16 * 1024


def _digest(path: StrPath | None) -> str:
    if path is None:
        return ""
    try:
        return sha256_file(path)
    except (OSError, EtmError):
        return f"unreadable:{os.fspath(path)!r}"


@functools.cache
def _library_version() -> str | None:
    """pytorch_tokenizers' installed version (part of the record key), read without importing it."""
    return installed_version("pytorch-tokenizers")


def _record_key(key: tuple[str, ...]) -> str | None:
    version = _library_version()
    if version is None:
        return None
    text = json.dumps([RECORD_SCHEMA, version, *key])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _from_record(record: Mapping[str, Any] | None) -> tuple[str, RunnerCheck] | None:
    """A record read back: (the path it was made for, the check), or None unless well-formed."""
    if record is None or record.get("schema") != RECORD_SCHEMA:
        return None
    first, raw = record.get("path"), record.get("check")
    if not isinstance(first, str) or not isinstance(raw, dict):
        return None
    loadable, loader, error = raw.get("loadable"), raw.get("loader"), raw.get("error")
    numbers = [raw.get(k) for k in ("vocab_size", "bos_id", "eos_id")]
    if (
        loadable not in (True, False)
        or (loader is not None and loader not in CLASSES)
        or (loadable and loader is None)
        or (error is not None and not (isinstance(error, str) and len(error) <= _ERROR_MAX))
        or any(n is not None and _id(n) is None for n in numbers)
    ):
        return None
    vocab_size, bos_id, eos_id = (_id(n) for n in numbers)
    return first, RunnerCheck(bool(loadable), loader, vocab_size, bos_id, eos_id, error)


def _for_path(first: str, check: RunnerCheck, path: StrPath) -> RunnerCheck:
    """A remembered check, its error text naming ``path`` instead of the file it was made for."""
    if check.error and first:
        check = dataclasses.replace(check, error=check.error.replace(first, os.fspath(path)))
    return check


def _checked(
    path: StrPath,
    try_tekken: bool,
    content: str,
    config_path: StrPath | None,
    special: StrPath | None,
) -> RunnerCheck:
    """The runner check, from memory, else from the cache folder, else run (and remembered)."""
    global native_checks
    key = ("tekken" if try_tekken else "-", content, _digest(config_path), _digest(special))
    with _CHECKED_LOCK:
        hit = _CHECKED.get(key)
        if hit is not None:
            _CHECKED.move_to_end(key)
    if hit is None:
        record_key = _record_key(key)
        hit = _from_record(cachedir.read_record(_RECORD_KIND, record_key)) if record_key else None
        if hit is None:
            check, durable = _run_order(path, try_tekken, config_path, special)
            hit = (os.fspath(path), check)
            with _CHECKED_LOCK:
                native_checks += 1
            if durable and record_key is not None:
                record = {"schema": RECORD_SCHEMA, "path": hit[0], "check": check.to_json()}
                cachedir.write_record(_RECORD_KIND, record_key, record)
        with _CHECKED_LOCK:
            _CHECKED[key] = hit
            while len(_CHECKED) > _CHECKED_MAX:
                _CHECKED.popitem(last=False)
    return _for_path(hit[0], hit[1], path)


def check_runner_once(
    path: StrPath,
    detected: TokenizerFormat,
    content: str,
    *,
    config_path: StrPath | None = None,
    special_tokens_map_path: StrPath | None = None,
) -> RunnerCheck:
    """:func:`check_runner`, run once per distinct content (``content``: the tokenizer bytes'
    sha256; the config files are hashed here), in this process and across runs (a record in the
    cache folder, keyed by the bytes, the configs and pytorch_tokenizers' version). A repeat
    gets the first answer, its error text naming this path."""
    return _checked(path, detected == "tekken", content, config_path, special_tokens_map_path)


def forget_checks() -> None:
    """Forget the checks remembered in this process (the records on disk stay)."""
    with _CHECKED_LOCK:
        _CHECKED.clear()


@dataclasses.dataclass(frozen=True)
class RunnerEncoding:
    """A text as the on-device runner's tokenizer encodes it: the ids, each id's piece, the
    tokenizer's bos/eos and the class that loaded it (``"HFTokenizer"``...)."""

    ids: tuple[int, ...]
    pieces: tuple[str, ...]
    bos_id: int | None
    eos_id: int | None
    tokenizer_class: str


#: The longest text encode_with_runner takes (a rendered conversation is far shorter).
ENCODE_MAX_BYTES: Final = 16 * 1024 * 1024
#: The most BOS/EOS the runner's ``encode(text, int8_t bos, int8_t eos)`` can add.
_ADDED_MAX: Final = 127


def encode_with_runner(
    path: StrPath,
    text: str,
    *,
    bos: int = 0,
    eos: int = 0,
    config_path: StrPath | None = None,
) -> RunnerEncoding:
    """Encode ``text`` as the ExecuTorch TextLLMRunner does: the tokenizer loaded by the
    runner's loader order (Tekken only for a file named ``*tekken.json``, as the runner decides),
    then ``tokenizer.encode(text, bos, eos)`` (``bos``/``eos``: how many to add, the runner's
    ``num_bos``/``num_eos``). Runs in the isolation worker.

    Raises :class:`TokenizerFormatError` when the runner's library cannot load the file or
    encode the text (a crash names its signal), :class:`RuntimeUnavailableError` without
    pytorch_tokenizers.

    >>> encode_with_runner("tokenizer.model", "Hello", bos=1).ids             # doctest: +SKIP
    (1, 15043)
    """
    if not (0 <= bos <= _ADDED_MAX and 0 <= eos <= _ADDED_MAX):
        raise UsageError(f"bos and eos are counts from 0 to {_ADDED_MAX} (the runner's int8_t), not {bos} and {eos}")
    if len(text.encode("utf-8", "surrogatepass")) > ENCODE_MAX_BYTES:
        raise UsageError(f"the text is larger than the {ENCODE_MAX_BYTES} bytes accepted")
    try:
        size = os.stat(path).st_size
        content = sha256_file(path) if size <= TOKENIZER_MAX_BYTES else ""
    except OSError as exc:
        raise TokenizerFormatError(f"cannot read tokenizer file: {exc.strerror or exc}", path=path) from None
    if not content:
        raise TokenizerFormatError(f"tokenizer file is {size} bytes, more than the {TOKENIZER_MAX_BYTES} accepted", path=path)
    check = _checked(path, os.fspath(path).endswith("tekken.json"), content, config_path, None)
    if check.loadable is None:
        raise RuntimeUnavailableError(check.error or "pytorch_tokenizers is not available",
                                      hint="pip install 'etm-compat[tokenizers]'")
    if not check.loadable or check.loader is None:
        raise TokenizerFormatError(f"pytorch_tokenizers cannot load it: {check.error}", path=path)
    args = {**_args(path, config_path, None), "class": check.loader, "text": text, "bos": bos, "eos": eos}
    # Lazy: as in _run_order, the worker machinery loads only for work done in the worker.
    from etm_compat import isolation

    outcome = isolation.run_task("tokenizer.encode", args)
    value = outcome.value if outcome.ok and isinstance(outcome.value, dict) else {}
    failure: str | None
    if outcome.status in ("crashed", "timeout", "memory"):
        failure = _abnormal(check.loader, outcome, "encoding the text")
    elif not outcome.ok:
        failure = f"{check.loader} {outcome.describe()}"
    else:
        failure = str(value.get("unavailable") or value.get("error") or "") or None
        if failure is None and value.get("loaded") is not True:
            failure = f"{check.loader} did not load it"
    ids, pieces = value.get("ids"), value.get("pieces")
    if failure is None and not (
        isinstance(ids, list) and isinstance(pieces, list) and len(ids) == len(pieces)
        and all(_id(i) is not None for i in ids) and all(isinstance(p, str) for p in pieces)
    ):
        failure = "the worker's reply is malformed"
    if failure is not None:
        raise TokenizerFormatError(f"pytorch_tokenizers cannot encode the text: {failure}", path=path)
    assert isinstance(ids, list) and isinstance(pieces, list)
    return RunnerEncoding(tuple(ids), tuple(pieces), _id(value.get("bos_id")), _id(value.get("eos_id")), check.loader)


__all__ = [
    "CLASSES",
    "RUNNER_ORDER",
    "RunnerEncoding",
    "check_runner",
    "check_runner_once",
    "encode_with_runner",
    "forget_checks",
    "native_path",
]
