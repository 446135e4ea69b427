"""Hostile inputs are refused as fast as good ones are read (issue 14, item 5).

The headline hostile ``.pte``: 20 execution plans sharing one 50,000-value vector
(tests/test_pte.py), so a walker that follows every plan does 1,000,000 table visits for 200 kB of
input. Its baseline, in the same run: a well-formed program of the same size (one plan owning the
same vector). Both are parsed in this process from memory with ``read_pte_bytes``; a second row
runs ``etm-compat inspect`` on it as a whole process, against the start-up of ``etm-compat``.

Then every other bound of formats/flatbuf.py and formats/pte.py on an input built to trip it:
parts shared by many parents (a string, an outputs list, a named_data key, a pytree spec: the
work budget) and vectors one element longer than their limit (refused before they are walked).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import flatbuffers
from common import VENV_BIN, WORK, Result, Row, bench_env, median, run_child, spread, warm_up
from test_pte import SHARED, _program, _shared_values_program

from etm_compat.constants import EVALUE_INT_LIST
from etm_compat.errors import PteFormatError
from etm_compat.formats import pte
from etm_compat.formats.pte import read_pte_bytes

TARGET_SECONDS = 0.2


def _time(data: bytes, reps: int, *, refused: bool) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        try:
            read_pte_bytes(data)
        except PteFormatError:
            if not refused:
                raise
        else:
            if refused:
                raise SystemExit("a hostile program was read, not refused")
        times.append(time.perf_counter() - start)
    return times


def _whole_process(path: Path, reps: int) -> list[float]:
    """``etm-compat inspect PATH`` as a user runs it; it must exit 3 (malformed input)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        code = subprocess.call([str(VENV_BIN / "etm-compat"), "inspect", str(path)], env=bench_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if code != 3:
            raise SystemExit(f"etm-compat inspect {path} exited {code}, not 3")
    return times


# --- inputs one element over a limit ----------------------------------------------------------


def _offsets(b: flatbuffers.Builder, target: int, count: int) -> int:
    b.StartVector(4, count, 4)
    for _ in range(count):
        b.PrependUOffsetTRelative(target)
    return b.EndVector()


def _plans_over() -> bytes:
    b = flatbuffers.Builder(0)
    name = b.CreateString("forward")
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    plan = b.EndObject()
    return _program(b, [plan] * (pte.MAX_PLANS + 1))


def _plan_with(slot: int, make: Callable[[flatbuffers.Builder], int]) -> bytes:
    b = flatbuffers.Builder(0)
    field = make(b)
    name = b.CreateString("forward")
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(slot, field, 0)
    return _program(b, [b.EndObject()])


def _values_over() -> bytes:
    def values(b: flatbuffers.Builder) -> int:
        b.StartObject(2)
        return _offsets(b, b.EndObject(), pte.MAX_VALUES + 1)

    return _plan_with(2, values)


def _delegates_over() -> bytes:
    def delegates(b: flatbuffers.Builder) -> int:
        b.StartObject(3)
        return _offsets(b, b.EndObject(), pte.MAX_DELEGATES + 1)

    return _plan_with(7, delegates)


def _name_over() -> bytes:
    b = flatbuffers.Builder(0)
    name = b.CreateString("f" * ((1 << 20) + 1))
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    return _program(b, [b.EndObject()])


def _program_vector_over(slot: int, limit: int) -> bytes:
    b = flatbuffers.Builder(0)
    b.StartObject(3)
    vector = _offsets(b, b.EndObject(), limit + 1)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(slot, vector, 0)
    b.Finish(b.EndObject(), file_identifier=b"ET12")
    return bytes(b.Output())


def _int_list_over() -> bytes:
    """A constant method returning an IntList one item longer than MAX_LIST_ITEMS."""
    b = flatbuffers.Builder(0)
    b.StartVector(8, pte.MAX_LIST_ITEMS + 1, 8)
    for _ in range(pte.MAX_LIST_ITEMS + 1):
        b.PrependInt64(0)
    items = b.EndVector()
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, items, 0)
    payload = b.EndObject()
    b.StartObject(2)
    b.PrependUint8Slot(0, EVALUE_INT_LIST, 0)
    b.PrependUOffsetTRelativeSlot(1, payload, 0)
    evalue = b.EndObject()
    values = _offsets(b, evalue, 1)
    b.StartVector(4, 1, 4)
    b.PrependInt32(0)
    outs = b.EndVector()
    b.StartObject(4)
    chain = b.EndObject()
    chains = _offsets(b, chain, 1)
    name = b.CreateString("get_ids")
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(2, values, 0)
    b.PrependUOffsetTRelativeSlot(4, outs, 0)
    b.PrependUOffsetTRelativeSlot(5, chains, 0)
    return _program(b, [b.EndObject()])


#: Each bound, and the input that trips it (refused: nothing in these is read).
BOUNDS: dict[str, Callable[[], bytes]] = {
    **{f"work budget: a shared {kind} ({SHARED[kind][1]})": SHARED[kind][0] for kind in sorted(SHARED)},
    f"MAX_PLANS: {pte.MAX_PLANS + 1:,} execution plans": _plans_over,
    f"MAX_VALUES: {pte.MAX_VALUES + 1:,} values in a plan": _values_over,
    f"MAX_DELEGATES: {pte.MAX_DELEGATES + 1:,} delegates in a plan": _delegates_over,
    f"MAX_SEGMENTS: {pte.MAX_SEGMENTS + 1:,} segments": lambda: _program_vector_over(4, pte.MAX_SEGMENTS),
    f"MAX_NAMED_DATA: {pte.MAX_NAMED_DATA + 1:,} named_data entries": lambda: _program_vector_over(7, pte.MAX_NAMED_DATA),
    f"MAX_LIST_ITEMS: an IntList of {pte.MAX_LIST_ITEMS + 1:,} items": _int_list_over,
    "string limit: a 1 MiB + 1 byte method name": _name_over,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    ns = parser.parse_args()
    reps = 3 if ns.quick else 9
    hostile = _shared_values_program(plans=20)
    good = _shared_values_program(plans=1)
    t_bad = _time(hostile, reps, refused=True)
    t_good = _time(good, reps, refused=False)
    res = Result("hostile", "./dev.sh bench hostile  (= .venv/bin/python benchmarks/bench_hostile.py)")
    res.rows.append(Row("hostile .pte whose execution plans share one 50k-value vector is refused "
                        f"({len(hostile) // 1000} kB, read_pte_bytes in-process)", median(t_bad), "s",
                        f"read a well-formed .pte of {len(good) // 1000} kB", median(t_good),
                        median(t_bad) / median(t_good), f"<= {TARGET_SECONDS} s",
                        median(t_bad) <= TARGET_SECONDS, spread(t_bad)))

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "hostile-shared-values.pte"
    path.write_bytes(hostile)
    cli = str(VENV_BIN / "etm-compat")
    warm_up([cli, "--help"])
    whole = _whole_process(path, max(3, reps // 2))
    startup = [run_child([cli, "--help"]).seconds for _ in range(max(3, reps // 2))]
    extra = median(whole) - median(startup)
    res.rows.append(Row("the same file through `etm-compat inspect` (a whole process, exit 3)", median(whole),
                        "s", "etm-compat start-up (--help)", median(startup), median(whole) / median(startup),
                        f"<= start-up + {TARGET_SECONDS} s", extra <= TARGET_SECONDS, spread(whole)))

    for label, make in BOUNDS.items():
        data = make()
        times = _time(data, max(3, reps // 3), refused=True)
        why = ""
        try:
            read_pte_bytes(data)
        except PteFormatError as exc:
            why = exc.message
        res.rows.append(Row(f"{label} ({len(data) / 1e6:.2f} MB) is refused", median(times), "s",
                            "target", TARGET_SECONDS, median(times) / TARGET_SECONDS,
                            f"<= {TARGET_SECONDS} s", median(times) <= TARGET_SECONDS, spread(times)))
        res.notes.append(f"{label}: {why}")
    res.notes.append("The first row's ratio is hostile/good (lower is better); for the bound rows it is "
                     "refusal time over the 0.2 s target. Every bound row parses the input in this process "
                     "from memory with read_pte_bytes; the message the refusal gave is listed above.")
    res.notes.append(f"The whole-process row spends {extra:.3f} s over start-up on the refusal.")
    res.write()
    res.print_rows()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
