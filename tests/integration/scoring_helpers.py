"""Helpers shared by the tests that compare streamed scores with ``vitals replay``.

Used by ``test_equivalence.py`` (stream == replay) and ``test_reliability.py``
(stream == replay after crashes, broker outages, duplicates and disorder).

The comparison protocol: produce simulated history that ends an hour before
the current UTC tick boundary B, let the worker catch up until its timer has
evaluated every account at B (the latest score of each account on the scores
topic has ``as_of == B``), then compare each account's latest score with
``replay(events, as_of=B)`` field for field (``computed_at`` aside: it is the
wall clock).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import parse_timestamp
from service.model.scorecard import default_scorecard
from service.processing.replay import ReplayResult
from service.tools.simulate import SimEvent, generate_history
from tests.integration.workers import Namespace

__all__ = [
    "TICK",
    "Latest",
    "comparable",
    "consumed_by_outcome",
    "differing_fields",
    "history",
    "history_end",
    "mismatched_accounts",
    "produce",
    "replay_scores",
    "wait_scored_at_boundary",
]

#: The rescoring tick of the default scorecard (one UTC day).
TICK = default_scorecard().rescore_interval_ms


def history_end(now_ms: int | None = None) -> int:
    """End of simulated history: one hour before the current tick boundary."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - now % TICK - 3_600_000


def history(
    accounts: int, events: int, *, end_ms: int, days: int = 45, seed: int = 7
) -> list[SimEvent]:
    """The first ``events`` simulated events (time-ordered) of ``accounts`` accounts."""
    result = list(itertools.islice(generate_history(accounts, days, end_ms, seed=seed), events))
    assert len(result) == events, "the simulator makes enough history for the test"
    assert len({event.account_id for event in result}) == accounts
    return result


async def produce(
    producer: AIOKafkaProducer,
    namespace: Namespace,
    events: Sequence[SimEvent],
    *,
    chunk: int = 5_000,
) -> None:
    """Send ``events`` in order (default partitioner) and wait for every ack."""
    for start in range(0, len(events), chunk):
        futures = [
            await producer.send(
                namespace.topic(f"events.{event.topic_kind}"), event.value, key=event.key
            )
            for event in events[start : start + chunk]
        ]
        await asyncio.gather(*futures)


class Latest:
    """Reads a topic from the start and keeps the newest value per key, plus all values.

    ``keep_all=False`` keeps only the newest values (the scores topic of a
    large run holds hundreds of thousands of records).
    """

    def __init__(self, bootstrap: str, topic: str, *, keep_all: bool = True) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.keep_all = keep_all
        self.latest: dict[bytes, dict[str, Any]] = {}
        self.all: list[dict[str, Any]] = []
        self.records = 0

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=200, max_records=50_000)
        for records in batch.values():
            for record in records:
                value = orjson.loads(record.value)
                self.latest[record.key] = value
                self.records += 1
                if self.keep_all:
                    self.all.append(value)


async def wait_scored_at_boundary(
    scores: Latest,
    changes: Latest,
    accounts: int,
    *,
    timeout: float,
    check: Callable[[], None] = lambda: None,
) -> int:
    """Poll both topics until ``accounts`` accounts have a latest score at the
    current tick boundary; return that boundary. ``check`` runs on every round
    (e.g. ``worker._check_alive``, which raises if the worker died)."""
    deadline = time.monotonic() + timeout
    at_boundary = 0
    while time.monotonic() < deadline:
        await scores.poll()
        await changes.poll()
        wall = int(time.time() * 1000)
        boundary = wall - wall % TICK
        at_boundary = sum(
            1 for s in scores.latest.values() if parse_timestamp(s["as_of"]) == boundary
        )
        if at_boundary == accounts:
            # Changes are published before the score of the same step: drain what is left.
            await changes.poll()
            return boundary
        check()
    raise AssertionError(
        f"only {at_boundary} of {accounts} accounts scored at the tick boundary "
        f"within {timeout:.0f}s"
    )


def comparable(score: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in score.items() if k != "computed_at"}


def replay_scores(expected: ReplayResult) -> dict[str, dict[str, Any]]:
    """account id -> replayed score message (JSON form)."""
    return {score.account_id: score.model_dump(mode="json") for score in expected.scores}


def mismatched_accounts(
    streamed: dict[str, dict[str, Any]], replayed: dict[str, dict[str, Any]]
) -> list[str]:
    """Accounts of ``replayed`` whose streamed score differs (or is missing)."""
    return sorted(
        account
        for account in replayed
        if account not in streamed or comparable(streamed[account]) != comparable(replayed[account])
    )


def differing_fields(
    streamed: dict[str, dict[str, Any]],
    replayed: dict[str, dict[str, Any]],
    accounts: Iterable[str],
) -> list[str]:
    """Score fields that differ between stream and replay for ``accounts``."""
    return sorted(
        {
            key
            for account in accounts
            for key in replayed[account]
            if key != "computed_at" and streamed.get(account, {}).get(key) != replayed[account][key]
        }
    )


def consumed_by_outcome(metrics_text: str, *, topic: str | None = None) -> dict[str, float]:
    """``vitals_events_consumed_total`` per outcome, summed over topics (or of
    one ``topic``); outcomes never counted are left out."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "vitals_events_consumed_total" and sample.value:
                if topic is not None and sample.labels["topic"] != topic:
                    continue
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return totals
