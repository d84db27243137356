"""The worker's processing loop: input events, forwarded events and timer ticks, in partition order.

Thin by design: decoding is ``schemas.decode``, state changes and scoring are
``service.model.account_state`` / ``service.model.scoring``; this module moves bytes,
keeps the per-partition event-time watermark, batches outputs and counts
outcomes.

Batches, not messages: the consumer (``streams.batch_consumer``) hands every
fetched batch of the input, repartition and ticks topics (all co-partitioned)
to ``Processor.on_batch``. Within a batch an account's events are applied one
at a time, in event-time order, exactly as ``vitals replay`` applies them; what
is coalesced is only what a reader cannot tell apart:
- the score message: one per account per batch, its newest (the scores topic
  is compacted and keyed by account: only the latest score counts);
- the changelog: one record per changed account per commit interval
  (``VITALS_COMMIT_INTERVAL_S``), written before the offsets are committed,
  as Kafka Streams' record cache does.
Bucket changes and playbook triggers are every one of them, in order.

Event-time order: the input topics are read at different speeds, so one
account's events from two topics can be read out of order. Valid events wait
in a per-partition buffer and are applied in ``occurred_at`` order once every
source topic-partition of that partition has been read past them (or has had
nothing to read for ``VITALS_CLOCK_IDLE_S``). An event is *late* by the order
it was read in (older than 90 days before the newest event of its account
read before it), as in replay.

Delivery guarantees (at least once in, effectively once applied):
- a commit first writes the changed states to the changelog and waits until
  every output and changelog record produced so far is acknowledged by the
  broker, then commits, per input partition, the offset below which every
  record is applied (a buffered record holds its partition's offset back);
- each state carries the positions (topic, partition, offset) applied to it
  since the last commit it knew of, so a record read again after a crash or a
  rebalance is recognised and skipped, whatever its event id; producer
  duplicates are caught by event id as before;
- bad input never stops the loop: each record is applied, recognised as a
  duplicate / late event, forwarded to its account's partition, or
  dead-lettered with a reason; a broker or table failure stops the worker,
  and the uncommitted records are read again after the restart.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import pydantic_core

from schemas.decode import Rejected, decode_event
from schemas.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from schemas.events import Event
from service.api.portfolio import AccountSummary, summary_of
from service.model.account_state import AccountState
from service.model.cadence import Cadence, Outcome
from service.model.playbooks import PlaybookSet
from service.model.scorecard import Scorecard
from service.model.scoring import Evaluation, Step
from service.processing.clock import PartitionProgress, timer_as_of
from service.processing.partitioning import account_partition
from service.processing.state_store import StateStore
from service.runtime import metrics
from service.runtime.dead_letter import PROCESSING_ERROR, dead_letter_headers
from service.runtime.webhook import WebhookDispatcher
from streams.app import Topology
from streams.batch_consumer import BatchConsumer, BatchTransport

log = logging.getLogger("vitals.processor")

#: A source whose newest event is this recent carries live events (see ``safe_time``).
LIVE_WINDOW_MS = 60_000

#: Items applied between two returns to the event loop (about 50 ms of work).
RELEASE_CHUNK = 2000
#: A commit writes the states changed since the last one in slices of at
#: least this many (or an eighth of them, if more), one slice after each
#: chunk of processing (see ``Processor.commit``).
STATE_SLICE = 250
COMMIT_SLICES = 8

#: Seconds buffered events may wait for a source before it is logged (and,
#: if it has records it does not deliver, sought to fetch them again).
STALL_REPORT_S = 30.0

#: Outcome label of a record read again after a crash or rebalance and
#: recognised by its position (it was applied before).
REDELIVERED = "redelivered"

#: One message to produce: topic, key, value, partition (None: by key), headers.
Outgoing = tuple[str, bytes | None, bytes, int | None, Sequence[tuple[str, bytes]] | None]


async def acknowledged(sends: Sequence[Any]) -> list[Any]:
    """The record metadata of every send, in order, once all are acknowledged;
    raises the first failure met (like ``asyncio.gather``).

    The producer resolves its futures a whole request at a time, so this
    awaits the first pending one and then finds most of the rest done:
    ``gather`` would register a callback per message (tens of thousands per
    commit during a catch-up, 8% of the worker's time in a profile).
    """
    results = []
    for sent in sends:
        if not sent.done():
            await sent
        results.append(sent.result())
    return results


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an input message was first read (before any forwarding)."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class CommitInProgress:
    """A commit whose changed states are being written to the changelog in slices."""

    #: (account key, partition) of the states still to write.
    keys: list[tuple[bytes, int]]
    #: The input offsets it commits: those handled when it started.
    offsets: dict[Any, int]
    #: States written per slice.
    per_slice: int


@dataclass(slots=True)
class Pending:
    """A buffered item: a valid event waiting for its turn, or a timer tick."""

    #: Where it was read: (topic, partition) and offset.
    source: tuple[str, int]
    offset: int
    decoded: Event | None
    as_of: int | None
    origin: Origin | None = None
    started: float = 0.0
    #: The account's newest event time read before this event (lateness).
    newest_read: int | None = None
    #: The consumer record (its bytes go to the DLQ if the model fails on it).
    record: Any = None


class Holder(NamedTuple):
    """A source holding a partition's buffered events (``Processor.holders``)."""

    tp: Any
    #: End offset (None: not known), last offset read (None: none).
    end: int | None
    done: int | None
    #: Newest event time read from it (None: none).
    newest: int | None
    #: Seconds since anything was read from it.
    quiet: float


@dataclass(slots=True)
class Unpublished:
    """The newest score of an account not yet published in this batch."""

    step: Step
    state: AccountState
    #: When the oldest event it reflects was read (latency metric).
    started: float


@dataclass(slots=True)
class _Tick:
    """A tick going through a partition's accounts in chunks."""

    #: Account keys still to evaluate.
    keys: list[bytes]
    as_of: int
    evaluated: int = 0
    since: float = field(default_factory=time.monotonic)


@dataclass
class Processor:
    """Per-worker processing state that is not account state."""

    top: Topology
    scorecard: Scorecard
    playbooks: PlaybookSet | None = None
    dispatcher: WebhookDispatcher | None = None
    #: (topic, partition) -> newest occurred_at read from it.
    watermarks: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (topic, partition) -> last offset read.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    #: account key -> latest published summary (portfolio, accounts-per-bucket gauge).
    summaries: dict[bytes, AccountSummary] = field(default_factory=dict)
    #: Newest tick boundary this worker has sent in the current assignment (0:
    #: none, or an event older than it was read since: send it again).
    last_tick: int = 0
    #: Counts assignments: ``forget_partitions`` moves it on, so work that
    #: awaited across a rebalance can tell its bookkeeping is stale.
    epoch: int = 0
    #: (topic, partition) -> monotonic time of the last message read from it.
    last_read: dict[tuple[str, int], float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: partition -> heap of (event time, arrival number, pending item).
    buffers: dict[int, list[tuple[int, int, Pending]]] = field(default_factory=dict)
    arrivals: int = 0
    #: source -> offsets pushed into a buffer, in offset order (commit bound).
    held: dict[tuple[str, int], deque[int]] = field(default_factory=dict)
    #: source -> offsets released from a buffer but still in ``held``.
    released: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    #: partition -> last computed safe time (see ``release``).
    safe_cache: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: account key -> newest occurred_at read (lateness by arrival order).
    newest_read: dict[bytes, int] = field(default_factory=dict)
    #: account key -> partition, for states changed since the last changelog write.
    dirty: dict[bytes, int] = field(default_factory=dict)
    #: account key -> its newest score of the current batch.
    unpublished: dict[bytes, Unpublished] = field(default_factory=dict)
    #: Messages of the current batch, produced in order at its end.
    outbox: list[Outgoing] = field(default_factory=list)
    #: Delivery futures of everything produced since the last commit.
    inflight: list[Any] = field(default_factory=list)
    #: partition -> account keys; None when it must be rebuilt (after recovery).
    index: dict[int, set[bytes]] | None = None
    #: (topic, outcome) -> events counted in the current batch.
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_commit: float = field(default_factory=time.monotonic)
    #: The commit whose states are being written, if any (see ``commit``).
    writing: CommitInProgress | None = None
    #: When processing last handed over to outputs and commits (``after_chunk``).
    last_chunk: float = 0.0
    #: The commit waiting for its sends in the background, if any.
    committing: asyncio.Future[None] | None = None
    #: The sends that commit waits for (``unfinished`` counts them).
    acking: list[Any] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: "topic:partition" names of state positions, by (topic, partition).
    _tp_names: dict[tuple[str, int], str] = field(default_factory=dict)
    #: source -> end offset asked of the broker, for sources no fetch response
    #: has given a highwater yet (see ``end_offset``).
    asked_ends: dict[tuple[str, int], int] = field(default_factory=dict)
    #: partition -> the source topic-partitions paused because its buffer is full.
    paused: dict[int, list[Any]] = field(default_factory=dict)
    #: The most events one partition's buffer held (after a batch).
    buffer_peak: int = 0
    #: partition -> the tick being applied in chunks there.
    ticking: dict[int, _Tick] = field(default_factory=dict)
    #: partition -> (arrival number of its oldest buffered item, since when
    #: that item has been the oldest, when the stall was last logged); see
    #: ``watch_stalls``.
    stalled: dict[int, tuple[int, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hot-path copies of settings (a pydantic attribute or property per
        # record showed up in the profile).
        settings = self.top.settings
        self.settings = settings
        self.ticks_topic = settings.ticks_topic
        self.repartition_topic = settings.repartition_topic
        self.input_kinds = dict(settings.input_topics)
        self.partitions = settings.partitions
        #: Topics whose read progress orders events (the clock's sources).
        self.sources = frozenset([*settings.input_topics, settings.repartition_topic])
        #: Topics whose offsets this processor commits.
        self.committed_topics = self.sources | {settings.ticks_topic}
        #: The rescoring path shared with ``vitals replay``.
        self.cadence = Cadence(self.scorecard, self.playbooks)

    # ------------------------------------------------------------ state access

    @property
    def consumer(self) -> BatchConsumer:
        consumer = self.top.app.consumer
        assert isinstance(consumer, BatchConsumer)
        return consumer

    @property
    def states(self) -> StateStore:
        """The account states (the faust table's in-memory store): reading one
        makes it live; past ``VITALS_LIVE_STATES`` the least recently used are
        held as their bytes."""
        states: StateStore = self.top.accounts.states
        return states

    def partition_keys(self, partition: int) -> Iterable[bytes]:
        """The account keys of ``partition`` this worker holds."""
        if self.index is None:
            index: dict[int, set[bytes]] = {}
            partitions = self.top.settings.partitions
            for key in self.states:
                index.setdefault(account_partition(key, partitions), set()).add(key)
            self.index = index
        return list(self.index.get(partition, ()))

    def _store(self, key: bytes, state: AccountState, partition: int) -> None:
        states = self.states
        if key not in states:
            states[key] = state
            # faust's memory store drops the keys of revoked partitions by
            # this map (it only fills it itself during recovery).
            self.top.accounts.data._key_partition[key] = partition
            if self.index is not None:
                self.index.setdefault(partition, set()).add(key)
        self.dirty[key] = partition

    # ------------------------------------------------------------ batches

    async def on_batch(self, batch: Mapping[Any, Sequence[Any]], generation: int) -> None:
        """Process one fetched batch (the ``BatchConsumer`` handler).

        Shielded: a rebalance cancels the fetcher, but a batch half applied
        and half published would lose outputs; the revocation handler waits
        for the lock instead.
        """
        task = asyncio.ensure_future(self._locked_batch(batch, generation))
        await asyncio.shield(task)

    async def _locked_batch(self, batch: Mapping[Any, Sequence[Any]], generation: int) -> None:
        app = self.top.app
        async with self.lock:
            if generation != app.consumer_generation_id:
                return  # fetched before a rebalance; read again from the committed offsets
            try:
                await self.process_batch(batch)
            except Exception as exc:
                # Broken infrastructure (broker, table): stop the worker so it
                # is restarted and reads the uncommitted records again,
                # rather than going on with a hole in its state.
                log.critical("stopping the worker: %s", exc, exc_info=True)
                await app.crash(exc)
                raise

    async def process_batch(self, batch: Mapping[Any, Sequence[Any]]) -> None:
        """Read, apply what is due, publish, and commit when the interval has passed.

        What is due is applied in chunks of ``RELEASE_CHUNK`` items with a
        return to the event loop in between: a worker catching up on a backlog
        keeps answering HTTP and keeps committing as it goes.
        """
        consumer = self.top.app.consumer
        assignment = consumer.assignment()
        now = time.monotonic()
        touched: set[int] = set()
        for tp, records in batch.items():
            if tp not in assignment or not records:
                continue
            source = (tp.topic, tp.partition)
            self.last_read[source] = now
            done = self.positions.get(source)
            if done is not None and records[0].offset <= done:
                # faust seeks every partition back to its committed offset
                # after a rebalance's recovery, possibly after this worker
                # already read (and committed) past it: a record is handled
                # once per assignment, never twice (its position may already
                # be pruned from the state).
                records = [record for record in records if record.offset > done]
                if not records:
                    continue
            for record in records:
                self.on_record(source, record)
            self.positions[source] = records[-1].offset
            touched.add(tp.partition)
        for partition in touched:
            while self.release(partition, RELEASE_CHUNK) == RELEASE_CHUNK:
                await self.after_chunk()
            self.bound_buffer(partition)
        await self.after_chunk()

    async def after_chunk(self) -> None:
        self.last_chunk = time.monotonic()
        await self.flush_outputs()
        if (
            self.writing is not None
            or time.monotonic() - self.last_commit >= self.top.settings.commit_interval_s
        ):
            await self.commit(sliced=True)
        await asyncio.sleep(0)

    def on_record(self, source: tuple[str, int], record: Any) -> None:
        """Buffer a tick or a valid event; dead-letter or forward anything else."""
        settings = self.settings
        topic, partition = source
        if topic == self.ticks_topic:
            try:
                as_of = orjson.loads(record.value)["as_of"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.error("ignoring malformed tick at offset %s", record.offset)
                as_of = None
            if isinstance(as_of, int):  # else a flush marker: only releases what is due
                self.push(partition, as_of, Pending(source, record.offset, None, as_of))
            return
        origin = self.origin_of(topic, record)
        try:
            decoded = decode_event(
                record.value,
                topic_kind=self.input_kinds.get(origin.topic),
                key=record.key,
                now_ms=int(time.time() * 1000),
                max_bytes=settings.max_event_bytes,
                max_future_ms=settings.max_future_ms,
            )
        except Rejected as rejected:
            self.dead_letter(record, origin, rejected.reason, rejected.detail)
            return
        key = decoded.account_id.encode()
        home = account_partition(key, self.partitions)
        if partition != home:
            self.forward(record, origin, home)
            return
        at = decoded.occurred_at
        if at < self.last_tick:
            # A backfill behind the clock (e.g. into a worker that was idle
            # past a tick boundary): the timer announces its boundary again
            # once the partition has caught up, so the backfilled accounts get
            # the rescores of the silent days up to it, as replay gives them.
            self.last_tick = 0
        newest = self.watermarks.get(source)
        if newest is None or at > newest:
            self.watermarks[source] = at
        before = self.newest_read.get(key)
        if before is None or at > before:
            self.newest_read[key] = at
        item = Pending(
            source, record.offset, decoded, None, origin, time.perf_counter(), before, record
        )
        self.push(partition, at, item)

    def push(self, partition: int, at: int, item: Pending) -> None:
        self.arrivals += 1
        heapq.heappush(self.buffers.setdefault(partition, []), (at, self.arrivals, item))
        held = self.held.get(item.source)
        if held is None:
            held = self.held[item.source] = deque()
        held.append(item.offset)

    def lowest_held(self, source: tuple[str, int]) -> int | None:
        """The lowest offset of ``source`` still in a buffer (None: none).

        Records of one source are pushed in offset order and released in
        event-time order; released ones are dropped from the front lazily.
        """
        held = self.held.get(source)
        if not held:
            return None
        done = self.released.get(source)
        while held and done and held[0] in done:
            done.discard(held.popleft())
        return held[0] if held else None

    def done_offset(self, tp: Any) -> int | None:
        """The last offset of ``tp`` handled: read in this assignment, else the
        one before the committed offset it was resumed from (None: unknown)."""
        done = self.positions.get((tp.topic, tp.partition))
        if done is None:
            consumer: Any = self.top.app.consumer
            committed = consumer._committed_offset.get(tp)
            if committed is not None and committed > 0:
                return int(committed) - 1
        return done

    def end_offset(self, tp: Any) -> int | None:
        """The end offset of ``tp``: the highwater of the last fetch response,
        else the one asked of the broker (``ask_end_offsets``), else None."""
        highwater = self.top.app.consumer.highwater(tp)
        if highwater is not None:
            return int(highwater)
        return self.asked_ends.get((tp.topic, tp.partition))

    async def ask_end_offsets(self) -> None:
        """Ask the broker for the end offsets of sources without a highwater.

        The consumer learns a highwater only from fetch responses; an empty
        partition was seen to go without one for minutes after a rebalance
        (CI), and its events' partition then waited for it forever: the clock
        cannot tell "nothing to read" from "not read yet" without an end offset.
        """
        consumer: Any = self.top.app.consumer
        unknown = [
            tp
            for tp in consumer.assignment()
            if tp.topic in self.sources and consumer.highwater(tp) is None
        ]
        if not unknown:
            return
        epoch = self.epoch
        try:
            ends = await consumer.highwaters(*unknown)
        except Exception as exc:  # best effort: asked again at the next timer
            log.debug("end offsets of %d partitions not known: %r", len(unknown), exc)
            return
        if self.epoch != epoch:
            return  # a rebalance meanwhile: the answer is for another assignment
        for tp, end in ends.items():
            if end is not None:
                self.asked_ends[(tp.topic, tp.partition)] = int(end)

    def safe_time(self, partition: int) -> float | None:
        """Event time up to which partition ``partition`` can be applied in order.

        The minimum over its source topic-partitions of the newest event time
        read from each, except for one with nothing left to read: quiet for
        ``clock_idle_s``, it does not hold the others back at all; carrying
        live events (its newest within ``LIVE_WINDOW_MS`` of the wall clock),
        it holds back only events newer than ``now - live_skew_ms``, so live
        latency is bounded by the skew, not by the idle time. A backfill
        (older event times) is always held in order. ``inf`` when nothing
        holds back, None when a source has not shown any event time yet.
        """
        settings = self.settings
        consumer = self.top.app.consumer
        sources = self.sources
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        live_from = now_ms - LIVE_WINDOW_MS
        safe: float = math.inf
        for tp in consumer.assignment():
            if tp.partition != partition or tp.topic not in sources:
                continue
            source = (tp.topic, tp.partition)
            highwater = self.end_offset(tp)
            done = self.done_offset(tp)
            drained = highwater is not None and (
                highwater == 0 or (done is not None and done + 1 >= highwater)
            )
            quiet = now - self.last_read.get(source, self.started)
            if drained and quiet >= settings.clock_idle_s:
                continue
            newest = self.watermarks.get(source)
            if newest is None:
                return None
            if drained and newest >= live_from:
                newest = max(newest, now_ms - settings.live_skew_ms)
            safe = min(safe, newest)
        return safe

    def release(self, partition: int, limit: int | None = None) -> int:
        """Apply up to ``limit`` buffered items of a partition that are due,
        oldest first; returns how many were applied."""
        heap = self.buffers.get(partition)
        applied = 0
        if partition in self.ticking:
            now_ms = int(time.time() * 1000)
            applied = self.continue_tick(partition, now_ms, limit)
            if partition in self.ticking:
                return applied  # the limit was reached inside the tick
        if not heap:
            return applied
        # Recomputing the safe time walks the assignment; within a few
        # milliseconds the last answer is as good.
        now = time.monotonic()
        cached = self.safe_cache.get(partition)
        if cached is not None and heap[0][0] <= cached[0] and now - cached[1] < 0.05:
            safe = cached[0]
        else:
            computed = self.safe_time(partition)
            if computed is None:
                return applied
            safe = computed
            self.safe_cache[partition] = (safe, now)
        now_ms = int(time.time() * 1000)
        released = self.released
        while heap and heap[0][0] <= safe and (limit is None or applied < limit):
            _, _, item = heapq.heappop(heap)
            done = released.get(item.source)
            if done is None:
                done = released[item.source] = set()
            done.add(item.offset)
            if item.decoded is None:
                assert item.as_of is not None
                self.start_tick(partition, item.as_of)
                left = None if limit is None else max(1, limit - applied)
                applied += self.continue_tick(partition, now_ms, left)
                if partition in self.ticking:
                    return applied
            else:
                self.apply_event(partition, item, now_ms)
                applied += 1
        return applied

    def bound_buffer(self, partition: int) -> None:
        """Keep a partition's reorder buffer under ``buffer_max_events``.

        Over the bound, stop fetching the partition's sources that are ahead
        of its safe time (their events wait for a slower source: reading more
        of them only grows the buffer); the sources holding the safe time are
        still read, so the buffer drains. While paused, the set is worked out
        again after every batch and wake-up of the partition: a source
        overtaken by the others holds the safe time in its turn and is fetched
        again at once (a paused source that came to hold the safe time would
        stop the partition for good). Below half the bound, fetch them all
        again. (A paused partition's fetched records stay in the client's
        buffer; nothing is dropped.)
        """
        heap = self.buffers.get(partition)
        size = len(heap) if heap else 0
        metrics.REORDER_BUFFERED.labels(str(partition)).set(size)
        if size > self.buffer_peak:
            self.buffer_peak = size
            metrics.REORDER_BUFFER_PEAK.set(size)
        limit = self.settings.buffer_max_events
        paused = self.paused.get(partition)
        consumer: Any = self.top.app.consumer
        if size <= (limit // 2 if paused else limit):
            if paused:
                del self.paused[partition]
                consumer.resume_partitions(paused)
                log.info(
                    "partition %d: buffer down to %d events, fetching all sources", partition, size
                )
            return
        safe = self.safe_time(partition)
        ahead = []
        for tp in consumer.assignment():
            if tp.partition != partition or tp.topic not in self.sources:
                continue
            mark = self.watermarks.get((tp.topic, tp.partition))
            # No event time shown yet: such a source holds the safe time (None).
            if mark is not None and (safe is None or mark > safe):
                ahead.append(tp)
        before = set(paused or ())
        behind = [tp for tp in before if tp not in ahead]
        if behind:
            consumer.resume_partitions(behind)
        new = [tp for tp in ahead if tp not in before]
        if new:
            consumer.pause_partitions(new)
        if ahead:
            self.paused[partition] = ahead
        else:
            self.paused.pop(partition, None)
        if new or behind:
            log.info(
                "partition %d: %d events buffered (bound %d); %d sources ahead in event time "
                "paused until the others catch up (%d paused, %d resumed)",
                partition,
                size,
                limit,
                len(ahead),
                len(new),
                len(behind),
            )

    def origin_of(self, topic: str, record: Any) -> Origin:
        if topic != self.repartition_topic:
            return Origin(topic, record.partition, record.offset)
        headers = dict(record.headers or ())
        try:
            return Origin(
                bytes(headers[HEADER_TOPIC]).decode(),
                int(headers[HEADER_PARTITION]),
                int(headers[HEADER_OFFSET]),
            )
        except (KeyError, ValueError):
            # Only this worker writes the repartition topic; an unmarked
            # record there is still dead-lettered, never dropped.
            return Origin(topic, record.partition, record.offset)

    def _tp_name(self, source: tuple[str, int]) -> str:
        name = self._tp_names.get(source)
        if name is None:
            name = self._tp_names[source] = f"{source[0]}:{source[1]}"
        return name

    def apply_event(self, partition: int, item: Pending, now_ms: int) -> None:
        """Apply one due event to its account (the pure part in ``apply``)."""
        decoded = item.decoded
        origin = item.origin
        assert decoded is not None and origin is not None
        key = decoded.account_id.encode()
        state = self.states.get(key)
        position = self._tp_name(item.source)
        if state is not None and item.offset in state.positions.get(position, ()):
            self.outcomes[(origin.topic, REDELIVERED)] += 1
            return
        fresh = state is None
        if state is None:
            state = AccountState.new(decoded.account_id)
        try:
            outcome = self.cadence.event(
                state, decoded, now_ms=now_ms, newest_read=item.newest_read
            )
            step = outcome.step
            triggers = self.triggers_of(outcome)
        except Exception as exc:  # a bug in the pure model must not cost the event
            log.exception("processing failed for %s@%s", origin.topic, origin.offset)
            detail = f"{type(exc).__name__}: {exc}"
            self.dead_letter(item.record, origin, PROCESSING_ERROR, detail)
            if fresh:
                return
            triggers = []
            step = Step(None, None, [])
        else:
            assert step.result is not None
            self.outcomes[(origin.topic, step.result.value)] += 1
            metrics.EVENT_TIME_LAG_SECONDS.observe(max(0.0, (now_ms - decoded.occurred_at) / 1000))
        state.positions.setdefault(position, []).append(item.offset)
        self._store(key, state, partition)
        self.publish(key, step, item.started, state, triggers)
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - item.started)

    @staticmethod
    def triggers_of(outcome: Outcome) -> list[dict[str, Any]]:
        """The triggers to publish; the ones a cooldown held back are counted."""
        for held in outcome.suppressed:
            metrics.PLAYBOOK_SUPPRESSED.labels(held.playbook).inc()
        return outcome.triggers

    def start_tick(self, partition: int, as_of: int) -> None:
        self.ticking[partition] = _Tick(list(self.partition_keys(partition)), as_of)

    def continue_tick(self, partition: int, now_ms: int, limit: int | None) -> int:
        """Evaluate the next accounts (at most ``limit``) of the partition's tick
        in progress at its boundary; returns how many were walked (at least 1).

        A tick goes through a partition in chunks, like the release of events,
        so a large partition cannot hold the event loop. Items after the tick
        wait until it is done; an account's own later events would run its
        ticks first anyway (``Cadence.event``), so nothing depends on it.
        """
        tick = self.ticking[partition]
        keys, as_of = tick.keys, tick.as_of
        started = time.perf_counter()
        states = self.states
        count = len(keys) if limit is None else min(limit, len(keys))
        for _ in range(count):
            key = keys.pop()
            state = states.get(key)
            if state is None:
                continue
            outcome = self.cadence.timer(state, as_of, now_ms=now_ms)
            step = outcome.step
            if step.evaluation is not None:
                triggers = self.triggers_of(outcome)
                self._store(key, state, partition)
                self.publish(key, step, started, state, triggers)
                tick.evaluated += 1
        if not keys:
            del self.ticking[partition]
            log.info(
                "tick %s on partition %d: %d accounts re-evaluated in %.3f s",
                as_of,
                partition,
                tick.evaluated,
                time.monotonic() - tick.since,
            )
        return max(count, 1)

    def on_tick(self, partition: int, as_of: int, now_ms: int) -> None:
        """Evaluate every account of ``partition`` at the tick's boundary, at once."""
        self.start_tick(partition, as_of)
        self.continue_tick(partition, now_ms, None)

    # ------------------------------------------------------------ outputs

    def publish(
        self,
        key: bytes,
        step: Step,
        started: float,
        state: AccountState,
        triggers: list[dict[str, Any]],
    ) -> None:
        """Queue a step's bucket changes and triggers; keep its score for the batch end."""
        settings = self.top.settings
        for change in step.changes:
            self.outbox.append(
                (settings.bucket_changes_topic, key, pydantic_core.to_json(change), None, None)
            )
            metrics.BUCKET_TRANSITIONS.labels(change.from_bucket, change.to_bucket).inc()
        if step.evaluation is None:
            return
        for trigger in triggers:
            self.outbox.append((settings.triggers_topic, key, orjson.dumps(trigger), None, None))
            metrics.PLAYBOOK_TRIGGERS.labels(trigger["playbook"]).inc()
            if self.dispatcher is not None:
                # Never blocks: a full queue is counted as a failed delivery.
                self.dispatcher.submit(trigger)
        previous = self.unpublished.get(key)
        first = started if previous is None else min(previous.started, started)
        self.unpublished[key] = Unpublished(step, state, first)

    async def flush_outputs(self) -> None:
        """Queue the batch's newest score per account, then produce the batch's messages."""
        if self.unpublished:
            topic = self.top.settings.scores_topic
            now = time.perf_counter()
            latency = metrics.SCORE_LATENCY_SECONDS
            for key, pending in self.unpublished.items():
                evaluation = pending.step.evaluation
                value = pending.step.score_json()
                assert evaluation is not None and value is not None
                self.outbox.append((topic, key, value, None, None))
                latency.observe(now - pending.started)
                self._summarise(key, pending.state, evaluation)
            metrics.SCORE_UPDATES.inc(len(self.unpublished))
            self.unpublished.clear()
        for (topic, outcome), count in self.outcomes.items():
            metrics.EVENTS_CONSUMED.labels(topic, outcome).inc(count)
        self.outcomes.clear()
        await self._produce_outbox()

    def _summarise(self, key: bytes, state: AccountState, evaluation: Evaluation) -> None:
        # (vitals_accounts_by_bucket is counted from the owned states when
        # scraped: a gauge kept up here also counted accounts a rebalance took away.)
        self.summaries[key] = summary_of(
            state,
            evaluation.bucket,
            evaluation.score,
            grade=evaluation.grade,
            delta_7d=evaluation.delta_7d,
            delta_30d=evaluation.delta_30d,
        )

    async def _produce_outbox(self) -> None:
        if not self.outbox:
            return
        producer = self.top.app.producer
        inflight = self.inflight
        outbox, self.outbox = self.outbox, []
        for topic, key, value, partition, headers in outbox:
            sent = await producer.send(
                topic, key, value, partition, None, None if headers is None else list(headers)
            )
            inflight.append(sent)

    def dead_letter(self, record: Any, origin: Origin, reason: str, detail: str) -> None:
        """Queue a rejected record for the DLQ, its bytes and headers unchanged."""
        metrics.DLQ_RECORDS.labels(reason).inc()
        self.outcomes[(origin.topic, "dead_lettered")] += 1
        headers = dead_letter_headers(
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            reason=reason,
            detail=detail,
            original=record.headers,
        )
        dlq = self.top.settings.dlq_topic
        self.outbox.append((dlq, record.key, record.value, None, headers))

    def forward(self, record: Any, origin: Origin, partition: int) -> None:
        """Send an event read from the wrong partition to its account's partition."""
        self.outcomes[(origin.topic, "repartitioned")] += 1
        kept = [
            (name, value)
            for name, value in (record.headers or ())
            if name not in (HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET)
        ]
        headers = [
            *kept,
            (HEADER_TOPIC, origin.topic.encode()),
            (HEADER_PARTITION, str(origin.partition).encode()),
            (HEADER_OFFSET, str(origin.offset).encode()),
        ]
        topic = self.top.settings.repartition_topic
        self.outbox.append((topic, record.key, record.value, partition, headers))

    # ------------------------------------------------------------ commits

    def committable(self) -> dict[Any, int]:
        """``{tp: next offset}`` below which every read record has been handled."""
        consumer = self.consumer
        topics = self.committed_topics
        offsets: dict[Any, int] = {}
        committed = consumer._committed_offset
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            source = (tp.topic, tp.partition)
            done = self.positions.get(source)
            if done is None:
                continue
            low = self.lowest_held(source)
            upto = done + 1 if low is None else min(done + 1, low)
            last = committed.get(tp)
            if last is None or upto > last:
                offsets[tp] = upto
        return offsets

    async def commit(self, wait: bool = False, *, sliced: bool = False) -> None:
        """Write changed states to the changelog, then commit offsets once every
        send so far is acknowledged.

        A commit starts by taking the input offsets handled so far and the
        states changed since the last commit: every state that holds what
        those offsets cover is among them. With ``sliced`` each call writes
        one slice of those states (``STATE_SLICE`` or an eighth of them) and
        returns; the next chunk of processing goes on in between, and the
        offsets are committed after the last slice. Writing them all at once
        (about 45 µs a state) stopped a live worker for 100-170 ms every
        second at 2,000 changed accounts a second: its p99. A state written
        after further events holds more than the offsets cover; a record read
        again after a crash is found in its positions and not applied twice.
        Without ``sliced`` the rest is written at once.

        The waiting for the sends and the offset commit run in the background
        (one commit at a time) so that processing goes on meanwhile; ``wait``
        waits for it (revocation, shutdown). A failed send or commit stops the
        worker: the records are read again after the restart.
        """
        work = self.writing
        if work is None:
            self.last_commit = time.monotonic()
            keys = list(self.dirty.items())
            keys.reverse()  # written oldest change first (pop from the end)
            per_slice = max(STATE_SLICE, -(-len(keys) // COMMIT_SLICES))
            work = self.writing = CommitInProgress(keys, self.committable(), per_slice)
            self.dirty = {}
        keys = work.keys
        if keys:
            committed = self.consumer._committed_offset
            states = self.states
            changelog = self.top.settings.changelog_topic
            by_name = {self._tp_name((tp.topic, tp.partition)): tp for tp in committed}
            count = min(len(keys), work.per_slice) if sliced else len(keys)
            for _ in range(count):
                key, partition = keys.pop()
                # A state held encoded has not changed since it was encoded:
                # its bytes are its record (positions pruned when next live).
                value = states.encoded(key)
                if value is None:
                    state = states.live(key)
                    if state is None:
                        continue
                    self._prune_positions(state, committed, by_name)
                    value = state.to_bytes()
                self.outbox.append((changelog, key, value, partition, None))
        await self._produce_outbox()
        if keys:
            return  # the next slice comes after the next chunk
        self.writing = None
        previous = self.committing
        if previous is not None:
            await previous  # commits stay in order
        inflight, self.inflight = self.inflight, []
        self.acking = inflight
        committed = self.consumer._committed_offset
        offsets = {}
        for tp, offset in work.offsets.items():
            last = committed.get(tp)  # a later commit may have passed it
            if last is None or offset > last:
                offsets[tp] = offset
        if inflight or offsets:
            self.committing = asyncio.ensure_future(
                self._finish_commit(inflight, offsets, self.epoch)
            )
            if wait:
                await self.committing

    async def _finish_commit(
        self, inflight: list[Any], offsets: dict[Any, int], epoch: int
    ) -> None:
        try:
            if inflight:
                sent = await acknowledged(inflight)
                if self.epoch == epoch:
                    # The held states already contain what these changelog
                    # records hold: faust's recovery of a partition this worker
                    # keeps starts after them (streams/account_table.py). Not
                    # once the assignment they were written in is over.
                    self.top.accounts.note_written(self.changelog_offsets(sent))
            if offsets:
                await self.consumer.commit_offsets(offsets)
        except Exception as exc:
            log.critical("stopping the worker: commit failed: %s", exc, exc_info=True)
            await self.top.app.crash(exc)
            raise
        finally:
            if self.committing is asyncio.current_task():
                self.committing = None

    def changelog_offsets(self, sent: Iterable[Any]) -> dict[int, int]:
        """``{partition: newest offset}`` of the changelog records among
        ``sent`` (the record metadata of acknowledged sends)."""
        topic = self.settings.changelog_topic
        newest: dict[int, int] = {}
        for meta in sent:
            if meta.topic == topic and meta.offset > newest.get(meta.partition, -1):
                newest[meta.partition] = meta.offset
        return newest

    @staticmethod
    def _prune_positions(state: AccountState, committed: Any, by_name: dict[str, Any]) -> None:
        # Offsets below the committed one are never read again by any owner.
        for name in list(state.positions):
            tp = by_name.get(name)
            low = None if tp is None else committed.get(tp)
            if low is None:
                continue
            kept = [offset for offset in state.positions[name] if offset >= low]
            if kept:
                state.positions[name] = kept
            else:
                del state.positions[name]

    async def release_waiting(self) -> None:
        """Apply buffered events that became due without a new batch (a source
        went quiet, or the live skew passed), then publish them."""
        async with self.lock:
            if any(self.buffers.values()) or self.ticking:
                for partition in {*self.buffers, *self.ticking}:
                    while self.release(partition, RELEASE_CHUNK) == RELEASE_CHUNK:
                        await self.after_chunk()
                    self.bound_buffer(partition)
                await self.after_chunk()

    async def commit_now(self, wait: bool = True) -> None:
        """Commit outside a batch (timer, revocation, shutdown)."""
        async with self.lock:
            if self.writing is not None:
                await self.commit(wait=wait)  # the rest of the one in progress
            if self.dirty or self.inflight or self.outbox or self.committable():
                await self.commit(wait=wait)
            elif wait and self.committing is not None:
                await self.committing

    def unfinished(self) -> tuple[int, int]:
        """(output messages not acknowledged by Kafka, buffered events not applied).

        For the shutdown report; safe to call from another thread (it only counts).
        """
        sends = [*self.acking, *self.inflight]
        unacked = len(self.outbox) + sum(1 for sent in sends if not sent.done())
        buffered = sum(len(heap) for heap in list(self.buffers.values()))
        return unacked, buffered

    def forget_partitions(self) -> None:
        """Drop what belongs to the previous assignment (records are read again)."""
        if self.writing is not None:
            # A commit cut short (its revocation commit failed): its states
            # are still changed; its offsets are not committed.
            self.dirty.update(reversed(self.writing.keys))
            self.writing = None
        self.buffers.clear()
        self.held.clear()
        self.released.clear()
        self.safe_cache.clear()
        self.positions.clear()
        self.watermarks.clear()
        self.last_read.clear()
        self.newest_read.clear()
        self.asked_ends.clear()
        self.stalled.clear()
        self.ticking.clear()
        consumer: Any = self.top.app.consumer
        for paused in self.paused.values():
            if consumer is not None:
                consumer.resume_partitions(paused)
        self.paused.clear()
        self.summaries.clear()
        self.index = None
        # The next owner of a partition must get a tick even for a boundary
        # this worker already announced.
        self.last_tick = 0
        self.epoch += 1

    # ------------------------------------------------------------ timer

    def holders(self, partition: int) -> list[Holder]:
        """The sources of ``partition`` that keep its oldest buffered item
        from being due: not drained and quiet, and no event time read at or
        past that item's."""
        heap = self.buffers.get(partition)
        if not heap:
            return []
        oldest = heap[0][0]
        now = time.monotonic()
        found = []
        for tp in self.top.app.consumer.assignment():
            if tp.partition != partition or tp.topic not in self.sources:
                continue
            source = (tp.topic, tp.partition)
            end = self.end_offset(tp)
            done = self.done_offset(tp)
            quiet = now - self.last_read.get(source, self.started)
            drained = end is not None and (end == 0 or (done is not None and done + 1 >= end))
            if drained and quiet >= self.settings.clock_idle_s:
                continue
            newest = self.watermarks.get(source)
            if newest is None or newest < oldest:
                found.append(Holder(tp, end, done, newest, quiet))
        return found

    async def watch_stalls(self) -> None:
        """Log, and where possible mend, partitions whose oldest buffered item
        has waited ``STALL_REPORT_S`` or longer for a source (nothing of the
        partition applied meanwhile: a slow but moving backfill is not a stall).

        A source that holds a partition while records it has not delivered
        exist (end offset past the last offset read) and nothing has been read
        from it for ``STALL_REPORT_S`` is sought to the next offset to read: the
        consumer fetches it afresh. Records up to the last offset read are
        never handled twice (see ``process_batch``).
        """
        now = time.monotonic()
        consumer: Any = self.top.app.consumer
        for partition in list(self.buffers):
            holders = self.holders(partition)
            if not holders:
                self.stalled.pop(partition, None)
                continue
            oldest = self.buffers[partition][0][1]
            seen, since, logged = self.stalled.get(partition, (oldest, now, 0.0))
            if seen != oldest:  # the oldest item moved on: progress
                since, logged = now, 0.0
            self.stalled[partition] = (oldest, since, logged)
            if now - since < STALL_REPORT_S or now - logged < STALL_REPORT_S:
                continue
            self.stalled[partition] = (oldest, since, now)
            for holder in holders:
                tp = holder.tp
                unread = holder.end is not None and (
                    holder.done is None or holder.done + 1 < holder.end
                )
                mend = unread and holder.quiet >= STALL_REPORT_S
                log.warning(
                    "partition %d: %d buffered events, none applied for %.0f s, wait for %s:%d "
                    "(end offset %s, last offset read %s, newest event time %s, "
                    "nothing read for %.0f s)%s",
                    partition,
                    len(self.buffers[partition]),
                    now - since,
                    tp.topic,
                    tp.partition,
                    holder.end,
                    holder.done,
                    holder.newest,
                    holder.quiet,
                    "; seeking it to fetch again" if mend else "",
                )
                if mend:
                    if holder.done is not None:
                        offset = holder.done + 1
                    else:
                        offset = int(consumer._committed_offset.get(tp) or 0)
                    try:
                        await consumer.seek(tp, offset)
                    except Exception as exc:
                        log.warning("seeking %s:%d failed: %r", tp.topic, tp.partition, exc)

    async def maybe_tick(self) -> None:
        """Send a tick to each owned partition once the clock passes a new boundary."""
        app = self.top.app
        settings = self.top.settings
        consumer = app.consumer
        if consumer is None or app.rebalancing:
            return
        await self.ask_end_offsets()
        await self.watch_stalls()
        assignment = consumer.assignment()
        # The assignment also holds the changelog partitions faust reads for
        # recovery: only the topics this worker processes count for the clock.
        inputs = [tp for tp in assignment if tp.topic in self.sources]
        tick_tps = [tp for tp in assignment if tp.topic == settings.ticks_topic]
        if not inputs or not tick_tps:
            return
        progress = []
        now = time.monotonic()
        for tp in inputs:
            # The end offset as of the last fetch response (None before the
            # first): cheap, and never ahead of what the consumer can see.
            highwater = self.end_offset(tp)
            end = 0 if highwater is None else highwater
            done = self.done_offset(tp)
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
        epoch = self.epoch
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
        # A rebalance while a send was awaited reset ``last_tick`` for the new
        # assignment; recording this boundary now would keep it from the
        # partitions just taken over (they would never be evaluated at it).
        if self.epoch == epoch:
            self.last_tick = as_of


def install_processor(
    top: Topology,
    scorecard: Scorecard,
    playbooks: PlaybookSet | None = None,
    dispatcher: WebhookDispatcher | None = None,
) -> Processor:
    """Attach the batch handler, its timers and the webhook dispatcher to the app.

    The final commit and the webhook drain on shutdown belong to
    ``streams.shutdown`` (bounded by the grace period).
    """
    processor = Processor(top, scorecard, playbooks, dispatcher)
    app = top.app
    transport = app.transport
    assert isinstance(transport, BatchTransport)
    settings = top.settings
    transport.batch_topics = frozenset(
        [*settings.input_topics, settings.repartition_topic, settings.ticks_topic]
    )
    transport.batch_handler = processor.on_batch
    # Subscribes the consumer to the topics without an agent (no per-message path).
    app.topics.add(top.inputs)

    if dispatcher is not None:

        @app.task  # type: ignore[untyped-decorator]
        async def start_dispatcher() -> None:
            await dispatcher.start()

    @app.timer(settings.timer_interval_s)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        await processor.maybe_tick()

    @app.timer(settings.commit_interval_s)  # type: ignore[untyped-decorator]
    async def commit() -> None:
        # Batches commit as they go; this covers a worker with nothing to read
        # (a commit in progress is left to the batches while they come: the
        # rest at once would be the pause that slicing avoids).
        busy = time.monotonic() - processor.last_chunk < settings.commit_interval_s
        if not app.rebalancing and not (busy and processor.writing is not None):
            await processor.release_waiting()
            await processor.commit_now(wait=False)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        # faust revokes the whole assignment at each rebalance (eager
        # protocol): store every changed state, commit what is done, and let
        # buffered records be read again by whoever owns them next.
        try:
            await processor.commit_now()
        except Exception as exc:
            log.warning("commit on revocation failed (records are read again): %s", exc)
        processor.forget_partitions()

    return processor
