"""The tasks the isolation worker runs (:data:`TASKS`, a fixed registry), in the worker only.

Each takes JSON arguments and returns a JSON value; the caller in the library process reads it
(:mod:`etm_compat.formats.tokenizer.runner` for the tokenizer tasks,
:mod:`etm_compat.verification` for ``program.constants``). A crash, hang or memory blow-up in
them ends the worker, never the library's process (:mod:`etm_compat.isolation`).
``pytorch_tokenizers`` and the ExecuTorch runtime are imported here (or by what is called from
here), in the worker, when a task first needs them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from etm_compat.archive.read import open_archive
from etm_compat.compat.runtime import load_program_from_archive
from etm_compat.errors import RuntimeUnavailableError
from etm_compat.formats.tokenizer.bounded import StrPath
from etm_compat.formats.tokenizer.runner import CLASSES, native_path


def _bindings() -> Any:
    # Lazy: the C++ bindings are an optional extra, needed only for the runner check.
    from pytorch_tokenizers import pytorch_tokenizers_cpp

    return pytorch_tokenizers_cpp


def warm_up() -> None:
    """Import the bindings now (the worker does at start: their import-time log line is not a
    task's); a missing library is reported by the tasks."""
    with contextlib.suppress(ImportError):
        _bindings()


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


def _load(args: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """(the tokenizer, None) once ``args["class"]`` loaded ``args["path"]``, else (None, the
    task's answer: the bindings are not importable, or the load failed and why)."""
    try:
        cpp = _bindings()
    except ImportError as exc:
        return None, {"unavailable": f"pytorch_tokenizers not importable: {exc}"}
    class_name = args.get("class")
    if class_name not in CLASSES:
        raise ValueError(f"not a runner tokenizer class: {class_name!r}")
    path, config, special = args["path"], args.get("config_path"), args.get("special_tokens_map_path")
    tokenizer = getattr(cpp, class_name)()
    try:
        if class_name == "HFTokenizer" and (config is not None or special is not None):
            with tempfile.TemporaryDirectory(prefix="etm-tok-") as tmp:
                tokenizer.load(native_path(_hf_folder(tmp, path, config, special)))
        else:
            tokenizer.load(native_path(path))
    except MemoryError:  # std::bad_alloc: the worker reports the memory limit
        raise
    except Exception as exc:  # any other failure of the foreign loader is a finding
        return None, {"loaded": False, "error": str(exc) or type(exc).__name__}
    if not tokenizer.is_loaded():
        return None, {"loaded": False, "error": "not loaded"}
    return tokenizer, None


def load_task(args: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``tokenizer.load``: load with one class, as one turn of the runner's loop does."""
    tokenizer, answer = _load(args)
    if answer is not None:
        return answer
    return {
        "loaded": True,
        "vocab_size": int(tokenizer.vocab_size()),
        "bos_id": int(tokenizer.bos_tok()),
        "eos_id": int(tokenizer.eos_tok()),
    }


def _piece(tokenizer: Any, token: int) -> str:
    """The text of one id; bytes that are not UTF-8 on their own (a byte-level BPE piece of a
    multi-byte character) are shown as ``<0xC3>``; an id the library cannot decode gets ""."""
    try:
        return str(tokenizer.decode(token))
    except UnicodeDecodeError as exc:
        raw = bytes(exc.object)
    except RuntimeError:
        return ""
    text = raw.decode("utf-8", "surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if "\udc80" <= c <= "\udcff" else c for c in text)


def encode_task(args: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``tokenizer.encode``: load with one class, then ``encode(text, bos, eos)`` as
    the ExecuTorch TextLLMRunner calls it, and each id's piece."""
    tokenizer, answer = _load(args)
    if answer is not None:
        return answer
    try:
        ids = [int(i) for i in tokenizer.encode(str(args["text"]), int(args["bos"]), int(args["eos"]))]
    except MemoryError:
        raise
    except Exception as exc:  # the encoder's own failure
        return {"loaded": True, "error": str(exc) or type(exc).__name__}
    return {
        "loaded": True,
        "ids": ids,
        "pieces": [_piece(tokenizer, i) for i in ids],
        "bos_id": int(tokenizer.bos_tok()),
        "eos_id": int(tokenizer.eos_tok()),
    }


def _plain(value: Any) -> Any:
    """A runtime output as a JSON value: a tensor becomes its nested list of values."""
    if callable(getattr(value, "tolist", None)):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def program_constants_task(args: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``program.constants`` (for ``verify --runtime``): load one program of an archive with
    its data in the ExecuTorch runtime and run the named constant methods:
    ``{"methods": {name: {"value": outputs} | {"error": text}}}``, or ``{"runtime_error", "hint",
    "path"}`` when the runtime is missing or refuses the program."""
    with open_archive(str(args["archive"])) as archive:
        try:
            program = load_program_from_archive(archive, program=str(args["program"]), route="memfd")
        except RuntimeUnavailableError as exc:
            return {"runtime_error": exc.message, "hint": exc.hint_template, "path": exc.path}
        results: dict[str, Any] = {}
        for method in args.get("methods") or []:
            try:
                results[str(method)] = {"value": _plain(list(program.load_method(str(method)).execute([])))}
            except MemoryError:
                raise
            except Exception as exc:  # the runtime raises bare RuntimeError for any load failure
                results[str(method)] = {"error": str(exc)}
        return {"methods": results}


#: Task name -> function; nothing else runs in the worker.
TASKS: Final[Mapping[str, Callable[[Mapping[str, Any]], Any]]] = {
    "tokenizer.load": load_task,
    "tokenizer.encode": encode_task,
    "program.constants": program_constants_task,
}


__all__ = ["TASKS", "encode_task", "load_task", "program_constants_task", "warm_up"]
