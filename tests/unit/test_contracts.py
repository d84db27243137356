"""Contracts with examples: every example runs through the real decoder and its JSON Schema,
and a table of invalid messages is rejected by both with the documented reason."""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

import schemas
from schemas import (
    DLQ_HEADERS,
    EVENT_MODELS,
    EVENT_TYPES,
    EXAMPLES_DIR,
    JSON_SCHEMA_DIR,
    PULSE_DEFAULT_TTL_MS,
    REASONS,
    TOPIC_TYPES,
    AccountEvent,
    BucketChange,
    Component,
    DlqHeaders,
    Driver,
    GateOut,
    HealthScore,
    PlaybookTrigger,
    Pulse,
    PulseEvent,
    Rejected,
    ScorecardRef,
    Trend,
    decode_event,
    event_to_json,
    format_utc,
    load_example,
    load_schema,
    validate_event,
)
from schemas.outputs import parse_bucket_change, parse_health_score

NOW = 1_715_299_200_000  # 2024-05-10T00:00:00Z, after every example's occurred_at
KEY = b"acme-corp"
DAY_MS = 86_400_000

OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "health-score": HealthScore,
    "bucket-change": BucketChange,
    "playbook-trigger": PlaybookTrigger,
}


def topic_kind_of(event_type: str) -> str:
    (kind,) = [k for k, types in TOPIC_TYPES.items() if event_type in types]
    return kind


def example(event_type: str) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(load_example("events", event_type))
    return obj


def body(event_type: str, **changes: Any) -> bytes:
    """The example of ``event_type`` with fields replaced; ``DROP`` removes a field."""
    obj = example(event_type)
    for name, value in changes.items():
        if value is DROP:
            obj.pop(name, None)
        else:
            obj[name] = value
    return orjson.dumps(obj)


DROP = object()


def validator(kind: str, name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(kind, name))


def decode(value: bytes | None, topic_kind: str | None = None, key: bytes | None = KEY) -> Any:
    if topic_kind is None and value:
        try:
            obj = orjson.loads(value)
            topic_kind = topic_kind_of(obj["type"])
        except Exception:
            topic_kind = "login"
    return decode_event(value, topic_kind=topic_kind, key=key, now_ms=NOW)


# --- the files exist, one per type, and are valid JSON Schemas ----------------------------


def test_one_schema_and_example_per_event_type() -> None:
    schema_names = {
        p.name.removesuffix(".schema.json") for p in (JSON_SCHEMA_DIR / "events").iterdir()
    }
    example_names = {p.stem for p in (EXAMPLES_DIR / "events").iterdir()}
    assert schema_names == example_names == EVENT_TYPES == set(EVENT_MODELS)
    assert set().union(*TOPIC_TYPES.values()) == EVENT_TYPES


def test_one_schema_and_example_per_output() -> None:
    schema_names = {
        p.name.removesuffix(".schema.json") for p in (JSON_SCHEMA_DIR / "outputs").iterdir()
    }
    example_names = {p.stem for p in (EXAMPLES_DIR / "outputs").iterdir()}
    assert schema_names == example_names == set(OUTPUT_MODELS)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("events", t) for t in sorted(EVENT_TYPES)] + [("outputs", n) for n in sorted(OUTPUT_MODELS)],
)
def test_schema_file_is_valid_draft_2020_12(kind: str, name: str) -> None:
    schema = load_schema(kind, name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["description"]
    for prop in schema["properties"].values():
        assert prop.get("description"), "every top-level property is documented"


# --- every example through the real decoder and its schema --------------------------------


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_event_example_decodes(event_type: str) -> None:
    raw = load_example("events", event_type)
    event = decode_event(raw, topic_kind=topic_kind_of(event_type), key=KEY, now_ms=NOW)
    assert isinstance(event, EVENT_MODELS[event_type])
    assert event.type == event_type
    assert event.account_id == "acme-corp"
    assert isinstance(event.occurred_at, int)
    # replay path: no topic, no key
    assert decode_event(raw, topic_kind=None, key=None, now_ms=NOW) == event


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_event_example_matches_json_schema(event_type: str) -> None:
    validator("events", event_type).validate(orjson.loads(load_example("events", event_type)))


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_event_to_json_round_trips(event_type: str) -> None:
    event = decode(load_example("events", event_type))
    canonical = event_to_json(event)
    assert isinstance(canonical["occurred_at"], int)
    assert None not in canonical.values()
    validator("events", event_type).validate(canonical)
    again = validate_event(canonical, topic_kind=None, key=None, now_ms=NOW)
    assert again == event


@pytest.mark.parametrize("name", sorted(OUTPUT_MODELS))
def test_output_example_matches_model_and_schema(name: str) -> None:
    raw = load_example("outputs", name)
    validator("outputs", name).validate(orjson.loads(raw))
    model = OUTPUT_MODELS[name].model_validate_json(raw)
    # the model's own dump is valid against the schema too
    validator("outputs", name).validate(model.model_dump(mode="json"))
    assert OUTPUT_MODELS[name].model_validate(orjson.loads(raw)) == model


# --- models and schema files describe the same fields --------------------------------------


def _enum_values(schema: Any) -> set[Any]:
    found: set[Any] = set()
    if isinstance(schema, dict):
        if "const" in schema:
            found.add(schema["const"])
        found.update(schema.get("enum", ()))
        for key in ("anyOf", "oneOf"):
            for sub in schema.get(key, ()):
                found |= _enum_values(sub)
    return found


def _assert_same_fields(model: type[BaseModel], schema: dict[str, Any]) -> None:
    fields = model.model_fields
    assert set(schema["properties"]) == set(fields), model.__name__
    required = {name for name, info in fields.items() if info.is_required()}
    assert set(schema["required"]) == required, model.__name__
    generated = model.model_json_schema()["properties"]
    for name in fields:
        if name == "schema_version":  # the file pins 1; the decoder rejects higher versions
            continue
        # None in a hand-written enum means "nullable", which pydantic writes as
        # anyOf [.., null]; nullability itself is covered by the fuzz test.
        assert _enum_values(schema["properties"][name]) - {None} == _enum_values(
            generated[name]
        ) - {None}, name


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_event_model_and_schema_have_same_fields(event_type: str) -> None:
    schema = load_schema("events", event_type)
    _assert_same_fields(EVENT_MODELS[event_type], schema)
    assert schema["additionalProperties"] is True  # unknown fields are accepted


def test_output_models_and_schemas_have_same_fields() -> None:
    hs = load_schema("outputs", "health-score")
    _assert_same_fields(HealthScore, hs)
    _assert_same_fields(ScorecardRef, hs["properties"]["scorecard"])
    _assert_same_fields(Component, hs["properties"]["components"]["items"])
    _assert_same_fields(Trend, hs["properties"]["trend"])
    _assert_same_fields(GateOut, hs["properties"]["gates"]["items"])
    _assert_same_fields(Pulse, hs["properties"]["pulse"]["oneOf"][1])
    bc = load_schema("outputs", "bucket-change")
    _assert_same_fields(BucketChange, bc)
    _assert_same_fields(Driver, bc["properties"]["drivers"]["items"])
    _assert_same_fields(GateOut, bc["properties"]["gates"]["items"])
    _assert_same_fields(PlaybookTrigger, load_schema("outputs", "playbook-trigger"))


# --- invalid input: decoder reason, and the JSON Schema agrees where it can say -----------

# (id, value, topic_kind (None: the example's own), key, expected reason,
#  schema that must also reject the parsed value, or None when the rule is not a schema rule)
INVALID: list[tuple[str, bytes | None, str | None, bytes | None, str, str | None]] = [
    ("not_json", b"{not json", "login", KEY, "not_json", None),
    ("whitespace", b"   ", "login", KEY, "not_json", None),
    ("json_array", b'[{"type": "login"}]', "login", KEY, "not_object", "login"),
    ("json_scalar", b"42", "login", KEY, "not_object", "login"),
    ("invalid_utf8", b'{"event_id": "\xff\xfe"}', "login", KEY, "invalid_utf8", None),
    ("missing_event_id", body("login", event_id=DROP), None, KEY, "missing_field", "login"),
    ("empty_event_id", body("login", event_id=""), None, KEY, "invalid_field", "login"),
    ("long_account_id", body("login", account_id="a" * 129), None, None, "invalid_field", "login"),
    ("unknown_type", body("login", type="logout"), "login", KEY, "unknown_type", "login"),
    ("missing_type", body("login", type=DROP), "login", KEY, "missing_field", "login"),
    ("null_type", body("login", type=None), "login", KEY, "unknown_type", "login"),
    ("type_not_string", body("login", type=["login"]), "login", KEY, "unknown_type", "login"),
    ("login_on_feature_use", body("login"), "feature-use", KEY, "wrong_topic", None),
    ("unknown_topic_kind", body("login"), "logins", KEY, "wrong_topic", None),
    ("key_mismatch", body("login"), None, b"other-corp", "key_mismatch", None),
    (
        "one_day_future",
        body("login", occurred_at=NOW + DAY_MS),
        None,
        KEY,
        "future_event",
        None,
    ),
    ("seats_negative", body("account", seats=-1), None, KEY, "invalid_field", "account"),
    ("oversized_2mb", b'{"a": "' + b"x" * 2_000_000 + b'"}', "login", KEY, "oversized", None),
    ("empty", b"", "login", KEY, "empty", None),
    ("none", None, "login", KEY, "empty", None),
    (
        "naive_timestamp",
        body("login", occurred_at="2024-05-01T09:30:00"),
        None,
        KEY,
        "invalid_field",
        "login",
    ),
    ("date_only", body("login", occurred_at="2024-05-01"), None, KEY, "invalid_field", "login"),
    ("bool_timestamp", body("login", occurred_at=True), None, KEY, "invalid_field", "login"),
    ("negative_timestamp", body("login", occurred_at=-1), None, KEY, "invalid_field", "login"),
    ("count_string", body("feature_use", count="3"), None, KEY, "invalid_field", "feature_use"),
    ("count_zero", body("feature_use", count=0), None, KEY, "invalid_field", "feature_use"),
    ("nps_11", body("survey", kind="nps", score=11), None, KEY, "invalid_field", "survey"),
    ("csat_6", body("survey", kind="csat", score=6), None, KEY, "invalid_field", "survey"),
    ("csat_0", body("survey", kind="csat", score=0), None, KEY, "invalid_field", "survey"),
    ("pulse_empty_reason", body("pulse", reason=""), None, KEY, "invalid_field", "pulse"),
    ("pulse_no_reason", body("pulse", reason=DROP), None, KEY, "missing_field", "pulse"),
    (
        "account_no_fields",
        orjson.dumps(
            {k: v for k, v in example("account").items() if k in EVENT_MODELS["login"].model_fields}
        ),
        None,
        KEY,
        "missing_field",
        "account",
    ),
    (
        "account_all_null",
        body(
            "account",
            seats=None,
            plan=None,
            arr=None,
            segment=None,
            lifecycle_stage=None,
            customer_since=None,
            renewal_at=None,
            csm_owner=None,
        ),
        None,
        KEY,
        "missing_field",
        "account",
    ),
    ("arr_string", body("account", arr="24000"), None, KEY, "invalid_field", "account"),
    (
        "bad_lifecycle",
        body("account", lifecycle_stage="churned"),
        None,
        KEY,
        "invalid_field",
        "account",
    ),
    (
        "ticket_bad_status",
        body("support_ticket", status="closed"),
        None,
        KEY,
        "invalid_field",
        "support_ticket",
    ),
    (
        "csm_bad_channel",
        body("csm_touch", channel="slack"),
        None,
        KEY,
        "invalid_field",
        "csm_touch",
    ),
    ("kpi_value_bool", body("kpi", value=True), None, KEY, "invalid_field", "kpi"),
    (
        "contract_bad_action",
        body("contract", action="cancel"),
        None,
        KEY,
        "invalid_field",
        "contract",
    ),
    ("milestone_no_name", body("milestone", name=DROP), None, KEY, "missing_field", "milestone"),
    ("invoice_bad_amount", body("invoice", amount="2000"), None, KEY, "invalid_field", "invoice"),
    (
        "schema_version_2",
        body("login", schema_version=2),
        None,
        KEY,
        "unsupported_schema_version",
        "login",
    ),
    ("schema_version_0", body("login", schema_version=0), None, KEY, "invalid_field", "login"),
    # Ids and texts (issue 13): storable in PostgreSQL, harmless on a terminal.
    ("nul_account_id", body("login", account_id="acme\x00"), None, None, "invalid_field", "login"),
    ("crlf_account_id", body("login", account_id="ac\r\nme"), None, None, "invalid_field", "login"),
    ("space_account_id", body("login", account_id=" "), None, None, "invalid_field", "login"),
    ("padded_event_id", body("login", event_id="evt-1 "), None, KEY, "invalid_field", "login"),
    ("escape_user_id", body("login", user_id="\x1b[2J"), None, KEY, "invalid_field", "login"),
    ("c1_user_id", body("login", user_id="u\x9b1"), None, KEY, "invalid_field", "login"),
    (
        "long_ticket_id",
        body("support_ticket", ticket_id="t" * 129),
        None,
        KEY,
        "invalid_field",
        "support_ticket",
    ),
    (
        "nbsp_feature",
        body("feature_use", feature="\u00a0"),
        None,
        KEY,
        "invalid_field",
        "feature_use",
    ),
    ("huge_reason", body("pulse", reason="r" * 1_000_000), None, KEY, "invalid_field", "pulse"),
    ("blank_reason", body("pulse", reason="  "), None, KEY, "invalid_field", "pulse"),
    ("newline_reason", body("pulse", reason="a\nb"), None, KEY, "invalid_field", "pulse"),
    ("expires_in_1970", body("pulse", expires_at=0), None, KEY, "invalid_field", None),
]


@pytest.mark.parametrize(
    ("value", "topic_kind", "key", "reason", "schema_name"),
    [pytest.param(*row[1:], id=row[0]) for row in INVALID],
)
def test_invalid_message_is_rejected(
    value: bytes | None,
    topic_kind: str | None,
    key: bytes | None,
    reason: str,
    schema_name: str | None,
) -> None:
    with pytest.raises(Rejected) as info:
        decode(value, topic_kind, key)
    rejected = info.value
    assert rejected.reason == reason, rejected.detail
    assert rejected.reason in REASONS
    assert rejected.detail and "\n" not in rejected.detail
    assert len(rejected.detail) < 1024
    for err in rejected.errors:
        assert set(err) == {"field", "reason", "message"}
        assert err["reason"] in REASONS
    if rejected.errors:
        assert rejected.errors[0]["reason"] == reason
    if schema_name is not None:
        assert value is not None
        assert not validator("events", schema_name).is_valid(orjson.loads(value))


def test_invalid_table_covers_every_reason() -> None:
    assert {row[4] for row in INVALID} == set(REASONS)


def test_id_and_text_errors_say_what_is_wrong() -> None:
    cases = {
        body("login", account_id="ac\x00me"): (
            "account_id: must not contain control characters (U+0000 at index 2)"
        ),
        body("login", user_id=" dana"): "user_id: must not start or end with whitespace",
        body("pulse", reason="\u3000"): "reason: must not be blank",
        body("pulse", reason="r" * 1001): "reason: String should have at most 1000 characters",
        body("pulse", expires_at="2024-05-05T09:59:59Z"): (
            "expires_at: expires_at must not be before occurred_at"
        ),
    }
    for value, detail in cases.items():
        with pytest.raises(Rejected) as info:
            decode(value, None, None)
        assert info.value.detail == detail


# Valid variants: accepted by the decoder and by the schema.
VALID: list[tuple[str, bytes]] = [
    ("int_occurred_at", body("login", occurred_at=1_714_555_800_000)),
    ("offset_plus", body("login", occurred_at="2024-05-01T11:30:00+02:00")),
    ("offset_minus_fraction", body("login", occurred_at="2024-05-01T04:30:00.5-05:00")),
    ("lowercase_t_z", body("login", occurred_at="2024-05-01t09:30:00z")),
    ("space_separator", body("login", occurred_at="2024-05-01 09:30:00Z")),
    ("explicit_schema_version", body("login", schema_version=1)),
    ("extra_fields", body("login", browser="firefox", nested={"a": [1, 2]})),
    ("feature_use_default_count", body("feature_use", count=DROP)),
    ("ticket_minimal", body("support_ticket", priority=DROP, csat=DROP, status="opened")),
    ("ticket_csat_null", body("support_ticket", csat=None)),
    ("account_seats_only", orjson.dumps({**example("login"), "type": "account", "seats": 0})),
    ("account_nulls_and_plan", body("account", seats=None, arr=None, renewal_at=None)),
    ("account_int_arr", body("account", arr=24000)),
    ("survey_nps_0", body("survey", kind="nps", score=0)),
    ("survey_csat_5", body("survey", kind="csat", score=5)),
    ("pulse_no_expiry", body("pulse", expires_at=DROP)),
    ("kpi_float", body("kpi", value=0.5)),
    ("kpi_negative", body("kpi", value=-3)),
    ("contract_no_amount", body("contract", amount=DROP)),
    ("invoice_null_amount", body("invoice", amount=None)),
    ("future_within_5_minutes", body("login", occurred_at=NOW + 300_000)),
    ("id_128_non_ascii", body("login", user_id="é" * 128)),
    ("id_inner_spaces", body("login", user_id="Dana Whitfield (CSM)")),
    ("reason_1000_padded", body("pulse", reason=" " + "r" * 998 + " ")),
    ("expires_at_occurred_at", body("pulse", expires_at="2024-05-05T10:00:00Z")),
]


@pytest.mark.parametrize("value", [pytest.param(v, id=i) for i, v in VALID])
def test_valid_variant_is_accepted_by_decoder_and_schema(value: bytes) -> None:
    event = decode(value)
    validator("events", event.type).validate(orjson.loads(value))


# --- specific rules ------------------------------------------------------------------------


def test_login_on_feature_use_topic_is_wrong_topic() -> None:
    with pytest.raises(Rejected) as info:
        decode_event(body("login"), topic_kind="feature-use", key=KEY, now_ms=NOW)
    assert info.value.reason == "wrong_topic"
    # replay (no topic) accepts it
    assert decode_event(body("login"), topic_kind=None, key=KEY, now_ms=NOW).type == "login"


def test_engagement_and_outcome_topics_take_their_types() -> None:
    for event_type in ("csm_touch", "survey", "pulse", "milestone"):
        assert decode(load_example("events", event_type), "engagement").type == event_type
    for event_type in ("kpi", "contract", "invoice"):
        assert decode(load_example("events", event_type), "outcome").type == event_type


def test_key_is_checked_only_when_present() -> None:
    assert decode(body("login"), key=None).account_id == "acme-corp"
    with pytest.raises(Rejected) as info:
        decode(body("login"), key=b"")
    assert info.value.reason == "key_mismatch"


def test_non_ascii_account_id_matches_utf8_key() -> None:
    event = decode(body("login", account_id="café-gmbh"), key="café-gmbh".encode())
    assert event.account_id == "café-gmbh"


def test_future_limit_is_configurable() -> None:
    value = body("login", occurred_at=NOW + 301_000)
    with pytest.raises(Rejected):
        decode_event(value, topic_kind="login", key=KEY, now_ms=NOW)
    event = decode_event(value, topic_kind="login", key=KEY, now_ms=NOW, max_future_ms=DAY_MS)
    assert event.occurred_at == NOW + 301_000


def test_oversized_is_checked_first() -> None:
    with pytest.raises(Rejected) as info:
        decode_event(b"\xff" * 100, topic_kind="login", key=KEY, now_ms=NOW, max_bytes=10)
    assert info.value.reason == "oversized"
    exactly = body("login")
    event = decode_event(exactly, topic_kind="login", key=KEY, now_ms=NOW, max_bytes=len(exactly))
    assert event.type == "login"


def test_pulse_default_expiry_is_30_days_after_occurred_at() -> None:
    event = decode(body("pulse", expires_at=DROP))
    assert isinstance(event, PulseEvent)
    assert PULSE_DEFAULT_TTL_MS == 30 * DAY_MS
    assert event.expires_at == event.occurred_at + 30 * DAY_MS
    explicit = decode(body("pulse", expires_at=1_720_000_000_000))
    assert isinstance(explicit, PulseEvent)
    assert explicit.expires_at == 1_720_000_000_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-05-01T09:30:00Z", 1_714_555_800_000),
        ("2024-05-01T11:30:00+02:00", 1_714_555_800_000),
        ("2024-05-01T04:00:00-05:30", 1_714_555_800_000),
        ("2024-05-01T11:30:00.123+02:00", 1_714_555_800_123),
        ("2024-05-01T11:30:00.123999+02:00", 1_714_555_800_123),  # truncated, not rounded
        ("2024-05-01T11:30:00.1+02:00", 1_714_555_800_100),
        ("2024-05-01T00:30:00+23:59", 1_714_437_060_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
    ],
)
def test_rfc3339_offsets_are_normalised_to_utc_ms(text: str, ms: int) -> None:
    event = decode(body("account", occurred_at=text, renewal_at=text))
    assert isinstance(event, AccountEvent)
    assert event.occurred_at == ms
    assert event.renewal_at == ms


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T09:30:00",
        "2024-05-01T09:30:00+0200",
        "2024-05-01T09:30Z",
        "2023-02-29T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T09:30:00+24:00",
        "20240501T093000Z",
        "1969-12-31T23:59:59Z",
        " 2024-05-01T09:30:00Z",
        "2024-05-01T09:30:00Z\n",
        "",
    ],
)
def test_bad_timestamp_strings_are_invalid_field(text: str) -> None:
    with pytest.raises(Rejected) as info:
        decode(body("login", occurred_at=text))
    assert info.value.reason == "invalid_field"
    assert info.value.errors[0]["field"] == "occurred_at"


def test_float_timestamp_and_integral_float_count_are_rejected() -> None:
    for value in (body("login", occurred_at=1_714_555_800_000.0), body("feature_use", count=2.0)):
        with pytest.raises(Rejected) as info:
            decode(value)
        assert info.value.reason == "invalid_field"


def test_unknown_extra_fields_are_ignored() -> None:
    event = decode(body("login", browser="firefox", session={"id": 1}))
    assert not hasattr(event, "browser")
    assert "browser" not in event_to_json(event)
    assert event == decode(body("login"))


def test_events_are_frozen() -> None:
    event = decode(body("login"))
    with pytest.raises(ValidationError):
        event.user_id = "someone-else"


def test_errors_lists_every_field_error() -> None:
    value = body(
        "account",
        event_id="",
        seats=-1,
        arr="lots",
        lifecycle_stage="churned",
        renewal_at="tomorrow",
    )
    with pytest.raises(Rejected) as info:
        decode(value)
    rejected = info.value
    assert rejected.reason == "invalid_field"
    fields = [e["field"] for e in rejected.errors]
    assert fields == ["event_id", "seats", "arr", "lifecycle_stage", "renewal_at"]
    assert all(e["reason"] == "invalid_field" and e["message"] for e in rejected.errors)
    assert "(+4 more)" in rejected.detail


def test_first_error_gives_the_reason() -> None:
    with pytest.raises(Rejected) as info:
        decode(body("feature_use", event_id=DROP, count="3", feature=DROP))
    rejected = info.value
    assert rejected.reason == "missing_field"
    assert [(e["field"], e["reason"]) for e in rejected.errors] == [
        ("event_id", "missing_field"),
        ("feature", "missing_field"),
        ("count", "invalid_field"),
    ]


def test_invalid_occurred_at_on_pulse_reports_only_occurred_at() -> None:
    with pytest.raises(Rejected) as info:
        decode(body("pulse", occurred_at="yesterday", expires_at=DROP))
    assert [e["field"] for e in info.value.errors] == ["occurred_at"]


def test_validate_event_takes_parsed_json() -> None:
    event = validate_event(example("login"), topic_kind="login", key=None, now_ms=NOW)
    assert event.type == "login"
    with pytest.raises(Rejected) as info:
        validate_event([example("login")], topic_kind="login", key=None, now_ms=NOW)
    assert info.value.reason == "not_object"


def test_rejected_is_an_exception_with_a_readable_str() -> None:
    rejected = Rejected("empty", "value is empty")
    assert str(rejected) == "empty: value is empty"
    assert rejected.errors == []


# --- outputs -------------------------------------------------------------------------------


def _output(name: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(load_example("outputs", name))
    for key, value in changes.items():
        if value is DROP:
            obj.pop(key)
        else:
            obj[key] = value
    return obj


INVALID_OUTPUTS: list[tuple[str, str, dict[str, Any]]] = [
    ("score_above_100", "health-score", _output("health-score", score=100.5)),
    ("bucket_blue", "health-score", _output("health-score", bucket="blue")),
    ("grade_e", "health-score", _output("health-score", grade="E")),
    ("as_of_not_utc", "health-score", _output("health-score", as_of="2024-05-10T02:00:00+02:00")),
    ("extra_field", "health-score", _output("health-score", surprise=1)),
    ("no_low_confidence", "health-score", _output("health-score", low_confidence=DROP)),
    ("low_confidence_int", "health-score", _output("health-score", low_confidence=1)),
    ("schema_version_1", "health-score", _output("health-score", schema_version=1)),
    ("schema_version_3", "health-score", _output("health-score", schema_version=3)),
    (
        "gate_without_reason",
        "health-score",
        _output(
            "health-score", gates=[{"name": "g", "effect": "cap", "bucket": "red", "decided": True}]
        ),
    ),
    (
        "pulse_rating_blue",
        "health-score",
        _output(
            "health-score",
            pulse={
                "rating": "blue",
                "reason": "r",
                "author": None,
                "expires_at": "2024-05-10T00:00:00Z",
            },
        ),
    ),
    (
        "driver_without_label",
        "bucket-change",
        _output(
            "bucket-change",
            drivers=[{"metric": "nps", "before": 1, "after": 2, "contribution_delta": 1}],
        ),
    ),
    (
        "component_missing_weight",
        "health-score",
        _output(
            "health-score",
            components=[{"metric": "nps", "value": 9, "score": 50, "contribution": 1}],
        ),
    ),
    ("same_bucket", "bucket-change", _output("bucket-change", to_bucket="green")),
    ("previous_score_null", "bucket-change", _output("bucket-change", previous_score=None)),
    ("no_trigger_id", "playbook-trigger", _output("playbook-trigger", trigger_id=DROP)),
    ("context_list", "playbook-trigger", _output("playbook-trigger", context=[1])),
]


@pytest.mark.parametrize(("name", "obj"), [pytest.param(n, o, id=i) for i, n, o in INVALID_OUTPUTS])
def test_invalid_output_is_rejected_by_model_and_schema(name: str, obj: dict[str, Any]) -> None:
    assert not validator("outputs", name).is_valid(obj)
    with pytest.raises(ValidationError):
        OUTPUT_MODELS[name].model_validate(obj)


def test_format_utc() -> None:
    assert format_utc(1_714_555_800_000) == "2024-05-01T09:30:00Z"
    assert format_utc(1_714_555_800_007) == "2024-05-01T09:30:00.007Z"
    hs = HealthScore.model_validate(_output("health-score", as_of=format_utc(1_714_555_800_007)))
    assert hs.as_of.endswith(".007Z")


def test_dlq_header_names() -> None:
    assert DLQ_HEADERS == (
        "vitals.source.topic",
        "vitals.source.partition",
        "vitals.source.offset",
        "vitals.reason",
        "vitals.detail",
    )
    assert DlqHeaders.ALL == DLQ_HEADERS
    assert DlqHeaders.REASON == "vitals.reason"


def test_load_example_rejects_paths() -> None:
    with pytest.raises(ValueError):
        load_example("events", "../json/events/login.schema")
    with pytest.raises(ValueError):
        load_example("secrets", "login")
    with pytest.raises(FileNotFoundError):
        load_example("events", "logout")


def test_public_api_is_exported() -> None:
    for name in schemas.__all__:
        assert hasattr(schemas, name), name
    assert set(get_args(get_args(schemas.Event)[0])) == set(EVENT_MODELS.values())


def test_version_1_outputs_are_still_read() -> None:
    # Topics keep the messages of the previous version after an upgrade.
    v1_score = {
        **orjson.loads(load_example("outputs", "health-score")),
        "schema_version": 1,
        "components": [
            {"metric": "nps", "value": 9, "score": 67.3, "weight": 1, "contribution": 67.3}
        ],
    }
    for field in ("profile", "gates", "pulse"):
        v1_score.pop(field)
    score = parse_health_score(orjson.dumps(v1_score))
    assert (score.profile, score.gates, score.pulse, score.schema_version) == (
        "unknown",
        [],
        None,
        2,
    )
    assert [(c.metric, c.label) for c in score.components] == [("nps", "nps")]
    v1_change = {**orjson.loads(load_example("outputs", "bucket-change")), "schema_version": 1}
    v1_change.pop("gates")
    v1_change["drivers"] = [{"metric": "nps", "before": 1, "after": 2, "contribution_delta": 1}]
    change = parse_bucket_change(orjson.dumps(v1_change))
    assert change.gates == [] and change.drivers[0].label == "nps"
    # The current version reads as is.
    assert parse_health_score(
        load_example("outputs", "health-score")
    ) == HealthScore.model_validate(orjson.loads(load_example("outputs", "health-score")))
