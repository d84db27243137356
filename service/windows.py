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

Nothing here knows about events, Kafka or faust; all functions are pure apart
from mutating the window object they are called on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "DAY_MS",
    "Aggregation",
    "Count",
    "DailyWindow",
    "LastSeen",
    "Mean",
    "MeanAcc",
    "Sum",
    "day_of",
    "window_start",
]

#: One event-time day in milliseconds; days are UTC calendar days.
DAY_MS: Final = 86_400_000

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

    def dump(self, acc: S) -> Any:
        """JSON-compatible form of an accumulator."""

    def load(self, data: Any) -> S:
        """Inverse of :meth:`dump`."""


class Sum:
    """Sum of numbers; ``add(acc, 1)`` counts. Integers stay integers."""

    def initialize(self) -> float:
        return 0

    def add(self, acc: float, value: float) -> float:
        return acc + value

    def merge(self, left: float, right: float) -> float:
        return left + right

    def result(self, acc: float) -> float:
        return acc

    def dump(self, acc: float) -> Any:
        return acc

    def load(self, data: Any) -> float:
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

    def dump(self, acc: int) -> Any:
        return acc

    def load(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"expected an integer, got {data!r}")
        return data


#: Mean accumulator: (sum, number of values).
MeanAcc = tuple[float, int]


class Mean:
    """Arithmetic mean; ``result`` is ``None`` when nothing was added."""

    def initialize(self) -> MeanAcc:
        return (0, 0)

    def add(self, acc: MeanAcc, value: float) -> MeanAcc:
        return (acc[0] + value, acc[1] + 1)

    def merge(self, left: MeanAcc, right: MeanAcc) -> MeanAcc:
        return (left[0] + right[0], left[1] + right[1])

    def result(self, acc: MeanAcc) -> float | None:
        return acc[0] / acc[1] if acc[1] else None

    def dump(self, acc: MeanAcc) -> Any:
        return [acc[0], acc[1]]

    def load(self, data: Any) -> MeanAcc:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[1], int)):
            raise ValueError(f"expected [sum, count], got {data!r}")
        return (data[0], data[1])


class DailyWindow(Generic[S, V, R]):
    """Aggregates keyed by event-time day: a ring that only keeps recent days.

    Events may arrive in any order; each lands in the bucket of its own day.
    Queries name an inclusive day range, so "the last 7 days as of day D" is
    ``result(window_start(D, 7), D)``.
    """

    __slots__ = ("agg", "buckets")

    def __init__(self, agg: Aggregation[S, V, R]) -> None:
        self.agg = agg
        self.buckets: dict[int, S] = {}

    def add(self, day: int, value: V) -> None:
        """Fold ``value`` into the bucket of ``day``."""
        buckets = self.buckets
        acc = buckets.get(day)
        agg = self.agg
        buckets[day] = agg.add(agg.initialize() if acc is None else acc, value)

    def accumulate(self, first_day: int, last_day: int) -> S:
        """Merged accumulator of the days ``first_day .. last_day`` (inclusive)."""
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
            for day, bucket in buckets.items():
                if first_day <= day <= last_day:
                    acc = agg.merge(acc, bucket)
        return acc

    def result(self, first_day: int, last_day: int) -> R:
        """The aggregate over the days ``first_day .. last_day`` (inclusive)."""
        return self.agg.result(self.accumulate(first_day, last_day))

    def days_with_data(self, first_day: int, last_day: int) -> int:
        """How many days in the range have a bucket."""
        return sum(1 for day in self.buckets if first_day <= day <= last_day)

    def first_day(self) -> int | None:
        """Earliest day holding a bucket, or ``None`` when empty."""
        return min(self.buckets) if self.buckets else None

    def last_day(self) -> int | None:
        """Latest day holding a bucket, or ``None`` when empty."""
        return max(self.buckets) if self.buckets else None

    def prune(self, min_day: int) -> None:
        """Forget every day before ``min_day``."""
        old = [day for day in self.buckets if day < min_day]
        for day in old:
            del self.buckets[day]

    def __len__(self) -> int:
        return len(self.buckets)

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def dump(self) -> list[Any]:
        """Compact JSON form ``[day0, acc0, day1 - day0, acc1, ...]``.

        Days are sorted and delta-encoded (usually 1), so a dense 90-day window
        costs a few bytes per day and a sparse one stays small too.
        """
        out: list[Any] = []
        previous = 0
        agg = self.agg
        for day in sorted(self.buckets):
            out.append(day - previous)
            out.append(agg.dump(self.buckets[day]))
            previous = day
        return out

    @classmethod
    def load(cls, agg: Aggregation[S, V, R], data: Any) -> DailyWindow[S, V, R]:
        """Inverse of :meth:`dump`."""
        window = cls(agg)
        if not isinstance(data, list) or len(data) % 2:
            raise ValueError("daily window must be a list of [day delta, value] pairs")
        day = 0
        for i in range(0, len(data), 2):
            delta = data[i]
            if not isinstance(delta, int) or (i and delta <= 0):
                raise ValueError(f"bad day delta {delta!r} in daily window")
            day += delta
            window.buckets[day] = agg.load(data[i + 1])
        return window


class LastSeen:
    """Key -> last event-time day seen, with at most ``cap`` keys.

    ``touch`` keeps the latest day per key whatever the arrival order. When a
    new key would exceed the cap, the least recently seen tenth of the keys is
    evicted (ties by insertion order), so eviction costs O(log n) per insert
    amortised. An evicted key is, by construction, one of the oldest: counts
    over recent windows stay exact as long as fewer than ``cap`` keys were
    seen in the window. A histogram of keys per last day (derived, not
    serialised) makes :meth:`count_since` cost O(days), not O(keys).
    """

    __slots__ = ("cap", "days", "hist")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self.days: dict[str, int] = {}
        #: last day -> number of keys whose last day it is.
        self.hist: dict[int, int] = {}

    def touch(self, key: str, day: int) -> list[str]:
        """Record ``key`` as seen on ``day``; returns the keys evicted (usually none)."""
        days = self.days
        hist = self.hist
        old = days.get(key)
        if old is None:
            days[key] = day
            hist[day] = hist.get(day, 0) + 1
            if len(days) > self.cap:
                return self._evict()
        elif day > old:
            days[key] = day
            hist[day] = hist.get(day, 0) + 1
            self._unhist(old)
        return []

    def _unhist(self, day: int) -> None:
        left = self.hist[day] - 1
        if left:
            self.hist[day] = left
        else:
            del self.hist[day]

    def _evict(self) -> list[str]:
        excess = len(self.days) - self.cap
        n = max(excess, self.cap // 10, 1)
        # sorted() is stable: among equal days the earliest inserted goes first.
        victims = [key for key, _ in sorted(self.days.items(), key=lambda kv: kv[1])[:n]]
        for key in victims:
            self._unhist(self.days.pop(key))
        return victims

    def get(self, key: str) -> int | None:
        """Last day ``key`` was seen, or ``None``."""
        return self.days.get(key)

    def count_since(self, first_day: int) -> int:
        """Number of keys seen on or after ``first_day``."""
        return sum(n for day, n in self.hist.items() if day >= first_day)

    def keys_since(self, first_day: int) -> Iterator[str]:
        """Keys seen on or after ``first_day``."""
        return (key for key, day in self.days.items() if day >= first_day)

    def prune(self, min_day: int) -> list[str]:
        """Forget keys last seen before ``min_day``; returns them."""
        old = [key for key, day in self.days.items() if day < min_day]
        for key in old:
            del self.days[key]
        for day in [d for d in self.hist if d < min_day]:
            del self.hist[day]
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
        return seen
