"""How a worker runs Python's cyclic garbage collector over its account states.

A worker keeps every account state of its partitions in memory: at 10,000
busy accounts well over a million long-lived objects. CPython's cyclic
collector walks all of them at every full collection, and walks every
object that survived since the last full one at each young collection.
Measured in the benchmark's worker (300,000 events over 10,000 accounts, CPU
time of the collecting thread): 29% of the worker's CPU went to collecting,
0.4 s per full collection, pauses up to 1.3 s; live at 1,750 events/s those
pauses made the p99 (1.6 s).

Almost nothing a worker makes is cyclic garbage (the collector found about
3,000 unreachable objects in that whole run): account states, events and
output records are freed by reference counting. :class:`GcPolicy`:

- every ``freeze_interval_s`` moves every object the collector tracks into
  the permanent generation (:func:`gc.freeze`, constant time): later
  collections only look at what was made since. A frozen object is still
  freed by reference counting the moment it is dropped; only a reference
  cycle made before a freeze waits for the next full collection;
- every ``full_interval_s`` unfreezes, runs one full collection (the
  worker's only long pause, about 0.5 s at 10,000 accounts) and freezes
  again;
- sets the young generation's threshold (``young_threshold`` allocations);
- reports every collection's CPU time in ``vitals_gc_pause_seconds``
  (by generation; the full ones are generation 2).

The policy changes when cyclic garbage is collected, never whether: a test
checks that a cycle made and dropped before a freeze is freed by the next
full collection. Measured on the same run: 4% of the CPU collecting, pauses
up to 0.18 s.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from service.runtime import metrics
from service.runtime.settings import Settings

__all__ = ["GcPolicy"]

log = logging.getLogger(__name__)


class GcPolicy:
    """The collector's schedule for a long-running worker process (see the module)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GcPolicy:
        return cls(
            freeze_interval_s=settings.gc_freeze_interval_s,
            full_interval_s=settings.gc_full_interval_s,
            young_threshold=settings.gc_young_threshold,
        )

    def __init__(
        self, *, freeze_interval_s: float, full_interval_s: float, young_threshold: int
    ) -> None:
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self.young_threshold = young_threshold
        self._started = 0.0
        #: vitals_gc_pause_seconds by generation, resolved once (a labels()
        #: lookup takes a lock, and collections come hundreds a second).
        self._pauses = [metrics.GC_PAUSE_SECONDS.labels(str(g)) for g in range(3)]
        self._last_full = time.monotonic()
        self._installed = False
        self._saved_threshold: tuple[int, int, int] | None = None

    @property
    def enabled(self) -> bool:
        """Whether the policy freezes what the collector tracks (``freeze_interval_s`` > 0)."""
        return self.freeze_interval_s > 0

    def install(self) -> None:
        """Start timing collections and set the young threshold; freeze what
        start-up left (modules, settings, the scorecard)."""
        if self._installed:
            return
        self._installed = True
        gc.callbacks.append(self._on_collection)
        if not self.enabled:
            return
        self._saved_threshold = gc.get_threshold()
        _, middle, old = self._saved_threshold
        gc.set_threshold(self.young_threshold, middle, old)
        gc.collect()
        gc.freeze()
        self._last_full = time.monotonic()

    def uninstall(self) -> None:
        """Undo :meth:`install` (tests; a process that stops being a worker)."""
        if not self._installed:
            return
        self._installed = False
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None
        gc.unfreeze()

    def maintain(self) -> None:
        """Freeze everything the collector tracks; every ``full_interval_s``
        collect everything first. Called from a timer every ``freeze_interval_s``."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.full_interval_s > 0 and now - self._last_full >= self.full_interval_s:
            self._last_full = now
            started = time.thread_time()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            spent = time.thread_time() - started
            # (gc.get_freeze_count() walks the whole frozen list: here only.)
            log.info(
                "full garbage collection: %d unreachable objects freed in %.3f s CPU; "
                "%d objects frozen",
                found,
                spent,
                gc.get_freeze_count(),
            )
        else:
            gc.freeze()

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Runs in whichever thread allocated last (the event loop or faust's
        # consumer thread); thread CPU time, so a GIL hand-over in a
        # finalizer is not counted as collecting.
        if phase == "start":
            self._started = time.thread_time()
            return
        self._pauses[info["generation"]].observe(time.thread_time() - self._started)
