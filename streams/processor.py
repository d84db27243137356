"""The worker's one agent: input events, forwarded events and timer ticks, in partition order.

Thin by design: decoding is ``schemas.decode``, state changes and scoring are
``service.account_state`` / ``service.scoring``; this module moves bytes,
keeps the per-partition event-time watermark and counts outcomes.

One agent reads every input topic, the internal repartition topic and the
internal ticks topic (all co-partitioned), so an account's events and its timer
evaluations are applied one at a time, in order, with table writes landing in
the changelog partition of the account.

Event-time order: the input topics are read at different speeds, so one
account's events from two topics can be read out of order. Valid events wait
in a per-partition buffer and are applied in ``occurred_at`` order once every
source topic-partition of that partition has been read past them (or has had
nothing to read for ``VITALS_CLOCK_IDLE_S``): the same order ``vitals replay``
applies them in. A buffered message is acknowledged only once applied, so
faust never commits past it.

Guarantees:
- nothing raises out of the loop for bad input (faust would ack and skip it):
  each message is applied, recognised as a duplicate / late event, forwarded
  to its account's partition, or dead-lettered with a reason;
- a broker failure while producing propagates and stops the worker, so the
  uncommitted offsets are consumed again after restart; duplicates are then
  dropped by event id (bad data versus broken infrastructure, STYLE.md item 6).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic_core

from schemas.decode import Rejected, decode_event
from schemas.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from schemas.events import Event
from service import metrics
from service.account_state import AccountState, ApplyResult
from service.clock import PartitionProgress, timer_as_of
from service.dead_letter import PROCESSING_ERROR, dead_letter_headers
from service.partitioning import account_partition
from service.playbooks import PlaybookSet, playbooks_for_step
from service.portfolio import AccountSummary
from service.scorecard import Scorecard
from service.scoring import Step, on_event, on_timer
from service.webhook import WebhookDispatcher
from streams.app import Topology

log = logging.getLogger("vitals.processor")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an input message was first read (before any forwarding)."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Pending:
    """A buffered item: a valid event waiting for its turn, or a timer tick."""

    event: Any  # the faust event, acknowledged once the item is applied
    decoded: Event | None
    as_of: int | None
    origin: Origin | None = None
    started: float = 0.0


@dataclass
class Processor:
    """Per-worker processing state that is not account state."""

    top: Topology
    scorecard: Scorecard
    playbooks: PlaybookSet | None = None
    dispatcher: WebhookDispatcher | None = None
    #: (topic, partition) -> newest occurred_at read from it.
    watermarks: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (topic, partition) -> last offset processed.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    #: account key -> latest published summary (portfolio, accounts-per-bucket gauge).
    summaries: dict[bytes, AccountSummary] = field(default_factory=dict)
    #: Newest tick boundary this worker has sent.
    last_tick: int = 0
    #: (topic, partition) -> monotonic time of the last message read from it.
    last_read: dict[tuple[str, int], float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: partition -> heap of (event time, arrival number, pending item).
    buffers: dict[int, list[tuple[int, int, Pending]]] = field(default_factory=dict)
    arrivals: int = 0
    #: partition -> last computed safe time (see ``release``).
    safe_cache: dict[int, tuple[float, float]] = field(default_factory=dict)

    # ------------------------------------------------------------ messages

    async def handle(self, event: Any) -> None:
        """Process one faust event of the agent's channel (acks are manual)."""
        message = event.message
        settings = self.top.settings
        self.positions[(message.topic, message.partition)] = message.offset
        self.last_read[(message.topic, message.partition)] = time.monotonic()
        if message.topic == settings.ticks_topic:
            try:
                as_of = orjson.loads(message.value)["as_of"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.error("ignoring malformed tick at offset %s", message.offset)
                as_of = None
            if isinstance(as_of, int):
                self.push(message.partition, as_of, Pending(event, None, as_of))
            else:  # a flush marker: only releases what is due
                event.ack()
        else:
            await self.on_input(event)
        await self.release(message.partition)

    def push(self, partition: int, at: int, item: Pending) -> None:
        self.arrivals += 1
        heapq.heappush(self.buffers.setdefault(partition, []), (at, self.arrivals, item))

    def safe_time(self, partition: int) -> float | None:
        """Event time up to which partition ``partition`` can be applied in order.

        The minimum over its source topic-partitions of the newest event time
        read from each; one with nothing left to read that has been quiet for
        ``clock_idle_s`` does not hold the others back. ``inf`` when all are
        quiet, None when one has not shown any event time yet.
        """
        app = self.top.app
        settings = self.top.settings
        consumer = app.consumer
        if consumer is None:
            return None
        sources = set(settings.input_topics) | {settings.repartition_topic}
        now = time.monotonic()
        safe: float = math.inf
        for tp in consumer.assignment():
            if tp.partition != partition or tp.topic not in sources:
                continue
            source = (tp.topic, tp.partition)
            highwater = consumer.highwater(tp)
            done = self.positions.get(source)
            drained = highwater is not None and (
                int(highwater) == 0 or (done is not None and done + 1 >= int(highwater))
            )
            quiet = now - self.last_read.get(source, self.started)
            if drained and quiet >= settings.clock_idle_s:
                continue
            newest = self.watermarks.get(source)
            if newest is None:
                return None
            safe = min(safe, newest)
        return safe

    async def release(self, partition: int) -> None:
        """Apply the buffered items of a partition that are due, oldest first."""
        heap = self.buffers.get(partition)
        if not heap:
            return
        # Recomputing the safe time walks the assignment; within a few
        # milliseconds the last answer is as good (the profile showed it at
        # ~10% of the worker's time when done for every message).
        now = time.monotonic()
        cached = self.safe_cache.get(partition)
        if cached is not None and heap[0][0] <= cached[0] and now - cached[1] < 0.05:
            safe = cached[0]
        else:
            computed = self.safe_time(partition)
            if computed is None:
                return
            safe = computed
            self.safe_cache[partition] = (safe, now)
        while heap and heap[0][0] <= safe:
            _, _, item = heapq.heappop(heap)
            if item.decoded is None:
                assert item.as_of is not None
                await self.on_tick(item.event.message, item.as_of)
            else:
                await self.apply_event(item)
            item.event.ack()

    async def flush_all(self) -> None:
        for partition in list(self.buffers):
            await self.release(partition)

    def origin_of(self, message: Any) -> Origin:
        if message.topic != self.top.settings.repartition_topic:
            return Origin(message.topic, message.partition, message.offset)
        headers = dict(message.headers or ())
        try:
            return Origin(
                bytes(headers[HEADER_TOPIC]).decode(),
                int(headers[HEADER_PARTITION]),
                int(headers[HEADER_OFFSET]),
            )
        except (KeyError, ValueError):
            # Only this worker writes the repartition topic; an unmarked
            # record there is still dead-lettered, never dropped.
            return Origin(message.topic, message.partition, message.offset)

    async def on_input(self, event: Any) -> None:
        """Decode; dead-letter or forward at once, buffer valid events."""
        message = event.message
        settings = self.top.settings
        now_ms = int(time.time() * 1000)
        origin = self.origin_of(message)
        try:
            decoded = decode_event(
                message.value,
                topic_kind=settings.input_topics.get(origin.topic),
                key=message.key,
                now_ms=now_ms,
                max_bytes=settings.max_event_bytes,
                max_future_ms=settings.max_future_ms,
            )
        except Rejected as rejected:
            await self.dead_letter(message, origin, rejected.reason, rejected.detail)
            event.ack()
            return
        key = decoded.account_id.encode()
        home = account_partition(key, settings.partitions)
        if message.partition != home:
            await self.forward(message, origin, home)
            event.ack()
            return
        source = (message.topic, message.partition)
        newest = self.watermarks.get(source)
        if newest is None or decoded.occurred_at > newest:
            self.watermarks[source] = decoded.occurred_at
        item = Pending(event, decoded, None, origin, time.perf_counter())
        self.push(message.partition, decoded.occurred_at, item)

    async def apply_event(self, item: Pending) -> None:
        message = item.event.message
        origin = item.origin
        decoded = item.decoded
        assert decoded is not None and origin is not None
        now_ms = int(time.time() * 1000)
        key = decoded.account_id.encode()
        try:
            state, step, triggers = self.apply(key, decoded, now_ms)
        except Exception as exc:  # a bug in the pure model must not cost the event
            log.exception("processing failed for %s@%s", origin.topic, origin.offset)
            await self.dead_letter(
                message, origin, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"
            )
            return
        assert step.result is not None
        outcome = step.result.value
        if step.result is ApplyResult.APPLIED or step.evaluation is not None:
            # Outside the try: a table or broker failure is infrastructure, not
            # bad data, and stops the worker (the event is read again later).
            self.top.accounts[key] = state  # one changelog record per event
        await self.publish(key, step, item.started, state, triggers)
        metrics.EVENTS_CONSUMED.labels(origin.topic, outcome).inc()
        metrics.EVENT_TIME_LAG_SECONDS.observe(max(0.0, (now_ms - decoded.occurred_at) / 1000))
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - item.started)

    def apply(
        self, key: bytes, event: Event, now_ms: int
    ) -> tuple[AccountState, Step, list[dict[str, Any]]]:
        """The pure part: the account's new state, its cadence step and triggers."""
        state: AccountState | None = self.top.accounts.get(key)
        if state is None:
            state = AccountState.new(event.account_id)
        # Events are applied in event-time order, so ticks up to the event's
        # own time are exactly the ones replay runs before it.
        step = on_event(state, event, self.scorecard, watermark=None, now_ms=now_ms)
        triggers = self.decide_playbooks(state, step)
        return state, step, triggers

    def decide_playbooks(self, state: AccountState, step: Step) -> list[dict[str, Any]]:
        """Playbook triggers of this step (memory kept in the account state)."""
        if self.playbooks is None:
            return []
        return playbooks_for_step(self.playbooks, self.scorecard, state, step)

    async def on_tick(self, message: Any, as_of: int) -> None:
        """Evaluate every account of the tick's partition at the tick's boundary."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        partitions = self.top.settings.partitions
        accounts = self.top.accounts
        evaluated = 0
        for key in list(accounts.keys()):
            if account_partition(key, partitions) != message.partition:
                continue
            state: AccountState = accounts[key]
            step = on_timer(state, as_of, self.scorecard, now_ms=now_ms)
            if step.evaluation is not None:
                triggers = self.decide_playbooks(state, step)
                accounts[key] = state
                await self.publish(key, step, started, state, triggers)
                evaluated += 1
        log.info(
            "tick %s on partition %d: %d accounts re-evaluated",
            as_of,
            message.partition,
            evaluated,
        )

    # ------------------------------------------------------------ outputs

    async def publish(
        self,
        key: bytes,
        step: Step,
        started: float,
        state: AccountState,
        triggers: list[dict[str, Any]],
    ) -> None:
        top = self.top
        for change in step.changes:
            await top.bucket_changes.send(key=key, value=pydantic_core.to_json(change))
            metrics.BUCKET_TRANSITIONS.labels(change.from_bucket, change.to_bucket).inc()
        score = step.score
        if score is None:
            return
        await top.scores.send(key=key, value=pydantic_core.to_json(score))
        for trigger in triggers:
            await top.triggers.send(key=key, value=orjson.dumps(trigger))
            metrics.PLAYBOOK_TRIGGERS.labels(trigger["playbook"]).inc()
            if self.dispatcher is not None:
                # Never blocks: a full queue is counted as a failed delivery.
                self.dispatcher.submit(trigger)
        metrics.SCORE_UPDATES.inc()
        metrics.SCORE_LATENCY_SECONDS.observe(time.perf_counter() - started)
        previous = self.summaries.get(key)
        if previous is None or previous.bucket != score.bucket:
            if previous is not None:
                metrics.ACCOUNTS_BY_BUCKET.labels(previous.bucket).dec()
            metrics.ACCOUNTS_BY_BUCKET.labels(score.bucket).inc()
        arr = state.snapshot.get("arr")
        self.summaries[key] = AccountSummary(
            state.account_id,
            score.bucket,
            score.score,
            score.trend.delta_7d,
            float(arr[0]) if arr else None,
        )

    async def dead_letter(self, message: Any, origin: Origin, reason: str, detail: str) -> None:
        metrics.DLQ_RECORDS.labels(reason).inc()
        metrics.EVENTS_CONSUMED.labels(origin.topic, "dead_lettered").inc()
        headers = dead_letter_headers(
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            reason=reason,
            detail=detail,
            original=message.headers,
        )
        await self.top.dlq.send(key=message.key, value=message.value, headers=headers)

    async def forward(self, message: Any, origin: Origin, partition: int) -> None:
        """Send an event read from the wrong partition to its account's partition."""
        metrics.EVENTS_CONSUMED.labels(origin.topic, "repartitioned").inc()
        kept = [
            (name, value)
            for name, value in (message.headers or ())
            if name not in (HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET)
        ]
        headers = [
            *kept,
            (HEADER_TOPIC, origin.topic.encode()),
            (HEADER_PARTITION, str(origin.partition).encode()),
            (HEADER_OFFSET, str(origin.offset).encode()),
        ]
        await self.top.repartition.send(
            key=message.key, value=message.value, partition=partition, headers=headers
        )

    # ------------------------------------------------------------ timer

    async def maybe_tick(self) -> None:
        """Send a tick to each owned partition once the clock passes a new boundary."""
        app = self.top.app
        settings = self.top.settings
        consumer = app.consumer
        if consumer is None or app.rebalancing:
            return
        assignment = consumer.assignment()
        # The assignment also holds the changelog partitions faust reads for
        # recovery: only the topics this agent processes count for the clock.
        sources = set(settings.input_topics) | {settings.repartition_topic}
        inputs = [tp for tp in assignment if tp.topic in sources]
        tick_tps = [tp for tp in assignment if tp.topic == settings.ticks_topic]
        if not inputs or not tick_tps:
            return
        progress = []
        now = time.monotonic()
        for tp in inputs:
            # The end offset as of the last fetch response (None before the
            # first): cheap, and never ahead of what the consumer can see.
            highwater = consumer.highwater(tp)
            end = 0 if highwater is None else int(highwater)
            done = self.positions.get((tp.topic, tp.partition))
            # "Nothing left to read" only means "live" once the partition has
            # also been quiet for a while: a backfill producer slower than this
            # worker must not let the wall clock run ahead of its events.
            quiet = now - self.last_read.get((tp.topic, tp.partition), self.started)
            caught_up = (
                highwater is not None
                and (end == 0 or (done is not None and done + 1 >= end))
                and quiet >= settings.clock_idle_s
            )
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                max(0, end - (done + 1 if done is not None else 0))
            )
            progress.append(
                PartitionProgress(caught_up, self.watermarks.get((tp.topic, tp.partition)))
            )
        as_of = timer_as_of(int(time.time() * 1000), self.scorecard.rescore_interval_ms, progress)
        if as_of is None or as_of <= self.last_tick:
            # Nothing new to evaluate; still wake partitions whose buffered
            # events wait on a topic that has gone quiet.
            for tp in tick_tps:
                if self.buffers.get(tp.partition):
                    await self.top.ticks.send(
                        key=None, value=b'{"as_of": null}', partition=tp.partition
                    )
            return
        for tp in tick_tps:
            await self.top.ticks.send(
                key=None, value=orjson.dumps({"as_of": as_of}), partition=tp.partition
            )
        self.last_tick = as_of


def install_processor(
    top: Topology,
    scorecard: Scorecard,
    playbooks: PlaybookSet | None = None,
    dispatcher: WebhookDispatcher | None = None,
) -> Processor:
    """Attach the agent, its timer and the webhook dispatcher to the app."""
    processor = Processor(top, scorecard, playbooks, dispatcher)

    if dispatcher is not None:

        @top.app.task  # type: ignore[untyped-decorator]
        async def start_dispatcher() -> None:
            await dispatcher.start()

        @top.app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def stop_dispatcher(app: Any, **kwargs: Any) -> None:
            await dispatcher.stop(drain_timeout=10)

    @top.app.agent(top.inputs, concurrency=1, name="vitals-processor")
    async def process(stream: Any) -> None:
        # Acks are manual: a buffered event is acknowledged once applied.
        async for event in stream.noack().events():
            try:
                await processor.handle(event)
            except Exception as exc:
                # Broken infrastructure (broker, table): stop the worker so it
                # is restarted and reads the unacknowledged events again,
                # rather than going on with a hole in its state.
                log.critical("stopping the worker: %s", exc, exc_info=True)
                await top.app.crash(exc)
                raise

    @top.app.timer(top.settings.timer_interval_s)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        await processor.maybe_tick()

    @top.app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        # The next owner of a partition must get a tick even for a boundary
        # this worker already announced.
        processor.last_tick = 0
        # Unacknowledged buffered events are read again by the next owner.
        for tp in revoked:
            processor.buffers.pop(tp.partition, None)
            processor.safe_cache.pop(tp.partition, None)

    return processor
