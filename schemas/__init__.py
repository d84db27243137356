"""vitals contracts: input events, output messages, the decoder and the DLQ headers.

* ``schemas.events`` -- pydantic models of the input events (:data:`Event`);
* ``schemas.decode`` -- :func:`decode_event` / :func:`validate_event`, the one
  decoder used by the Kafka path, the HTTP path and replay, and :class:`Rejected`;
* ``schemas.outputs`` -- models of the output topics' messages;
* ``schemas.dlq`` -- header names of a dead-letter record;
* ``schemas/json/{events,outputs}/*.schema.json`` -- the public JSON Schemas
  (draft 2020-12), with one example message each in ``schemas/examples/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from schemas.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FUTURE_MS,
    REASONS,
    Rejected,
    decode_event,
    validate_event,
)
from schemas.dlq import (
    DLQ_HEADERS,
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    DlqHeaders,
)
from schemas.events import (
    EVENT_MODELS,
    EVENT_TYPES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    PULSE_DEFAULT_TTL_MS,
    SUPPORTED_SCHEMA_VERSION,
    TOPIC_PREFIX,
    TOPIC_TYPES,
    AccountEvent,
    ContractEvent,
    CsmTouchEvent,
    Event,
    EventBase,
    FeatureUseEvent,
    InvoiceEvent,
    KpiEvent,
    LoginEvent,
    MilestoneEvent,
    PulseEvent,
    SupportTicketEvent,
    SurveyEvent,
    Timestamp,
    event_adapter,
    event_to_json,
    parse_timestamp,
)
from schemas.outputs import (
    Bucket,
    BucketChange,
    Component,
    Driver,
    GateOut,
    Grade,
    HealthScore,
    PlaybookTrigger,
    Pulse,
    ScorecardRef,
    Trend,
    format_utc,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FUTURE_MS",
    "DLQ_HEADERS",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "EXAMPLES_DIR",
    "HEADER_DETAIL",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_TOPIC",
    "JSON_SCHEMA_DIR",
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "PULSE_DEFAULT_TTL_MS",
    "REASONS",
    "SUPPORTED_SCHEMA_VERSION",
    "TOPIC_PREFIX",
    "TOPIC_TYPES",
    "AccountEvent",
    "Bucket",
    "BucketChange",
    "Component",
    "ContractEvent",
    "CsmTouchEvent",
    "DlqHeaders",
    "Driver",
    "Event",
    "EventBase",
    "FeatureUseEvent",
    "GateOut",
    "Grade",
    "HealthScore",
    "InvoiceEvent",
    "KpiEvent",
    "LoginEvent",
    "MilestoneEvent",
    "PlaybookTrigger",
    "Pulse",
    "PulseEvent",
    "Rejected",
    "ScorecardRef",
    "SupportTicketEvent",
    "SurveyEvent",
    "Timestamp",
    "Trend",
    "decode_event",
    "event_adapter",
    "event_to_json",
    "format_utc",
    "load_example",
    "load_schema",
    "parse_timestamp",
    "validate_event",
]

_HERE: Final = Path(__file__).resolve().parent
#: ``examples/events/<type>.json`` and ``examples/outputs/<name>.json``.
EXAMPLES_DIR: Final = _HERE / "examples"
#: ``json/events/<type>.schema.json`` and ``json/outputs/<name>.schema.json``.
JSON_SCHEMA_DIR: Final = _HERE / "json"

_KINDS: Final = frozenset({"events", "outputs"})
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _checked(kind: str, name: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid example name {name!r}")


def load_example(kind: str, name: str) -> bytes:
    """Raw bytes of an example message: ``load_example("events", "login")``,
    ``load_example("outputs", "health-score")``.

    Raises ``ValueError`` for an unknown kind or a malformed name and
    ``FileNotFoundError`` for a missing example.
    """
    _checked(kind, name)
    return (EXAMPLES_DIR / kind / f"{name}.json").read_bytes()


def load_schema(kind: str, name: str) -> dict[str, Any]:
    """The parsed JSON Schema of a message: ``load_schema("events", "login")``."""
    _checked(kind, name)
    schema: dict[str, Any] = json.loads(
        (JSON_SCHEMA_DIR / kind / f"{name}.schema.json").read_text()
    )
    return schema
