"""A real aiokafka round trip against the suite's broker (``kafka_bootstrap``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration

TWO_MIB = 2 * 1024 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def consume(
    bootstrap: str, topic: str, expected: int, timeout: float, **consumer_config: object
) -> list[tuple[int, bytes, bytes]]:
    """Read ``expected`` records of ``topic`` in a fresh consumer group."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique("test-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **consumer_config,
    )
    received: list[tuple[int, bytes, bytes]] = []
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while len(received) < expected:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    received.extend((r.partition, r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


async def test_round_trip_through_a_consumer_group(kafka_bootstrap: str) -> None:
    topic = unique("roundtrip")
    await create_topic(kafka_bootstrap, topic, partitions=3)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            producer.send(topic, key=f"account-{i % 7}".encode(), value=f"event-{i}".encode())
            for i in range(100)
        ]
        metadata = await asyncio.gather(*[await fut for fut in sent])
    finally:
        await producer.stop()
    assert {m.partition for m in metadata} == {0, 1, 2}, "keys spread over all partitions"

    received = await consume(kafka_bootstrap, topic, expected=100, timeout=60)

    assert sorted(value for _, _, value in received) == sorted(
        f"event-{i}".encode() for i in range(100)
    )
    # Same key, same partition: the producer's murmur2 partitioner is in use.
    partitions_by_key: dict[bytes, set[int]] = {}
    for partition, key, _ in received:
        partitions_by_key.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_by_key.values())


async def test_two_mebibyte_value(kafka_bootstrap: str) -> None:
    topic = unique("large")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    value = uuid.uuid4().bytes * (TWO_MIB // 16)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"big", value=value)
    finally:
        await producer.stop()

    received = await consume(
        kafka_bootstrap, topic, expected=1, timeout=60, max_partition_fetch_bytes=4 * 1024 * 1024
    )

    assert len(received) == 1
    assert received[0][2] == value
