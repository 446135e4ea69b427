"""A property the FlatBuffer file readers share (tests/test_pte.py, tests/test_ptd.py): bytes a
reader never reads can be anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st


def assert_flips_from_read_the_same(good: bytes, start: int, describe: Callable[[bytes], Any]) -> None:
    """Any bytes of ``good`` from ``start`` on, changed (up to 8 of them), leave what ``describe``
    says of the file as it says of ``good``. The property can fail: a reader that looked at
    those bytes would see the changes."""
    expected = describe(good)

    @settings(max_examples=100, deadline=None, database=None)
    @given(
        flips=st.lists(
            st.tuples(st.integers(start, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=8
        )
    )
    def check(flips: list[tuple[int, int]]) -> None:
        data = bytearray(good)
        for pos, byte in flips:
            data[pos] = byte
        assert describe(bytes(data)) == expected

    check()
