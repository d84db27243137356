from __future__ import annotations

import pytest

from service.processing.clock import PartitionProgress, floor_to_tick, tick_boundaries, timer_as_of

H = 3_600_000


@pytest.mark.parametrize(("ms", "expected"), [(0, 0), (H - 1, 0), (H, H), (5 * H + 17, 5 * H)])
def test_floor_to_tick(ms: int, expected: int) -> None:
    assert floor_to_tick(ms, H) == expected


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        (None, 10 * H, []),
        (H, H, []),
        (H, 2 * H - 1, []),
        (H, 2 * H, [2 * H]),
        (H + 5, 4 * H + 1, [2 * H, 3 * H, 4 * H]),
        (5 * H, 3 * H, []),
    ],
)
def test_tick_boundaries(after: int | None, until: int, expected: list[int]) -> None:
    assert list(tick_boundaries(after, until, H)) == expected


CAUGHT_UP = PartitionProgress(caught_up=True, newest_event_ms=None)


@pytest.mark.parametrize(
    ("partitions", "expected"),
    [
        ([], None),
        ([CAUGHT_UP], 10 * H),
        ([CAUGHT_UP, PartitionProgress(False, 3 * H + 5)], 3 * H),
        ([PartitionProgress(False, 7 * H), PartitionProgress(False, 4 * H)], 4 * H),
        ([CAUGHT_UP, PartitionProgress(False, None)], None),
        # event time ahead of the wall clock never moves the clock past now
        ([PartitionProgress(False, 50 * H)], 10 * H),
    ],
)
def test_timer_as_of(partitions: list[PartitionProgress], expected: int | None) -> None:
    assert timer_as_of(10 * H + 123, H, partitions) == expected
