"""Reliability on a real broker: crashes, fail-over, a broker outage, duplicates,
disorder and late events (docs/reliability.md explains the guarantees and the
measured sizes and times).

Every scenario ends with a check against a reference: the final score of every
account (its latest message on the scores topic once the worker's timer has
evaluated it at the current tick boundary B) must equal ``vitals replay`` of
the same events, ordered and de-duplicated, at B; or, for the outage, every
produced event must be counted exactly once in the account states.

docs/reliability.md records what each test found and how it was fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from service.model.account_state import DEDUP_IDS, HORIZON_DAYS
from service.model.scorecard import default_scorecard
from service.processing.partitioning import account_partition
from service.processing.replay import ReplayResult, replay
from service.tools.kafka_local import LocalKafka, free_port
from service.tools.simulate import SimEvent
from tests.integration.scoring_helpers import (
    TICK,
    Latest,
    comparable,
    consumed_by_outcome,
    differing_fields,
    history,
    history_end,
    mismatched_accounts,
    produce,
    replay_scores,
    wait_scored_at_boundary,
)
from tests.integration.workers import Namespace, WorkerProcess, http_get

pytestmark = pytest.mark.integration

#: Every worker of this module: the timer of test_equivalence, a 5 s idle time
#: (a backfill producer pausing briefly must not let the clock run ahead), and
#: a 10 s consumer-group session (faust's default is 60 s) so that a SIGKILLed
#: member is evicted, and its partitions reassigned, within seconds.
WORKER_ENV = {
    "VITALS_TIMER_INTERVAL_S": "0.5",
    "VITALS_CLOCK_IDLE_S": "5",
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
}

# Sizes: the crash test runs the 200k events; the others are sized to
# exercise their scenario, not throughput.
CRASH_ACCOUNTS = 2_000
CRASH_EVENTS = 200_000
FAILOVER_ACCOUNTS = 400
FAILOVER_EVENTS = 40_000
REBALANCE_ACCOUNTS = 600
REBALANCE_EVENTS = 60_000
OUTAGE_ACCOUNTS = 200
OUTAGE_EVENTS = 6_000
OUTAGE_RATE = 100  # events/s
OUTAGE_S = 30.0
DISORDER_ACCOUNTS = 200
DISORDER_EVENTS = 20_000
LATE_EVENTS = 50
#: A far-apart duplicate follows its original after this many other events of
#: the same account (thousands of messages later on the topics).
FAR_GAP = 16
#: Partitions of the test topics (WorkerProcess default).
PARTITIONS = 4


# ------------------------------------------------------------------ helpers


async def ready(worker: WorkerProcess, timeout: float = 120.0) -> WorkerProcess:
    await asyncio.to_thread(worker.wait_ready, timeout)
    return worker


async def outcomes(worker: WorkerProcess) -> dict[str, float]:
    """The worker's ``vitals_events_consumed_total`` per outcome (non-zero ones)."""
    totals = consumed_by_outcome(await asyncio.to_thread(worker.metrics_text))
    return {outcome: count for outcome, count in totals.items() if count}


async def readiness(worker: WorkerProcess) -> tuple[int, Any]:
    return await asyncio.to_thread(worker.get_json, "/readyz")


async def wait_for(
    condition: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    check: Callable[[], None] = lambda: None,
) -> Any:
    """Poll an async condition until truthy; ``check`` raises on a definite failure."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        check()
        try:
            result = await condition()
        except AssertionError:
            raise
        except Exception as exc:  # the worker's HTTP server may be restarting
            last_error = exc
            result = None
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
    )


async def wait_consumed(
    workers: Sequence[WorkerProcess], at_least: int, *, timeout: float
) -> float:
    """Wait until the workers together consumed ``at_least`` input messages."""

    async def total() -> float | None:
        count = 0.0
        for worker in workers:
            count += sum((await outcomes(worker)).values())
        return count if count >= at_least else None

    def alive() -> None:
        for worker in workers:
            worker._check_alive()

    result: float = await wait_for(
        total, timeout=timeout, what=f"{at_least} consumed messages", check=alive
    )
    return result


def current_boundary() -> int:
    now = int(time.time() * 1000)
    return now - now % TICK


class Reference:
    """``replay`` of the reference events at the tick boundary, computed in a
    thread while the worker (another process) is busy; recomputed if the
    boundary has moved (a run across UTC midnight)."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.task = asyncio.create_task(asyncio.to_thread(self.run, current_boundary()))

    def run(self, boundary: int) -> ReplayResult:
        return replay(self.values, default_scorecard(), as_of=boundary)

    async def at(self, boundary: int) -> ReplayResult:
        result = await self.task
        if result.as_of != boundary:
            result = await asyncio.to_thread(self.run, boundary)
        return result


async def final_outputs(
    bootstrap: str,
    namespace: Namespace,
    accounts: int,
    *,
    timeout: float,
    check: Callable[[], None],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], int]:
    """(account -> latest score, every bucket change, boundary) once every
    account has been scored at the current tick boundary."""
    scores = Latest(bootstrap, namespace.topic("health.scores"), keep_all=False)
    changes = Latest(bootstrap, namespace.topic("health.bucket-changes"))
    await scores.consumer.start()
    await changes.consumer.start()
    try:
        boundary = await wait_scored_at_boundary(
            scores, changes, accounts, timeout=timeout, check=check
        )
    finally:
        await scores.consumer.stop()
        await changes.consumer.stop()
    streamed = {key.decode(): value for key, value in scores.latest.items()}
    return streamed, changes.all, boundary


def compare_with_replay(
    label: str,
    streamed: dict[str, dict[str, Any]],
    changes: list[dict[str, Any]],
    expected: ReplayResult,
    *,
    changes_must_match: bool = True,
) -> None:
    """Final scores equal replay field for field; bucket changes (published at
    least once, so possibly repeated with the same deterministic id) equal
    replay's as a set."""
    by_account = replay_scores(expected)
    mismatched = mismatched_accounts(streamed, by_account)
    fields = differing_fields(streamed, by_account, mismatched)
    stream_ids = [change["change_id"] for change in changes]
    replay_ids = {change.change_id for change in expected.changes}
    common = len(set(stream_ids) & replay_ids)
    partitions = sorted({account_partition(a.encode(), PARTITIONS) for a in mismatched})
    print(
        f"\n{label}: {len(mismatched)} of {len(by_account)} accounts differ in {fields} "
        f"(e.g. {mismatched[:5]}, partitions {partitions}); "
        f"bucket changes stream={len(set(stream_ids))} (+{len(stream_ids) - len(set(stream_ids))}"
        f" repeated) replay={len(replay_ids)} common={common}"
    )
    assert sorted(streamed) == sorted(by_account)
    assert not mismatched, (
        f"{len(mismatched)} accounts differ from replay, e.g. {mismatched[0]}: "
        f"stream={comparable(streamed[mismatched[0]])} "
        f"replay={comparable(by_account[mismatched[0]])}"
    )
    assert len({score["bucket"] for score in streamed.values()}) >= 2
    if changes_must_match:
        assert replay_ids, "the history contains bucket changes"
        assert set(stream_ids) == replay_ids


def counts_by_account(values: Sequence[bytes]) -> dict[str, Counter[str]]:
    """account id -> event type -> number of events."""
    result: dict[str, Counter[str]] = defaultdict(Counter)
    for value in values:
        event = orjson.loads(value)
        result[event["account_id"]][event["type"]] += 1
    return result


async def state_counts(worker: WorkerProcess, accounts: Sequence[str]) -> dict[str, Counter[str]]:
    """account id -> ``counts`` of ``/accounts/{id}/state`` (the applied events)."""

    def fetch() -> dict[str, Counter[str]]:
        result: dict[str, Counter[str]] = {}
        for account in accounts:
            status, body = http_get(f"{worker.url}/accounts/{account}/state")
            assert status == 200, f"{account}: HTTP {status} {body[:200]!r}"
            result[account] = Counter(orjson.loads(body)["counts"])
        return result

    return await asyncio.to_thread(fetch)


def counting_errors(
    label: str, counted: dict[str, Counter[str]], expected: dict[str, Counter[str]]
) -> tuple[str | None, bool]:
    """(None, False) if every account's state counts exactly its produced
    events; else a description of the accounts off (printed too) and whether
    every difference is an extra count (an event applied twice)."""
    wrong = sorted(a for a in expected if counted.get(a) != expected[a])
    total = sum(sum(c.values()) for c in counted.values())
    print(f"{label}: {total} events in the account states, {len(wrong)} accounts off")
    if not wrong:
        return None, False
    extra = {a: counted.get(a, Counter()) - expected[a] for a in wrong}
    missing = {a: expected[a] - counted.get(a, Counter()) for a in wrong}
    examples = "; ".join(
        f"{a} (partition {account_partition(a.encode(), PARTITIONS)}): "
        f"extra {dict(extra[a])} missing {dict(missing[a])}"
        for a in wrong[:5]
    )
    message = f"{len(wrong)} accounts counted wrongly, e.g. {examples}"
    print(message)
    return message, not any(missing.values())


def assert_counted_once(
    label: str, counted: dict[str, Counter[str]], expected: dict[str, Counter[str]]
) -> None:
    problem, _ = counting_errors(label, counted, expected)
    assert problem is None, problem


def check_after_crash(
    label: str,
    counted: dict[str, Counter[str]],
    values: Sequence[bytes],
    streamed: dict[str, dict[str, Any]],
    changes: list[dict[str, Any]],
    expected: ReplayResult,
) -> None:
    """Per-account counts (nothing lost, nothing applied twice), then scores
    and bucket changes, against replay."""
    problem, _ = counting_errors(label, counted, counts_by_account(values))
    assert problem is None, problem
    compare_with_replay(label, streamed, changes, expected)


# ------------------------------------------------------------------ crashes


@pytest.mark.slow
async def test_sigkill_and_restart_gives_the_replay_scores(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """A worker SIGKILLed half-way through 200k simulator events (2,000 accounts)
    is replaced by a new worker with the same app id (group, changelog): it
    recovers the table from the changelog, re-reads the uncommitted events
    (those already in the changelog are recognised by their position kept in
    the state), and the final scores, bucket changes and per-account event
    counts equal replay's."""
    started = time.monotonic()
    events = history(CRASH_ACCOUNTS, CRASH_EVENTS, end_ms=history_end())
    values = [event.value for event in events]
    first = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    await produce(producer, namespace, events)
    reference = Reference(values)
    produced = time.monotonic()

    at_kill = await wait_consumed([first], CRASH_EVENTS // 2, timeout=300)
    before = await outcomes(first)
    first.kill()
    killed = time.monotonic()
    second = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    recovered = time.monotonic()

    streamed, changes, boundary = await final_outputs(
        kafka_bootstrap, namespace, CRASH_ACCOUNTS, timeout=420, check=second._check_alive
    )
    done = time.monotonic()
    after = await outcomes(second)
    print(
        f"\nCRASH: produced {CRASH_EVENTS} in {produced - started:.0f}s; killed after "
        f"{at_kill:.0f} consumed {before} ({killed - started:.0f}s); second worker ready in "
        f"{recovered - killed:.1f}s, then consumed {after} and reached the boundary "
        f"after {done - recovered:.0f}s"
    )
    expected = await reference.at(boundary)
    assert expected.stats.applied == CRASH_EVENTS
    assert after.get("dead_lettered", 0) == 0
    # No event lost or applied twice: the states hold exactly the produced events.
    counted = await state_counts(second, sorted(streamed))
    check_after_crash("CRASH", counted, values, streamed, changes, expected)


@pytest.mark.slow
async def test_surviving_worker_takes_over_a_killed_workers_partitions(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """Two workers share the 4 partitions; one is SIGKILLed half-way through
    40k events (400 accounts). The survivor is assigned all 4 partitions
    (/readyz), recovers the dead worker's share from the changelog, and the
    final scores and bucket changes equal replay's."""
    started = time.monotonic()
    events = history(FAILOVER_ACCOUNTS, FAILOVER_EVENTS, end_ms=history_end())
    values = [event.value for event in events]
    survivor = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    victim = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    every = list(range(victim.partitions))

    async def split() -> bool:
        owned = []
        for worker in (survivor, victim):
            status, body = await readiness(worker)
            if status != 200 or not body["account_partitions"]:
                return False
            owned.append(body["account_partitions"])
        return sorted(owned[0] + owned[1]) == every

    await wait_for(split, timeout=90, what="the two workers to share the partitions")
    shares = [(await readiness(worker))[1]["account_partitions"] for worker in (survivor, victim)]
    print(f"\nFAILOVER: survivor owns {shares[0]}, victim {shares[1]}")
    await produce(producer, namespace, events)

    at_kill = await wait_consumed([survivor, victim], FAILOVER_EVENTS // 2, timeout=300)
    victim.kill()
    killed = time.monotonic()

    async def took_over() -> bool:
        status, body = await readiness(survivor)
        return status == 200 and body["account_partitions"] == every

    try:
        await wait_for(
            took_over,
            timeout=90,
            what="the survivor to own every partition",
            check=survivor._check_alive,
        )
    except AssertionError as exc:
        # mode's workers write every task's stack to their log on SIGUSR1:
        # the evidence of where the survivor is stuck, kept in the log file.
        assert survivor.process is not None
        os.kill(survivor.process.pid, signal.SIGUSR1)

        async def dumped() -> bool:
            return "Stack for" in survivor.log_tail(200)

        with contextlib.suppress(AssertionError):  # already failing: kill it either way
            await wait_for(dumped, timeout=10, what="the task dump in the survivor's log")
        survivor.kill()
        raise AssertionError(
            f"{exc}; task stacks in {survivor.log_path}; log tail:\n{survivor.log_tail(15)}"
        ) from exc
    taken = time.monotonic()
    reference = Reference(values)
    try:
        streamed, changes, boundary = await final_outputs(
            kafka_bootstrap, namespace, FAILOVER_ACCOUNTS, timeout=300, check=survivor._check_alive
        )
    except AssertionError as exc:
        # Which partitions were evaluated at which boundary, from the survivor's log.
        ticks = [
            line
            for line in survivor.log_tail(5_000).splitlines()
            if "] tick " in line or "none applied" in line or "dropped" in line
        ]
        raise AssertionError(
            f"{exc}; survivor log {survivor.log_path}; its last ticks and stalls:\n"
            + "\n".join(ticks[-20:])
        ) from exc
    print(
        f"\nFAILOVER: killed one of two workers after {at_kill:.0f} consumed "
        f"({killed - started:.0f}s); the survivor owned all partitions {taken - killed:.1f}s "
        f"later and reached the boundary {time.monotonic() - taken:.0f}s after that"
    )
    expected = await reference.at(boundary)
    counted = await state_counts(survivor, sorted(streamed))
    check_after_crash("FAILOVER", counted, values, streamed, changes, expected)


# ------------------------------------------------------------------ rebalance


def per_partition(metrics_text: str, name: str) -> dict[int, float]:
    """partition -> value of the counter ``name`` (labelled by partition)."""
    found: dict[int, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                found[int(sample.labels["partition"])] = sample.value
    return found


async def restored(worker: WorkerProcess) -> tuple[dict[int, float], dict[int, float]]:
    """(changelog records restored, of which replaced a held state), by partition."""
    text = await asyncio.to_thread(worker.metrics_text)
    return (
        per_partition(text, "vitals_changelog_records_restored_total"),
        per_partition(text, "vitals_changelog_states_replaced_total"),
    )


async def accounts_counted(worker: WorkerProcess) -> dict[str, float]:
    """The worker's ``vitals_accounts_tracked`` and the sum of ``vitals_accounts_by_bucket``."""
    text = await asyncio.to_thread(worker.metrics_text)
    counted = {"tracked": 0.0, "by_bucket": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vitals_accounts_tracked":
                counted["tracked"] += sample.value
            elif sample.name == "vitals_accounts_by_bucket":
                counted["by_bucket"] += sample.value
    return counted


async def changelog_ends(bootstrap: str, namespace: Namespace) -> dict[int, int]:
    """partition -> end offset of the account changelog (records written so far)."""
    topic = f"{namespace.app_id}-accounts-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


@pytest.mark.slow
async def test_a_rebalance_keeps_the_live_states_of_the_partitions_a_worker_keeps(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """One worker owns the 4 partitions and has applied and committed a quarter
    of 60k events (600 accounts) when a second worker joins the group. The
    first keeps some partitions: it reads none of their changelog again and
    keeps its live states (the records it wrote itself are already in them),
    while the second restores its share from the changelog. Each worker holds
    and counts only the accounts it owns (no standby copies of the other's).
    The final scores, bucket changes and per-account event counts equal
    replay's."""
    events = history(REBALANCE_ACCOUNTS, REBALANCE_EVENTS, end_ms=history_end())
    values = [event.value for event in events]
    first = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    await produce(producer, namespace, events)
    reference = Reference(values)
    at_join = await wait_consumed([first], REBALANCE_EVENTS // 4, timeout=300)
    restored_before, _ = await restored(first)
    second = worker_factory(namespace, extra_env=WORKER_ENV)
    every = list(range(PARTITIONS))

    async def split() -> list[list[int]] | None:
        owned = []
        for worker in (first, second):
            status, body = await readiness(worker)
            if status != 200 or not body["account_partitions"]:
                return None
            owned.append(body["account_partitions"])
        return owned if sorted(owned[0] + owned[1]) == every else None

    def alive() -> None:
        first._check_alive()
        second._check_alive()

    kept, taken = await wait_for(
        split, timeout=120, what="the two workers to share the partitions", check=alive
    )
    restored_after, replaced_after = await restored(first)
    restored_second, _ = await restored(second)
    written = await changelog_ends(kafka_bootstrap, namespace)
    reread = {p: restored_after.get(p, 0) - restored_before.get(p, 0) for p in kept}
    replaced = {p: replaced_after.get(p, 0) for p in kept}
    print(
        f"\nREBALANCE: second worker joined after {at_join:.0f} consumed; changelog end "
        f"offsets once the partitions were shared {written}; first keeps {kept}, "
        f"second takes {taken}; "
        f"changelog records the first read again for the partitions it keeps {reread}, "
        f"of which replaced a live state {replaced}; the second restored "
        f"{ {p: restored_second.get(p, 0) for p in taken} }"
    )
    assert all(written[p] > 0 for p in kept), "the first worker wrote changelog records"
    assert all(restored_second.get(p, 0) > 0 for p in taken), "the second restores its share"
    assert sum(reread.values()) == 0, f"kept partitions read again from the changelog: {reread}"
    assert sum(replaced.values()) == 0, f"live states replaced by restored copies: {replaced}"

    streamed, changes, boundary = await final_outputs(
        kafka_bootstrap, namespace, REBALANCE_ACCOUNTS, timeout=300, check=alive
    )
    expected = await reference.at(boundary)
    # The first worker holds (and its gauges count) its own accounts only.
    owned = sum(1 for a in streamed if account_partition(a.encode(), PARTITIONS) in kept)
    held = await accounts_counted(first)
    print(f"REBALANCE: the first worker owns {owned} accounts and counts {held}")
    assert held == {"tracked": owned, "by_bucket": owned}
    counted = await state_counts(first, sorted(streamed))
    check_after_crash("REBALANCE", counted, values, streamed, changes, expected)


# ------------------------------------------------------------------ broker outage


class PacedProducer:
    """Produces events at a fixed rate and never gives one up: a send that
    fails (broker down, request timed out) is retried until acknowledged, so a
    retry may write an event twice (the worker drops the copy by event id)."""

    def __init__(self, bootstrap: str, namespace: Namespace, events: Sequence[SimEvent]) -> None:
        self.bootstrap = bootstrap
        self.namespace = namespace
        self.events = events
        self.acked = 0
        self.retried = 0
        self.errors: Counter[str] = Counter()

    async def send_all(self, producer: AIOKafkaProducer, batch: Sequence[SimEvent]) -> None:
        pending = list(batch)
        while pending:
            failed: list[SimEvent] = []
            sent: list[tuple[SimEvent, asyncio.Future[Any]]] = []
            for event in pending:
                topic = self.namespace.topic(f"events.{event.topic_kind}")
                try:
                    sent.append((event, await producer.send(topic, event.value, key=event.key)))
                except KafkaError as exc:
                    self.errors[type(exc).__name__] += 1
                    failed.append(event)
            results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            for (event, _), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    self.errors[type(result).__name__] += 1
                    failed.append(event)
            if failed:
                self.retried += len(failed)
                await asyncio.sleep(0.5)
            pending = failed

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            request_timeout_ms=5_000,
            retry_backoff_ms=250,
            linger_ms=5,
        )
        await producer.start()
        try:
            step = 20
            pace = step / OUTAGE_RATE
            next_at = time.monotonic()
            for start in range(0, len(self.events), step):
                batch = self.events[start : start + step]
                await self.send_all(producer, batch)
                self.acked += len(batch)
                next_at = max(next_at + pace, time.monotonic())
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await producer.stop()


@pytest.mark.slow
async def test_worker_rides_out_a_broker_outage(namespace: Namespace, tmp_path: Path) -> None:
    """A broker of its own is stopped for 30 s while events keep coming
    (6,000 events at 100/s from a producer that retries until acknowledged),
    then started again on the same ports and data directory. The same worker
    process (no restart) resumes by itself, and every produced event is in the
    account states exactly once (retried copies recognised as duplicates)."""
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalKafka(
        data_dir=tmp_path / "kafka",
        port=port,
        controller_port=controller_port,
        die_with_parent=True,
    )
    worker = WorkerProcess(
        bootstrap=broker.bootstrap, namespace=namespace, data_dir=tmp_path, extra_env=WORKER_ENV
    )
    events = history(OUTAGE_ACCOUNTS, OUTAGE_EVENTS, end_ms=history_end(), days=20)
    feeder = PacedProducer(broker.bootstrap, namespace, events)
    feeding: asyncio.Task[None] | None = None
    try:
        broker.start(timeout=120)
        await ready(worker.start())
        pid = worker.process.pid if worker.process else None
        feeding = asyncio.create_task(feeder.run())
        before = await wait_consumed([worker], 1_000, timeout=120)

        broker.stop()
        outage_started = time.monotonic()
        acked_at_stop = feeder.acked
        deadline = outage_started + OUTAGE_S
        while time.monotonic() < deadline:  # the outage: the worker must stay up
            worker._check_alive()
            assert not feeding.done(), "the producer must keep retrying through the outage"
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        acked_in_outage = feeder.acked - acked_at_stop
        broker.start(timeout=120)
        restarted = time.monotonic()

        await asyncio.wait_for(feeding, timeout=300)
        produced = time.monotonic()

        async def all_applied() -> bool:
            return (await outcomes(worker)).get("applied", 0) >= OUTAGE_EVENTS

        await wait_for(
            all_applied, timeout=240, what="every event to be applied", check=worker._check_alive
        )
        caught_up = time.monotonic()
        counted_outcomes = await outcomes(worker)
        assert worker.process is not None and worker.process.pid == pid
        status, body = await readiness(worker)
        print(
            f"\nOUTAGE: {before:.0f} consumed before the stop; broker down "
            f"{restarted - outage_started:.0f}s (ready again after the {OUTAGE_S:.0f}s outage), "
            f"{acked_in_outage} events acknowledged meanwhile; producer retried "
            f"{feeder.retried} sends ({dict(feeder.errors)}), finished "
            f"{produced - restarted:.0f}s after the restart; worker caught up "
            f"{caught_up - produced:.0f}s later; outcomes {counted_outcomes}; readyz {status}"
        )
        assert status == 200 and body["ready"]
        assert counted_outcomes.get("applied") == OUTAGE_EVENTS
        assert counted_outcomes.get("dead_lettered", 0) == 0
        assert counted_outcomes.get("late", 0) == 0
        values = [event.value for event in events]
        expected = counts_by_account(values)
        counted = await state_counts(worker, sorted(expected))
        assert_counted_once("OUTAGE", counted, expected)
    finally:
        if feeding is not None and not feeding.done():
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        worker.stop()
        broker.stop()


# ------------------------------------------------------------------ duplicates, order, late


def shuffled_within_days(events: Sequence[SimEvent], rng: random.Random) -> list[SimEvent]:
    """The events with the order inside each UTC day shuffled (days stay in order)."""
    result: list[SimEvent] = []
    for _, day in itertools.groupby(events, key=lambda event: event.occurred_at // TICK):
        block = list(day)
        rng.shuffle(block)
        result.extend(block)
    return result


def with_duplicates(
    events: Sequence[SimEvent], rng: random.Random
) -> tuple[list[SimEvent], list[int]]:
    """Every event twice: half of the copies right after the original, half
    FAR_GAP events of the same account later (or at the end), where the last
    DEDUP_IDS ids of the account still hold the original: the copy is far only
    if the original's account and day have at most DEDUP_IDS - FAR_GAP events
    (the reorder buffer may apply that day's events in another order than
    they were produced in). Returns the sequence and the distances (in
    messages) between far copies and their originals."""
    per_day = Counter((event.account_id, event.occurred_at // TICK) for event in events)
    seen: Counter[str] = Counter()
    later: dict[tuple[str, int], list[SimEvent]] = defaultdict(list)
    where: dict[str, int] = {}
    distances: list[int] = []
    out: list[SimEvent] = []

    def emit(event: SimEvent, *, copy: bool) -> None:
        if copy:
            distances.append(len(out) - where[orjson.loads(event.value)["event_id"]])
        out.append(event)

    for event in events:
        account = event.account_id
        index = seen[account]
        seen[account] += 1
        out.append(event)
        far = per_day[(account, event.occurred_at // TICK)] <= DEDUP_IDS - FAR_GAP
        if far and rng.random() < 0.5:
            where[orjson.loads(event.value)["event_id"]] = len(out) - 1
            later[(account, index + FAR_GAP)].append(event)
        else:
            out.append(event)
        for copy in later.pop((account, index), []):
            emit(copy, copy=True)
    for key in sorted(later, key=lambda k: k[1]):
        for copy in later[key]:
            emit(copy, copy=True)
    return out, distances


def late_events(events: Sequence[SimEvent], count: int) -> list[SimEvent]:
    """``count`` new events (unique ids), each HORIZON_DAYS + 1 days older than
    the newest event of its account: a login or feature use that would change
    the account's tenure and activity if it were applied."""
    newest: dict[str, int] = {}
    template: dict[str, SimEvent] = {}
    for event in events:
        newest[event.account_id] = max(newest.get(event.account_id, 0), event.occurred_at)
        if event.topic_kind in ("login", "feature-use"):
            template.setdefault(event.account_id, event)
    result = []
    for account in sorted(template)[:count]:
        base = template[account]
        data = orjson.loads(base.value)
        data["event_id"] = f"{data['event_id']}-late"
        data["occurred_at"] = newest[account] - (HORIZON_DAYS + 1) * 86_400_000
        result.append(
            SimEvent(
                base.topic_kind,
                base.key,
                orjson.dumps(data),
                data["occurred_at"],
                account,
                base.persona,
            )
        )
    assert len(result) == count
    return result


def login_event(account: str, suffix: object, occurred_at: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{account}-{suffix}",
            "account_id": account,
            "type": "login",
            "occurred_at": occurred_at,
            "user_id": "u1",
        }
    )


async def summaries(worker: WorkerProcess, accounts: Sequence[str]) -> dict[str, Any]:
    """account id -> ``/accounts/{id}/state`` without the ``late`` counter."""
    result = {}
    for account in accounts:
        status, body = await asyncio.to_thread(worker.get_json, f"/accounts/{account}/state")
        assert status == 200, f"{account}: HTTP {status}"
        result[account] = {k: v for k, v in body.items() if k != "late"}
    return result


@pytest.mark.slow
async def test_duplicates_disorder_and_late_events_give_the_replay_scores(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """20k events (200 accounts), every one sent twice (half the copies right
    after the original, half FAR_GAP events of the account later, inside the
    account's last-64-ids dedup memory), with the production order shuffled
    within each UTC day: the worker applies each event once, counts each copy
    as ``duplicate``, and its final scores equal replay of the ordered,
    de-duplicated events. Then 50 events older than 90 days before their
    account's newest event are counted as ``late`` and change no state.

    The late events are sent once the worker has applied the accounts' newer
    events: read while those still wait in the reorder buffer, they are
    applied instead unless the stream judges lateness by arrival order (the
    test below)."""
    rng = random.Random(20261123)
    events = history(DISORDER_ACCOUNTS, DISORDER_EVENTS, end_ms=history_end())
    sequence, distances = with_duplicates(shuffled_within_days(events, rng), rng)
    late = late_events(events, LATE_EVENTS)
    assert len(sequence) == 2 * DISORDER_EVENTS
    worker = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    await produce(producer, namespace, sequence)
    reference = Reference([event.value for event in events])

    streamed, changes, boundary = await final_outputs(
        kafka_bootstrap, namespace, DISORDER_ACCOUNTS, timeout=420, check=worker._check_alive
    )
    await wait_consumed([worker], len(sequence), timeout=60)
    counted = await outcomes(worker)
    distances.sort()
    print(
        f"\nDISORDER: {len(distances)} far copies, {distances[0]}-{distances[-1]} messages "
        f"after their original (median {distances[len(distances) // 2]}); outcomes {counted}"
    )
    assert counted == {"applied": DISORDER_EVENTS, "duplicate": DISORDER_EVENTS}
    expected = await reference.at(boundary)
    # Bucket changes happen at event times, so the order in which a day's
    # events are produced may decide some of them: only final scores compared.
    compare_with_replay("DISORDER", streamed, changes, expected, changes_must_match=False)

    late_accounts = [event.account_id for event in late]
    before = await summaries(worker, late_accounts)
    await produce(producer, namespace, late)
    await wait_consumed([worker], len(sequence) + len(late), timeout=60)
    counted = await outcomes(worker)
    print(f"LATE: outcomes {counted}")
    assert counted == {
        "applied": DISORDER_EVENTS,
        "duplicate": DISORDER_EVENTS,
        "late": LATE_EVENTS,
    }
    assert await summaries(worker, late_accounts) == before


async def test_late_event_read_while_newer_events_are_buffered_is_counted_late(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer
) -> None:
    """README: "an event older than 90 days before the account's newest event
    is counted as late and not applied"; replay of the same production order
    counts it late. In the stream the reorder buffer releases events in
    event-time order up to the slowest source topic-partition; the late event
    is the oldest of all, so it is applied before the newer logins it was
    produced after, and judged against them only if they were applied first.

    Deterministic reproduction: a slow backfill producer keeps the outcome
    topic of the account's partition busy (a KPI event every second, older
    than the logins), so the logins wait in the buffer when the late login
    arrives."""
    account = f"acct-late-{namespace.token}"
    day = 86_400_000
    newest = history_end() - day
    slow_at = newest - 40 * day
    logins = [login_event(account, n, newest - (30 - n) * day) for n in range(31)]
    late = login_event(account, "late", newest - (HORIZON_DAYS + 1) * day)
    worker = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    stop = asyncio.Event()
    kpis: list[bytes] = []

    async def backfill() -> None:
        while not stop.is_set():
            kpi = {
                "event_id": f"{account}-kpi-{len(kpis)}",
                "account_id": account,
                "type": "kpi",
                "occurred_at": slow_at + len(kpis),
                "metric": "newsletters_sent",
                "value": 1,
            }
            kpis.append(orjson.dumps(kpi))
            await (
                await producer.send(
                    namespace.topic("events.outcome"), kpis[-1], key=account.encode()
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    feeding = asyncio.create_task(backfill())
    try:
        await wait_consumed([worker], 1, timeout=60)  # the first KPI event was applied
        topic = namespace.topic("events.login")
        for value in [*logins, late]:
            await (await producer.send(topic, value, key=account.encode()))

        async def late_login_read() -> bool:
            # The 31 logins wait in the buffer: a login-topic outcome is the late one.
            text = await asyncio.to_thread(worker.metrics_text)
            return consumed_by_outcome(text, topic=topic) != {}

        await wait_for(late_login_read, timeout=60, what="the late login to be processed")
    finally:
        stop.set()
        await feeding
    await wait_consumed([worker], len(kpis) + len(logins) + 1, timeout=60)
    counted = await outcomes(worker)
    replayed = replay([*kpis[:1], *logins, late, *kpis[1:]], default_scorecard())
    _, state = await asyncio.to_thread(worker.get_json, f"/accounts/{account}/state")
    print(f"\nLATE BEHIND A LAGGING TOPIC: stream {counted}; replay late={replayed.stats.late}")
    print(f"state {state}")
    assert replayed.stats.late == 1
    assert counted.get("late") == 1, f"the stream applied the late event: {counted}"
    assert state["counts"] == {"login": len(logins), "kpi": len(kpis)}


async def test_a_duplicate_beyond_the_dedup_memory_is_applied_again(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer
) -> None:
    """The dedup memory is the last DEDUP_IDS (64) applied event ids of each
    account (README: "seen among the account's recent events"): a copy read
    after 64 newer events of its account were applied is applied a second
    time, by the stream and by replay alike, while a copy inside the memory is
    a duplicate. DESIGN.md's "a repeated id is a duplicate and is applied
    once" holds only inside that window (docs/reliability.md).

    The copies are sent once the originals are applied: a copy read while its
    original still waits in the reorder buffer is released right after it (same
    event time) and is always a duplicate."""
    account = f"acct-window-{namespace.token}"
    start = history_end() - 10 * 86_400_000
    values = [login_event(account, n, start + n * 60_000) for n in range(DEDUP_IDS + 6)]
    worker = await ready(worker_factory(namespace, extra_env=WORKER_ENV))
    topic = namespace.topic("events.login")
    key = account.encode()
    await asyncio.gather(*[await producer.send(topic, value, key=key) for value in values])
    await wait_consumed([worker], len(values), timeout=120)
    # The oldest id has left the memory; the newest is still in it.
    copies = [values[0], values[-1]]
    await asyncio.gather(*[await producer.send(topic, value, key=key) for value in copies])
    await wait_consumed([worker], len(values) + len(copies), timeout=60)
    counted = await outcomes(worker)
    replayed = replay([*values, *copies], default_scorecard())
    status, state = await asyncio.to_thread(worker.get_json, f"/accounts/{account}/state")
    print(f"\nDEDUP WINDOW: stream {counted}; replay {replayed.stats.as_dict()}; state {state}")
    assert status == 200
    assert replayed.stats.applied == len(values) + 1 and replayed.stats.duplicates == 1
    assert counted == {"applied": len(values) + 1, "duplicate": 1}
    assert state["counts"] == {"login": len(values) + 1}
