"""Events of one account produced with a non-Java partitioner still end in one state.

librdkafka (confluent-kafka, kcat) hashes keys with CRC32 by default, not
murmur2; aiokafka lets us plug in the same scheme. The worker must forward
events found on a partition other than the account's to that partition.
"""

from __future__ import annotations

import asyncio
import binascii
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas import load_example
from service.processing.partitioning import account_partition
from tests.integration.workers import Namespace

pytestmark = pytest.mark.integration

PARTITIONS = 4


def crc32_partitioner(key: bytes, all_partitions: list[int], available: list[int]) -> int:
    """librdkafka's ``consistent_random``/``crc32`` scheme for keyed messages."""
    return all_partitions[binascii.crc32(key) % len(all_partitions)]


async def test_events_from_a_crc32_producer_reach_one_state(
    namespace: Namespace, worker_factory: Any, kafka_bootstrap: str
) -> None:
    worker = worker_factory(namespace, partitions=PARTITIONS)
    await asyncio.to_thread(worker.wait_ready)
    accounts = [f"crc-{i}" for i in range(12)]
    misplaced = [
        a
        for a in accounts
        if crc32_partitioner(a.encode(), list(range(PARTITIONS)), [])
        != account_partition(a.encode(), PARTITIONS)
    ]
    assert misplaced, "the two partitioners disagree for some of these accounts"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, partitioner=crc32_partitioner)
    await producer.start()
    try:
        for account in accounts:
            for n in range(5):
                event = orjson.loads(load_example("events", "login"))
                event.update(
                    account_id=account,
                    event_id=uuid.uuid4().hex,
                    user_id=f"u{n}",
                    occurred_at=int(time.time() * 1000) - (10 - n) * 60_000,
                )
                await producer.send_and_wait(
                    namespace.topic("events.login"), orjson.dumps(event), key=account.encode()
                )
    finally:
        await producer.stop()

    def counted() -> bool:
        for account in accounts:
            status, state = worker.get_json(f"/accounts/{account}/state")
            if status != 200 or state["counts"] != {"login": 5}:
                return False
        return True

    deadline = time.monotonic() + 90
    while not await asyncio.to_thread(counted):
        assert time.monotonic() < deadline, "every account's 5 logins in one state"
        await asyncio.sleep(0.2)
    text = worker.metrics_text()
    forwarded = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vitals_events_consumed_total") and 'outcome="repartitioned"' in line
    )
    assert forwarded == 5 * len(misplaced)
