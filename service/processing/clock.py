"""The worker's scoring clock: when may silent accounts be re-evaluated, and as of when.

Scores are re-evaluated on a timer so that silence decays health. To keep the
stream equivalent to ``vitals replay`` (same events, same scores, same bucket
changes), timer evaluations happen only at *tick boundaries* (multiples of the
tick length on the UTC epoch) and never ahead of the events still to come:

- a partition that is caught up (nothing left to read) follows the wall clock;
- a partition that is still catching up (a backfill, a restart after downtime)
  follows the event time of the newest event read from it.

The worker's clock is the minimum over its partitions, so a boundary is only
evaluated once every partition has moved past it; an event read later for an
account therefore never precedes an evaluation already made for it (given that
producers write each account's events in time order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PartitionProgress", "floor_to_tick", "tick_boundaries", "timer_as_of"]


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far one input partition has been read."""

    caught_up: bool
    newest_event_ms: int | None


def floor_to_tick(ms: int, tick_ms: int) -> int:
    """The tick boundary at or before ``ms``."""
    return ms - ms % tick_ms


def tick_boundaries(after_ms: int | None, until_ms: int, tick_ms: int) -> range:
    """Boundaries ``b`` with ``after_ms < b <= until_ms`` (none when ``after_ms`` is None)."""
    if after_ms is None or until_ms <= after_ms:
        return range(0)
    first = floor_to_tick(after_ms, tick_ms) + tick_ms
    return range(first, until_ms + 1, tick_ms)


def timer_as_of(now_ms: int, tick_ms: int, partitions: Iterable[PartitionProgress]) -> int | None:
    """The boundary the timer may evaluate silent accounts at, or None for not yet.

    None when the worker owns no partition or a partition still catching up has
    not shown any event time yet.
    """
    clock: int | None = None
    seen = False
    for progress in partitions:
        seen = True
        if progress.caught_up:
            candidate = now_ms
        elif progress.newest_event_ms is None:
            return None
        else:
            candidate = min(progress.newest_event_ms, now_ms)
        clock = candidate if clock is None else min(clock, candidate)
    if not seen or clock is None:
        return None
    return floor_to_tick(clock, tick_ms)
