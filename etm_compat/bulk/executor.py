"""Where an upgrade runs: the executor the command line opens for planning
(:func:`etm_compat.bulk.plan.plan_upgrade`) and executing (:func:`etm_compat.bulk.upgrade.execute`).

:func:`open_executor` yields None (run in this process), a :class:`LazyProcessPool` of
``--jobs`` - 1 worker processes (forked on Linux while the process has one thread, spawned
elsewhere, at its first task) or a Dask cluster's executor. The calling process is the
``--jobs``-th: whenever it waits on a call, it runs a queued call itself
(:meth:`LazyProcessPool.help`, the helping join of a fork/join pool), so ``--jobs`` processes
pack, as many as the cores given. :func:`default_jobs` is the ``--jobs`` default. Both are
re-exported from :mod:`etm_compat.bulk.upgrade`.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, TypeVar

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

    ``jobs`` is how many processes pack: with two or more, ``jobs - 1`` worker processes and
    this one. ``scheduler`` (a Dask scheduler address) wins over ``jobs``. A process pool starts its
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
    # ``jobs`` processes pack, this one included: it helps whenever it waits (see
    # LazyProcessPool), so a pool of ``jobs`` workers would run one busy process more than the
    # cores given, each getting in the others' way.
    pool = LazyProcessPool((min(jobs, pending) if pending is not None else jobs) - 1)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Call(Generic[_T]):
    """One submitted call: the future its submitter holds (``mine``), the process pool's future
    for the same call (``theirs``), and the call itself, for the caller to run instead."""

    def __init__(
        self,
        pool: LazyProcessPool,
        theirs: concurrent.futures.Future[_T],
        fn: Callable[..., _T],
        args: Any,
        kwargs: Any,
    ) -> None:
        self.mine: _SharedFuture[_T] = _SharedFuture(self, pool)
        self.theirs = theirs
        self.fn, self.args, self.kwargs = fn, args, kwargs
        theirs.add_done_callback(self._relay)

    def _relay(self, theirs: concurrent.futures.Future[_T]) -> None:
        """A worker finished the call (or the pool broke): its outcome is ``mine``'s."""
        if theirs.cancelled():  # taken by the caller (help), or cancelled with mine
            return
        error = theirs.exception()
        if error is not None:
            self.mine.set_exception(error)
        else:
            self.mine.set_result(theirs.result())
        self.fn = self.args = self.kwargs = None  # type: ignore[assignment]

    def run_here(self) -> None:
        """Run the call in this process; its outcome is ``mine``'s."""
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.mine.set_exception(exc)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not a task's failure
                raise
        else:
            self.mine.set_result(result)
        finally:
            self.fn = self.args = self.kwargs = None  # type: ignore[assignment]


class _SharedFuture(concurrent.futures.Future[_T]):
    """The future :meth:`LazyProcessPool.submit` returns. Waiting on its result first runs the
    pool's queued calls in the waiting thread (newest first) until this one is done or none is
    left unstarted; cancelling it cancels the pool's copy, and succeeds only when that does."""

    def __init__(self, call: _Call[_T], pool: LazyProcessPool) -> None:
        super().__init__()
        self._call = call
        self._pool = pool

    def cancel(self) -> bool:
        return self._call.theirs.cancel() and super().cancel()

    def result(self, timeout: float | None = None) -> _T:
        while not self.done() and self._pool.help():
            pass
        return super().result(timeout)


class LazyProcessPool(concurrent.futures.Executor):
    """A pool of ``workers`` processes, made at its first task, that the calling process helps.

    Every call goes to the process pool, and the pool takes them in order (the oldest first); the
    caller takes them from the other end whenever it waits (:meth:`help`, and the ``result()`` of
    any future this pool returned): a call is the caller's only if the pool has not started it
    (its future could be cancelled), so none runs twice. Callers that submit the biggest work first
    (:func:`etm_compat.bulk.upgrade.execute` does) leave the caller the smallest calls, so it stays
    free to collect results and draw progress.

    The fork-or-spawn choice is made at the first task (:func:`_pool_context`): forked workers
    start at once with what the parent imported (planning and the task runner); each loads what
    packing needs beyond that (inference, checks, templates, the writer) at its first task.
    ``started`` says whether there were any. ``helped`` counts the calls the caller ran.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.helped = 0
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._unstarted: list[_Call[Any]] = []  # newest last; the caller takes from the end

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
        call = _Call(self, self._pool.submit(fn, *args, **kwargs), fn, args, kwargs)
        self._unstarted.append(call)
        return call.mine

    def help(self) -> bool:
        """Run the newest call no worker has started, here; False when every call has started.

        The pool starts calls oldest first, so once the newest cannot be taken none can: the
        calls passed over are dropped from the list, and each is looked at once.
        """
        while self._unstarted:
            call = self._unstarted.pop()
            if not call.theirs.cancel():  # a worker has it (or had it): so has it every older one
                self._unstarted.clear()
                return False
            if not call.mine.set_running_or_notify_cancel():  # its submitter cancelled it
                continue
            self.helped += 1
            call.run_here()
            return True
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if cancel_futures:
            for call in self._unstarted:  # the pool cancelled its copies: nobody will run these
                call.mine.cancel()
        self._unstarted.clear()


def completed(
    executor: concurrent.futures.Executor, futures: Iterable[concurrent.futures.Future[_T]]
) -> Iterator[concurrent.futures.Future[_T]]:
    """:func:`concurrent.futures.as_completed`, with the caller running a :class:`LazyProcessPool`'s
    queued calls while nothing is finished (another executor: waiting only)."""
    if not isinstance(executor, LazyProcessPool):
        yield from concurrent.futures.as_completed(futures)
        return
    finished: queue.SimpleQueue[concurrent.futures.Future[_T]] = queue.SimpleQueue()
    waiting = 0
    for future in futures:
        future.add_done_callback(finished.put)  # runs at once for a future already done
        waiting += 1
    while waiting:
        while finished.empty() and executor.help():
            pass
        yield finished.get()
        waiting -= 1


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


__all__ = ["LazyProcessPool", "completed", "default_jobs", "open_executor"]
