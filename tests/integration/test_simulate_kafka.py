"""The simulator against the suite's broker: everything produced arrives, per topic."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner

from service.runtime.settings import INPUT_TOPIC_KINDS, Settings, load_settings
from service.tools.simulate import ProduceError, generate_history, produce

pytestmark = pytest.mark.integration

END = 1_717_200_000_000  # 2024-06-01T00:00:00Z


def unique_settings(bootstrap: str) -> Settings:
    return load_settings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"simtest-{uuid.uuid4().hex[:10]}.",
        partitions=3,
    )


async def create_input_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name=settings.input_topic(kind), num_partitions=3, replication_factor=1)
                for kind in INPUT_TOPIC_KINDS
            ]
        )
    finally:
        await admin.close()


async def consume_all(settings: Settings, expected: int, timeout: float = 90) -> Counter[str]:
    """Read every input topic from the start until ``expected`` records arrived.

    Returns records per topic kind; checks that each key is its value's account.
    """
    kinds = settings.input_topics
    consumer = AIOKafkaConsumer(
        *kinds,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"simtest-{uuid.uuid4().hex[:10]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    counts: Counter[str] = Counter()
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while sum(counts.values()) < expected:
                batches = await consumer.getmany(timeout_ms=1000)
                for partition, records in batches.items():
                    for record in records:
                        counts[kinds[partition.topic]] += 1
                        if not record.value.endswith(b"}"):
                            continue  # a deliberately broken message
                        obj = orjson.loads(record.value)
                        if isinstance(obj.get("account_id"), str):
                            assert record.key == obj["account_id"].encode()
        # Nothing more than expected trickles in.
        extra = await consumer.getmany(timeout_ms=1000)
        assert not any(extra.values())
    finally:
        await consumer.stop()
    return counts


async def test_history_arrives_complete_on_each_topic(kafka_bootstrap: str) -> None:
    settings = unique_settings(kafka_bootstrap)
    await create_input_topics(settings)
    events = list(generate_history(30, 14, END, seed=3, invalid_rate=0.05))
    expected = Counter(event.topic_kind for event in events)
    assert set(expected) == set(INPUT_TOPIC_KINDS)
    reports: list[tuple[int, float]] = []

    sent = await produce(events, settings, progress=lambda n, s: reports.append((n, s)))

    assert sent == len(events)
    assert await consume_all(settings, len(events)) == expected


async def test_missing_topics_fail_unless_created(kafka_bootstrap: str) -> None:
    settings = unique_settings(kafka_bootstrap)
    events = list(generate_history(3, 2, END, seed=1))
    with pytest.raises(ProduceError, match="missing input topic"):
        await produce(events, settings, connect_timeout=10)

    sent = await produce(events, settings, create_topics=True, connect_timeout=10)

    assert sent == len(events)
    assert sum((await consume_all(settings, len(events))).values()) == len(events)


def test_cli_history_to_kafka(kafka_bootstrap: str) -> None:
    from service.cli.simulate import simulate

    settings = unique_settings(kafka_bootstrap)
    args = [
        "--accounts", "10", "--days", "5", "--end", "2024-06-01T00:00:00Z", "--seed", "4",
        "--bootstrap", kafka_bootstrap, "--topic-prefix", settings.topic_prefix,
        "--create-topics", "--invalid-rate", "0.1",
    ]  # fmt: skip
    result = CliRunner().invoke(simulate, args, catch_exceptions=False)

    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    expected = list(generate_history(10, 5, END, seed=4, invalid_rate=0.1))
    assert summary["events"] == len(expected)
    assert summary["invalid"] == sum(event.invalid for event in expected) > 0
    assert summary["accounts"] == 10
    counts = asyncio.run(consume_all(settings, len(expected)))
    assert counts == Counter(event.topic_kind for event in expected)
