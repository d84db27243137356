"""The account table: faust's ``Table`` that counts what its changelog recovery reads.

The processor (``streams.processor``) keeps the live ``AccountState`` objects
in the table's in-memory store and writes their changelog records itself;
faust restores the table from the changelog after a restart or a rebalance.
This table counts the records restored, and those that replaced a state the
worker already held (docs/reliability.md, "Recovery from changelogs").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust

from service.runtime import metrics

__all__ = ["AccountTable"]


class AccountTable(faust.Table):  # type: ignore[type-arg]
    """The account table (keys: account id bytes, values: ``AccountState``)."""

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
