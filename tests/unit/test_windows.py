"""Windowed aggregations: initialize / add / merge / result, daily rings, last-seen maps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.model.windows import (
    DAY_MS,
    Count,
    DailyWindow,
    DayIndex,
    LastSeen,
    Mean,
    Sum,
    day_of,
    exact_number,
    window_start,
)

# ------------------------------------------------------------ aggregations

AGGREGATION_CASES = [
    # (aggregation, values added, expected result)
    (Sum(), [], 0),
    (Sum(), [1, 2, 3], 6),
    (Sum(), [2.5, -1.0], 1.5),
    (Count(), [], 0),
    (Count(), ["a", None, 7], 3),
    (Mean(), [], None),
    (Mean(), [4], 4.0),
    (Mean(), [1, 2, 3, 4], 2.5),
    (Mean(), [-100, 100, 0], 0.0),
]


@pytest.mark.parametrize(("agg", "values", "expected"), AGGREGATION_CASES)
def test_aggregation_result(agg: Any, values: list[Any], expected: Any) -> None:
    acc = agg.initialize()
    for value in values:
        acc = agg.add(acc, value)
    assert agg.result(acc) == expected


@pytest.mark.parametrize(("agg", "values", "expected"), AGGREGATION_CASES)
def test_aggregation_merge_of_halves_equals_whole(
    agg: Any, values: list[Any], expected: Any
) -> None:
    half = len(values) // 2
    left, right = agg.initialize(), agg.initialize()
    for value in values[:half]:
        left = agg.add(left, value)
    for value in values[half:]:
        right = agg.add(right, value)
    assert agg.result(agg.merge(left, right)) == expected


@pytest.mark.parametrize(("agg", "values", "expected"), AGGREGATION_CASES)
def test_aggregation_dump_load_round_trip(agg: Any, values: list[Any], expected: Any) -> None:
    acc = agg.initialize()
    for value in values:
        acc = agg.add(acc, value)
    wire = orjson.loads(orjson.dumps(agg.dump(acc)))
    assert agg.load(wire) == acc


@pytest.mark.parametrize(
    ("agg", "bad"),
    [(Sum(), "3"), (Sum(), True), (Count(), 1.5), (Mean(), [1]), (Mean(), {"s": 1})],
)
def test_aggregation_load_rejects_malformed(agg: Any, bad: Any) -> None:
    with pytest.raises(ValueError):
        agg.load(bad)


# ------------------------------------------------------------ days


@pytest.mark.parametrize(
    ("ms", "day"),
    [(0, 0), (DAY_MS - 1, 0), (DAY_MS, 1), (1_714_555_800_000, 19844)],  # 2024-05-01
)
def test_day_of(ms: int, day: int) -> None:
    assert day_of(ms) == day


def test_window_start_includes_the_as_of_day() -> None:
    assert window_start(100, 1) == 100
    assert window_start(100, 7) == 94


# ------------------------------------------------------------ daily window


def test_daily_window_out_of_order_adds_land_on_their_day() -> None:
    window: DailyWindow[float, float, float] = DailyWindow(Sum())
    for day, value in [(10, 1), (8, 2), (10, 3), (9, 4), (3, 100)]:
        window.add(day, value)
    assert window.result(10, 10) == 4
    assert window.result(8, 10) == 10
    assert window.result(window_start(10, 7), 10) == 10  # day 3 is outside
    assert window.result(0, 10) == 110
    assert window.result(11, 20) == 0
    assert window.days_with_data(8, 10) == 3
    assert (window.first_day(), window.last_day()) == (3, 10)


def test_daily_window_prune_forgets_old_days_only() -> None:
    window: DailyWindow[int, object, int] = DailyWindow(Count())
    for day in range(1, 11):
        window.add(day, None)
    window.prune(6)
    assert sorted(window.buckets) == [6, 7, 8, 9, 10]
    assert window.result(0, 100) == 5


def test_daily_window_dump_is_delta_encoded_and_round_trips() -> None:
    window: DailyWindow[tuple[float, int], float, float | None] = DailyWindow(Mean())
    window.add(19000, 4)
    window.add(19001, 2)
    window.add(19001, 4)
    window.add(19010, 5)
    dumped = window.dump()
    assert dumped == [19000, [4, 1], 1, [6, 2], 9, [5, 1]]
    loaded = DailyWindow.load(Mean(), orjson.loads(orjson.dumps(dumped)))
    assert loaded.buckets == window.buckets
    assert loaded.dump() == dumped


@pytest.mark.parametrize("bad", [[1], [1, 2, 0, 3], "x", [1, 2, -1, 3]])
def test_daily_window_load_rejects_malformed(bad: Any) -> None:
    with pytest.raises(ValueError):
        DailyWindow.load(Sum(), bad)


@given(
    adds=st.lists(st.tuples(st.integers(0, 200), st.integers(-5, 5)), max_size=80),
    first=st.integers(-5, 205),
    length=st.integers(0, 120),
)
def test_daily_window_matches_brute_force(
    adds: list[tuple[int, int]], first: int, length: int
) -> None:
    # Both lookup strategies (short range and full scan) agree with a plain sum.
    window: DailyWindow[float, float, float] = DailyWindow(Sum())
    for day, value in adds:
        window.add(day, value)
    last = first + length
    assert window.result(first, last) == sum(v for d, v in adds if first <= d <= last)


# ------------------------------------------------------------ last seen


def test_last_seen_keeps_the_latest_day_whatever_the_order() -> None:
    seen = LastSeen(cap=10)
    seen.touch("u1", 5)
    seen.touch("u1", 3)
    seen.touch("u2", 4)
    seen.touch("u1", 7)
    assert seen.get("u1") == 7
    assert seen.count_since(5) == 1
    assert seen.count_since(4) == 2
    assert sorted(seen.keys_since(0)) == ["u1", "u2"]


def test_last_seen_evicts_the_least_recently_seen_at_the_cap() -> None:
    seen = LastSeen(cap=10)
    for i in range(10):
        assert seen.touch(f"u{i}", 100 + i) == []
    evicted = seen.touch("new", 50)  # the 11th key: the oldest tenth goes
    assert evicted == ["new"]  # it is itself the oldest
    evicted = seen.touch("fresh", 200)
    assert evicted == ["u0"]
    assert len(seen) == 10
    assert "fresh" in seen and "u0" not in seen


def test_last_seen_prune_and_round_trip() -> None:
    seen = LastSeen(cap=100)
    for i in range(20):
        seen.touch(f"u{i}", i)
    assert seen.prune(15) == [f"u{i}" for i in range(15)]
    loaded = LastSeen.load(100, orjson.loads(orjson.dumps(seen.dump())))
    assert loaded.dump() == seen.dump()
    assert loaded.count_since(17) == seen.count_since(17) == 3


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["touch", "prune"]), st.integers(0, 30), st.integers(0, 60)),
        max_size=120,
    ),
    since=st.integers(0, 61),
)
def test_last_seen_histogram_matches_the_map(ops: list[tuple[str, int, int]], since: int) -> None:
    seen = LastSeen(cap=12)
    for op, key, day in ops:
        if op == "touch":
            seen.touch(f"k{key}", day)
        else:
            seen.prune(day)
    assert len(seen) <= 12
    assert seen.count_since(since) == sum(1 for d in seen.days.values() if d >= since)
    assert LastSeen.load(12, seen.dump()).hist == seen.hist


# ------------------------------------------------------------ running totals


def _reference_fold(window: DailyWindow[Any, Any, Any], first: int, last: int) -> Any:
    # DailyWindow's definition: merge the buckets of the range in day order
    # (float sums depend on the order; insertion order is lost on reload).
    agg = window.agg
    acc = agg.initialize()
    for day in sorted(window.buckets):
        if first <= day <= last:
            acc = agg.merge(acc, window.buckets[day])
    return acc


def _reference_dump(window: DailyWindow[Any, Any, Any]) -> list[Any]:
    out: list[Any] = []
    previous = 0
    for day in sorted(window.buckets):
        out += [day - previous, window.agg.dump(window.buckets[day])]
        previous = day
    return out


NUMBERS = st.one_of(
    st.integers(-50, 50),
    st.integers(-50, 50).map(float),  # whole floats: exact running totals
    st.floats(-100, 100, allow_nan=False).filter(lambda x: not x.is_integer()),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 120), NUMBERS),
        st.tuples(st.just("prune"), st.integers(0, 120), st.just(0)),
        st.tuples(st.just("query"), st.integers(-5, 125), st.integers(0, 95)),
    ),
    max_size=150,
)


@pytest.mark.parametrize("agg", [Sum(), Count(), Mean()], ids=["sum", "count", "mean"])
@example(ops=[("add", 0, 1), ("add", 2, 1), ("add", 1, 0.0001)], floats=True)  # a reload
@given(ops=OPS, floats=st.booleans())
def test_running_totals_answer_as_the_fold(agg: Any, ops: list[Any], floats: bool) -> None:
    # Whatever the order of adds and prunes, and whatever the numbers (exact
    # or not), every query answers exactly what folding the buckets gives,
    # with the same type (an empty range is the empty fold).
    window: DailyWindow[Any, Any, Any] = DailyWindow(agg)
    for op, day, x in ops:
        if op == "add":
            window.add(day, x if floats else int(x))
        elif op == "prune":
            window.prune(day)
        else:
            last = day + x
            expected = agg.result(_reference_fold(window, day, last))
            got = window.result(day, last)
            assert got == expected and type(got) is type(expected)
            assert window.accumulate(day, last) == _reference_fold(window, day, last)
            present = [d for d in window.buckets if day <= d <= last]
            assert window.days_with_data(day, last) == len(present)
            later = [d for d in window.buckets if d >= day]
            assert window.next_day_with_data(day) == (min(later) if later else None)
            assert window.dump() == _reference_dump(window)  # kept between calls
    assert window.dump() == _reference_dump(window)
    loaded = DailyWindow.load(agg, orjson.loads(orjson.dumps(window.dump())))
    assert loaded.buckets == window.buckets
    for first in range(-5, 125, 7):
        assert loaded.result(first, first + 30) == window.result(first, first + 30)


def test_whole_floats_sum_exactly_in_any_order() -> None:
    window: DailyWindow[float, float, float] = DailyWindow(Sum())
    for day, value in [(3, 1e12), (1, 7.0), (2, -3.0), (5, 2.0**40)]:
        window.add(day, value)
    assert window.result(1, 5) == 1e12 + 7.0 - 3.0 + 2.0**40
    assert type(window.result(4, 4)) is int  # no bucket: the empty fold, 0


@pytest.mark.parametrize(
    ("value", "tag"),
    [(3, 1), (-(2**70), 1), (3.0, 2), (2.0**40, 2), (2.0**41, 0), (0.5, 0), (True, 0)],
)
def test_exact_number(value: Any, tag: int) -> None:
    assert exact_number(value) == tag


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["touch", "prune"]), st.integers(0, 30), st.integers(0, 60)),
        max_size=120,
    ),
    since=st.integers(-3, 63),
)
def test_last_seen_next_day_matches_the_map(ops: list[tuple[str, int, int]], since: int) -> None:
    seen = LastSeen(cap=12)
    for op, key, day in ops:
        if op == "touch":
            seen.touch(f"k{key}", day)
            assert seen.count_since(since) == sum(1 for d in seen.days.values() if d >= since)
        else:
            seen.prune(day)
    later = [d for d in seen.days.values() if d >= since]
    assert seen.next_day(since) == (min(later) if later else None)
    assert seen.low_bound <= min(seen.days.values(), default=seen.low_bound)


@given(
    ops=st.lists(
        st.tuples(st.integers(0, 20), st.one_of(st.none(), st.integers(0, 60))), max_size=120
    ),
    since=st.integers(-3, 63),
)
def test_day_index_counts_keys_by_day(ops: list[tuple[int, int | None]], since: int) -> None:
    index = DayIndex()
    expected: dict[str, int] = {}
    for key, day in ops:
        index.set(f"k{key}", day)
        if day is None:
            expected.pop(f"k{key}", None)
        else:
            expected[f"k{key}"] = day
        assert index.count_since(since) == sum(1 for d in expected.values() if d >= since)
    assert index.days == expected
    later = [d for d in expected.values() if d >= since]
    assert index.next_day(since) == (min(later) if later else None)
    assert len(index) == len(expected)
