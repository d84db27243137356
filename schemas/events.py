"""Input event models: the Python mirror of ``schemas/json/events/*.schema.json``.

Contract (DESIGN.md, "Input topics"):

* every model is frozen and ignores unknown fields (forward compatibility);
* validation is strict where JSON would otherwise be coerced: ``"3"`` is not an
  integer, ``2.0`` is not an integer, ``true`` is not a number; an integer is a
  valid number;
* every timestamp (``occurred_at``, ``customer_since``, ``renewal_at``,
  ``expires_at``) is accepted as an RFC 3339 string *with* an offset or as integer
  epoch milliseconds, and is normalised to integer epoch milliseconds (UTC).
  Naive timestamps are rejected;
* ids (``event_id``, ``account_id``, ``user_id``, ``ticket_id``, ``author``) and
  names (``feature``, ``plan``, ``segment``, milestone ``name``, kpi ``metric``)
  are 1-128 characters, with no control character (C0, DEL, C1) and no
  whitespace at either end (so never blank): :data:`ID_PATTERN`. Free text
  (pulse ``reason``) is 1-1,000 characters with no control character and not
  blank: :data:`TEXT_PATTERN`. Such values are stored (PostgreSQL text cannot
  hold NUL), logged and shown on terminals;
* a pulse's ``expires_at`` is not before its ``occurred_at`` (the one rule the
  JSON Schemas cannot express).

Use :func:`schemas.decode.decode_event` / :func:`schemas.decode.validate_event`
to turn untrusted input into an :data:`Event`; they map pydantic errors to the
DLQ reason codes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "PULSE_DEFAULT_TTL_MS",
    "SUPPORTED_SCHEMA_VERSION",
    "TEXT_MAX_LENGTH",
    "TEXT_PATTERN",
    "TOPIC_PREFIX",
    "TOPIC_TYPES",
    "AccountEvent",
    "ContractEvent",
    "CsmTouchEvent",
    "Event",
    "EventBase",
    "FeatureUseEvent",
    "InvoiceEvent",
    "KpiEvent",
    "LoginEvent",
    "MilestoneEvent",
    "PulseEvent",
    "SupportTicketEvent",
    "SurveyEvent",
    "Timestamp",
    "event_adapter",
    "event_to_json",
    "parse_timestamp",
]

#: Highest ``schema_version`` this build understands.
SUPPORTED_SCHEMA_VERSION: Final = 1
#: Prefix of every input topic; the rest of the name is the topic *kind*.
TOPIC_PREFIX: Final = "vitals.events."
#: A pulse without ``expires_at`` expires 30 days after ``occurred_at``.
PULSE_DEFAULT_TTL_MS: Final = 30 * 24 * 60 * 60 * 1000
#: Accepted timestamp range: 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
MIN_TIMESTAMP_MS: Final = 0
MAX_TIMESTAMP_MS: Final = 253_402_300_799_999

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
# RFC 3339 section 5.6 date-time; the offset is mandatory (no naive timestamps).
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def parse_timestamp(value: object) -> int:
    """Normalise a wire timestamp to integer epoch milliseconds (UTC).

    Accepts an ``int`` (epoch ms, not ``bool``) or an RFC 3339 string with an
    offset (``Z`` or ``+hh:mm``); sub-millisecond digits are truncated. Raises
    ``PydanticCustomError`` (type ``timestamp``) for anything else, including
    naive strings and values outside [MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS].
    """
    if type(value) is int:
        ms = value
    elif isinstance(value, str):
        ms = _parse_rfc3339(value)
    else:
        raise PydanticCustomError(
            "timestamp",
            "timestamp must be an RFC 3339 string with offset or integer epoch milliseconds",
        )
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise PydanticCustomError(
            "timestamp",
            "timestamp out of range (1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z)",
        )
    return ms


def _parse_rfc3339(text: str) -> int:
    # The regex enforces the RFC 3339 shape (fromisoformat alone accepts far more,
    # e.g. naive or basic-format strings); fromisoformat (C code) then validates the
    # calendar, the offset and does the arithmetic.
    if _RFC3339.fullmatch(text) is None:
        raise PydanticCustomError(
            "timestamp",
            "timestamp string must be RFC 3339 with an offset, e.g. 2024-05-01T09:30:00Z",
        )
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise PydanticCustomError(
            "timestamp", "invalid date or time in timestamp: {error}", {"error": str(exc)}
        ) from None
    return (moment - _EPOCH) // _ONE_MS


#: Integer epoch ms on the model; RFC 3339 string (with offset) or integer on the wire.
Timestamp = Annotated[int, PlainValidator(parse_timestamp, json_schema_input_type=int | str)]

# Control characters: C0, DEL and C1. Whitespace: Unicode White_Space that is
# not a control character, and the BOM. Spelled out rather than ``\s``, whose
# meaning differs between regex engines, so the JSON Schemas (which carry the
# same patterns) mean the same thing in every validator.
_CONTROL: Final = "\\u0000-\\u001f\\u007f-\\u009f"
_SPACE: Final = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# The end of the string: ``$`` also matches before a final newline in
# Python's ``re`` (which Python JSON Schema validators use).
_END: Final = "(?![\\s\\S])"
#: Ids and names: no control character, no whitespace at either end.
ID_PATTERN: Final = f"^[^{_CONTROL}{_SPACE}](?:[^{_CONTROL}]*[^{_CONTROL}{_SPACE}])?{_END}"
ID_MAX_LENGTH: Final = 128
#: Free text: no control character, at least one character that is not whitespace.
TEXT_PATTERN: Final = f"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*{_END}"
TEXT_MAX_LENGTH: Final = 1000
_CONTROL_RE: Final = re.compile(f"[{_CONTROL}]")
_ID_RE: Final = re.compile(ID_PATTERN)
_TEXT_RE: Final = re.compile(TEXT_PATTERN)


def _no_control(value: str) -> None:
    found = _CONTROL_RE.search(value)
    if found is not None:
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (U+{code} at index {index})",
            {"code": f"{ord(found.group()):04X}", "index": found.start()},
        )


def _check_id(value: str) -> str:
    if _ID_RE.match(value) is None:
        _no_control(value)
        raise PydanticCustomError("edge_whitespace", "must not start or end with whitespace")
    return value


def _check_text(value: str) -> str:
    if _TEXT_RE.match(value) is None:
        _no_control(value)
        raise PydanticCustomError("blank_text", "must not be blank")
    return value


#: An id or a name (ID_PATTERN, 1-128 characters).
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH),
    AfterValidator(_check_id),
]
#: Free text (TEXT_PATTERN, 1-1,000 characters).
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TEXT_MAX_LENGTH),
    AfterValidator(_check_text),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class EventBase(BaseModel):
    """Fields common to every input event."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    event_id: Id
    account_id: Id
    occurred_at: Timestamp
    schema_version: Annotated[int, Field(ge=1)] = 1


class LoginEvent(EventBase):
    """A user signed in (topic kind ``login``)."""

    type: Literal["login"]
    user_id: Id


class FeatureUseEvent(EventBase):
    """A user used a product feature ``count`` times (topic kind ``feature-use``)."""

    type: Literal["feature_use"]
    user_id: Id
    feature: Id
    count: Annotated[int, Field(ge=1)] = 1


class SupportTicketEvent(EventBase):
    """A support ticket changed state (topic kind ``support-ticket``)."""

    type: Literal["support_ticket"]
    ticket_id: Id
    status: Literal["opened", "resolved", "reopened", "escalated"]
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    csat: Annotated[int, Field(ge=1, le=5)] | None = None


_ACCOUNT_SNAPSHOT_FIELDS: Final = (
    "seats",
    "plan",
    "arr",
    "segment",
    "lifecycle_stage",
    "customer_since",
    "renewal_at",
    "csm_owner",
)


class AccountEvent(EventBase):
    """An account snapshot (topic kind ``account``).

    Every snapshot field is optional but at least one must be present (non-null);
    later snapshots overwrite earlier fields, absent fields keep their value.
    """

    type: Literal["account"]
    seats: Annotated[int, Field(ge=0)] | None = None
    plan: Id | None = None
    arr: NonNegativeFloat | None = None
    segment: Id | None = None
    lifecycle_stage: Literal["onboarding", "adoption", "maturity", "renewal"] | None = None
    customer_since: Timestamp | None = None
    renewal_at: Timestamp | None = None
    #: The customer-success manager who owns the account (an id, like ``account_id``).
    csm_owner: Id | None = None

    @model_validator(mode="after")
    def _at_least_one_field(self) -> AccountEvent:
        if all(getattr(self, name) is None for name in _ACCOUNT_SNAPSHOT_FIELDS):
            raise PydanticCustomError(
                "missing_snapshot",
                "account event needs at least one of: {fields}",
                {"fields": ", ".join(_ACCOUNT_SNAPSHOT_FIELDS)},
            )
        return self


class CsmTouchEvent(EventBase):
    """A customer-success manager touched the account (topic kind ``engagement``)."""

    type: Literal["csm_touch"]
    channel: Literal["meeting", "call", "email", "qbr", "other"]


class SurveyEvent(EventBase):
    """A survey answer: NPS 0-10 or CSAT 1-5 (topic kind ``engagement``)."""

    type: Literal["survey"]
    kind: Literal["nps", "csat"]
    score: Annotated[int, Field(ge=0, le=10)]

    @field_validator("score")
    @classmethod
    def _score_in_kind_range(cls, score: int, info: ValidationInfo) -> int:
        # ``kind`` is declared first, so it is in info.data when it was valid.
        if info.data.get("kind") == "csat" and not 1 <= score <= 5:
            raise PydanticCustomError("csat_range", "csat score must be between 1 and 5")
        return score


def _default_expiry(data: dict[str, Any]) -> int:
    # ``data`` holds the fields validated so far; occurred_at is absent only when it
    # failed validation, in which case the whole event is rejected anyway.
    occurred_at = data.get("occurred_at")
    return occurred_at + PULSE_DEFAULT_TTL_MS if isinstance(occurred_at, int) else 0


class PulseEvent(EventBase):
    """A CSM's manual read of the account (topic kind ``engagement``).

    ``expires_at`` defaults to ``occurred_at`` + 30 days and is not before it.
    """

    type: Literal["pulse"]
    rating: Literal["green", "yellow", "red"]
    reason: Text
    author: Id | None = None
    expires_at: Timestamp = Field(default_factory=_default_expiry)

    @field_validator("expires_at")
    @classmethod
    def _not_before_occurred_at(cls, expires_at: int, info: ValidationInfo) -> int:
        # ``occurred_at`` is declared first: it is in info.data when it was valid.
        occurred_at = info.data.get("occurred_at")
        if isinstance(occurred_at, int) and expires_at < occurred_at:
            raise PydanticCustomError(
                "expires_before_occurred", "expires_at must not be before occurred_at"
            )
        return expires_at


class MilestoneEvent(EventBase):
    """An onboarding milestone was reached (topic kind ``engagement``)."""

    type: Literal["milestone"]
    name: Id


class KpiEvent(EventBase):
    """A business-outcome KPI amount (topic kind ``outcome``)."""

    type: Literal["kpi"]
    metric: Id
    value: FiniteFloat


class ContractEvent(EventBase):
    """A contract change (topic kind ``outcome``).

    ``action``: ``renewal`` (the customer renewed), ``upsell``, ``downgrade``,
    ``churn_notice`` (the customer said it will leave) and ``churned`` (the
    contract ended or was cancelled: the customer is gone). ``renewal`` and
    ``churned`` are the outcomes ``vitals backtest`` judges the score by.
    """

    type: Literal["contract"]
    action: Literal["renewal", "upsell", "downgrade", "churn_notice", "churned"]
    amount: FiniteFloat | None = None


class InvoiceEvent(EventBase):
    """An invoice status (topic kind ``outcome``)."""

    type: Literal["invoice"]
    status: Literal["paid", "overdue"]
    amount: FiniteFloat | None = None


#: Any input event, discriminated by ``type``.
Event = Annotated[
    LoginEvent
    | FeatureUseEvent
    | SupportTicketEvent
    | AccountEvent
    | CsmTouchEvent
    | SurveyEvent
    | PulseEvent
    | MilestoneEvent
    | KpiEvent
    | ContractEvent
    | InvoiceEvent,
    Field(discriminator="type"),
]

#: ``type`` value -> model class.
EVENT_MODELS: Final[dict[str, type[EventBase]]] = {
    "login": LoginEvent,
    "feature_use": FeatureUseEvent,
    "support_ticket": SupportTicketEvent,
    "account": AccountEvent,
    "csm_touch": CsmTouchEvent,
    "survey": SurveyEvent,
    "pulse": PulseEvent,
    "milestone": MilestoneEvent,
    "kpi": KpiEvent,
    "contract": ContractEvent,
    "invoice": InvoiceEvent,
}

#: Every valid event ``type``.
EVENT_TYPES: Final[frozenset[str]] = frozenset(EVENT_MODELS)

#: Topic kind (topic name without ``vitals.events.``) -> event types allowed on it.
TOPIC_TYPES: Final[dict[str, frozenset[str]]] = {
    "login": frozenset({"login"}),
    "feature-use": frozenset({"feature_use"}),
    "support-ticket": frozenset({"support_ticket"}),
    "account": frozenset({"account"}),
    "engagement": frozenset({"csm_touch", "survey", "pulse", "milestone"}),
    "outcome": frozenset({"kpi", "contract", "invoice"}),
}

#: Cached adapter for the whole union (e.g. ``event_adapter.json_schema()``).
event_adapter: Final[TypeAdapter[Event]] = TypeAdapter(Event)


def event_to_json(event: EventBase) -> dict[str, Any]:
    """Canonical JSON object of an event: timestamps as int epoch ms, nulls omitted.

    The result decodes back to an equal event.
    """
    return event.model_dump(mode="json", exclude_none=True)
