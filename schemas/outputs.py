"""Output message models: the Python mirror of ``schemas/json/outputs/*.schema.json``.

* ``vitals.health.scores`` (compacted, key ``account_id``): :class:`HealthScore`;
* ``vitals.health.bucket-changes``: :class:`BucketChange`;
* ``vitals.playbooks.triggers``: :class:`PlaybookTrigger`;
* ``vitals.events.dlq``: the original message plus the headers in
  :class:`~schemas.dlq.DlqHeaders`.

The models are frozen and strict and forbid unknown fields: vitals produces
these messages, so a misspelt field is a bug caught before it is published.
Times are RFC 3339 strings in UTC with a ``Z`` suffix (:func:`format_utc`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.dlq import DlqHeaders

__all__ = [
    "UTC_TIMESTAMP_PATTERN",
    "Bucket",
    "BucketChange",
    "Component",
    "DlqHeaders",
    "Driver",
    "GateOut",
    "Grade",
    "HealthScore",
    "PlaybookTrigger",
    "Pulse",
    "ScorecardRef",
    "Trend",
    "format_utc",
    "parse_bucket_change",
    "parse_health_score",
]

Bucket = Literal["green", "yellow", "red"]
Grade = Literal["A", "B", "C", "D", "F"]

#: RFC 3339 UTC timestamp: ``2024-05-01T09:30:00Z`` or ``2024-05-01T09:30:00.123Z``.
UTC_TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
)

UtcTimestamp = Annotated[str, StringConstraints(pattern=UTC_TIMESTAMP_PATTERN)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Score = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def format_utc(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC string, milliseconds only when non-zero.

    ``format_utc(1714555800000) == "2024-05-01T09:30:00Z"``;
    ``format_utc(1714555800123) == "2024-05-01T09:30:00.123Z"``.
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ScorecardRef(_Output):
    """The scorecard that produced a score."""

    name: NonEmptyStr
    version: NonEmptyStr


class Component(_Output):
    """One metric's part in a score: ``contribution = score * weight`` (0-100 scale)."""

    metric: NonEmptyStr
    #: The scorecard's short name of the metric, for people.
    label: NonEmptyStr
    value: Number | None
    score: Score
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    contribution: Number


class GateOut(_Output):
    """A scorecard gate that fired: it caps the bucket at ``bucket`` or lifts it
    to ``bucket``; ``decided``: it set the account's bucket."""

    name: NonEmptyStr
    reason: str
    effect: Literal["cap", "lift"]
    bucket: Bucket
    decided: bool


class Pulse(_Output):
    """The CSM pulse in effect (not expired) when the score was computed."""

    rating: Bucket
    reason: NonEmptyStr
    author: Id | None
    expires_at: UtcTimestamp


class Trend(_Output):
    """Score change over 7 and 30 days; ``None`` when there is no score that old."""

    delta_7d: Number | None
    delta_30d: Number | None


class HealthScore(_Output):
    """The latest health score of an account (topic ``vitals.health.scores``)."""

    account_id: Id
    score: Score
    bucket: Bucket
    grade: Grade
    stage: NonEmptyStr
    #: The scorecard profile used (``default`` when none matched).
    profile: NonEmptyStr
    scorecard: ScorecardRef
    components: list[Component]
    missing: list[NonEmptyStr]
    #: Gates that fired, in scorecard order, with their reasons.
    gates: list[GateOut]
    pulse: Pulse | None
    trend: Trend
    as_of: UtcTimestamp
    computed_at: UtcTimestamp
    low_confidence: bool
    schema_version: Annotated[int, Field(ge=2, le=2)] = 2


class Driver(_Output):
    """A metric that moved between the previous and the new score."""

    metric: NonEmptyStr
    label: NonEmptyStr
    before: Number | None
    after: Number | None
    contribution_delta: Number


class BucketChange(_Output):
    """An account moved bucket (topic ``vitals.health.bucket-changes``).

    ``change_id`` is deterministic so consumers can drop duplicates; the first
    score of a new account is not a change.
    """

    change_id: NonEmptyStr
    account_id: Id
    from_bucket: Bucket
    to_bucket: Bucket
    score: Score
    previous_score: Score
    drivers: list[Driver]
    #: The gates that decided the new bucket (empty when the score alone did).
    gates: list[GateOut]
    as_of: UtcTimestamp
    schema_version: Annotated[int, Field(ge=2, le=2)] = 2

    @model_validator(mode="after")
    def _is_a_change(self) -> BucketChange:
        if self.from_bucket == self.to_bucket:
            raise ValueError("from_bucket and to_bucket must differ")
        return self


class PlaybookTrigger(_Output):
    """A playbook fired for an account (topic ``vitals.playbooks.triggers``).

    ``trigger_id`` is deterministic so consumers can drop duplicates.
    """

    trigger_id: NonEmptyStr
    playbook: NonEmptyStr
    account_id: Id
    reason: NonEmptyStr
    as_of: UtcTimestamp
    context: dict[str, Any]
    schema_version: Annotated[int, Field(ge=1, le=1)] = 1


def parse_health_score(raw: bytes | str) -> HealthScore:
    """A ``vitals.health.scores`` message of any published version, as the current
    model: a version-1 message (no profile, gates, pulse or labels) is read with
    ``profile`` ``"unknown"``, no gates, no pulse and each metric as its own label.
    Raises ``ValueError`` (pydantic's ``ValidationError``) for anything else."""
    data = orjson.loads(raw)
    if isinstance(data, dict) and data.get("schema_version", 1) == 1:
        data = {
            **data,
            "profile": "unknown",
            "gates": [],
            "pulse": None,
            "components": [_labelled(c) for c in data.get("components", [])],
            "schema_version": 2,
        }
    return HealthScore.model_validate(data)


def parse_bucket_change(raw: bytes | str) -> BucketChange:
    """A ``vitals.health.bucket-changes`` message of any published version, as the
    current model: a version-1 message is read with no gates and each driver's
    metric as its label."""
    data = orjson.loads(raw)
    if isinstance(data, dict) and data.get("schema_version", 1) == 1:
        data = {
            **data,
            "drivers": [_labelled(d) for d in data.get("drivers", [])],
            "gates": [],
            "schema_version": 2,
        }
    return BucketChange.model_validate(data)


def _labelled(item: Any) -> Any:
    if isinstance(item, dict) and "label" not in item and isinstance(item.get("metric"), str):
        return {"metric": item["metric"], "label": item["metric"], **item}
    return item
