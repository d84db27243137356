"""Event-time windows for per-account state: small, bounded, serialisable.

Two building blocks hold everything the scoring model reads about the past:

* :class:`DailyWindow` -- one aggregate per event-time day (UTC), keyed by the
  day number ``occurred_at // DAY_MS``; "the last N days as of day D" folds the
  buckets of days ``D-N+1 .. D``. Old days are dropped by :meth:`DailyWindow.prune`,
  so a window never holds more than the retention horizon (about 91 buckets).
* :class:`LastSeen` -- key -> last event-time day it was seen (user -> last
  active day, feature -> last used day). "Distinct keys in the last N days" is
  a count of keys whose day is recent enough, with no per-day sets to union.
  The number of keys is capped; past the cap the least recently seen keys are
  evicted in batches.

An aggregation (:class:`Aggregation`) is the quix-streams shape: ``initialize``
gives the empty accumulator, ``add`` folds one value in, ``merge`` combines two
accumulators (folding several days), ``result`` turns an accumulator into the
answer; ``dump``/``load`` give its JSON form so state round-trips exactly.

Range queries are O(1): both structures keep running totals per day (see
:class:`_Prefix`), updated from the day an event changes, so an event on the
current day costs one step. Totals of a daily window are only used where
they are exact: integer accumulators (counts, integer sums), or floats that
are all whole numbers small enough that every partial sum is exact (KPI
amounts). A window holding any other float falls back to folding its buckets
in the same order as always, so results never depend on whether the totals
were used.

Nothing here knows about events, Kafka or faust; all functions are pure apart
from mutating the window object they are called on (mutate windows only
through their methods: the running totals follow those).
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import accumulate, repeat
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "DAY_MS",
    "Aggregation",
    "Count",
    "DailyWindow",
    "LastSeen",
    "Mean",
    "MeanAcc",
    "Number",
    "Sum",
    "day_of",
    "exact_number",
    "window_start",
]

#: One event-time day in milliseconds; days are UTC calendar days.
DAY_MS: Final = 86_400_000

#: Whole floats up to this magnitude are "exact": 1024 days of them sum
#: below 2**53, where every whole number is a float.
_EXACT_FLOAT_MAX: Final = float(2**40)

S = TypeVar("S")
V_contra = TypeVar("V_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
V = TypeVar("V")
R = TypeVar("R")


def day_of(ms: int) -> int:
    """Event-time day number (days since 1970-01-01 UTC) of an epoch-ms time."""
    return ms // DAY_MS


def window_start(as_of_day: int, days: int) -> int:
    """First day of the ``days``-day window that ends with (and includes) ``as_of_day``."""
    return as_of_day - days + 1


def exact_number(value: object) -> int:
    """1 for an int, 2 for a whole float of magnitude up to 2**40, else 0.

    Sums and differences of up to 1024 numbers with the same non-zero tag
    are exact, so they do not depend on the order of the operations.
    """
    kind = type(value)
    if kind is int:
        return 1
    if (
        kind is float
        and isinstance(value, float)
        and value.is_integer()
        and -_EXACT_FLOAT_MAX <= value <= _EXACT_FLOAT_MAX
    ):
        return 2
    return 0


class Aggregation(Protocol[S, V_contra, R_co]):
    """How one windowed metric accumulates: initialize / add / merge / result."""

    def initialize(self) -> S:
        """The empty accumulator."""

    def add(self, acc: S, value: V_contra) -> S:
        """Fold one value into an accumulator; returns the new accumulator."""

    def merge(self, left: S, right: S) -> S:
        """Combine two accumulators (e.g. two days) into one."""

    def result(self, acc: S) -> R_co:
        """The answer for an accumulator (``initialize()`` gives the empty answer)."""

    def subtract(self, left: S, right: S) -> S:
        """Inverse of :meth:`merge`: ``subtract(merge(a, b), b) == a`` for exact accumulators."""

    def exact(self, acc: S) -> int:
        """0 when ``acc`` may hold a rounded float, else a tag of its number
        type: merging and subtracting accumulators with the same tag is exact
        in any order (see :func:`exact_number`)."""

    def dump(self, acc: S) -> Any:
        """JSON-compatible form of an accumulator."""

    def load(self, data: Any) -> S:
        """Inverse of :meth:`dump`."""


#: A number that keeps its type. Not ``float``, which mypy lets an int stand for:
#: compiled code (mypyc, README "Compiled model") holds a ``float`` as a C
#: double and would turn integer counts into floats (other state bytes, other
#: exactness tags).
Number = int | float


class Sum:
    """Sum of numbers; ``add(acc, 1)`` counts. Integers stay integers."""

    def initialize(self) -> Number:
        return 0

    def add(self, acc: Number, value: Number) -> Number:
        return acc + value

    def merge(self, left: Number, right: Number) -> Number:
        return left + right

    def result(self, acc: Number) -> Number:
        return acc

    def subtract(self, left: Number, right: Number) -> Number:
        return left - right

    def exact(self, acc: Number) -> int:
        return exact_number(acc)

    def dump(self, acc: Number) -> Any:
        return acc

    def load(self, data: Any) -> Number:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"expected a number, got {data!r}")
        return data


class Count:
    """Number of values added (the value itself is ignored)."""

    def initialize(self) -> int:
        return 0

    def add(self, acc: int, value: object) -> int:
        return acc + 1

    def merge(self, left: int, right: int) -> int:
        return left + right

    def result(self, acc: int) -> int:
        return acc

    def subtract(self, left: int, right: int) -> int:
        return left - right

    def exact(self, acc: int) -> int:
        return exact_number(acc)

    def dump(self, acc: int) -> Any:
        return acc

    def load(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"expected an integer, got {data!r}")
        return data


#: Mean accumulator: (sum, number of values).
MeanAcc = tuple[Number, int]


class Mean:
    """Arithmetic mean; ``result`` is ``None`` when nothing was added."""

    def initialize(self) -> MeanAcc:
        return (0, 0)

    def add(self, acc: MeanAcc, value: Number) -> MeanAcc:
        return (acc[0] + value, acc[1] + 1)

    def merge(self, left: MeanAcc, right: MeanAcc) -> MeanAcc:
        return (left[0] + right[0], left[1] + right[1])

    def result(self, acc: MeanAcc) -> float | None:
        return acc[0] / acc[1] if acc[1] else None

    def subtract(self, left: MeanAcc, right: MeanAcc) -> MeanAcc:
        return (left[0] - right[0], left[1] - right[1])

    def exact(self, acc: MeanAcc) -> int:
        return exact_number(acc[0])

    def dump(self, acc: MeanAcc) -> Any:
        return [acc[0], acc[1]]

    def load(self, data: Any) -> MeanAcc:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[1], int)):
            raise ValueError(f"expected [sum, count], got {data!r}")
        return (data[0], data[1])


#: Widest day span running totals cover. Compacted state spans about 92
#: days; a wider window (possible only without compaction) folds its buckets.
_MAX_SPAN: Final = 1024
#: The ``low`` bound of an empty map.
_NONE: Final = 1 << 62


_add: Final = operator.add
_sub: Final = operator.sub


class _Prefix:
    """Running totals over consecutive days of a ``day -> value`` mapping.

    ``sums[i]`` merges the values of the days ``base .. base + i - 1`` and
    ``marks[i]`` counts the days present among them, so a day range costs two
    lookups. The owner reports each changed day (:meth:`update`, after
    changing the mapping), which recomputes the totals from that day on: one
    step for the latest day, where nearly all events land. Days below
    ``floor`` were pruned from the mapping while the totals still include
    them, so queries start at ``floor``; a change below it, or a span wider
    than ``_MAX_SPAN``, empties ``sums`` and :meth:`rebuild` starts again.
    """

    __slots__ = ("base", "floor", "marks", "sums", "top")

    def __init__(self) -> None:
        self.base = 0
        self.floor = 0
        #: Last day covered: ``sums`` has ``top - base + 2`` entries.
        self.top = -1
        #: Empty: not built (built on the first query).
        self.sums: list[Any] = []
        self.marks: list[int] = []

    def update(self, day: int, source: dict[int, Any], merge: Callable[[Any, Any], Any]) -> None:
        """``source[day]`` changed (was set, merged into or deleted)."""
        sums = self.sums
        if not sums:
            return
        if day < self.floor or day - self.base >= _MAX_SPAN:
            self.sums = []
            return
        marks = self.marks
        top = self.top
        if day > top:
            total = sums[-1]
            count = marks[-1]
            for _ in range(top + 1, day):
                sums.append(total)
                marks.append(count)
            value = source.get(day)
            if value is not None:
                total = merge(total, value)
                count += 1
            sums.append(total)
            marks.append(count)
            self.top = day
            return
        i = day - self.base
        total = sums[i]
        count = marks[i]
        get = source.get
        for current in range(day, top + 1):
            i += 1
            value = get(current)
            if value is not None:
                total = merge(total, value)
                count += 1
            sums[i] = total
            marks[i] = count

    def pruned(self, min_day: int) -> None:
        """Every day before ``min_day`` was removed from the mapping."""
        if min_day > self.floor:
            self.floor = min_day

    def rebuild(self, source: dict[int, Any], merge: Callable[[Any, Any], Any], zero: Any) -> bool:
        """Build the totals from scratch; ``False`` when they cannot serve (an
        empty or too wide mapping: the caller computes directly)."""
        if not source:
            return False
        low, high = min(source), max(source)
        if high - low >= _MAX_SPAN:
            return False
        days = range(low, high + 1)
        marks = list(accumulate(map(source.__contains__, days), initial=0))
        if merge is _add:
            # Numbers: C-level additions. A missing day adds 0, which leaves a
            # running total unchanged (it starts at 0 and so is never -0.0):
            # the same totals as merging day by day.
            sums = list(accumulate(map(source.get, days, repeat(0)), _add, initial=zero))
        else:
            total = zero
            sums = [total]
            get = source.get
            for day in days:
                value = get(day)
                if value is not None:
                    total = merge(total, value)
                sums.append(total)
        self.base = self.floor = low
        self.top = high
        self.sums = sums
        self.marks = marks
        return True

    def total(
        self, first_day: int, last_day: int, zero: Any, subtract: Callable[[Any, Any], Any]
    ) -> Any:
        """Merged values of the days ``first_day .. last_day`` (built totals only)."""
        if first_day < self.floor:
            first_day = self.floor
        if last_day > self.top:
            last_day = self.top
        base = self.base
        marks = self.marks
        if first_day > last_day or marks[last_day - base + 1] == marks[first_day - base]:
            return zero  # no day present: the empty fold (same type)
        return subtract(self.sums[last_day - base + 1], self.sums[first_day - base])

    def count(self, first_day: int, last_day: int) -> int:
        """Days present in ``first_day .. last_day`` (built totals only)."""
        if first_day < self.floor:
            first_day = self.floor
        if last_day > self.top:
            last_day = self.top
        if first_day > last_day:
            return 0
        base = self.base
        return self.marks[last_day - base + 1] - self.marks[first_day - base]

    def first_present(self, first_day: int) -> int | None:
        """Earliest day present at or after ``first_day`` (built totals only)."""
        if first_day < self.floor:
            first_day = self.floor
        if first_day > self.top:
            return None
        marks = self.marks
        i = first_day - self.base
        j = bisect_right(marks, marks[i], i)
        return None if j >= len(marks) else self.base + j - 1


#: merge methods that are plain number additions.
_ADDITIVE: Final = (Sum.merge, Count.merge)


class DailyWindow(Generic[S, V, R]):
    """Aggregates keyed by event-time day: a ring that only keeps recent days.

    Events may arrive in any order; each lands in the bucket of its own day.
    Queries name an inclusive day range, so "the last 7 days as of day D" is
    ``result(window_start(D, 7), D)``. While the accumulators are exact
    (all integers, or all whole floats: :func:`exact_number`), queries read
    running totals; otherwise they fold the buckets.
    """

    __slots__ = (
        "_dumped",
        "_dumped_last",
        "_exact",
        "_low",
        "_merge",
        "_prefix",
        "_zero",
        "agg",
        "buckets",
    )

    def __init__(self, agg: Aggregation[S, V, R]) -> None:
        self.agg = agg
        self.buckets: dict[int, S] = {}
        self._zero = agg.initialize()
        #: agg.merge, or operator.add itself for plain numbers (C-level totals).
        self._merge: Callable[[Any, Any], Any] = (
            _add if getattr(type(agg), "merge", None) in _ADDITIVE else agg.merge
        )
        #: The accumulators' common exact_number tag: -1 none yet, 0 not exact.
        self._exact = -1
        #: A lower bound of the days held (prune is free when nothing is older).
        self._low = _NONE
        self._prefix = _Prefix()
        #: dump()'s answer, kept up to date while events land on the latest
        #: day (None: rebuild), and the last day in it.
        self._dumped: list[Any] | None = None
        self._dumped_last = 0

    def add(self, day: int, value: V) -> bool:
        """Fold ``value`` into the bucket of ``day``; returns whether the bucket is new."""
        buckets = self.buckets
        acc = buckets.get(day)
        agg = self.agg
        new = acc is None
        acc = buckets[day] = agg.add(self._zero if acc is None else acc, value)
        exact = self._exact
        if exact:
            kind = agg.exact(acc)
            if kind != exact:
                self._exact = kind if exact < 0 else 0
        if day < self._low:
            self._low = day
        self._prefix.update(day, buckets, self._merge)
        dumped = self._dumped
        if dumped:
            last = self._dumped_last
            if day == last:
                dumped[-1] = agg.dump(acc)
            elif day > last:
                dumped.append(day - last)
                dumped.append(agg.dump(acc))
                self._dumped_last = day
            else:
                self._dumped = None
        elif dumped is not None:
            self._dumped = None
        return new

    def accumulate(self, first_day: int, last_day: int) -> S:
        """Merged accumulator of the days ``first_day .. last_day`` (inclusive)."""
        if self._exact > 0:
            prefix = self._prefix
            agg = self.agg
            if prefix.sums or prefix.rebuild(self.buckets, self._merge, self._zero):
                acc: S = prefix.total(first_day, last_day, self._zero, agg.subtract)
                return acc
        return self._fold(first_day, last_day)

    def _fold(self, first_day: int, last_day: int) -> S:
        # The reference computation; the only one used once a float is held.
        # Buckets are merged in day order, never in insertion order: a float
        # sum depends on its order, and a state loaded from the changelog
        # (buckets in day order) must answer exactly as the live one.
        agg = self.agg
        acc = agg.initialize()
        buckets = self.buckets
        if last_day - first_day < len(buckets):
            # Short range: look the days up rather than scan every bucket.
            for day in range(first_day, last_day + 1):
                bucket = buckets.get(day)
                if bucket is not None:
                    acc = agg.merge(acc, bucket)
        else:
            for day in sorted(buckets):
                if first_day <= day <= last_day:
                    acc = agg.merge(acc, buckets[day])
        return acc

    def result(self, first_day: int, last_day: int) -> R:
        """The aggregate over the days ``first_day .. last_day`` (inclusive)."""
        agg = self.agg
        if not self.buckets:
            return agg.result(self._zero)
        if self._exact > 0:
            # accumulate() inlined: this is the hot path of most metrics.
            prefix = self._prefix
            if prefix.sums or prefix.rebuild(self.buckets, self._merge, self._zero):
                if first_day < prefix.floor:
                    first_day = prefix.floor
                if last_day > prefix.top:
                    last_day = prefix.top
                base = prefix.base
                marks = prefix.marks
                if first_day > last_day or marks[last_day - base + 1] == marks[first_day - base]:
                    return agg.result(self._zero)  # no bucket: the empty fold, same type
                sums = prefix.sums
                return agg.result(agg.subtract(sums[last_day - base + 1], sums[first_day - base]))
        return agg.result(self._fold(first_day, last_day))

    def days_with_data(self, first_day: int, last_day: int) -> int:
        """How many days in the range have a bucket."""
        prefix = self._prefix
        if prefix.sums or prefix.rebuild(self.buckets, self._merge, self._zero):
            return prefix.count(first_day, last_day)
        return sum(1 for day in self.buckets if first_day <= day <= last_day)

    def next_day_with_data(self, first_day: int) -> int | None:
        """Earliest day at or after ``first_day`` holding a bucket, or ``None``."""
        prefix = self._prefix
        if prefix.sums or prefix.rebuild(self.buckets, self._merge, self._zero):
            return prefix.first_present(first_day)
        later = [day for day in self.buckets if day >= first_day]
        return min(later) if later else None

    @property
    def low_bound(self) -> int:
        """A day at or before every day held (a huge number when empty)."""
        return self._low

    def first_day(self) -> int | None:
        """Earliest day holding a bucket, or ``None`` when empty."""
        return min(self.buckets) if self.buckets else None

    def last_day(self) -> int | None:
        """Latest day holding a bucket, or ``None`` when empty."""
        return max(self.buckets) if self.buckets else None

    def prune(self, min_day: int) -> bool:
        """Forget every day before ``min_day``; returns whether any was held."""
        low = self._low
        if min_day <= low:
            return False
        buckets = self.buckets
        if min_day - low <= len(buckets):
            # Usually one day a day: look the old days up.
            dropped = False
            pop = buckets.pop
            for day in range(low, min_day):
                if pop(day, None) is not None:
                    dropped = True
        else:
            old = [day for day in buckets if day < min_day]
            for day in old:
                del buckets[day]
            dropped = bool(old)
        self._low = min_day if buckets else _NONE
        self._prefix.pruned(min_day)
        if dropped:
            self._trim_dump(min_day)
        return dropped

    def _trim_dump(self, min_day: int) -> None:
        # Drop the days before min_day from the front of the kept dump (the
        # oldest day usually, once a day) instead of dumping again.
        dumped = self._dumped
        if not dumped:
            self._dumped = None
            return
        day = dumped[0]
        i = 0
        while day < min_day:
            i += 2
            if i >= len(dumped):
                self._dumped = None
                return
            day += dumped[i]
        del dumped[:i]
        dumped[0] = day

    def __len__(self) -> int:
        return len(self.buckets)

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def dump(self) -> list[Any]:
        """Compact JSON form ``[day0, acc0, day1 - day0, acc1, ...]``.

        Days are sorted and delta-encoded (usually 1), so a dense 90-day window
        costs a few bytes per day and a sparse one stays small too. (Kept
        between calls: the state is serialised after every event.)
        """
        dumped = self._dumped
        if dumped is None:
            dumped = []
            previous = 0
            agg = self.agg
            for day in sorted(self.buckets):
                dumped.append(day - previous)
                dumped.append(agg.dump(self.buckets[day]))
                previous = day
            self._dumped = dumped
            self._dumped_last = previous
        return dumped.copy()

    @classmethod
    def load(cls, agg: Aggregation[S, V, R], data: Any) -> DailyWindow[S, V, R]:
        """Inverse of :meth:`dump`."""
        window = cls(agg)
        if not isinstance(data, list) or len(data) % 2:
            raise ValueError("daily window must be a list of [day delta, value] pairs")
        day = 0
        buckets = window.buckets
        exact = -1
        for i in range(0, len(data), 2):
            delta = data[i]
            if not isinstance(delta, int) or (i and delta <= 0):
                raise ValueError(f"bad day delta {delta!r} in daily window")
            day += delta
            acc = buckets[day] = agg.load(data[i + 1])
            if exact:
                kind = agg.exact(acc)
                if kind != exact:
                    exact = kind if exact < 0 else 0
        window._exact = exact
        if buckets:
            window._low = min(buckets)
        return window


class _DayHistogram:
    """Keys per day (``hist``) with running totals: the counting shared by
    :class:`LastSeen` and :class:`DayIndex`, which keep ``hist`` up to date."""

    __slots__ = ("_prefix", "hist")

    hist: dict[int, int]
    _prefix: _Prefix

    def count_since(self, first_day: int) -> int:
        """Number of keys whose day is on or after ``first_day`` (O(1) once built)."""
        prefix = self._prefix
        if prefix.sums or prefix.rebuild(self.hist, _add, 0):
            if first_day < prefix.floor:
                first_day = prefix.floor
            if first_day > prefix.top:
                return 0
            sums = prefix.sums
            n: int = sums[-1] - sums[first_day - prefix.base]
            return n
        return sum(n for day, n in self.hist.items() if day >= first_day)

    def next_day(self, first_day: int) -> int | None:
        """Earliest day on or after ``first_day`` any key has, or ``None``."""
        prefix = self._prefix
        if prefix.sums or prefix.rebuild(self.hist, _add, 0):
            return prefix.first_present(first_day)
        later = [day for day in self.hist if day >= first_day]
        return min(later) if later else None


class LastSeen(_DayHistogram):
    """Key -> last event-time day seen, with at most ``cap`` keys.

    ``touch`` keeps the latest day per key whatever the arrival order. When a
    new key would exceed the cap, the least recently seen tenth of the keys is
    evicted (ties by insertion order), so eviction costs O(log n) per insert
    amortised. An evicted key is, by construction, one of the oldest: counts
    over recent windows stay exact as long as fewer than ``cap`` keys were
    seen in the window. A histogram of keys per last day (derived, not
    serialised) with running totals makes :meth:`count_since` O(1).
    """

    __slots__ = ("_low", "cap", "days")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self.days: dict[str, int] = {}
        #: last day -> number of keys whose last day it is.
        self.hist: dict[int, int] = {}
        #: A lower bound of the days held.
        self._low = _NONE
        self._prefix = _Prefix()

    def touch(self, key: str, day: int) -> list[str]:
        """Record ``key`` as seen on ``day``; returns the keys evicted (usually none)."""
        days = self.days
        hist = self.hist
        old = days.get(key)
        if old is None:
            days[key] = day
            hist[day] = hist.get(day, 0) + 1
            self._prefix.update(day, hist, _add)
            if day < self._low:
                self._low = day
            if len(days) > self.cap:
                return self._evict()
        elif day > old:
            days[key] = day
            hist[day] = hist.get(day, 0) + 1
            self._prefix.update(day, hist, _add)
            self._unhist(old)
        return []

    def _unhist(self, day: int) -> None:
        left = self.hist[day] - 1
        if left:
            self.hist[day] = left
        else:
            del self.hist[day]
        self._prefix.update(day, self.hist, _add)

    def _evict(self) -> list[str]:
        excess = len(self.days) - self.cap
        n = max(excess, self.cap // 10, 1)
        # sorted() is stable: among equal days the earliest inserted goes first.
        victims = [key for key, _ in sorted(self.days.items(), key=lambda kv: kv[1])[:n]]
        for key in victims:
            self._unhist(self.days.pop(key))
        return victims

    @property
    def low_bound(self) -> int:
        """A day at or before every last day held (a huge number when empty)."""
        return self._low

    def get(self, key: str) -> int | None:
        """Last day ``key`` was seen, or ``None``."""
        return self.days.get(key)

    def keys_since(self, first_day: int) -> Iterator[str]:
        """Keys seen on or after ``first_day``."""
        return (key for key, day in self.days.items() if day >= first_day)

    def prune(self, min_day: int) -> list[str]:
        """Forget keys last seen before ``min_day``; returns them."""
        if min_day <= self._low:
            return []
        old = [key for key, day in self.days.items() if day < min_day]
        for key in old:
            del self.days[key]
        hist = self.hist
        for day in [d for d in hist if d < min_day]:
            del hist[day]
        self._low = min(hist) if hist else _NONE
        self._prefix.pruned(min_day)
        return old

    def __len__(self) -> int:
        return len(self.days)

    def __contains__(self, key: object) -> bool:
        return key in self.days

    def dump(self) -> dict[str, int]:
        """JSON form: the key -> day mapping in insertion order."""
        return dict(self.days)

    @classmethod
    def load(cls, cap: int, data: Any) -> LastSeen:
        """Inverse of :meth:`dump`."""
        if not isinstance(data, dict):
            raise ValueError("last-seen map must be an object")
        seen = cls(cap)
        hist = seen.hist
        for key, day in data.items():
            if not isinstance(day, int) or isinstance(day, bool):
                raise ValueError(f"bad day {day!r} for key {key!r}")
            seen.days[key] = day
            hist[day] = hist.get(day, 0) + 1
        if hist:
            seen._low = min(hist)
        return seen


class DayIndex(_DayHistogram):
    """Key -> day, with O(1) "how many keys have a day on or after D".

    Like :class:`LastSeen` without the cap or the latest-day rule: a key's
    day is set (or removed) as a whole. Derived indexes use it (the key
    feature adoption of :mod:`service.model.account_state`).
    """

    __slots__ = ("days",)

    def __init__(self) -> None:
        self.days: dict[str, int] = {}
        self.hist: dict[int, int] = {}
        self._prefix = _Prefix()

    def set(self, key: str, day: int | None) -> None:
        """Give ``key`` the day ``day``, or remove it (``None``)."""
        days = self.days
        old = days.get(key)
        if old == day:
            return
        hist = self.hist
        prefix = self._prefix
        if old is not None:
            left = hist[old] - 1
            if left:
                hist[old] = left
            else:
                del hist[old]
            prefix.update(old, hist, _add)
        if day is None:
            del days[key]
        else:
            days[key] = day
            hist[day] = hist.get(day, 0) + 1
            prefix.update(day, hist, _add)

    def __len__(self) -> int:
        return len(self.days)
