"""Wire once: the faust app, its topics, the state table and the web pages.

Everything Kafka-shaped is built here from one ``Settings`` object; the processing
loop lives in ``streams.processor`` and call the pure functions of ``service``.

Design notes (see ../shared/FAUST_NOTES.md):
- every topic is raw bytes in and out, so undecodable input reaches our own
  dead-letter path instead of faust's log-only one;
- the state table is a plain ``Table`` keyed by account id bytes whose value is
  an ``AccountState`` holding explicit event-time windows (no faust windowed
  tables: their expiry runs on wall-clock time);
- there is no faust agent on the input topics: the consumer hands fetched
  batches to ``streams.processor`` (streams/batch_consumer.py explains why),
  which commits offsets itself once results are produced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
from faust.serializers import codecs

from service.model.account_state import AccountState
from service.runtime.settings import Settings
from streams.account_table import AccountTable
from streams.batch_consumer import BatchTransport

log = logging.getLogger("vitals.streams")

#: Kafka's default broker limit; values above it need topic/broker overrides.
_DLQ_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class AccountStateCodec(codecs.Codec):
    """Changelog codec for ``AccountState`` (compact orjson bytes)."""

    def _dumps(self, obj: Any) -> bytes:
        state: AccountState = obj
        data: bytes = state.to_bytes()
        return data

    def _loads(self, s: bytes) -> Any:
        return AccountState.from_bytes(s)


codecs.register("vitals_state", AccountStateCodec())


@dataclass(frozen=True)
class Topology:
    """The app and every channel and table the agents use."""

    app: faust.App
    settings: Settings
    #: The agent's channel: every input topic, the repartition topic and the ticks topic.
    inputs: faust.TopicT
    repartition: faust.TopicT
    ticks: faust.TopicT
    dlq: faust.TopicT
    scores: faust.TopicT
    bucket_changes: faust.TopicT
    triggers: faust.TopicT
    accounts: Any  # faust.Table[bytes, AccountState]; faust's generics are loose


def faust_credentials(settings: Settings) -> Any:
    """Translate TLS / SASL settings into faust's credentials object."""
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_topology(settings: Settings) -> Topology:
    """Create the faust app and declare every topic and table of DESIGN.md."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        canonical_url=settings.canonical_url,
        web_enabled=True,
        datadir=str(settings.data_dir),
        producer_max_request_size=max(settings.max_event_bytes * 2, 1_048_576) + 65_536,
        consumer_auto_offset_reset="earliest",
        # Without a linger faust sends about one produce request per three
        # records (the profile in docs/benchmark.md); a few ms batches them.
        producer_linger_ms=5,
        # aiokafka holds one open batch per partition and makes the next send
        # wait until it is drained: with the default 16 KB, about ten score or
        # state records (1-2 KB each) per broker round trip capped the worker.
        producer_max_batch_size=1_048_576,
        # A record larger than the per-partition fetch size is still returned
        # whole by Kafka >= 0.10.1, so no fetch-size change is needed for big values.
        key_serializer="raw",
        value_serializer="raw",
        # Nothing of ours is acknowledged through faust's streams (the batch
        # path commits itself), so a rebalance has nothing to wait for.
        stream_wait_empty=False,
        # Bigger fetches make bigger batches when behind; a batch is whatever
        # has arrived, so this costs no latency when caught up.
        broker_max_poll_records=5000,
        # No standby replicas: faust's memory store applied a standby's
        # records into the same dict as the live states, so each worker also
        # held (and its gauges, /portfolio and UI counted) a stale copy of
        # every other worker's accounts, and recovery never used that copy
        # (the memory store reports no persisted offset: a partition taken
        # over is read from the start of its changelog anyway).
        table_standby_replicas=0,
    )
    # The consumer hands fetched batches of the input topics to the processor
    # instead of faust's per-message stream path (streams/batch_consumer.py).
    app.transport = BatchTransport(app.conf.broker_consumer, app)

    def raw_topic(name: str, **kwargs: Any) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            replicas=settings.replication_factor,
            **kwargs,
        )

    inputs = app.topic(
        *settings.input_topics,
        settings.repartition_topic,
        settings.ticks_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        config={"max.message.bytes": str(_DLQ_MAX_MESSAGE_BYTES)},
    )
    dlq = raw_topic(settings.dlq_topic, config={"max.message.bytes": str(_DLQ_MAX_MESSAGE_BYTES)})
    repartition = raw_topic(
        settings.repartition_topic, config={"max.message.bytes": str(_DLQ_MAX_MESSAGE_BYTES)}
    )
    ticks = raw_topic(settings.ticks_topic)
    scores = raw_topic(settings.scores_topic, compacting=True)
    bucket_changes = raw_topic(settings.bucket_changes_topic)
    triggers = raw_topic(settings.triggers_topic)
    # As ``app.Table`` builds a table, with our subclass (streams/account_table.py).
    accounts = AccountTable(
        app,
        name="accounts",
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=bytes,
        live_states=settings.live_states,
        # faust derives a changelog's value codec from the table's value type
        # (JSON otherwise), so the changelog topic is declared here with ours.
        changelog_topic=app.topic(
            settings.changelog_topic,
            key_type=bytes,
            key_serializer="raw",
            value_serializer="vitals_state",
            partitions=settings.partitions,
            replicas=settings.replication_factor,
            compacting=True,
            deleting=False,
            acks=False,
            internal=True,
        ),
    )
    app.tables.add(accounts)
    accounts.value_serializer = "vitals_state"
    return Topology(
        app=app,
        settings=settings,
        inputs=inputs,
        repartition=repartition,
        ticks=ticks,
        dlq=dlq,
        scores=scores,
        bucket_changes=bucket_changes,
        triggers=triggers,
        accounts=accounts,
    )
