"""A faust consumer that hands whole fetched batches of chosen topics to one handler.

Why: faust's per-message path (``Consumer._drain_messages`` ->
``Conductor.on_message`` -> channel queue -> ``Stream.__anext__``) costs about
three event-loop iterations, four tasks and eleven callbacks per message
(FAUST_NOTES, and the profile in docs/benchmark.md); it capped a worker at a
few thousand events/s whatever the scoring cost. Everything else faust does
stays: the consumer group and its assignor (the web routing reads it), the
seek to committed offsets after a rebalance, changelog recovery of the state
table (changelog messages still go through the conductor), the web server
and timers.

Contract of the handler (``BatchTransport.batch_handler``): it receives
``{tp: [aiokafka ConsumerRecord, ...]}`` of the batch topics, in offset order
per partition, plus the consumer generation the records were fetched in. It
owns their offsets: nothing of a batch topic is acked or committed by faust,
so the handler commits (``commit_offsets``) once the results of the records
are safely produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

BatchHandler = Callable[[Mapping[Any, Sequence[Any]], int], Awaitable[None]]


#: How long the broker may hold a fetch request open waiting for data. faust
#: fixes 1,500 ms; aiokafka keeps one fetch in flight per broker and leaves
#: out partitions that still have unread records, so a request holding only
#: quiet partitions delayed the next fetch of the busy ones by up to 1.5 s
#: (the live latency measured by ``vitals bench`` was 1.4 s at p50).
FETCH_MAX_WAIT_MS = 50


def not_rewound(
    committed: Mapping[Any, int | None], batch_topics: Collection[str], assigned: Collection[Any]
) -> tuple[list[Any], list[Any]]:
    """The assigned batch-topic partitions aiokafka's ``seek_to_committed``
    leaves where they are: ``(committed at 0, never committed)``."""
    at_zero: list[Any] = []
    uncommitted: list[Any] = []
    for tp, offset in committed.items():
        if tp.topic not in batch_topics or tp not in assigned:
            continue
        if offset is None:
            uncommitted.append(tp)
        elif offset == 0:
            at_zero.append(tp)
    return at_zero, uncommitted


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with a short broker-side fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start()
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a batch path for its transport's ``batch_topics``."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit_offsets(self, offsets: Mapping[Any, int]) -> bool:
        """Commit ``{tp: next offset}`` of batch topics (only those still assigned)."""
        if not offsets:
            return True
        done: bool = await self._commit(offsets)
        if done:
            self._committed_offset.update(offsets)
        return done

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Seek every assigned partition to its committed offset, including
        batch-topic partitions whose committed offset is 0 or none.

        faust drops records fetched while a rebalance stops the flow and
        relies on this seek to read them again, but aiokafka's
        ``seek_to_committed`` only moves partitions with a committed offset
        above 0: records of a partition never committed in this group (or
        committed at 0) that were fetched in that window would never be
        read in this assignment. Those partitions are sought to 0, or to the
        beginning (the group's ``auto_offset_reset`` is "earliest").
        """
        # Typed ``int`` by faust; aiokafka gives None for "never committed".
        committed: Mapping[Any, int | None] = await super().seek_to_committed()
        transport = self.transport
        assert isinstance(transport, BatchTransport)
        at_zero, uncommitted = not_rewound(committed, transport.batch_topics, self.assignment())
        for tp in at_zero:
            self._thread.seek(tp, 0)
        if uncommitted:
            await self._thread.seek_to_beginning(*uncommitted)
        return committed  # type: ignore[return-value]

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        # The loop of faust's Consumer._drain_messages, with batch topics
        # taken out of the per-message path; other topics (the changelog
        # during recovery) keep faust's exact handling.
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        transport = self.transport
        assert isinstance(transport, BatchTransport)
        batch_topics = transport.batch_topics
        handler = transport.batch_handler
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                # As faust's getmany: the generation the records are handed
                # on in is the one after the fetch. (Taking it before the
                # fetch dropped changelog records fetched right after a
                # rebalance, and table recovery then waited for them forever.)
                generation = self.app.consumer_generation_id
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # faust's getmany: records fetched while the flow is
                    # stopped are dropped and read again from the committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("seek after a stopped flow failed: %r", exc)
                    continue
                batch: dict[Any, Sequence[Any]] = {}
                for tp, tp_records in records.items():
                    if active is not None and tp not in active:
                        # Paused since the fetch (a rebalance began): faust
                        # drops these too and seeks back when it resumes.
                        self.log.info(
                            "dropped %d records of paused %s:%d from offset %d",
                            len(tp_records),
                            tp.topic,
                            tp.partition,
                            tp_records[0].offset if tp_records else -1,
                        )
                        continue
                    if tp.topic in batch_topics:
                        batch[tp] = tp_records
                        continue
                    for record in tp_records:
                        if self.app.consumer_generation_id != generation:
                            break  # a rebalance began meanwhile (faust does the same)
                        offset = record.offset
                        seen = read_offset[tp]
                        if seen is None or offset >= seen:
                            message = self._to_message(tp, record)
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            read_offset[tp] = offset
                if batch and handler is not None:
                    await handler(batch, generation)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise


class BatchTransport(faust_aiokafka.Transport):
    """The aiokafka transport whose consumer is a ``BatchConsumer``."""

    Consumer = BatchConsumer
    #: Topics whose batches go to ``batch_handler`` (set before the app starts).
    batch_topics: frozenset[str] = frozenset()
    batch_handler: BatchHandler | None = None
