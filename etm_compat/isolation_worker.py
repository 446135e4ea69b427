"""The worker process of :mod:`etm_compat.isolation`: ``python -m etm_compat.isolation_worker``.

Started by :func:`etm_compat.isolation.run_task`, never by hand. It reads one JSON request per
line on stdin (``{"task", "args", "timeout", "memory"}``), runs the task from :data:`TASKS` (and
nothing else) under the request's memory limit, and writes the reply after a marker on fd 1,
where the native libraries' own log lines go too (so the parent reads them in order). It exits
when stdin closes, and by itself when a task overruns its time limit by :data:`_GRACE` seconds
(the parent normally kills it first; this covers a parent that died).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, Final

from etm_compat import isolation
from etm_compat.isolation_tasks import TASKS, warm_up

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX: no memory limit
    resource = None  # type: ignore[assignment]

_GRACE: Final = 10.0
_PR_SET_PDEATHSIG: Final = 1

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to ask
    _LIBC = None
#: The memory limit this process was started with (restored after each task).
_START_LIMIT: Final = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else None


def _die_with_parent(parent: int) -> bool:
    """Ask the kernel to kill us when the parent goes (Linux); False if it is already gone."""
    if _LIBC is not None and sys.platform.startswith("linux"):
        with contextlib.suppress(AttributeError):
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def _flush_native_output() -> None:
    """Flush C stdio (std::cout and fprintf buffers) so a task's log precedes its reply."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.fflush(None)


def _reply(marker: bytes, reply: Mapping[str, Any]) -> None:
    body = json.dumps(reply).encode("utf-8")
    if len(body) > isolation.MESSAGE_MAX_BYTES:
        body = json.dumps({"status": "failed", "error": f"a reply of {len(body)} bytes is too large"}).encode()
    _flush_native_output()
    data = marker + str(len(body)).encode("ascii") + b"\n" + body
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _set_memory_limit(limit: int | None) -> None:
    if resource is None:
        return
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    wanted = _START_LIMIT if limit is None else limit
    if limit is not None and _START_LIMIT != resource.RLIM_INFINITY:
        wanted = min(limit, _START_LIMIT)  # a limit the user set (ulimit -v) stays in force
    if hard != resource.RLIM_INFINITY and (wanted == resource.RLIM_INFINITY or wanted > hard):
        wanted = hard
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError (``std::bad_alloc`` too), or an allocation in the kernel refused (ENOMEM),
    here or in what the exception interrupted."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (isinstance(current, OSError) and current.errno == errno.ENOMEM):
            return True
        current = current.__context__
    return False


def _run(request: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """One task: (the reply, whether this worker must exit after it)."""
    task = TASKS.get(str(request.get("task")))
    if task is None:
        return {"status": "failed", "error": f"unknown task {request.get('task')!r}"}, False
    args = request.get("args")
    timeout = float(request.get("timeout") or isolation.DEFAULT_TIMEOUT)
    memory = request.get("memory")
    with open(os.devnull, "w") as sink:
        faulthandler.dump_traceback_later(timeout + _GRACE, exit=True, file=sink)
        _set_memory_limit(int(memory) if isinstance(memory, int) else None)
        try:
            value = task(args if isinstance(args, dict) else {})
        except Exception as exc:  # the task's own failure; the worker stays usable unless memory
            _set_memory_limit(None)
            if _out_of_memory(exc):
                return {"status": "memory"}, True
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, False
        finally:
            faulthandler.cancel_dump_traceback_later()
        _set_memory_limit(None)
    return {"status": "ok", "value": value}, False


def main() -> int:
    nonce = os.environ.pop(isolation.ENV_NONCE, "")
    parent = os.environ.pop(isolation.ENV_PARENT, "")
    die = os.environ.pop(isolation.ENV_DIE_WITH_PARENT, "")
    if not nonce or not parent.isdigit():
        os.write(2, b"etm_compat.isolation_worker is started by etm_compat.isolation, not by hand\n")
        return 2
    if die and not _die_with_parent(int(parent)):
        return 0
    marker = isolation.reply_marker(nonce)
    warm_up()  # the bindings' import-time log line goes with the start, not a task
    _reply(marker, {"status": "ok", "value": {"pid": os.getpid()}})
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline(isolation.MESSAGE_MAX_BYTES + 1)
        if not line:
            return 0
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict) or not line.endswith(b"\n"):
            _reply(marker, {"status": "failed", "error": "malformed request"})
            return 1
        reply, leave = _run(request)
        _reply(marker, reply)
        if leave:
            return 0


if __name__ == "__main__":
    sys.exit(main())
