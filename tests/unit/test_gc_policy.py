"""The worker's garbage-collector schedule frees what Python's default would, later."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.runtime import metrics
from service.runtime.gc_policy import GcPolicy


class Node:
    """A container that can be part of a reference cycle and be watched by a weakref."""

    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@contextmanager
def no_automatic_collection() -> Iterator[None]:
    """Only explicit collections (the policy's and the test's) during the block."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _pauses(generation: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "vitals_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    threshold = gc.get_threshold()
    made = GcPolicy(freeze_interval_s=5, full_interval_s=3600, young_threshold=5000)
    try:
        yield made
    finally:
        made.uninstall()
        assert gc.get_threshold() == threshold
        assert gc.get_freeze_count() == 0


def test_install_freezes_what_start_up_made_and_sets_the_young_threshold(
    policy: GcPolicy,
) -> None:
    policy.install()
    assert gc.get_threshold()[0] == 5000
    assert gc.get_freeze_count() > 0


def test_a_cycle_dropped_after_the_last_freeze_is_freed_by_a_collection(
    policy: GcPolicy,
) -> None:
    policy.install()
    with no_automatic_collection():
        ref = _cycle()
        assert ref() is not None  # only the cyclic collector frees it
        gc.collect(0)
        assert ref() is None


@pytest.mark.parametrize("dropped", ["before", "after"], ids=lambda d: f"dropped {d} the freeze")
def test_a_frozen_cycle_waits_for_the_full_collection(policy: GcPolicy, dropped: str) -> None:
    policy.install()
    with no_automatic_collection():
        if dropped == "before":
            ref = _cycle()
            policy.maintain()  # frozen although already garbage
        else:
            a, b = Node(), Node()
            a.other, b.other = b, a
            ref = weakref.ref(a)
            policy.maintain()
            del a, b
    gc.collect()  # a full collection skips frozen objects
    assert ref() is not None
    policy._last_full -= policy.full_interval_s  # the full interval has passed
    full_before = _pauses("2")
    policy.maintain()
    assert ref() is None
    assert _pauses("2") > full_before
    assert gc.get_freeze_count() > 0  # frozen again after the full collection


def test_frozen_objects_are_still_freed_by_reference_counting(policy: GcPolicy) -> None:
    policy.install()
    node = Node()
    ref = weakref.ref(node)
    policy.maintain()
    del node
    assert ref() is None


def test_every_collection_is_timed_by_generation(policy: GcPolicy) -> None:
    policy.install()
    with no_automatic_collection():
        before = [_pauses(g) for g in ("0", "1", "2")]
        gc.collect(0)
        gc.collect(1)
        gc.collect(2)
        after = [_pauses(g) for g in ("0", "1", "2")]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


def test_zero_interval_keeps_the_default_schedule() -> None:
    threshold = gc.get_threshold()
    off = GcPolicy(freeze_interval_s=0, full_interval_s=3600, young_threshold=5000)
    off.install()
    try:
        assert not off.enabled
        assert gc.get_threshold() == threshold
        assert gc.get_freeze_count() == 0
        ref = _cycle()
        off.maintain()  # does nothing
        gc.collect()
        assert ref() is None
    finally:
        off.uninstall()
