"""The processor's timer (no broker: the consumer is a stand-in).

``Processor.maybe_tick`` awaits each tick send; faust runs the revocation
handler (``forget_partitions``) whenever the group rebalances, which can fall
inside one of those awaits. The boundary it was sending must then still be
sent to the partitions of the next assignment.

A source partition the consumer has no highwater for (no fetch response yet)
must not hold the clock forever: the timer asks the broker for its end offset.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition

from service.model.scorecard import default_scorecard
from service.runtime.settings import load_settings
from streams import processor as processor_module
from streams.app import Topology
from streams.processor import Pending, Processor

SETTINGS = load_settings(partitions=2)
TICK = default_scorecard().rescore_interval_ms


@dataclass
class StandInConsumer:
    """Owns ``partitions`` of every source and the ticks topic, all read to the end."""

    partitions: list[int]
    _committed_offset: dict[TopicPartition, int] = field(default_factory=dict)
    #: Topics no fetch response has given a highwater for.
    unfetched: set[str] = field(default_factory=set)
    #: End offsets the broker answers with (``highwaters``).
    broker_ends: dict[str, int] = field(default_factory=dict)
    asked: list[TopicPartition] = field(default_factory=list)
    #: End offsets of topics with records (the rest are empty).
    ends: dict[str, int] = field(default_factory=dict)
    sought: list[tuple[TopicPartition, int]] = field(default_factory=list)
    paused: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        topics = [*SETTINGS.input_topics, SETTINGS.repartition_topic, SETTINGS.ticks_topic]
        return {TopicPartition(topic, p) for topic in topics for p in self.partitions}

    def highwater(self, tp: TopicPartition) -> int | None:
        if tp.topic in self.unfetched:
            return None
        return self.ends.get(tp.topic, 0)  # empty topics: caught up

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append((tp, offset))

    def pause_partitions(self, tps: list[TopicPartition]) -> None:
        self.paused.update(tps)

    def resume_partitions(self, tps: list[TopicPartition]) -> None:
        self.paused.difference_update(tps)

    async def highwaters(self, *tps: TopicPartition) -> dict[TopicPartition, int]:
        self.asked.extend(tps)
        return {tp: self.broker_ends[tp.topic] for tp in tps if tp.topic in self.broker_ends}


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


def waiting_event(proc: Processor, partition: int) -> None:
    """Put one buffered item (a tick at the epoch: due as soon as anything is) on ``partition``."""
    source = (SETTINGS.input_topic("login"), partition)
    proc.push(partition, 0, Pending(source, 0, None, 0))


async def test_an_unfetched_empty_source_does_not_hold_the_clock() -> None:
    proc, top = processor([0])
    repartition = SETTINGS.repartition_topic
    top.app.consumer.unfetched = {repartition}
    top.app.consumer.broker_ends = {repartition: 0}
    assert proc.safe_time(0) is None, "without an end offset the source might hold events"
    await proc.maybe_tick()
    assert top.app.consumer.asked == [TopicPartition(repartition, 0)]
    assert proc.safe_time(0) == math.inf
    assert top.ticks.sent == [(0, boundary())]


async def test_a_partition_held_by_a_silent_source_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(processor_module, "STALL_REPORT_S", 0.0)
    proc, top = processor([0])
    repartition = SETTINGS.repartition_topic
    top.app.consumer.unfetched = {repartition}  # and the broker does not answer for it
    waiting_event(proc, 0)
    with caplog.at_level(logging.WARNING, logger="vitals.processor"):
        await proc.maybe_tick()
    assert top.ticks.sent == [(0, None)], "only a wake-up: the clock is held"
    assert f"partition 0: 1 buffered events, none applied for 0 s, wait for {repartition}:0" in (
        caplog.text
    )
    assert "end offset None" in caplog.text


def stalled_for_long(proc: Processor, partition: int) -> None:
    """As if ``partition``'s buffered events had waited well past ``STALL_REPORT_S``."""
    long_ago = time.monotonic() - 2 * processor_module.STALL_REPORT_S
    oldest = proc.buffers[partition][0][1]
    proc.stalled[partition] = (oldest, long_ago, 0.0)


def login_read_up_to_3_of_10(proc: Processor, top: StandInTopology) -> TopicPartition:
    """login:0 has offsets 0-9; 0-3 were read (newest event time 5); an item
    of event time 7 waits in partition 0's buffer."""
    login = SETTINGS.input_topic("login")
    top.app.consumer.ends = {login: 10}
    proc.positions[(login, 0)] = 3
    proc.watermarks[(login, 0)] = 5
    proc.push(0, 7, Pending((SETTINGS.input_topic("outcome"), 0), 0, None, 7))
    return TopicPartition(login, 0)


def silent_for_long(proc: Processor, tp: TopicPartition) -> None:
    """As if nothing had been read from ``tp`` for well over ``STALL_REPORT_S``."""
    proc.last_read[(tp.topic, tp.partition)] = (
        time.monotonic() - 2 * processor_module.STALL_REPORT_S
    )


async def logged_tick(proc: Processor, caplog: pytest.LogCaptureFixture) -> str:
    """Run the timer once; what the processor logged at WARNING."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitals.processor"):
        await proc.maybe_tick()
    return caplog.text


async def test_a_source_that_stops_delivering_its_records_is_fetched_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc, top = processor([0])
    login = login_read_up_to_3_of_10(proc, top)
    silent_for_long(proc, login)
    stalled_for_long(proc, 0)
    logged = await logged_tick(proc, caplog)
    assert top.app.consumer.sought == [(login, 4)]
    assert f"for {login.topic}:0 (end offset 10, last offset read 3" in logged
    assert "seeking it to fetch again" in logged


async def test_a_source_still_delivering_is_not_sought(caplog: pytest.LogCaptureFixture) -> None:
    proc, top = processor([0])
    login = login_read_up_to_3_of_10(proc, top)
    proc.last_read[(login.topic, 0)] = time.monotonic()  # records keep coming: a lagging source
    stalled_for_long(proc, 0)
    logged = await logged_tick(proc, caplog)
    assert top.app.consumer.sought == []
    assert f"for {login.topic}:0 (end offset 10" in logged, "still logged"


async def test_a_partition_still_applying_events_is_not_a_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc, top = processor([0])
    login = login_read_up_to_3_of_10(proc, top)
    silent_for_long(proc, login)
    stalled_for_long(proc, 0)
    # Since then the item that was oldest has been applied: a newer one leads.
    oldest, since, last_logged = proc.stalled[0]
    proc.stalled[0] = (oldest - 1, since, last_logged)
    assert "none applied" not in await logged_tick(proc, caplog)
    assert top.app.consumer.sought == []


@dataclass
class StandInRecord:
    value: bytes
    key: bytes
    partition: int
    offset: int
    headers: tuple[()] = ()


async def test_a_backfill_behind_the_clock_gets_the_boundary_again() -> None:
    """A worker idle past a tick boundary has sent it to no account; events older
    than it that arrive afterwards must get it too (or their silent days are
    not rescored until the next boundary, unlike replay)."""
    from service.processing.partitioning import account_partition

    proc, top = processor([0, 1])
    await proc.maybe_tick()
    assert sorted(top.ticks.sent) == [(0, boundary()), (1, boundary())]
    account = next(
        f"acct-{i}" for i in range(50) if account_partition(f"acct-{i}".encode(), 2) == 0
    )
    login_topic = next(topic for topic, kind in SETTINGS.input_topics.items() if kind == "login")
    old = boundary() - 3 * TICK
    value = orjson.dumps(
        {
            "event_id": "e1",
            "account_id": account,
            "type": "login",
            "occurred_at": old,
            "user_id": "u1",
        }
    )
    proc.on_record((login_topic, 0), StandInRecord(value, account.encode(), 0, 0))
    top.ticks.sent.clear()
    await proc.maybe_tick()
    assert sorted(top.ticks.sent) == [(0, boundary()), (1, boundary())]
    # An event at or after the boundary does not ask again.
    top.ticks.sent.clear()
    value = orjson.dumps(
        {
            "event_id": "e2",
            "account_id": account,
            "type": "login",
            "occurred_at": boundary(),
            "user_id": "u1",
        }
    )
    proc.on_record((login_topic, 0), StandInRecord(value, account.encode(), 0, 1))
    await proc.maybe_tick()
    # (Buffered events get a wake-up without a boundary.)
    assert [as_of for _, as_of in top.ticks.sent if as_of is not None] == []


def _event(kind: str, topic_offset: int, account: str, at: int, **fields: str) -> StandInRecord:
    value = orjson.dumps(
        {
            "event_id": f"{kind}{topic_offset}-{at}",
            "account_id": account,
            "type": kind,
            "occurred_at": at,
            "user_id": "u1",
            **fields,
        }
    )
    return StandInRecord(value, account.encode(), 0, topic_offset)


def _login(topic_offset: int, account: str, at: int) -> StandInRecord:
    return _event("login", topic_offset, account, at)


def _feature_use(topic_offset: int, account: str, at: int) -> StandInRecord:
    return _event("feature_use", topic_offset, account, at, feature="reports")


async def test_a_full_buffer_pauses_the_sources_ahead_and_resumes_below_half() -> None:
    from service.processing.partitioning import account_partition

    proc, top = processor([0])
    proc.settings = SETTINGS.model_copy(update={"buffer_max_events": 100})
    # The other sources are empty and quiet: they hold nothing back.
    proc.started = time.monotonic() - 3600
    account = next(
        f"acct-{i}" for i in range(50) if account_partition(f"acct-{i}".encode(), 2) == 0
    )
    kinds = {kind: topic for topic, kind in SETTINGS.input_topics.items()}
    fast, slow = kinds["login"], kinds["feature-use"]
    top.app.consumer.ends.update({fast: 10_000, slow: 10_000})
    base = boundary() - 5 * TICK
    # The login source is far ahead; the feature-use source lags behind.
    for i in range(150):
        proc.on_record((fast, 0), _login(i, account, base + 1000 * (i + 10)))
    proc.on_record((slow, 0), _feature_use(0, account, base))
    proc.bound_buffer(0)
    assert top.app.consumer.paused == {TopicPartition(fast, 0)}
    # The slow source overtakes the paused one (a sparse topic reads far
    # ahead in a few records): the paused source now holds the safe time and
    # is fetched again, though the buffer is still over half the bound.
    proc.on_record((slow, 0), _feature_use(1, account, base + 1000 * 400))
    proc.bound_buffer(0)
    assert top.app.consumer.paused == {TopicPartition(slow, 0)}
    assert len(proc.buffers[0]) > 50
    # Below half the bound: everything is fetched again.
    heap = proc.buffers[0]
    del heap[: len(heap) - 40]
    proc.bound_buffer(0)
    assert top.app.consumer.paused == set()
    assert proc.paused == {}


async def test_a_tick_goes_through_a_partition_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.model.account_state import AccountState

    proc, _ = processor([0])
    keys = [f"acct-{i}".encode() for i in range(25)]
    states: dict[bytes, AccountState] = {}
    proc.index = {0: set(keys)}
    monkeypatch.setattr(Processor, "states", property(lambda self: states))
    stored: list[bytes] = []
    monkeypatch.setattr(proc, "_store", lambda key, state, partition: stored.append(key))
    monkeypatch.setattr(proc, "publish", lambda *args: None)
    for key in keys:
        states[key] = AccountState.new(key.decode())
        states[key].scored_at = boundary() - 2 * TICK  # scored: ticks are due
    proc.start_tick(0, boundary())
    walked = [proc.continue_tick(0, 0, 10) for _ in range(3)]
    assert walked == [10, 10, 5] and 0 not in proc.ticking
    assert sorted(stored) == sorted(keys)
    assert all(state.scored_at == boundary() for state in states.values())
