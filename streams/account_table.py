"""The account table: faust's ``Table`` whose recovery skips what this worker wrote itself.

The processor (``streams.processor``) keeps the live ``AccountState`` objects
in the table's in-memory store and writes their changelog records itself,
beside the table (one record per changed account per commit). faust's
recovery knows nothing of those writes: for a partition a worker keeps across
a rebalance it starts reading where its last recovery stopped, so it read
every record the worker had written since, and replaced each live state by a
copy decoded from the changelog (the same content, its caches cold). Measured
by ``test_a_rebalance_keeps_the_live_states_of_the_partitions_a_worker_keeps``:
all 747 records of the two partitions kept read again, each over a live state.

The fix is faust's own hook for stores that keep data across rebalances
(RocksDB): ``persisted_offset(tp)``, the changelog offset up to which the
table already holds the data. The processor reports the offsets of its
acknowledged changelog records (``note_written``); recovery then starts after
them, and reads nothing of a partition the worker kept. An offset is only
reported for a partition whose states the store still holds: it is dropped as
soon as the partition is not an active one of this worker (faust's memory
store drops the states of such partitions when recovery completes).

The store's mapping is a :class:`~service.processing.state_store.StateStore`:
at most ``VITALS_LIVE_STATES`` states live, the others as their bytes.

Also counted, by partition (``service.runtime.metrics``): the records read
into the table by recovery, and those of them that replaced a state already
held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

from service.processing.state_store import StateStore
from service.runtime import metrics

__all__ = ["AccountTable"]


class AccountTable(faust.Table):  # type: ignore[type-arg]
    """The account table (keys: account id bytes, values: ``AccountState``)."""

    def __init__(self, *args: Any, live_states: int = 0, **kwargs: Any) -> None:
        #: States held as live objects (``VITALS_LIVE_STATES``; 0: all).
        self.live_states = live_states
        super().__init__(*args, **kwargs)
        #: changelog partition -> offset of the last record this worker wrote
        #: there and the broker acknowledged, while it held the partition.
        self._written: dict[TP, int] = {}

    def _new_store(self) -> Any:
        # faust's memory store, its mapping replaced by one that holds the
        # least recently used states as their bytes (service.processing.state_store).
        store = super()._new_store()
        store.data = StateStore(self.live_states)
        return store

    @property
    def states(self) -> StateStore:
        """The store's mapping: account key -> state."""
        store: Any = self.data
        states: StateStore = store.data
        return states

    def note_written(self, offsets: Mapping[int, int]) -> None:
        """Record ``{partition: offset}`` of acknowledged changelog records the
        held states already reflect (called by the processor, within the
        assignment the records were written in)."""
        topic = self.changelog_topic_name
        written = self._written
        for partition, offset in offsets.items():
            tp = TP(topic, partition)
            if offset > written.get(tp, -1):
                written[tp] = offset

    def persisted_offset(self, tp: TP) -> int | None:
        """Where faust's recovery of ``tp`` starts (it reads the records after it)."""
        return self._written.get(tp)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        # Called before faust's recovery asks ``persisted_offset``: only a
        # partition that stays an active one of this worker keeps its offset
        # (the store drops the states of any other partition, below).
        actives = self.app.assignor.assigned_actives()
        for tp in list(self._written):
            if tp not in actives:
                del self._written[tp]
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        # faust's memory store drops the keys of every partition that is not
        # active here (by ``pop``, which would decode each state held encoded
        # only to drop it: they are discarded here first, by the same rule);
        # offsets must never outlive the states they stand for.
        store: Any = self.data
        partitions = {tp.partition for tp in active_tps}
        states = self.states
        for key, partition in store._key_partition.items():
            if partition not in partitions:
                states.discard(key)
        await super().on_recovery_completed(active_tps, standby_tps)
        for tp in list(self._written):
            if tp not in active_tps:
                del self._written[tp]

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        events = list(batch)
        held = self.data
        restored: dict[int, int] = {}
        replaced: dict[int, int] = {}
        for event in events:
            partition = event.message.partition
            restored[partition] = restored.get(partition, 0) + 1
            if event.key in held:
                replaced[partition] = replaced.get(partition, 0) + 1
        for partition, count in restored.items():
            metrics.CHANGELOG_RESTORED.labels(str(partition)).inc(count)
        for partition, count in replaced.items():
            metrics.CHANGELOG_STATES_REPLACED.labels(str(partition)).inc(count)
        super().apply_changelog_batch(events)
