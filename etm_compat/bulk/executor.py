"""Where an upgrade plan runs: the executor the command line opens for
:func:`etm_compat.bulk.upgrade.execute`.

:func:`open_executor` yields None (run in this process), a process pool (forked on Linux while
the process has one thread, spawned elsewhere) or a Dask cluster's executor. :func:`default_jobs`
is the ``--jobs`` default. Both are re-exported from :mod:`etm_compat.bulk.upgrade`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from etm_compat.errors import UsageError


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def open_executor(
    *, jobs: int, scheduler: str | None = None, pending: int = 1, connect_timeout: float = 5.0
) -> Iterator[concurrent.futures.Executor | None]:
    """The executor the command line runs a plan on; None means "in this process".

    ``scheduler`` (a Dask scheduler address) wins over ``jobs``; nothing is started when there is
    nothing to do (a re-run of a finished tree stays as cheap as its plan).
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if pending == 0 or (scheduler is None and (jobs == 1 or pending == 1)):
        yield None
        return
    if scheduler is not None:
        with _dask_executor(scheduler, connect_timeout) as executor:
            yield executor
        return
    context = _pool_context()
    pool = concurrent.futures.ProcessPoolExecutor(min(jobs, pending), mp_context=context)
    try:
        if context.get_start_method() == "fork":
            # Start every worker now, while this process still has a single thread: the progress
            # bar's thread starts later and must not be copied into a forked child.
            pool.submit(_ready).result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    """A no-op task that makes a process pool start its workers."""
    return True


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (Linux, one thread): workers inherit the imported modules (the
    caller, :mod:`etm_compat.bulk.upgrade`, has imported the task and all it needs), so none pays
    the start-up and import cost again; spawn everywhere else."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextmanager
def _dask_executor(address: str, timeout: float) -> Iterator[concurrent.futures.Executor]:
    try:
        # Lazy: Dask is an optional extra, needed only with --scheduler.
        import distributed
    except ImportError as exc:
        raise UsageError(
            "--scheduler needs Dask's distributed scheduler, which is not installed",
            hint="pip install 'etm-compat[dask]'",
        ) from exc
    try:
        connect: Any = distributed.Client  # untyped library
        client = connect(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    try:
        # pure=False: every task is distinct work with side effects, never a cached result.
        executor: concurrent.futures.Executor = client.get_executor(pure=False)
        yield executor
    finally:
        client.close()


__all__ = ["default_jobs", "open_executor"]
