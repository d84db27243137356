"""Every Prometheus metric vitals exports, declared in one place.

Label values are bounded sets (topic names, outcome and reason codes, bucket
names): never an account id, so cardinality stays fixed however many accounts
there are.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
PROCESSING_SECONDS = Histogram(
    "vitals_processing_seconds",
    "Time to decode, validate and apply one input message.",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
    registry=REGISTRY,
)

#: How far behind wall-clock the events are when processed (event-time lag).
EVENT_TIME_LAG_SECONDS = Histogram(
    "vitals_event_time_lag_seconds",
    "Wall-clock time minus event occurred_at, at processing.",
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 90 * 86400),
    registry=REGISTRY,
)

#: Accounts whose state this worker currently holds.
ACCOUNTS_TRACKED = Gauge(
    "vitals_accounts_tracked",
    "Accounts held in this worker's state table.",
    registry=REGISTRY,
)
