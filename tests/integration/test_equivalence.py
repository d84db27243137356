"""The streaming worker and ``vitals replay`` give identical results, in both orders.

The same history of 500 accounts is produced to a real broker and kept as the
list of message values. Once the worker has caught up and its timer has
evaluated every account at the current tick boundary B, each account's latest
score on the scores topic must equal ``replay(..., as_of=B)`` field for field
(``computed_at`` aside, it is wall-clock), and the bucket changes and playbook
triggers published by the stream must be exactly the ones replay reports.

Two orders:
- the events are in the topics before the worker starts (a restart after
  downtime, a first deployment on existing topics);
- the worker is already running and idle, past the boundary B (it has sent B
  to accounts it does not have yet), when the backfill arrives: the events are
  older than its clock, and the backfilled accounts must still get every
  silent-day rescore up to B.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from service.model.playbooks import default_playbooks
from service.model.scorecard import default_scorecard
from service.processing.replay import replay
from service.runtime.settings import INPUT_TOPIC_KINDS, Settings
from service.runtime.topics import ensure_topics_async
from service.tools.bench import prometheus_sum
from service.tools.simulate import SimEvent
from tests.integration.scoring_helpers import (
    TICK,
    Latest,
    comparable,
    differing_fields,
    history_end,
    mismatched_accounts,
    produce,
    replay_scores,
    wait_scored_at_boundary,
)
from tests.integration.scoring_helpers import history as simulated_history
from tests.integration.workers import Namespace, WorkerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = 500
EVENTS = 50_000
FAST_CLOCK = {"VITALS_TIMER_INTERVAL_S": "0.5", "VITALS_CLOCK_IDLE_S": "5"}


def history(end_ms: int) -> list[SimEvent]:
    return simulated_history(ACCOUNTS, EVENTS, end_ms=end_ms)


async def produce_into_new_topics(
    producer: AIOKafkaProducer, namespace: Namespace, kafka_bootstrap: str, events: list[SimEvent]
) -> None:
    """The topics as the worker would create them (4 partitions, as it runs),
    then the whole history, before any worker starts."""
    await ensure_topics_async(
        Settings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=namespace.topic_prefix,
            app_id=namespace.app_id,
            partitions=4,
        )
    )
    await produce(producer, namespace, events)


async def compare_with_replay(
    worker: WorkerProcess, events: list[SimEvent], kafka_bootstrap: str, namespace: Namespace
) -> None:
    scores = Latest(kafka_bootstrap, namespace.topic("health.scores"))
    changes = Latest(kafka_bootstrap, namespace.topic("health.bucket-changes"))
    triggers = Latest(kafka_bootstrap, namespace.topic("playbooks.triggers"))
    for reader in (scores, changes, triggers):
        await reader.consumer.start()
    try:
        boundary = await wait_scored_at_boundary(
            scores, changes, ACCOUNTS, timeout=600, check=worker._check_alive
        )
        expected = replay(
            (event.value for event in events),
            default_scorecard(),
            as_of=boundary,
            playbooks=default_playbooks(),
        )
        wanted = {t["trigger_id"] for t in expected.triggers}

        # Triggers are published in the batch of the step that made them, so
        # they may land after the last score read: read until replay's are all
        # there (or a minute has passed; the comparison below then says what
        # is missing).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await triggers.poll()
            if {t["trigger_id"] for t in triggers.all} >= wanted:
                break
    finally:
        for reader in (scores, changes, triggers):
            await reader.consumer.stop()

    assert expected.stats.applied == EVENTS
    by_account = replay_scores(expected)
    streamed = {key.decode(): value for key, value in scores.latest.items()}
    assert sorted(streamed) == sorted(by_account)
    mismatched = mismatched_accounts(streamed, by_account)
    fields = differing_fields(streamed, by_account, mismatched)
    stream_ids = sorted(change["change_id"] for change in changes.all)
    replay_ids = sorted(change.change_id for change in expected.changes)
    stream_triggers = sorted(t["trigger_id"] for t in triggers.all)
    replay_triggers = sorted(t["trigger_id"] for t in expected.triggers)
    print(
        f"EQUIVALENCE: {len(mismatched)} accounts differ in {fields}; changes "
        f"stream={len(stream_ids)} replay={len(replay_ids)}; triggers "
        f"stream={len(stream_triggers)} replay={len(replay_triggers)}"
    )
    assert not mismatched, (
        f"{len(mismatched)} accounts differ, e.g. {mismatched[0]}: "
        f"stream={comparable(streamed[mismatched[0]])} "
        f"replay={comparable(by_account[mismatched[0]])}"
    )
    buckets = {score["bucket"] for score in streamed.values()}
    assert len(buckets) >= 2, "the simulated portfolio is not all one bucket"
    assert replay_ids, "the history contains bucket changes"
    assert stream_ids == replay_ids
    assert replay_triggers, "the history fires playbooks"
    assert stream_triggers == replay_triggers


async def test_events_produced_before_the_worker_starts(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    events = history(end_ms=history_end())
    assert {e.topic_kind for e in events} <= set(INPUT_TOPIC_KINDS)
    await produce_into_new_topics(producer, namespace, kafka_bootstrap, events)
    worker = worker_factory(namespace, extra_env=FAST_CLOCK)
    await asyncio.to_thread(worker.wait_ready)
    await compare_with_replay(worker, events, kafka_bootstrap, namespace)


async def test_a_backfill_into_a_worker_idle_past_the_boundary(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    end = history_end()
    boundary = end + 3_600_000
    assert boundary % TICK == 0
    worker = worker_factory(namespace, extra_env=FAST_CLOCK)
    await asyncio.to_thread(worker.wait_ready)
    # The idle worker announces the boundary (to no account yet).
    await asyncio.to_thread(
        wait_until,
        lambda: f"tick {boundary} on partition" in worker.log_path.read_text(errors="replace"),
        timeout=120,
        interval=0.5,
        what=f"the idle worker's tick at {boundary}",
    )
    events = history(end_ms=end)
    await produce(producer, namespace, events)
    await compare_with_replay(worker, events, kafka_bootstrap, namespace)


async def test_a_catch_up_under_a_small_buffer_bound(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """Pausing the sources ahead (VITALS_BUFFER_MAX_EVENTS) changes nothing in
    the results and never stops a partition: the simulator's sparse topics
    read far ahead in event time in a few records and are overtaken, so the
    set of paused sources must follow the safe time (a first version paused
    such a topic for good once it held the others back: the 1M bench stalled).

    The garbage-collector schedule runs fast here (freezes every 0.2 s, a
    full collection every 2 s), and the worker holds at most 50 of the 500
    states live (VITALS_LIVE_STATES; the others as their bytes, decoded when
    next used): neither changes anything in the results."""
    events = history(end_ms=history_end())
    await produce_into_new_topics(producer, namespace, kafka_bootstrap, events)
    settings = {
        **FAST_CLOCK,
        "VITALS_BUFFER_MAX_EVENTS": "500",
        "VITALS_GC_FREEZE_INTERVAL_S": "0.2",
        "VITALS_GC_FULL_INTERVAL_S": "2",
        "VITALS_LIVE_STATES": "50",
    }
    worker = worker_factory(namespace, extra_env=settings)
    await asyncio.to_thread(worker.wait_ready)
    await compare_with_replay(worker, events, kafka_bootstrap, namespace)
    log = worker.log_path.read_text(errors="replace")
    assert "paused until the others catch up" in log, "the bound never paused a source"
    peak = prometheus_sum(worker.metrics_text(), "vitals_reorder_buffer_peak_events")
    print(f"BUFFER: peak {peak:.0f} events in one partition under a bound of 500")
    assert peak > 500
    assert "full garbage collection:" in log
    full = [
        float(line.split()[-1])
        for line in worker.metrics_text().splitlines()
        if line.startswith('vitals_gc_pause_seconds_count{generation="2"}')
    ]
    assert full and full[0] >= 1, "the worker timed no full collection"
    text = worker.metrics_text()
    decoded = prometheus_sum(text, "vitals_states_decoded_total")
    live = prometheus_sum(text, "vitals_accounts_live")
    tracked = prometheus_sum(text, "vitals_accounts_tracked")
    print(f"STATES: {live:.0f} of {tracked:.0f} live, {decoded:.0f} decoded again")
    assert tracked == ACCOUNTS
    assert live <= 50
    assert decoded > ACCOUNTS, "states held encoded were not used again"
