"""Which partitions the batch consumer rewinds after faust's seek to committed offsets."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.batch_consumer import not_rewound

LOGIN = "events.login"
CHANGELOG = "app-accounts-changelog"


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def test_partitions_committed_at_zero_or_never_are_rewound() -> None:
    committed = {tp(LOGIN, 0): 120, tp(LOGIN, 1): 0, tp(LOGIN, 2): None}
    assigned = set(committed)
    assert not_rewound(committed, {LOGIN}, assigned) == ([tp(LOGIN, 1)], [tp(LOGIN, 2)])


def test_other_topics_and_unassigned_partitions_are_left_alone() -> None:
    committed = {tp(CHANGELOG, 0): None, tp(LOGIN, 3): None, tp(LOGIN, 4): 0}
    assigned = {tp(CHANGELOG, 0), tp(LOGIN, 4)}
    # The changelog is faust's (recovery seeks it); login:3 is no longer ours.
    assert not_rewound(committed, {LOGIN}, assigned) == ([tp(LOGIN, 4)], [])
