"""The upgrade's process pool: the calling process runs queued calls while it waits, and no call
runs twice or is lost (etm_compat/bulk/executor.py)."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from etm_compat.bulk.executor import LazyProcessPool, completed, open_executor
from etm_compat.errors import UsageError


def _where(index: int, parent: int) -> tuple[int, int]:
    """(index, pid); a worker dawdles, so the caller finds calls nobody has started."""
    if os.getpid() != parent:
        time.sleep(0.02)
    return index, os.getpid()


def _fails(message: str) -> None:
    raise ValueError(message)


def _interrupts() -> None:
    raise KeyboardInterrupt


def test_the_caller_runs_queued_calls_while_it_waits_and_none_runs_twice() -> None:
    parent = os.getpid()
    with open_executor(jobs=1 + 1) as pool:
        assert isinstance(pool, LazyProcessPool)
        futures = [pool.submit(_where, i, parent) for i in range(40)]
        results = [future.result() for future in futures]  # waiting on the first: the caller helps
    assert [index for index, _ in results] == list(range(40))
    here = sum(1 for _, pid in results if pid == parent)
    assert here == pool.helped and 0 < here < 40  # both sides worked, each call once
    assert {pid for _, pid in results} - {parent}  # a worker ran some
    # The caller takes the newest calls: what it ran is a tail of what was submitted.
    assert all(pid == parent for _, pid in results[40 - here :])


@pytest.mark.parametrize(("jobs", "pending", "workers"), [(2, None, 1), (3, None, 2), (4, 2, 1), (8, 5, 4)])
def test_jobs_counts_the_calling_process_among_those_that_pack(jobs: int, pending: int | None, workers: int) -> None:
    """--jobs N: N - 1 workers and the caller, which helps; never more than the pending work."""
    parent = os.getpid()
    with open_executor(jobs=jobs, pending=pending) as pool:
        assert isinstance(pool, LazyProcessPool) and pool.workers == workers
        futures = [pool.submit(_where, i, parent) for i in range(24)]
        pids = {pid for _, pid in (future.result() for future in futures)}
        assert parent in pids and len(pids - {parent}) <= workers


def test_completed_yields_every_future_once_and_helps() -> None:
    parent = os.getpid()
    with open_executor(jobs=2) as pool:
        assert isinstance(pool, LazyProcessPool)
        futures = [pool.submit(_where, i, parent) for i in range(30)]
        seen = [future.result()[0] for future in completed(pool, futures)]
        assert sorted(seen) == list(range(30)) and pool.helped > 0


def test_completed_on_another_executor_only_waits() -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        futures = [threads.submit(abs, -i) for i in range(5)]
        assert sorted(f.result() for f in completed(threads, futures)) == [0, 1, 2, 3, 4]


def test_a_cancelled_call_is_not_run_by_the_caller() -> None:
    parent = os.getpid()
    with open_executor(jobs=2) as pool:
        assert isinstance(pool, LazyProcessPool)
        futures = [pool.submit(_where, i, parent) for i in range(20)]
        last = futures[-1]
        assert last.cancel() and last.cancelled()  # nobody had started it
        assert [f.result()[0] for f in futures[:-1]] == list(range(19))
    assert pool.helped < 20 and last.cancelled()


def test_a_failing_call_fails_its_future_wherever_it_ran() -> None:
    with open_executor(jobs=2) as pool:
        assert isinstance(pool, LazyProcessPool)
        futures = [pool.submit(_fails, f"no {i}") for i in range(12)]
        for i, future in enumerate(futures):
            with pytest.raises(ValueError, match=f"no {i}$"):
                future.result()


def test_an_interrupt_in_a_call_the_caller_runs_reaches_the_caller() -> None:
    with open_executor(jobs=2) as pool:
        assert isinstance(pool, LazyProcessPool)
        blockers = [pool.submit(time.sleep, 0.2) for _ in range(3)]  # the worker and its queue
        interrupted = pool.submit(_interrupts)
        with pytest.raises(KeyboardInterrupt):
            blockers[0].result()  # the caller helps: it runs the newest call, which interrupts
        assert isinstance(interrupted.exception(), KeyboardInterrupt)


def test_shutting_down_cancels_what_nobody_started() -> None:
    pool = LazyProcessPool(1)
    futures = [pool.submit(time.sleep, 0.05) for _ in range(10)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures) and any(f.cancelled() for f in futures)
    assert pool.helped == 0


def test_jobs_must_be_positive() -> None:
    with pytest.raises(UsageError, match="at least 1"), open_executor(jobs=0):
        pass
