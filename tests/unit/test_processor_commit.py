"""The processor's commit writes changed states in slices (no broker: stand-ins).

A commit takes the input offsets handled when it starts and the states
changed until then; with ``sliced`` it writes a slice of them after each chunk
of processing and commits those offsets only once the last slice is sent and
every send is acknowledged. What is handled meanwhile belongs to the next
commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import orjson
import pytest
from aiokafka import TopicPartition

from service.model.account_state import AccountState
from service.model.scorecard import default_scorecard
from service.processing.state_store import StateStore
from streams.app import Topology
from streams.processor import COMMIT_SLICES, STATE_SLICE, Processor
from tests.unit.test_processor_timer import SETTINGS, StandInConsumer

CHANGELOG = SETTINGS.changelog_topic
LOGIN = next(topic for topic, kind in SETTINGS.input_topics.items() if kind == "login")


class Sent(NamedTuple):
    topic: str
    partition: int
    offset: int


@dataclass
class CommittingConsumer(StandInConsumer):
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    async def commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self._committed_offset.update(offsets)


@dataclass
class StandInProducer:
    """Acknowledges every send at once; remembers what was sent."""

    sent: list[tuple[str, bytes, bytes, int | None]] = field(default_factory=list)

    async def send(
        self, topic: str, key: bytes, value: bytes, partition: int | None, *_: Any
    ) -> asyncio.Future[Sent]:
        self.sent.append((topic, key, value, partition))
        done: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        done.set_result(Sent(topic, partition or 0, len(self.sent)))
        return done

    def changelog(self) -> list[tuple[bytes, bytes]]:
        return [(key, value) for topic, key, value, _ in self.sent if topic == CHANGELOG]


@dataclass
class StandInTable:
    data: Any
    written: list[dict[int, int]] = field(default_factory=list)

    @property
    def states(self) -> StateStore:
        states: StateStore = self.data.data
        return states

    def note_written(self, offsets: dict[int, int]) -> None:
        self.written.append(offsets)


@dataclass
class Store:
    data: StateStore = field(default_factory=StateStore)
    _key_partition: dict[bytes, int] = field(default_factory=dict)


@dataclass
class StandInApp:
    consumer: CommittingConsumer
    producer: StandInProducer
    rebalancing: bool = False


@dataclass
class StandInTopology:
    app: StandInApp
    accounts: StandInTable
    settings: Any = SETTINGS


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[Processor, StandInTopology]:
    consumer = CommittingConsumer([0])
    top = StandInTopology(StandInApp(consumer, StandInProducer()), StandInTable(Store()))
    monkeypatch.setattr(Processor, "consumer", property(lambda self: self.top.app.consumer))
    return Processor(cast(Topology, top), default_scorecard()), top


def change(proc: Processor, account: str, late: int = 0) -> bytes:
    """An account state changed by processing (stored and marked dirty)."""
    key = account.encode()
    state = proc.states.get(key) or AccountState.new(account)
    state.late = late
    proc._store(key, state, 0)
    return key


def handled(proc: Processor, offset: int) -> None:
    """The login partition was read and handled up to ``offset``."""
    proc.positions[(LOGIN, 0)] = offset


async def test_a_commit_writes_a_slice_per_chunk_and_then_its_offsets(
    setup: tuple[Processor, StandInTopology],
) -> None:
    proc, top = setup
    changed = [change(proc, f"a{i}") for i in range(3000)]
    handled(proc, 99)
    per_slice = max(STATE_SLICE, -(-3000 // COMMIT_SLICES))
    await proc.commit(sliced=True)
    assert len(top.app.producer.changelog()) == per_slice
    assert top.app.consumer.commits == [], "offsets before the states holding them"
    # Processing goes on between slices: a new account, a changed one, more input.
    later = change(proc, "late-comer")
    change(proc, "a2999", late=7)  # not written yet: the last slice has it
    handled(proc, 150)
    slices = 1
    while proc.writing is not None:
        await proc.commit(sliced=True)
        slices += 1
    assert proc.committing is not None
    await proc.committing
    assert slices == COMMIT_SLICES
    written = dict(top.app.producer.changelog())
    assert set(written) == set(changed), "each state changed before the start, once"
    assert orjson.loads(written[b"a2999"])["late"] == 7, "written as it is when its slice comes"
    assert top.app.consumer.commits == [{TopicPartition(LOGIN, 0): 100}]
    assert proc.dirty == {later: 0, b"a2999": 0}, "changed after the start: the next commit's"
    await proc.commit_now()
    assert top.app.consumer.commits[-1] == {TopicPartition(LOGIN, 0): 151}
    assert not proc.dirty


async def first_slice_written(proc: Processor) -> set[bytes]:
    """1,000 accounts changed and input handled up to offset 10, then the
    first slice of the commit: the keys changed."""
    keys = {change(proc, f"a{i}") for i in range(1000)}
    handled(proc, 10)
    await proc.commit(sliced=True)
    assert proc.writing is not None
    return keys


async def test_commit_now_finishes_the_commit_in_progress_and_commits_everything(
    setup: tuple[Processor, StandInTopology],
) -> None:
    proc, top = setup
    await first_slice_written(proc)
    change(proc, "b")
    handled(proc, 20)
    await proc.commit_now()  # revocation, shutdown
    assert proc.writing is None and not proc.dirty
    assert len(top.app.producer.changelog()) == 1001
    assert top.app.consumer.commits == [
        {TopicPartition(LOGIN, 0): 11},
        {TopicPartition(LOGIN, 0): 21},
    ]


async def test_a_commit_cut_short_by_a_rebalance_leaves_its_states_changed(
    setup: tuple[Processor, StandInTopology],
) -> None:
    proc, top = setup
    changed = await first_slice_written(proc)
    written = {key for key, _ in top.app.producer.changelog()}
    proc.forget_partitions()  # the revocation commit failed
    assert proc.writing is None
    assert set(proc.dirty) == changed - written
    assert top.app.consumer.commits == []


async def test_a_commit_writes_states_held_encoded_without_decoding_them(
    setup: tuple[Processor, StandInTopology],
) -> None:
    proc, top = setup
    top.accounts.data.data = store = StateStore(live_limit=100)
    keys = [change(proc, f"a{i}", late=i) for i in range(1000)]
    handled(proc, 10)
    assert store.live_count == 100
    await proc.commit_now()
    written = dict(top.app.producer.changelog())
    assert set(written) == set(keys)
    assert all(orjson.loads(written[f"a{i}".encode()]).get("late", 0) == i for i in range(1000))
    assert store.decoded == 0, "a state held encoded was decoded only to be written"
    assert top.app.consumer.commits == [{TopicPartition(LOGIN, 0): 11}]
