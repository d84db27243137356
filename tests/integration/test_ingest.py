"""Issue 2 acceptance on the real broker: intake, state, dead-letter path, metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas import load_example
from schemas.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_REASON, HEADER_TOPIC
from schemas.events import EVENT_TYPES
from tests.integration.workers import Namespace, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

#: event type -> input topic suffix (DESIGN.md "Input topics").
TOPIC_OF_TYPE = {
    "login": "events.login",
    "feature_use": "events.feature-use",
    "support_ticket": "events.support-ticket",
    "account": "events.account",
    "csm_touch": "events.engagement",
    "survey": "events.engagement",
    "pulse": "events.engagement",
    "milestone": "events.engagement",
    "kpi": "events.outcome",
    "contract": "events.outcome",
    "invoice": "events.outcome",
}


def example(event_type: str) -> dict[str, Any]:
    return dict(orjson.loads(load_example("events", event_type)))


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    samples: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def ready(worker: WorkerProcess) -> WorkerProcess:
    return await asyncio.to_thread(worker.wait_ready)


async def state_of(worker: WorkerProcess, account_id: str) -> dict[str, Any] | None:
    status, body = await asyncio.to_thread(worker.get_json, f"/accounts/{account_id}/state")
    return body if status == 200 else None


def test_topic_table_covers_every_event_type() -> None:
    assert set(TOPIC_OF_TYPE) == set(EVENT_TYPES)


async def test_one_example_of_each_type_is_counted(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer
) -> None:
    worker = await ready(worker_factory(namespace))
    expected: dict[str, Counter[str]] = {}
    for event_type, suffix in TOPIC_OF_TYPE.items():
        event = example(event_type)
        expected.setdefault(event["account_id"], Counter())[event_type] += 1
        await producer.send_and_wait(
            namespace.topic(suffix), orjson.dumps(event), key=event["account_id"].encode()
        )

    for account_id, counts in expected.items():

        async def counted(account_id: str = account_id, counts: Counter[str] = counts) -> bool:
            state = await state_of(worker, account_id)
            return state is not None and state["counts"] == dict(counts)

        await wait_for(counted, what=f"state of {account_id} to count {dict(counts)}")
        state = await state_of(worker, account_id)
        assert state is not None and state["last_event_at"] is not None

    applied = metric_samples(worker.metrics_text(), "vitals_events_consumed_total")
    per_topic = Counter(namespace.topic(suffix) for suffix in TOPIC_OF_TYPE.values())
    for topic, sent in per_topic.items():
        assert applied[(("outcome", "applied"), ("topic", topic))] == sent
    assert not any(dict(labels)["outcome"] == "dead_lettered" for labels in applied)


def bad_messages(namespace: Namespace) -> list[tuple[str, str, bytes, bytes]]:
    """(expected reason, topic, key, value) for each kind of bad input."""
    login = example("login")
    key = login["account_id"].encode()
    login_topic = namespace.topic("events.login")

    def variant(**changes: Any) -> bytes:
        event = {**login, "event_id": f"bad-{uuid.uuid4().hex}", **changes}
        return orjson.dumps({k: v for k, v in event.items() if v is not None})

    missing_id = {k: v for k, v in login.items() if k != "event_id"}
    account = {**example("account"), "seats": -1}
    tomorrow = int(time.time() * 1000) + 86_400_000
    return [
        ("not_json", login_topic, key, b"{this is not json"),
        ("not_object", login_topic, key, b'[{"event_id": "x"}]'),
        ("invalid_utf8", login_topic, key, b'{"event_id": "\xff\xfe\xfd"}'),
        ("missing_field", login_topic, key, orjson.dumps(missing_id)),
        ("unknown_type", login_topic, key, variant(type="logout")),
        ("wrong_topic", namespace.topic("events.feature-use"), key, variant()),
        ("key_mismatch", login_topic, b"somebody-else", variant()),
        ("future_event", login_topic, key, variant(occurred_at=tomorrow)),
        (
            "invalid_field",
            namespace.topic("events.account"),
            account["account_id"].encode(),
            orjson.dumps(account),
        ),
        ("oversized", login_topic, key, variant(padding="x" * (2 * 1024 * 1024))),
    ]


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def test_bad_input_is_dead_lettered_and_the_worker_keeps_going(
    namespace: Namespace,
    worker_factory: Any,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
) -> None:
    worker = await ready(worker_factory(namespace))
    cases = bad_messages(namespace)
    sent: dict[str, tuple[str, bytes, bytes, int, int]] = {}
    for reason, topic, key, value in cases:
        meta = await producer.send_and_wait(topic, value, key=key)
        sent[reason] = (topic, key, value, meta.partition, meta.offset)

    good = {**example("login"), "account_id": "after-bad-input", "event_id": uuid.uuid4().hex}
    await producer.send_and_wait(
        namespace.topic("events.login"), orjson.dumps(good), key=b"after-bad-input"
    )

    async def good_counted() -> bool:
        state = await state_of(worker, "after-bad-input")
        return state is not None and state["counts"] == {"login": 1}

    await wait_for(good_counted, what="the valid event sent after the bad ones")

    records = await read_topic(kafka_bootstrap, namespace.topic("events.dlq"), len(cases))
    by_reason = {dict(r.headers)[HEADER_REASON].decode(): r for r in records}
    assert sorted(by_reason) == sorted(sent), "each bad message is dead-lettered exactly once"
    assert len(records) == len(cases)
    for reason, (topic, key, value, partition, offset) in sent.items():
        record = by_reason[reason]
        headers = dict(record.headers)
        assert record.value == value, f"{reason}: DLQ keeps the original bytes"
        assert record.key == key
        assert headers[HEADER_TOPIC].decode() == topic
        assert int(headers[HEADER_PARTITION]) == partition
        assert int(headers[HEADER_OFFSET]) == offset

    text = worker.metrics_text()
    dlq = metric_samples(text, "vitals_dlq_records_total")
    assert {dict(labels)["reason"]: value for labels, value in dlq.items()} == {
        reason: 1.0 for reason in sent
    }
    consumed = metric_samples(text, "vitals_events_consumed_total")
    dead = Counter[str]()
    for _, topic, _, _ in cases:
        dead[topic] += 1
    for topic, count in dead.items():
        assert consumed[(("outcome", "dead_lettered"), ("topic", topic))] == count
    assert consumed[(("outcome", "applied"), ("topic", namespace.topic("events.login")))] == 1
    assert worker.process is not None and worker.process.poll() is None, "worker still running"
