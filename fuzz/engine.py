"""A seeded mutation loop: the fuzz engine that needs nothing beyond the standard library.

It mutates the seeds (bit flips, interesting integers at aligned offsets, chunk insert/delete/
duplicate, splices, truncation), keeps inputs that raised a *new* error message or ran a new
reader path as far as it can tell cheaply (a growing corpus keyed by the outcome), and records a
finding for every exception that is not an :class:`EtmError`, every input that runs longer than
``hang_seconds`` (interrupted by ``SIGALRM``), and every ``MemoryError``. atheris, when installed,
replaces this loop with coverage guidance (see ``fuzz/run.py``); the harnesses are the same.
"""

from __future__ import annotations

import hashlib
import random
import signal
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

INTERESTING_32 = (
    0, 1, 2, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
)
MAX_INPUT = 1 << 20
MAX_CORPUS = 2000


class Hang(BaseException):
    """Raised by the alarm inside a harness that ran too long (a BaseException: not swallowed)."""


@dataclass
class Finding:
    """One input that broke the contract: what escaped, and where it is saved."""

    target: str
    kind: str  # "exception", "hang" or "memory"
    summary: str
    trace: str
    data: bytes
    saved: Path | None = None


@dataclass
class Stats:
    target: str
    runs: int = 0
    seconds: float = 0.0
    corpus: int = 0
    slowest: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    distinct: dict[str, int] = field(default_factory=dict)  # finding summary -> times seen


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to four random mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:
            pos = rng.randrange(n)
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and n >= 4:
            # Aligned u32 overwrite: FlatBuffer offsets, lengths and zip fields live here.
            pos = rng.randrange(n // 4) * 4 if rng.random() < 0.7 else rng.randrange(n - 3)
            value = rng.choice((*INTERESTING_32, n, n - 1, n + 1, pos, n - pos & 4294967295))
            struct.pack_into("<I", buf, pos, value & 0xFFFFFFFF)
        elif op == 3 and n >= 2:
            pos = rng.randrange(n - 1)
            struct.pack_into("<H", buf, pos, rng.choice((0, 1, 4, 6, 0xFFFF, 0x8000, rng.randrange(64))))
        elif op == 4 and n:
            start = rng.randrange(n)
            del buf[start : start + rng.randint(1, 64)]
        elif op == 5 and n:
            start = rng.randrange(n)
            chunk = buf[start : start + rng.randint(1, 64)]
            at = rng.randrange(n + 1)
            buf[at:at] = chunk * rng.choice((1, 2, 16))
        elif op == 6:
            at = rng.randrange(n + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 7 and others:
            other = rng.choice(others)
            if other:
                start = rng.randrange(len(other))
                at = rng.randrange(n + 1)
                buf[at : at + rng.randint(0, 64)] = other[start : start + rng.randint(1, 256)]
        elif op == 8 and n:
            del buf[rng.randrange(n) :]
    return bytes(buf[:MAX_INPUT])


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise Hang


def _outcome(exc: BaseException | None) -> str:
    """A coarse key for "did this input do something new": the error class and message shape."""
    if exc is None:
        return "ok"
    text = "".join(ch for ch in str(exc) if not ch.isdigit())[:120]
    return f"{type(exc).__name__}:{text}"


def fuzz(
    name: str,
    harness: Callable[[bytes], None],
    seeds: list[bytes],
    *,
    runs: int,
    seed: int = 0,
    hang_seconds: float = 10.0,
    crash_dir: Path | None = None,
    max_seconds: float | None = None,
    progress: Callable[[Stats], None] | None = None,
) -> Stats:
    """Run ``harness`` on ``runs`` mutated inputs; return the statistics and findings.

    The harness is expected to swallow :class:`EtmError` itself; whatever else it raises is a
    finding. Seeds run first, unmutated. ``runs`` is the work done (``Stats.runs`` counts it), so
    a test gives a count and asserts on it; ``max_seconds`` is only for a long run from
    ``fuzz/run.py`` that should stop by the clock, and ``hang_seconds`` only catches inputs that
    never end: neither is a speed assertion.
    """
    from etm_compat.errors import EtmError

    rng = random.Random(seed)
    corpus = [s[:MAX_INPUT] for s in seeds] or [b""]
    seen: set[str] = set()
    stats = Stats(name)
    start = time.monotonic()
    use_alarm = hasattr(signal, "setitimer")
    old = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
    try:
        for i in range(runs):
            data = corpus[i] if i < len(seeds) else mutate(rng.choice(corpus), rng, corpus)
            t0 = time.monotonic()
            error: BaseException | None = None
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, hang_seconds)
            try:
                harness(data)
            except Hang:
                error = Hang()
                _record(stats, "hang", f"ran over {hang_seconds} s", traceback.format_exc(), data, crash_dir)
            except MemoryError:
                error = MemoryError()
                _record(stats, "memory", "MemoryError", traceback.format_exc(), data, crash_dir)
            except EtmError as exc:  # a harness should catch these; tolerate it here
                error = exc
            except Exception as exc:
                error = exc
                _record(stats, "exception", f"{type(exc).__name__}: {exc}"[:300], traceback.format_exc(), data, crash_dir)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            took = time.monotonic() - t0
            stats.slowest = max(stats.slowest, took)
            stats.runs += 1
            key = _outcome(error)
            if key not in seen and len(corpus) < MAX_CORPUS:
                seen.add(key)
                if i >= len(seeds):
                    corpus.append(data)
            if progress is not None and stats.runs % 5000 == 0:
                stats.seconds = time.monotonic() - start
                stats.corpus = len(corpus)
                progress(stats)
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    stats.seconds = time.monotonic() - start
    stats.corpus = len(corpus)
    return stats


def _record(
    stats: Stats, kind: str, summary: str, trace: str, data: bytes, crash_dir: Path | None
) -> None:
    finding = Finding(stats.target, kind, summary, trace, data)
    key = "".join(ch for ch in summary if not ch.isdigit())
    stats.distinct[key] = stats.distinct.get(key, 0) + 1
    if stats.distinct[key] > 3:  # the same bug again: count it, keep three examples
        return
    if crash_dir is not None:
        crash_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()[:16]
        finding.saved = crash_dir / f"{stats.target}-{kind}-{digest}.bin"
        finding.saved.write_bytes(data)
        finding.saved.with_suffix(".txt").write_text(trace)
    stats.findings.append(finding)


__all__ = ["Finding", "Hang", "Stats", "fuzz", "mutate"]
