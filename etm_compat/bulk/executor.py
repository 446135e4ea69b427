"""Where an upgrade runs: the executor the command line opens for planning
(:func:`etm_compat.bulk.plan.plan_upgrade`) and executing (:func:`etm_compat.bulk.upgrade.execute`).

:func:`open_executor` yields None (run in this process), a process pool that starts its workers
at its first task (forked on Linux while the process has one thread, spawned elsewhere), or a
Dask cluster's executor. :func:`default_jobs` is the ``--jobs`` default. Both are re-exported
from :mod:`etm_compat.bulk.upgrade`.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from etm_compat.errors import UsageError


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def open_executor(
    *, jobs: int, scheduler: str | None = None, pending: int | None = None, connect_timeout: float = 5.0
) -> Iterator[concurrent.futures.Executor | None]:
    """The executor an upgrade plans and runs on; None means "in this process".

    ``scheduler`` (a Dask scheduler address) wins over ``jobs``. A process pool starts its
    workers at its first task, so a re-run that finds nothing to read or pack starts none;
    ``pending`` (the tasks known to come, when the plan is made already) also skips the pool
    for zero or one task.
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if pending is not None and (pending == 0 or (scheduler is None and pending == 1)):
        yield None
        return
    if scheduler is not None:
        with _dask_executor(scheduler, connect_timeout) as executor:
            yield executor
        return
    if jobs == 1:
        yield None
        return
    pool = LazyProcessPool(min(jobs, pending) if pending is not None else jobs)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_P = ParamSpec("_P")
_T = TypeVar("_T")


class LazyProcessPool(concurrent.futures.Executor):
    """A process pool of ``workers`` processes, made at its first task.

    The fork-or-spawn choice is made then (:func:`_pool_context`): forked workers start at
    once with what the parent imported (planning and the task runner); each loads what packing
    needs beyond that (inference, checks, templates, the writer) at its first task, so the parent
    never pays for it. ``started`` says whether there were any.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        if self._pool is None:
            # Forked here, before the pool's own threads exist (CPython starts every forked
            # worker before its manager thread).
            # gc.enable: a worker forked while the parent paused collection (a plan does) collects.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=_pool_context(), initializer=gc.enable
            )
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (Linux, one thread): workers inherit the interpreter and the
    modules the parent imported (:mod:`etm_compat.bulk.upgrade` and the task runner) and start at
    once; spawn everywhere else."""
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


__all__ = ["LazyProcessPool", "default_jobs", "open_executor"]
