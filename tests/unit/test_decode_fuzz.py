"""Property tests: for any bytes the decoder returns an event or raises ``Rejected`` with a
known reason; nothing else escapes. On mutated examples it also agrees with the JSON Schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from schemas import (
    EVENT_TYPES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    REASONS,
    TOPIC_TYPES,
    EventBase,
    Rejected,
    decode_event,
    event_to_json,
    load_example,
    load_schema,
    validate_event,
)

NOW = 1_715_299_200_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPES = sorted(EVENT_TYPES)
TOPIC_KINDS = [*sorted(TOPIC_TYPES), None]
EXAMPLES = {t: orjson.loads(load_example("events", t)) for t in TYPES}
# "format" asserts only with a checker; date-time is checked with the standard
# library (jsonschema's own needs an optional package), so that a calendar-invalid
# time such as 2024-02-30 is rejected by the schema as by the decoder. The range
# the schemas' descriptions give (1970..9999, UTC) is checked with it: a pattern
# cannot express it for strings with an offset.
DATE_TIME = FormatChecker(formats=())


@DATE_TIME.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    moment = datetime.fromisoformat(value.upper())
    if moment.tzinfo is None:
        return True  # not the RFC 3339 shape: the pattern rejects it
    return MIN_TIMESTAMP_MS <= (moment - EPOCH) // timedelta(milliseconds=1) <= MAX_TIMESTAMP_MS


VALIDATORS = {
    t: Draft202012Validator(load_schema("events", t), format_checker=DATE_TIME) for t in TYPES
}
FIELD_NAMES = sorted({name for obj in EXAMPLES.values() for name in obj})
#: The decoder's message for a pulse whose expires_at is before its occurred_at.
CROSS_FIELD = "expires_at must not be before occurred_at"

# JSON Schema cannot tell 2.0 from 2 ("integer"), the decoder rejects 2.0 for integer fields;
# integral floats are left out of the agreement property, everything else must agree.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            "acme-corp",
            " acme",
            "acme\n",
            "ac\x00me",
            "\u00a0",
            "\u3000acme",
            "acme\x85",
            "x" * 128,
            "x" * 129,
            "r" * 1001,
            "2024-05-01T09:30:00Z",
            "2024-05-01T09:30:00",
            "2024-05-01T11:30:00.5+02:00",
            "2024-02-30T00:00:00Z",
            *TYPES,
            "nps",
            "csat",
            "green",
            "opened",
            "upsell",
        ]
    )
    | st.sampled_from([0, 1, 2, 5, 6, 10, 11, -1, NOW, NOW + 10**9, MAX_TIMESTAMP_MS + 1])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def check_outcome(
    value: bytes | None, topic_kind: str | None, key: bytes | None
) -> EventBase | None:
    try:
        event = decode_event(value, topic_kind=topic_kind, key=key, now_ms=NOW)
    except Rejected as rejected:
        assert rejected.reason in REASONS
        assert isinstance(rejected.detail, str)
        assert "\n" not in rejected.detail
        assert all(e["reason"] in REASONS for e in rejected.errors)
        return None
    # an accepted event round-trips through its canonical JSON
    again = validate_event(event_to_json(event), topic_kind=None, key=None, now_ms=NOW)
    assert again == event
    assert isinstance(event, EventBase)
    return event


@FUZZ
@given(
    value=st.binary(max_size=300) | st.none(),
    topic_kind=st.sampled_from(TOPIC_KINDS),
    key=st.none() | st.binary(max_size=12),
)
def test_arbitrary_bytes_never_escape(
    value: bytes | None, topic_kind: str | None, key: bytes | None
) -> None:
    check_outcome(value, topic_kind, key)


@FUZZ
@given(
    obj=json_values,
    topic_kind=st.sampled_from(TOPIC_KINDS),
    key=st.sampled_from([None, b"acme-corp", b"x"]),
)
def test_arbitrary_json_never_escapes(obj: Any, topic_kind: str | None, key: bytes | None) -> None:
    check_outcome(orjson.dumps(obj), topic_kind, key)


@st.composite
def mutated_example(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event_type = draw(st.sampled_from(TYPES))
    obj = dict(EXAMPLES[event_type])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop" and obj:
            obj.pop(draw(st.sampled_from(sorted(obj))))
        elif action == "replace" and obj:
            obj[draw(st.sampled_from(sorted(obj)))] = draw(json_values)
        else:
            obj[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(json_values)
    return event_type, obj


@FUZZ
@given(
    mutated=mutated_example(),
    topic_kind=st.sampled_from(TOPIC_KINDS),
    key=st.sampled_from([None, b"acme-corp", b"x"]),
)
def test_mutated_examples_never_escape(
    mutated: tuple[str, dict[str, Any]], topic_kind: str | None, key: bytes | None
) -> None:
    _, obj = mutated
    check_outcome(orjson.dumps(obj), topic_kind, key)


@FUZZ
@given(mutated=mutated_example())
def test_decoder_agrees_with_json_schema(mutated: tuple[str, dict[str, Any]]) -> None:
    """Without topic, key and clock checks, decoder and schema accept the same messages."""
    event_type, obj = mutated
    claimed = obj.get("type")
    schema_type = claimed if isinstance(claimed, str) and claimed in EVENT_TYPES else event_type
    schema_ok = VALIDATORS[schema_type].is_valid(obj)
    try:
        decode_event(orjson.dumps(obj), topic_kind=None, key=None, now_ms=MAX_TIMESTAMP_MS)
        decoder_ok = True
    except Rejected as rejected:
        decoder_ok = False
        detail = rejected.detail
        if schema_ok and all(e["message"] == CROSS_FIELD for e in rejected.errors):
            return  # the one rule a JSON Schema cannot express (it compares two fields)
    assert decoder_ok == schema_ok, (obj, None if decoder_ok else detail)


ID_FIELDS = ["event_id", "account_id", "user_id"]
edge_text = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from(["\x00", "\n", "\x1b", "\x7f", "\x85", " ", "\u00a0", "\u2028", "\ufeff"]),
    max_size=130,
)


@FUZZ
@given(field=st.sampled_from(ID_FIELDS), value=edge_text)
def test_id_rule_agrees_with_json_schema(field: str, value: str) -> None:
    """Ids: the decoder and the schema's pattern/length accept the same strings."""
    obj = {**EXAMPLES["login"], field: value}
    schema_ok = VALIDATORS["login"].is_valid(obj)
    try:
        validate_event(obj, topic_kind=None, key=None, now_ms=MAX_TIMESTAMP_MS)
        decoder_ok = True
    except Rejected as rejected:
        decoder_ok = False
        assert rejected.reason == "invalid_field" and rejected.errors[0]["field"] == field
    assert decoder_ok == schema_ok, value


@FUZZ
@given(value=edge_text | st.text(min_size=995, max_size=1005))
def test_text_rule_agrees_with_json_schema(value: str) -> None:
    """Free text (pulse reason): the decoder and the schema accept the same strings."""
    obj = {**EXAMPLES["pulse"], "reason": value}
    schema_ok = VALIDATORS["pulse"].is_valid(obj)
    try:
        validate_event(obj, topic_kind=None, key=None, now_ms=MAX_TIMESTAMP_MS)
        decoder_ok = True
    except Rejected:
        decoder_ok = False
    assert decoder_ok == schema_ok, value
