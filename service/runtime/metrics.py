"""Every Prometheus metric vitals exports, declared in one place.

Label values are bounded sets (topic names, outcome and reason codes, bucket
names): never an account id, so cardinality stays fixed however many accounts
there are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from math import inf

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)


class LoopHistogram(Collector):
    """A histogram without labels for the worker's per-event path.

    ``observe`` is a bisect and two additions; prometheus_client's Histogram
    takes a lock for its sum and again for the bucket (about 1.7 µs a call,
    two or three calls per event). It may only be observed from one thread:
    the worker's event loop, which also serves ``/metrics``. Exported like a
    Histogram (``_bucket`` with ``le``, ``_count``, ``_sum``; no ``_created``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != inf:
            bounds.append(inf)
        self._bounds = tuple(bounds)
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound is >= it (``le``)."""
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterable[HistogramMetricFamily]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            total += count
            cumulative.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self._sum
        )

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


#: Input messages by source topic and what became of them:
#: applied | duplicate | late | dead_lettered.
EVENTS_CONSUMED = Counter(
    "vitals_events_consumed",
    "Input messages consumed, by source topic and outcome.",
    ["topic", "outcome"],
    registry=REGISTRY,
)

#: Records written to the dead-letter topic, by machine-readable reason.
DLQ_RECORDS = Counter(
    "vitals_dlq_records",
    "Input messages written to the dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)

#: Wall-clock time to decode, validate and apply one input message.
PROCESSING_SECONDS = LoopHistogram(
    "vitals_processing_seconds",
    "Time to decode, validate and apply one input message.",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
    registry=REGISTRY,
)

#: How far behind wall-clock the events are when processed (event-time lag).
EVENT_TIME_LAG_SECONDS = LoopHistogram(
    "vitals_event_time_lag_seconds",
    "Wall-clock time minus event occurred_at, at processing.",
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 90 * 86400),
    registry=REGISTRY,
)

#: CPU time of each cyclic garbage collection (service.runtime.gc_policy).
#: Not a LoopHistogram: a collection can run in faust's consumer thread.
GC_PAUSE_SECONDS = Histogram(
    "vitals_gc_pause_seconds",
    "CPU time of each Python garbage collection, by generation (2: full).",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

#: Accounts whose state this worker currently holds.
ACCOUNTS_TRACKED = Gauge(
    "vitals_accounts_tracked",
    "Accounts held in this worker's state table.",
    registry=REGISTRY,
)

#: Of those, the states held as live objects (the rest as their bytes).
ACCOUNTS_LIVE = Gauge(
    "vitals_accounts_live",
    "Account states held as live objects; the others are held encoded (VITALS_LIVE_STATES).",
    registry=REGISTRY,
)

#: Cold states decoded to be used again.
STATES_DECODED = Counter(
    "vitals_states_decoded",
    "Account states decoded from their bytes to be used again (held encoded past"
    " VITALS_LIVE_STATES).",
    registry=REGISTRY,
)

#: Health scores published to the scores topic.
SCORE_UPDATES = Counter(
    "vitals_score_updates",
    "Health scores published.",
    registry=REGISTRY,
)

#: Bucket changes published, by from/to bucket.
BUCKET_TRANSITIONS = Counter(
    "vitals_bucket_transitions",
    "Accounts that moved bucket, by from and to bucket.",
    ["from_bucket", "to_bucket"],
    registry=REGISTRY,
)

#: Accounts owned by this worker per current bucket (sum over workers for the portfolio).
#: Events waiting in a partition's reorder buffer, as of its last batch.
REORDER_BUFFERED = Gauge(
    "vitals_reorder_buffered_events",
    "Events waiting in a partition's event-time reorder buffer (after its last batch).",
    ["partition"],
    registry=REGISTRY,
)

#: The most events one partition's reorder buffer has held since the start.
REORDER_BUFFER_PEAK = Gauge(
    "vitals_reorder_buffer_peak_events",
    "Most events one partition's reorder buffer held since the worker started "
    "(VITALS_BUFFER_MAX_EVENTS bounds it, plus one fetch).",
    registry=REGISTRY,
)

ACCOUNTS_BY_BUCKET = Gauge(
    "vitals_accounts_by_bucket",
    "Accounts owned by this worker, by current bucket.",
    ["bucket"],
    registry=REGISTRY,
)

#: Time from reading an event to publishing the score it changed.
SCORE_LATENCY_SECONDS = LoopHistogram(
    "vitals_score_latency_seconds",
    "Time from consuming an event to publishing its account's new score.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)

#: Playbook triggers published, by playbook.
PLAYBOOK_TRIGGERS = Counter(
    "vitals_playbook_triggers",
    "Playbook triggers published, by playbook.",
    ["playbook"],
    registry=REGISTRY,
)

#: Playbook triggers suppressed by the per-account cooldown, by playbook.
PLAYBOOK_SUPPRESSED = Counter(
    "vitals_playbook_suppressed",
    "Playbook triggers suppressed inside their cooldown, by playbook.",
    ["playbook"],
    registry=REGISTRY,
)

#: Webhook delivery attempts by outcome: delivered | retried | failed.
WEBHOOK_DELIVERIES = Counter(
    "vitals_webhook_deliveries",
    "Playbook webhook delivery attempts, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)

#: Messages between this worker's position and the end of each input partition.
CONSUMER_LAG = Gauge(
    "vitals_consumer_lag",
    "Input messages not yet consumed, by topic and partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)

#: Rows written by the history sink, by table.
HISTORY_ROWS = Counter(
    "vitals_history_rows_written",
    "Rows inserted by the history sink, by table (duplicates are not counted).",
    ["table"],
    registry=REGISTRY,
)

#: Changelog records read into the account table by faust's recovery (after a
#: restart or a rebalance), by partition.
CHANGELOG_RESTORED = Counter(
    "vitals_changelog_records_restored",
    "Changelog records read into the account table by recovery, by partition.",
    ["partition"],
    registry=REGISTRY,
)

#: Of those, the records whose account this worker already held: each one
#: replaced the held state object by a copy decoded from the changelog.
CHANGELOG_STATES_REPLACED = Counter(
    "vitals_changelog_states_replaced",
    "Changelog records read into the account table over a state it already held, by partition.",
    ["partition"],
    registry=REGISTRY,
)
