"""The processor's timer across a rebalance (no broker: the consumer is a stand-in).

``Processor.maybe_tick`` awaits each tick send; faust runs the revocation
handler (``forget_partitions``) whenever the group rebalances, which can fall
inside one of those awaits. The boundary it was sending must then still be
sent to the partitions of the next assignment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition

from service.scorecard import default_scorecard
from service.settings import load_settings
from streams.app import Topology
from streams.processor import Processor

SETTINGS = load_settings(partitions=2)
TICK = default_scorecard().rescore_interval_ms


@dataclass
class StandInConsumer:
    """Owns ``partitions`` of every source and the ticks topic, all read to the end."""

    partitions: list[int]
    _committed_offset: dict[TopicPartition, int] = field(default_factory=dict)

    def assignment(self) -> set[TopicPartition]:
        topics = [*SETTINGS.input_topics, SETTINGS.repartition_topic, SETTINGS.ticks_topic]
        return {TopicPartition(topic, p) for topic in topics for p in self.partitions}

    def highwater(self, tp: TopicPartition) -> int:
        return 0  # empty topics: caught up


@dataclass
class StandInTicks:
    """Records tick sends; ``during_send`` runs inside the first awaited send."""

    sent: list[tuple[int, Any]] = field(default_factory=list)
    during_send: Callable[[], None] | None = None

    async def send(self, *, key: None, value: bytes, partition: int) -> None:
        if self.during_send is not None:
            hook, self.during_send = self.during_send, None
            hook()
        self.sent.append((partition, orjson.loads(value)["as_of"]))


@dataclass
class StandInApp:
    consumer: StandInConsumer
    rebalancing: bool = False


@dataclass
class StandInTopology:
    app: StandInApp
    ticks: StandInTicks
    settings: Any = SETTINGS


def processor(partitions: list[int]) -> tuple[Processor, StandInTopology]:
    top = StandInTopology(StandInApp(StandInConsumer(partitions)), StandInTicks())
    proc = Processor(cast(Topology, top), default_scorecard())
    # Every partition has been quiet for longer than the idle time.
    proc.started = time.monotonic() - SETTINGS.clock_idle_s - 1
    return proc, top


def boundary() -> int:
    now = int(time.time() * 1000)
    return now - now % TICK


async def test_a_caught_up_worker_sends_the_boundary_once() -> None:
    proc, top = processor([0, 1])
    await proc.maybe_tick()
    await proc.maybe_tick()
    assert sorted(top.ticks.sent) == [(0, boundary()), (1, boundary())]


async def test_rebalance_during_a_tick_send_leaves_the_boundary_to_the_new_assignment() -> None:
    proc, top = processor([1])

    def rebalance() -> None:
        # faust's revocation handler, then the new assignment (all partitions).
        proc.forget_partitions()
        top.app.consumer.partitions = [0, 1]

    top.ticks.during_send = rebalance
    await proc.maybe_tick()
    assert top.ticks.sent == [(1, boundary())]
    await proc.maybe_tick()
    assert sorted(top.ticks.sent[1:]) == [(0, boundary()), (1, boundary())], (
        "the partition taken over must get the boundary announced before the rebalance"
    )


@pytest.mark.parametrize("rebalancing", [True, False])
async def test_no_tick_while_rebalancing(rebalancing: bool) -> None:
    proc, top = processor([0])
    top.app.rebalancing = rebalancing
    await proc.maybe_tick()
    assert bool(top.ticks.sent) is not rebalancing
