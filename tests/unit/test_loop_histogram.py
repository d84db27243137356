"""The worker's lock-free histogram exports exactly what prometheus_client's does."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.runtime.metrics import LoopHistogram

BUCKETS = (0.00005, 0.001, 0.5, 1, 30, 86400, 90 * 86400)


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_same_exposition_as_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Some time.", BUCKETS, ours)
    reference = Histogram("x_seconds", "Some time.", buckets=BUCKETS, registry=theirs)
    rng = random.Random(5)
    # Bounds themselves (le is inclusive), zero, beyond the last bound.
    values = [*BUCKETS, 0.0, 1e12] + [rng.lognormvariate(0, 6) for _ in range(2000)]
    for value in values:
        loop.observe(value)
        reference.observe(value)
    assert _exposition(ours) == _exposition(theirs)
    assert 'x_seconds_bucket{le="+Inf"} 2009.0' in _exposition(ours)


def test_empty_histogram_is_exported() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    LoopHistogram("y_seconds", "Other.", BUCKETS, ours)
    Histogram("y_seconds", "Other.", buckets=BUCKETS, registry=theirs)
    assert _exposition(ours) == _exposition(theirs)
