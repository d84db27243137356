"""Create the topics vitals reads and writes, with the configured partition counts.

faust subscribes to missing source topics without creating them, so every
process that needs topics (worker, simulator, demo) calls :func:`ensure_topics`
first. Existing topics are left alone, but an input topic whose partition count
differs from ``VITALS_PARTITIONS`` is an error: state tables are co-partitioned
with their source topics and would silently split an account otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from service.runtime.settings import Settings

log = logging.getLogger("vitals.topics")

#: Large enough for an oversized input value to be kept whole in the DLQ.
LARGE_MESSAGE_BYTES = 16 * 1024 * 1024


class TopicError(RuntimeError):
    """The cluster's topics do not fit the settings (one-line message)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    config: dict[str, str] = field(default_factory=dict)
    copartitioned: bool = True


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of DESIGN.md under the configured prefix."""
    large = {"max.message.bytes": str(LARGE_MESSAGE_BYTES)}
    specs = [TopicSpec(name, dict(large)) for name in settings.input_topics]
    specs += [
        TopicSpec(settings.dlq_topic, dict(large), copartitioned=False),
        TopicSpec(settings.scores_topic, {"cleanup.policy": "compact"}, copartitioned=False),
        TopicSpec(settings.bucket_changes_topic, copartitioned=False),
        TopicSpec(settings.triggers_topic, copartitioned=False),
        TopicSpec(settings.repartition_topic, dict(large)),
        TopicSpec(settings.ticks_topic),
        # The state table's changelog: created here, before the worker's
        # consumer starts, so its partition count is known from the first event.
        TopicSpec(settings.changelog_topic, {"cleanup.policy": "compact"}),
    ]
    return specs


async def ensure_topics_async(settings: Settings, connect_timeout: float = 60.0) -> list[str]:
    """Create missing topics; return the names created. Raises TopicError on mismatch."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs(), request_timeout_ms=30_000)
    try:
        await asyncio.wait_for(admin.start(), connect_timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise TopicError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc or type(exc).__name__}"
        ) from exc
    try:
        specs = topic_specs(settings)
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            # Errors per topic (e.g. another worker created it first) come back
            # in the response, not as exceptions: check the outcome instead.
            await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        num_partitions=settings.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=spec.config,
                    )
                    for spec in missing
                ]
            )
            # Creation is asynchronous on the broker: wait until metadata shows them.
            deadline = asyncio.get_running_loop().time() + connect_timeout
            while True:
                now_present = set(await admin.list_topics())
                absent = [spec.name for spec in missing if spec.name not in now_present]
                if not absent:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TopicError(f"could not create topics: {', '.join(absent)}")
                await asyncio.sleep(0.2)
            for spec in missing:
                log.info("created topic %s (%d partitions)", spec.name, settings.partitions)
        present = [spec.name for spec in specs if spec.copartitioned and spec.name in existing]
        if present:
            described = await admin.describe_topics(present)
            for topic in described:
                count = len(topic.get("partitions", []))
                if count and count != settings.partitions:
                    raise TopicError(
                        f"topic {topic['topic']} has {count} partitions but "
                        f"VITALS_PARTITIONS={settings.partitions}; they must match"
                    )
        return [spec.name for spec in missing]
    finally:
        await admin.close()


def ensure_topics(settings: Settings, timeout: float = 60.0) -> list[str]:
    """Blocking wrapper of :func:`ensure_topics_async` for command-line entry points."""
    return asyncio.run(ensure_topics_async(settings, timeout))
