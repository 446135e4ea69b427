"""Native code on untrusted bytes runs in a supervised worker process, never in ours.

pytorch_tokenizers (the runner's tokenizer library, SentencePiece included) and the ExecuTorch
runtime are C++. A hostile tokenizer or program can make them crash (a tokenizer.json whose
Split regex is nested too deeply overflows the fallback regex engine's stack: SIGSEGV), hang (a
regex that backtracks forever) or allocate without bound (a 16-byte llama2.c ``tokenizer.bin``
that claims ten million tokens). In our own process any of these ends ``inspect``, ``pack`` or
``upgrade``; in the worker each becomes an :class:`Outcome` that the caller turns into a finding.

* **One worker per process**, started on first use (``python -m etm_compat.isolation_worker``)
  and reused by every later task, so a run pays the interpreter start and the native imports
  once. A process forked from ours (``upgrade --jobs N``) starts its own; threads share it, one
  task at a time.
* **Tasks are a fixed registry** (:data:`TASK_NAMES`, the worker's ``TASKS``): a name and JSON
  arguments go in, a JSON value comes out. Nothing else can be run.
* **Limits**: a time limit per task (the worker is killed, then restarted on the next task) and a
  memory limit (``RLIMIT_AS`` set in the worker around each task; ``MemoryError`` or
  ``std::bad_alloc`` becomes ``"memory"``, and that worker is replaced). Defaults:
  :data:`DEFAULT_TIMEOUT` seconds, :data:`DEFAULT_MEMORY_LIMIT` bytes; ``$ETM_WORKER_TIMEOUT``
  (seconds) and ``$ETM_WORKER_MEMORY_MB`` override them, and a caller may pass its own.
* **Output**: what the native code writes to fds 1 and 2 (its log lines) is captured per task
  (the first :data:`LOG_KEEP_BYTES`) and returned as text, never printed.
* **No orphans, no zombies**: a dead or killed worker is reaped at once; the worker exits when its
  request pipe closes (our exit), is killed with us when the kernel allows it
  (``PR_SET_PDEATHSIG``, Linux) and stops itself when a task overruns its limit.

POSIX only (pipes polled with ``selectors``, ``resource`` limits).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from etm_compat.errors import RuntimeUnavailableError, UsageError

#: The tasks the worker knows (``etm_compat.isolation_worker.TASKS`` maps each to its function).
TaskName = Literal["tokenizer.load", "tokenizer.encode", "program.constants"]
TASK_NAMES: Final[frozenset[str]] = frozenset(get_args(TaskName))
#: ``ok``: the task returned ``value``; ``failed``: it raised (``error``); ``crashed``: the worker
#: died (``signal``, or a bare exit status); ``timeout``: killed at the time limit;
#: ``memory``: the memory limit was hit.
Status = Literal["ok", "failed", "crashed", "timeout", "memory"]

DEFAULT_TIMEOUT: Final = 120.0
DEFAULT_MEMORY_LIMIT: Final = 4 << 30
ENV_TIMEOUT: Final = "ETM_WORKER_TIMEOUT"
ENV_MEMORY_MB: Final = "ETM_WORKER_MEMORY_MB"
#: How much of a task's output is kept (the rest is read and dropped).
LOG_KEEP_BYTES: Final = 16 * 1024
#: The largest request and reply accepted (an encoded text and its ids).
MESSAGE_MAX_BYTES: Final = 256 << 20
#: How long a new worker may take to start (interpreter, imports) before it counts as broken.
START_TIMEOUT: Final = 120.0
#: Between the worker and us (environment variable names and the reply marker).
ENV_NONCE: Final = "ETM_ISOLATION_NONCE"
ENV_PARENT: Final = "ETM_ISOLATION_PARENT"
ENV_DIE_WITH_PARENT: Final = "ETM_ISOLATION_DIE_WITH_PARENT"
WORKER_MODULE: Final = "etm_compat.isolation_worker"
_MARK: Final = b"\x00ETM-ISOLATION-REPLY "


def reply_marker(nonce: str) -> bytes:
    """What precedes a reply in the worker's output: native log lines cannot forge it (the nonce
    is fresh per worker and never leaves the two processes)."""
    return _MARK + nonce.encode("ascii") + b" "


@dataclass(frozen=True)
class Outcome:
    """What became of one task: its value, or how the worker failed it.

    >>> Outcome("tokenizer.load", "crashed", signal="SIGSEGV").describe()
    'crashed (SIGSEGV: Segmentation fault)'
    """

    task: str
    status: Status
    value: Any = None
    error: str | None = None
    signal: str | None = None
    exit_code: int | None = None
    timeout: float | None = None
    memory_limit: int | None = None
    #: What the native code printed during the task (at most LOG_KEEP_BYTES of it).
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """The failure in a few words (``crashed (SIGSEGV: Segmentation fault)``); "ok" if none."""
        if self.status == "crashed":
            if self.signal is not None:
                try:
                    text = signal.strsignal(signal.Signals[self.signal])
                except (KeyError, ValueError):
                    text = None
                return f"crashed ({self.signal}: {text})" if text else f"crashed ({self.signal})"
            return f"crashed (exit status {self.exit_code})"
        if self.status == "timeout":
            return f"did not finish within {self.timeout:g} s (stopped)"
        if self.status == "memory":
            limit = f" (limit {self.memory_limit >> 20} MiB)" if self.memory_limit else ""
            return f"ran out of memory{limit}"
        if self.status == "failed":
            return f"failed: {self.error}"
        return "ok"

    def log_line(self, limit: int = 400, *, per_line: int = 120) -> str:
        """The captured output as one line of about ``limit`` characters: its last lines (those
        closest to the failure), each cut to ``per_line`` characters, joined by `` / ``.

        >>> Outcome("t", "crashed", log="I loading\\nE " + "x" * 200 + "\\nE failed\\n").log_line(60)
        '… / E xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… / E failed'
        """
        lines = [" ".join(line.split()) for line in self.log.splitlines()]
        lines = [line if len(line) <= per_line else line[: per_line - 1] + "…" for line in lines if line]
        kept: list[str] = []
        room = limit
        for line in reversed(lines):
            if room < 8:
                kept.append("…")
                break
            kept.append(line if len(line) <= room else line[: room - 1] + "…")
            room -= len(kept[-1]) + 3
        return " / ".join(reversed(kept))


def _env_number(name: str) -> float | None:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if 0 < value < 1e12 else None


def default_timeout() -> float:
    """``$ETM_WORKER_TIMEOUT`` seconds when set to a positive number, else DEFAULT_TIMEOUT."""
    return _env_number(ENV_TIMEOUT) or DEFAULT_TIMEOUT


def default_memory_limit() -> int:
    """``$ETM_WORKER_MEMORY_MB`` MiB when set to a positive number, else DEFAULT_MEMORY_LIMIT."""
    mib = _env_number(ENV_MEMORY_MB)
    return int(mib * (1 << 20)) if mib else DEFAULT_MEMORY_LIMIT


class _Worker:
    """One worker process and its two pipes (requests in; output and replies out)."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(16)
        self.marker = reply_marker(self.nonce)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env[ENV_NONCE] = self.nonce
        env[ENV_PARENT] = str(os.getpid())
        # The kernel's parent-death signal follows the *thread* that started the child: only the
        # main thread lives as long as the process.
        env[ENV_DIE_WITH_PARENT] = "1" if threading.current_thread() is threading.main_thread() else ""
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C is ours to handle; the worker is stopped by us
            )
        except OSError as exc:
            raise RuntimeUnavailableError(f"cannot start the isolation worker: {exc.strerror or exc}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.requests = self.proc.stdin
        self.output = self.proc.stdout.fileno()
        self.pid = self.proc.pid
        self.owner = os.getpid()

    def ready(self) -> None:
        """Wait for the worker's first reply (it says it has started); raise if it does not come."""
        outcome = self._await_reply("start", START_TIMEOUT, None)
        if not outcome.ok:
            self.stop()
            raise RuntimeUnavailableError(
                f"the isolation worker did not start: {outcome.describe()}"
                + (f" ({outcome.log_line()})" if outcome.log else "")
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, task: str, args: Any, timeout: float, memory_limit: int) -> Outcome:
        request = json.dumps({"task": task, "args": args, "timeout": timeout, "memory": memory_limit})
        data = request.encode("utf-8") + b"\n"
        if len(data) > MESSAGE_MAX_BYTES:
            raise UsageError(f"task {task!r}: arguments of {len(data)} bytes, more than {MESSAGE_MAX_BYTES}")
        try:
            self.requests.write(data)
            self.requests.flush()
        except OSError:  # it died between tasks: what it left says why
            return self._died(task, bytearray(), timeout, memory_limit)
        return self._await_reply(task, timeout, memory_limit)

    def _await_reply(self, task: str, timeout: float, memory_limit: int | None) -> Outcome:
        """Read output until the reply (or the worker's death, or the deadline)."""
        deadline = time.monotonic() + timeout
        log = bytearray()
        pending = bytearray()
        reply: bytes | None = None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self.output, selectors.EVENT_READ)
                while reply is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.stop()
                        return Outcome(task, "timeout", timeout=timeout, memory_limit=memory_limit, log=_text(log))
                    if not sel.select(remaining):
                        continue
                    chunk = os.read(self.output, 1 << 16)
                    if not chunk:
                        return self._died(task, log + pending, timeout, memory_limit)
                    pending += chunk
                    reply = self._take_reply(pending, log)
        except BaseException:  # interrupted while the worker is mid-task: it cannot be reused
            self.stop()
            raise
        return _outcome(task, reply, timeout, memory_limit, _text(log))

    def _take_reply(self, pending: bytearray, log: bytearray) -> bytes | None:
        """Move output before the reply marker into ``log``; the reply's bytes once complete."""
        start = pending.find(self.marker)
        if start < 0:
            keep = max(0, len(pending) - len(self.marker) + 1)  # a marker may be cut in two
            _keep_log(log, pending[:keep])
            del pending[:keep]
            return None
        _keep_log(log, pending[:start])
        del pending[:start]
        head_end = pending.find(b"\n", len(self.marker))
        if head_end < 0:
            if len(pending) > len(self.marker) + 24:
                raise _ProtocolError("malformed reply header")
            return None
        try:
            size = int(pending[len(self.marker) : head_end])
        except ValueError:
            raise _ProtocolError("malformed reply header") from None
        if not 0 <= size <= MESSAGE_MAX_BYTES:
            raise _ProtocolError(f"reply of {size} bytes")
        if len(pending) < head_end + 1 + size:
            return None
        body = bytes(pending[head_end + 1 : head_end + 1 + size])
        del pending[: head_end + 1 + size]
        return body

    def _died(self, task: str, log: bytearray, timeout: float, memory_limit: int | None) -> Outcome:
        code = self.stop()
        name: str | None = None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
        log = log[:LOG_KEEP_BYTES]
        return Outcome(task, "crashed", signal=name, exit_code=code, timeout=timeout, memory_limit=memory_limit, log=_text(log))

    def stop(self) -> int:
        """Kill the worker (if still running) and reap it; its exit status."""
        with contextlib.suppress(OSError):
            self.requests.close()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        code = self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        return code

    def forget(self) -> None:
        """In a forked child: drop our copies of the pipes (the worker is the parent's)."""
        with contextlib.suppress(OSError):
            self.requests.close()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.returncode = 0  # never wait for someone else's child


class _ProtocolError(Exception):
    """The worker's reply is not one (a bug, or memory the native code corrupted)."""


def _keep_log(log: bytearray, data: bytes | bytearray) -> None:
    room = LOG_KEEP_BYTES - len(log)
    if room > 0:
        log += data[:room]


def _text(log: bytes | bytearray) -> str:
    return bytes(log).decode("utf-8", "replace")


def _outcome(task: str, body: bytes, timeout: float, memory_limit: int | None, log: str) -> Outcome:
    """The worker's JSON reply as an Outcome."""
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict) or reply.get("status") not in ("ok", "failed", "memory"):
        reply = {"status": "failed", "error": "the worker's reply is malformed"}
    error = None if reply.get("error") is None else str(reply["error"])
    return Outcome(task, reply["status"], reply.get("value"), error, timeout=timeout, memory_limit=memory_limit, log=log)


_worker: _Worker | None = None
_lock = threading.Lock()
#: How many workers this process started (work counted for tests).
worker_starts = 0


def run_task(
    task: TaskName, args: Any, *, timeout: float | None = None, memory_limit: int | None = None
) -> Outcome:
    """Run ``task`` with JSON ``args`` in this process's worker (started on first use).

    ``timeout`` (seconds) and ``memory_limit`` (bytes) default to :func:`default_timeout` and
    :func:`default_memory_limit`. A crash, hang or memory blow-up comes back as the Outcome's
    ``status``, never as an exception; :class:`RuntimeUnavailableError` only when no worker can
    be started at all.

    >>> run_task("tokenizer.load", {"class": "SPTokenizer", "path": "tokenizer.model"}).value["loaded"]  # doctest: +SKIP
    True
    """
    global _worker, worker_starts
    if task not in TASK_NAMES:
        raise UsageError(f"unknown isolated task {task!r} (known: {', '.join(sorted(TASK_NAMES))})")
    limit_s = default_timeout() if timeout is None else float(timeout)
    limit_b = default_memory_limit() if memory_limit is None else int(memory_limit)
    with _lock:
        if _worker is not None and (_worker.owner != os.getpid() or not _worker.alive()):
            if _worker.owner == os.getpid():
                _worker.stop()  # died between tasks: reap it
            _worker = None
        if _worker is None:
            worker = _Worker()
            worker_starts += 1
            worker.ready()
            _worker = worker
        try:
            outcome = _worker.run(task, args, limit_s, limit_b)
        except _ProtocolError as exc:
            _worker.stop()
            outcome = Outcome(task, "failed", error=f"the worker's reply is malformed ({exc})", timeout=limit_s)
        if outcome.status in ("crashed", "timeout", "memory"):
            _worker.stop()  # already dead or stopped; a worker that hit its memory limit exits
            _worker = None
        return outcome


def worker_pid() -> int | None:
    """The process id of this process's worker, when one is running."""
    with _lock:
        if _worker is None or _worker.owner != os.getpid() or not _worker.alive():
            return None
        return _worker.pid


def shutdown() -> None:
    """Stop this process's worker (at exit, or to start afresh); the next task starts a new one."""
    global _worker
    with _lock:
        if _worker is not None and _worker.owner == os.getpid():
            _worker.stop()
        _worker = None


def _after_fork_in_child() -> None:
    global _worker, _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork
    if _worker is not None:
        _worker.forget()
    _worker = None


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_TIMEOUT",
    "ENV_MEMORY_MB",
    "ENV_TIMEOUT",
    "TASK_NAMES",
    "Outcome",
    "Status",
    "TaskName",
    "default_memory_limit",
    "default_timeout",
    "run_task",
    "shutdown",
    "worker_pid",
]
