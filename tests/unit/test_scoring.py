"""The pure scoring engine: account state, every metric, scoring pieces, rescoring.

``event``, ``at`` and ``card`` are small builders reused by the scenario and
replay tests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas.events import Event, event_adapter
from schemas.outputs import HealthScore, format_utc
from service.model.account_state import (
    DEDUP_IDS,
    HORIZON_MS,
    ID_DIGEST_BYTES,
    RETAIN_DAYS,
    AccountState,
    ApplyResult,
)
from service.model.metrics_catalog import CATALOG, build_extractor, build_stability
from service.model.scorecard import (
    Buckets,
    Scorecard,
    compile_condition,
    default_scorecard,
    parse_scorecard,
)
from service.model.scoring import (
    Evaluation,
    _plan,
    _utc,
    _validated_health_score,
    _weigh,
    change_id,
    due_ticks,
    evaluate,
    evaluate_condition,
    health_score,
    hysteresis_bucket,
    on_event,
    on_timer,
    rescore,
    score_at,
)
from service.model.windows import DAY_MS

#: 2024-03-04T00:00:00Z, a Monday.
T0 = 1_709_510_400_000
HOUR = 3_600_000
NOW = 1_800_000_000_000  # a fixed computed_at for comparisons
_ids = itertools.count()


def at(day: float, hour: float = 9) -> int:
    """Epoch ms of ``day`` days after T0 at ``hour`` UTC."""
    return T0 + int(day * DAY_MS) + int(hour * HOUR)


def event(type_: str, when: int, account: str = "acme", **fields: Any) -> Event:
    """A validated event; ``event_id`` is unique unless given."""
    data = {
        "event_id": fields.pop("event_id", f"ev-{next(_ids)}"),
        "account_id": account,
        "type": type_,
        "occurred_at": when,
        **fields,
    }
    return event_adapter.validate_python(data)


def state_of(events: Iterable[Event], account: str = "acme") -> AccountState:
    state = AccountState.new(account)
    for e in events:
        state.apply(e)
    return state


def card(yaml_text: str) -> Scorecard:
    return parse_scorecard(textwrap.dedent(yaml_text), "test.yaml")


# A scorecard whose score is exactly the account's seat count (0-100), so a
# test can set the score with an account snapshot.
SEATS_CARD = """
name: seats
version: 1
metrics:
  seats: {normalise: {poor: 0, good: 100}}
groups:
  all: {weight: 1, metrics: {seats: 1}}
buckets: {green: 70, yellow: 45, hysteresis: 3}
missing_data: {min_weight_share: 0}
"""


def seats(n: int, when: int, account: str = "acme") -> Event:
    return event("account", when, account, seats=n)


# ================================================================ state


def test_apply_counts_types_and_tracks_times() -> None:
    state = AccountState.new("acme")
    assert state.apply(event("login", at(1), user_id="u1")) is ApplyResult.APPLIED
    assert state.apply(event("login", at(0), user_id="u2")) is ApplyResult.APPLIED
    assert state.apply(event("kpi", at(2), metric="m", value=3)) is ApplyResult.APPLIED
    assert state.counts == {"login": 2, "kpi": 1}
    assert (state.first_event_at, state.last_event_at) == (at(0), at(2))
    assert state.summary()["counts"] == {"login": 2, "kpi": 1}
    assert state.summary()["last_event_at"] == at(2)


def test_duplicate_event_ids_are_applied_once() -> None:
    state = AccountState.new("acme")
    first = event("login", at(0), user_id="u1", event_id="same")
    again = event("login", at(0), user_id="u1", event_id="same")
    assert state.apply(first) is ApplyResult.APPLIED
    assert state.apply(again) is ApplyResult.DUPLICATE
    assert state.counts == {"login": 1}
    assert state.logins.result(0, 10**6) == 1
    assert state.duplicates == 1


def test_dedup_remembers_the_last_ids_only() -> None:
    state = AccountState.new("acme")
    for i in range(DEDUP_IDS + 1):
        state.apply(event("login", at(0) + i, user_id="u", event_id=f"id-{i}"))
    # id-0 is now older than the last DEDUP_IDS ids: the documented limit.
    assert state.apply(event("login", at(0), user_id="u", event_id="id-0")) is (ApplyResult.APPLIED)
    assert state.apply(event("login", at(0), user_id="u", event_id="id-5")) is (
        ApplyResult.DUPLICATE
    )


def test_events_older_than_the_horizon_are_late_and_not_applied() -> None:
    state = AccountState.new("acme")
    latest = at(100)
    state.apply(event("login", latest, user_id="u1"))
    on_edge = event("login", latest - HORIZON_MS, user_id="u2")
    too_old = event("login", latest - HORIZON_MS - 1, user_id="u3")
    assert state.apply(on_edge) is ApplyResult.APPLIED
    assert state.apply(too_old) is ApplyResult.LATE
    assert state.late == 1
    assert "u3" not in state.users
    assert state.counts == {"login": 2}
    # A late event's id is not remembered: it stays late, never a duplicate.
    assert state.apply(too_old) is ApplyResult.LATE


def test_account_snapshot_fields_keep_the_newest_by_event_time() -> None:
    state = state_of(
        [
            event("account", at(5), seats=10, plan="pro"),
            event("account", at(3), seats=99, segment="smb"),  # older, arrives later
            event("account", at(6), lifecycle_stage="renewal"),
        ]
    )
    assert {k: v for k, (v, _) in state.snapshot.items()} == {
        "seats": 10,
        "plan": "pro",
        "segment": "smb",
        "lifecycle_stage": "renewal",
    }


def test_round_trip_is_exact() -> None:
    state = state_of(_varied_events())
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored.to_dict() == state.to_dict()
    assert restored.summary() == state.summary()


def test_a_format_2_state_keeps_recognising_its_duplicates() -> None:
    from hashlib import blake2b

    state = AccountState.new("acme")
    state.apply(event("login", at(0), user_id="u1", event_id="seen"))
    old = state.to_dict()
    # Format 2 stored whole 8-byte digests.
    old["v"] = 2
    old["ids"] = base64.b64encode(blake2b(b"seen", digest_size=8).digest()).decode()
    restored = AccountState.from_dict(old)
    again = event("login", at(0), user_id="u1", event_id="seen")
    assert restored.apply(again) is ApplyResult.DUPLICATE


def test_positions_survive_the_round_trip() -> None:
    state = state_of(_varied_events())
    state.positions = {"vitals.events.login:3": [17, 19]}
    assert AccountState.from_bytes(state.to_bytes()).positions == state.positions


def test_from_bytes_rejects_garbage() -> None:
    for bad in (b"not json", b"[]", b'{"v": 99, "id": "x"}', b'{"v": 1}'):
        with pytest.raises(ValueError):
            AccountState.from_bytes(bad)


def _varied_events(account: str = "acme") -> list[Event]:
    e = [
        event("account", at(0), account, seats=10, segment="mid", lifecycle_stage="adoption"),
        event("pulse", at(1), account, rating="yellow", reason="new admin"),
        event("milestone", at(1), account, name="users_invited"),
        event("invoice", at(2), account, status="overdue", amount=10.5),
        event("contract", at(2), account, action="upsell", amount=100),
        event("csm_touch", at(3), account, channel="qbr"),
        event("survey", at(3), account, kind="nps", score=9),
        event("survey", at(3), account, kind="csat", score=4),
        event("support_ticket", at(4), account, ticket_id="t1", status="opened", priority="high"),
        event("support_ticket", at(5), account, ticket_id="t1", status="resolved", csat=5),
        event("kpi", at(4), account, metric="newsletters_sent", value=12.5),
    ]
    for d in range(6):
        e.append(event("login", at(d), account, user_id=f"u{d % 3}"))
        e.append(event("feature_use", at(d, 10), account, user_id=f"u{d % 3}", feature="f"))
    return e


EVENT_KINDS = st.sampled_from(
    ["login", "feature_use", "support_ticket", "survey", "kpi", "csm_touch", "pulse", "account"]
)


@st.composite
def random_events(draw: st.DrawFn) -> list[Event]:
    out = []
    for i in range(draw(st.integers(1, 40))):
        kind = draw(EVENT_KINDS)
        when = at(draw(st.integers(0, 200)), draw(st.integers(0, 23)))
        user = f"u{draw(st.integers(0, 5))}"
        fields: dict[str, Any] = {"event_id": f"r{draw(st.integers(0, 30))}"}
        if kind == "login":
            fields["user_id"] = user
        elif kind == "feature_use":
            fields.update(user_id=user, feature=draw(st.sampled_from("abcd")))
        elif kind == "support_ticket":
            fields.update(
                ticket_id=f"t{draw(st.integers(0, 3))}",
                status=draw(st.sampled_from(["opened", "resolved", "reopened", "escalated"])),
                priority=draw(st.sampled_from(["low", "urgent"])),
            )
        elif kind == "survey":
            fields.update(kind="nps", score=draw(st.integers(0, 10)))
        elif kind == "kpi":
            fields.update(metric="newsletters_sent", value=draw(st.integers(0, 50)))
        elif kind == "csm_touch":
            fields["channel"] = "call"
        elif kind == "pulse":
            fields.update(rating=draw(st.sampled_from(["green", "red"])), reason="r")
        else:
            fields["seats"] = draw(st.integers(0, 30))
        out.append(event(kind, when, **fields))
        del i
    return out


@settings(max_examples=60, deadline=None)
@given(events=random_events(), offset=st.integers(0, 120))
def test_round_trip_and_compaction_never_change_a_score(events: list[Event], offset: int) -> None:
    from service.model.scorecard import default_scorecard

    scorecard = default_scorecard()
    state = state_of(events)
    assert state.last_event_at is not None
    as_of = state.last_event_at + offset * DAY_MS
    before = evaluate(state, as_of, scorecard)
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored.to_dict() == state.to_dict()
    assert evaluate(restored, as_of, scorecard) == before
    state.compact(as_of)  # drops what no window at as_of can read
    assert evaluate(state, as_of, scorecard) == before


def test_state_stays_bounded_however_long_it_runs() -> None:
    # Two years, a new user and a new feature every day, tickets and KPIs.
    state = AccountState.new("acme")
    for d in range(730):
        state.apply(event("login", at(d), user_id=f"user-{d}"))
        state.apply(event("feature_use", at(d, 10), user_id=f"user-{d}", feature=f"feat-{d}"))
        state.apply(event("kpi", at(d, 11), metric=f"kpi-{d % 40}", value=d))
        state.apply(event("support_ticket", at(d, 12), ticket_id=f"t{d}", status="opened"))
    assert len(state.users) <= RETAIN_DAYS
    assert len(state.features) <= RETAIN_DAYS
    assert len(state.logins) <= RETAIN_DAYS
    assert len(state.tickets) <= RETAIN_DAYS
    assert len(state.kpis) <= 20
    assert len(state.dedup) == DEDUP_IDS * ID_DIGEST_BYTES
    assert len(state.to_bytes()) < 32_000


def test_an_event_id_matches_only_a_whole_remembered_digest() -> None:
    from service.model.account_state import _holds_id

    assert ID_DIGEST_BYTES == 6
    ids = b"ABCDEF" + b"GHIJKL"
    assert _holds_id(ids, b"GHIJKL") and _holds_id(ids, b"ABCDEF")
    assert not _holds_id(ids, b"DEFGHI"), "straddles two digests"
    assert _holds_id(b"zAAAAA" + b"AAAAAA", b"AAAAAA"), "after a misaligned match"
    assert not _holds_id(b"zAAAAA" + b"Azzzzz", b"AAAAAA")
    assert not _holds_id(b"", b"AAAAAA")


# ================================================================ tickets


def test_ticket_lifecycle_measures_resolution_in_any_arrival_order() -> None:
    opened = event("support_ticket", at(0, 9), ticket_id="t1", status="opened", priority="urgent")
    resolved = event("support_ticket", at(0, 15), ticket_id="t1", status="resolved", csat=2)
    for order in ([opened, resolved], [resolved, opened]):
        state = state_of(order)
        assert state.resolution_hours.result(0, 10**6) == 6.0
        assert not state.tickets["t1"].is_open
        assert state.tickets_opened.result(0, 10**6) == 1
        assert state.csat.result(0, 10**6) == 2.0


def test_reopened_ticket_is_open_again_and_counts_a_second_resolution() -> None:
    state = state_of(
        [
            event("support_ticket", at(0, 0), ticket_id="t", status="opened"),
            event("support_ticket", at(0, 2), ticket_id="t", status="resolved"),
            event("support_ticket", at(1, 0), ticket_id="t", status="reopened"),
        ]
    )
    assert state.tickets["t"].is_open
    state.apply(event("support_ticket", at(1, 4), ticket_id="t", status="resolved"))
    assert state.resolution_hours.result(0, 10**6) == 3.0  # mean of 2 h and 4 h
    assert state.tickets_opened.result(0, 10**6) == 1


# ================================================================ metrics

DAY0 = T0 // DAY_MS

MetricCase = tuple[str, dict[str, Any], Callable[[], list[Event]], int, float | None]

METRIC_CASES: list[MetricCase] = [
    # (source, params, events, as_of, expected value)
    (
        "active_seat_ratio",
        {"days": 30},
        lambda: [
            seats(10, at(0)),
            *[event("login", at(d), user_id=f"u{d}") for d in range(1, 5)],
            event("login", at(-40), user_id="old"),
        ],
        at(10),
        0.4,
    ),
    ("active_seat_ratio", {}, lambda: [event("login", at(0), user_id="u")], at(1), None),
    (
        "active_seat_ratio",
        {},
        lambda: [seats(0, at(0)), event("login", at(0), user_id="u")],
        at(1),
        None,
    ),
    (
        "active_users",
        {"days": 7},
        lambda: [event("login", at(d), user_id=f"u{d}") for d in (0, 5, 9)],
        at(10),
        2.0,
    ),
    (
        "logins_per_active_user",
        {"days": 7, "base_days": 30},
        lambda: [
            *[event("login", at(d), user_id="u1") for d in (8, 9, 10)],
            event("login", at(1), user_id="u2"),
        ],
        at(10),
        1.5,
    ),
    (
        "logins_per_active_user",
        {},
        lambda: [event("login", at(0), user_id="u1")],
        at(60),
        0.0,
    ),
    (
        "login_consistency",
        {"days": 10},
        lambda: [event("login", at(d), user_id="u") for d in (0, 2, 4)],
        at(4),
        0.6,
    ),
    (
        "login_consistency",
        {"days": 10},
        lambda: [seats(5, at(-50)), *[event("login", at(d), user_id="u") for d in range(10)]],
        at(9),
        1.0,
    ),
    (
        "login_consistency",
        {"days": 10},
        lambda: [seats(5, at(-50)), *[event("login", at(d), user_id="u") for d in range(10)]],
        at(19),
        0.0,
    ),
    (
        "login_consistency",
        {"days": 10},
        lambda: [seats(5, at(-50)), *[event("login", at(d), user_id="u") for d in range(10)]],
        at(10, 0.5),  # the new day has no login yet: it does not count against
        1.0,
    ),
    (
        "days_since_last_activity",
        {},
        lambda: [event("login", at(3), user_id="u")],
        at(10, 0.5),
        7.0,
    ),
    ("days_since_last_activity", {}, lambda: [seats(3, at(2))], at(5), 3.0),
    (
        "silence_ratio",
        {"days": 90},
        lambda: [event("login", at(d), user_id="u") for d in range(0, 28, 7)],  # weekly
        at(35),
        14 / 5.5,  # 14 silent days / usual gap (days 0-21: 22 days, 4 active)
    ),
    (
        "silence_ratio",
        {"days": 90},
        lambda: [seats(1, at(-1)), event("login", at(0), user_id="u")],
        at(200),  # the activity is older than the retained horizon
        None,
    ),
    (
        "feature_breadth",
        {"days": 30},
        lambda: [
            event("feature_use", at(0), user_id="u", feature="a"),
            event("feature_use", at(1), user_id="u", feature="b", count=5),
            event("feature_use", at(-40), user_id="u", feature="c"),
        ],
        at(10),
        2.0,
    ),
    (
        "key_feature_adoption",
        {"features": ["a", "b"], "days": 30},
        lambda: [
            event("feature_use", at(0), user_id="u1", feature="a"),
            event("feature_use", at(0), user_id="u2", feature="c"),
            event("login", at(0), user_id="u3"),
            event("feature_use", at(-40), user_id="u4", feature="b"),
            event("login", at(5), user_id="u4"),
        ],
        at(10),
        0.25,
    ),
    (
        "key_feature_adoption",
        {"features": ["a"]},
        lambda: [event("feature_use", at(0), user_id="u1", feature="a")],
        at(45),
        0.0,
    ),
    (
        "usage_trend",
        {"days": 7},
        lambda: [
            seats(1, at(-20)),
            *[event("login", at(d % 7, h), user_id="u") for d in range(7) for h in (1, 2)],
            *[event("login", at(7 + d % 7), user_id="u") for d in range(7)],
        ],
        at(14, 0),  # complete days 7-13 versus 0-6
        -0.5,
    ),
    (
        "usage_trend",
        {"days": 7, "min_events": 15},
        lambda: [
            seats(1, at(-20)),
            *[event("login", at(d % 7, h), user_id="u") for d in range(7) for h in (1, 2)],
        ],
        at(14, 0),
        None,  # 14 events in the earlier week: too few to trend
    ),
    (
        "usage_trend",
        {"days": 7},
        lambda: [event("login", at(d), user_id="u") for d in range(5, 14)],
        at(13),
        None,
    ),
    ("usage_trend", {"days": 7}, lambda: [seats(1, at(-20))], at(13), None),
    (
        "open_tickets",
        {"priorities": ["urgent"]},
        lambda: [
            event("support_ticket", at(0), ticket_id="t1", status="opened", priority="urgent"),
            event("support_ticket", at(0), ticket_id="t2", status="opened", priority="urgent"),
            event("support_ticket", at(1), ticket_id="t2", status="resolved", priority="urgent"),
            event("support_ticket", at(0), ticket_id="t3", status="opened", priority="high"),
        ],
        at(2),
        1.0,
    ),
    (
        "open_tickets",
        {},
        lambda: [
            event("support_ticket", at(0), ticket_id="t1", status="opened", priority="urgent"),
            event("support_ticket", at(0), ticket_id="t3", status="escalated", priority="low"),
        ],
        at(2),
        2.0,
    ),
    (
        "tickets_per_seat",
        {"days": 30},
        lambda: [
            seats(20, at(0)),
            *[event("support_ticket", at(1), ticket_id=f"t{i}", status="opened") for i in range(4)],
        ],
        at(2),
        0.2,
    ),
    (
        "resolution_hours",
        {"days": 90},
        lambda: [
            event("support_ticket", at(0, 9), ticket_id="t1", status="opened"),
            event("support_ticket", at(0, 15), ticket_id="t1", status="resolved"),
            event("support_ticket", at(1, 0), ticket_id="t2", status="opened"),
            event("support_ticket", at(2, 0), ticket_id="t2", status="resolved"),
        ],
        at(3),
        15.0,
    ),
    ("resolution_hours", {}, lambda: [seats(1, at(0))], at(3), None),
    (
        "escalations",
        {"days": 90},
        lambda: [
            event("support_ticket", at(0), ticket_id="t1", status="escalated"),
            event("support_ticket", at(1), ticket_id="t1", status="escalated"),
        ],
        at(3),
        2.0,
    ),
    (
        "csat",
        {"days": 90},
        lambda: [
            event("support_ticket", at(0), ticket_id="t1", status="resolved", csat=4),
            event("survey", at(1), kind="csat", score=2),
        ],
        at(3),
        3.0,
    ),
    ("csat", {}, lambda: [seats(1, at(0))], at(3), None),
    (
        "nps",
        {"days": 90},
        lambda: [event("survey", at(0), kind="nps", score=s) for s in (10, 9, 7, 3)],
        at(3),
        25.0,
    ),
    (
        "csm_touches",
        {"days": 30},
        lambda: [event("csm_touch", at(d), channel="call") for d in (0, 1, 2)],
        at(3),
        3.0,
    ),
    (
        "days_since_csm_touch",
        {},
        lambda: [event("csm_touch", at(2), channel="email")],
        at(9),
        7.0,
    ),
    # Never touched: days since the first event (not better than touched long ago).
    ("days_since_csm_touch", {}, lambda: [seats(1, at(0))], at(9), 9.0),
    (
        "csm_pulse",
        {},
        lambda: [event("pulse", at(0), rating="yellow", reason="r", expires_at=at(10))],
        at(9),
        0.5,
    ),
    (
        "csm_pulse",
        {},
        lambda: [event("pulse", at(0), rating="yellow", reason="r", expires_at=at(10))],
        at(10),
        None,
    ),
    (
        "csm_pulse",
        {},
        lambda: [
            event("pulse", at(5), rating="green", reason="good"),
            event("pulse", at(3), rating="red", reason="older, arrives later"),
        ],
        at(6),
        1.0,
    ),
    (
        "milestones_reached",
        {"names": ["a", "b", "c", "d"]},
        lambda: [event("milestone", at(0), name="a"), event("milestone", at(1), name="c")],
        at(2),
        0.5,
    ),
    (
        "tenure_days",
        {},
        lambda: [event("account", at(0), customer_since=at(-365))],
        at(0),
        365.0,
    ),
    ("tenure_days", {}, lambda: [seats(1, at(0))], at(0), None),
    (
        "days_to_renewal",
        {},
        lambda: [event("account", at(0), renewal_at=at(30))],
        at(10),
        20.0,
    ),
    ("seats", {}, lambda: [seats(25, at(0))], at(0), 25.0),
    ("arr", {}, lambda: [event("account", at(0), arr=1200.5)], at(0), 1200.5),
    (
        "kpi_total",
        {"metric": "m", "days": 7},
        lambda: [
            event("kpi", at(5), metric="m", value=10),
            event("kpi", at(6), metric="m", value=10),
            event("kpi", at(-10), metric="m", value=100),
        ],
        at(6),
        20.0,
    ),
    ("kpi_total", {"metric": "m"}, lambda: [seats(1, at(0))], at(0), None),
    (
        "kpi_trend",
        {"metric": "m", "days": 7},
        lambda: [
            seats(1, at(-20)),
            event("kpi", at(2), metric="m", value=100),
            event("kpi", at(9), metric="m", value=100),
            event("kpi", at(10), metric="m", value=50),
        ],
        at(13),
        0.5,
    ),
    ("kpi_trend", {"metric": "nope"}, lambda: [seats(1, at(-40))], at(0), None),
    (
        "contract_events",
        {"actions": ["downgrade", "churn_notice"], "days": 90},
        lambda: [
            event("contract", at(0), action="downgrade"),
            event("contract", at(1), action="upsell"),
            event("contract", at(2), action="churn_notice"),
        ],
        at(3),
        2.0,
    ),
    (
        "invoice_overdue",
        {},
        lambda: [
            event("invoice", at(0), status="paid"),
            event("invoice", at(1), status="overdue"),
        ],
        at(2),
        1.0,
    ),
    (
        "invoice_overdue",
        {},
        lambda: [
            event("invoice", at(1), status="paid"),
            event("invoice", at(0), status="overdue"),  # older, arrives later
        ],
        at(2),
        0.0,
    ),
    ("invoice_overdue", {}, lambda: [seats(1, at(0))], at(2), None),
]


@pytest.mark.parametrize(
    ("source", "params", "events", "as_of", "expected"),
    METRIC_CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(METRIC_CASES)],
)
def test_metric(
    source: str,
    params: dict[str, Any],
    events: Callable[[], list[Event]],
    as_of: int,
    expected: float | None,
) -> None:
    value = build_extractor(source, params)(state_of(events()), as_of)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_every_catalogue_source_has_a_case() -> None:
    assert {case[0] for case in METRIC_CASES} == set(CATALOG)


def test_silence_lowers_usage_metrics_as_the_as_of_time_moves() -> None:
    state = state_of(
        [seats(10, at(-1)), *[event("login", at(d), user_id=f"u{d % 8}") for d in range(30)]]
    )
    ratio = build_extractor("active_seat_ratio", {"days": 30})
    since = build_extractor("days_since_last_activity", {})
    values = [(ratio(state, at(29 + k)), since(state, at(29 + k))) for k in (0, 10, 25, 40)]
    assert [r for r, _ in values] == [0.8, 0.8, 0.5, 0.0]  # days 25-29: users u1-u5
    assert [s for _, s in values] == [0.0, 10.0, 25.0, 40.0]


# ================================================================ pieces


@pytest.mark.parametrize(
    ("previous", "score", "expected"),
    [
        (None, 70, "green"),
        (None, 69.9, "yellow"),
        (None, 44.9, "red"),
        ("yellow", 72.9, "yellow"),
        ("yellow", 73, "green"),
        ("green", 67.1, "green"),
        ("green", 66.9, "yellow"),
        ("green", 42, "yellow"),
        ("green", 41.9, "red"),
        ("red", 47.9, "red"),
        ("red", 48, "yellow"),
        ("red", 73, "green"),
        ("yellow", 42, "yellow"),
        ("yellow", 41.9, "red"),
    ],
)
def test_hysteresis_bucket(previous: str | None, score: float, expected: str) -> None:
    buckets = Buckets(green=70, yellow=45, hysteresis=3)
    assert hysteresis_bucket(score, previous, buckets) == expected


def test_a_score_wobbling_around_a_threshold_does_not_flap() -> None:
    scorecard = card(SEATS_CARD)
    state = AccountState.new("acme")
    buckets, changes = [], []
    for i, n in enumerate([75, 69, 71, 68, 72, 67.5, 70, 68, 71, 69]):
        state.apply(event("account", at(i), seats=int(n)))
        score, change = rescore(state, at(i), scorecard, now_ms=NOW)
        buckets.append(score.bucket)
        if change is not None:
            changes.append(change)
    assert buckets == ["green"] * 10
    assert changes == []
    # A real move (beyond the margin) does change the bucket, once.
    state.apply(seats(60, at(20)))
    _, change = rescore(state, at(20), scorecard, now_ms=NOW)
    assert change is not None and (change.from_bucket, change.to_bucket) == ("green", "yellow")


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ({"metric": "a", "op": "<", "value": 1}, {"a": 0.5}, True),
        ({"metric": "a", "op": "<=", "value": 1}, {"a": 1.0}, True),
        ({"metric": "a", "op": ">", "value": 1}, {"a": 1.0}, False),
        ({"metric": "a", "op": ">=", "value": 1}, {"a": 1.0}, True),
        ({"metric": "a", "op": "==", "value": 0}, {"a": 0.0}, True),
        ({"metric": "a", "op": "!=", "value": 0}, {"a": 0.0}, False),
        ({"metric": "a", "op": "<", "value": 1}, {"a": None}, None),
        (
            {
                "all": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": 1.0, "b": 1.0},
            True,
        ),
        (
            {
                "all": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": -1.0, "b": None},
            False,
        ),
        (
            {
                "all": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": 1.0, "b": None},
            None,
        ),
        (
            {
                "any": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": 1.0, "b": None},
            True,
        ),
        (
            {
                "any": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": -1.0, "b": None},
            None,
        ),
        (
            {
                "any": [
                    {"metric": "a", "op": ">", "value": 0},
                    {"metric": "b", "op": ">", "value": 0},
                ]
            },
            {"a": -1.0, "b": -1.0},
            False,
        ),
        ({"not": {"metric": "a", "op": ">", "value": 0}}, {"a": 1.0}, False),
        ({"not": {"metric": "a", "op": ">", "value": 0}}, {"a": None}, None),
    ],
)
def test_condition_logic_is_three_valued(
    condition: dict[str, Any], values: dict[str, float | None], expected: bool | None
) -> None:
    scorecard = card(
        f"""
        name: c
        version: 1
        metrics:
          a: {{source: seats, normalise: {{poor: 0, good: 1}}}}
          b: {{source: arr, normalise: {{poor: 0, good: 1}}}}
        groups: {{g: {{weight: 1, metrics: {{a: 1}}}}}}
        buckets: {{green: 70, yellow: 45}}
        gates: [{{name: g, when: {condition!r}, cap: yellow}}]
        """.replace("'", '"')
    )
    assert evaluate_condition(scorecard.gates[0].condition, values) is expected


def test_change_id_is_a_truncated_sha256() -> None:
    expected = hashlib.sha256(b"acme|green|yellow|1714555800000").hexdigest()[:32]
    assert change_id("acme", "green", "yellow", 1_714_555_800_000) == expected


# ================================================================ gates

GATED_CARD = """
name: gated
version: 1
metrics:
  seats: {normalise: {poor: 0, good: 100}}
  pulse: {source: csm_pulse, normalise: {poor: 0, good: 1}}
groups:
  all: {weight: 1, metrics: {seats: 1}}
buckets: {green: 70, yellow: 45, hysteresis: 0}
missing_data: {min_weight_share: 0}
gates:
  - name: red_pulse
    when: {metric: pulse, op: "==", value: 0}
    cap: yellow
  - name: needs_a_pulse
    unless: {metric: pulse, op: ">=", value: 0}
    cap: red
    on_unknown: skip
  - name: small
    when: {metric: seats, op: "<", value: 80}
    cap: yellow
"""


@pytest.mark.parametrize(
    ("events", "bucket", "fired"),
    [
        ([seats(90, at(0))], "green", []),
        ([seats(75, at(0))], "yellow", ["small"]),
        (
            [seats(90, at(0)), event("pulse", at(0), rating="red", reason="r")],
            "yellow",
            ["red_pulse"],
        ),
        ([seats(90, at(0)), event("pulse", at(0), rating="green", reason="r")], "green", []),
        (
            [seats(40, at(0)), event("pulse", at(0), rating="red", reason="r")],
            "red",
            ["red_pulse", "small"],
        ),
    ],
)
def test_gates_cap_the_bucket_not_the_score(
    events: list[Event], bucket: str, fired: list[str]
) -> None:
    state = state_of(events)
    ev = evaluate(state, at(1), card(GATED_CARD))
    assert ev.bucket == bucket
    assert list(ev.gates_fired) == fired
    assert ev.score == state.snapshot["seats"][0]


def test_unless_gate_fires_on_unknown_by_default() -> None:
    scorecard = card(GATED_CARD.replace("    on_unknown: skip\n", ""))
    ev = evaluate(state_of([seats(90, at(0))]), at(1), scorecard)
    assert ev.bucket == "red" and ev.gates_fired == ("needs_a_pulse",)


# ================================================================ missing data

MISSING_CARD = """
name: missing
version: 1
metrics:
  seats: {normalise: {poor: 0, good: 100}}
  arr: {normalise: {poor: 0, good: 100}}
  tenure: {source: tenure_days, normalise: {poor: 0, good: 100}}
groups:
  main: {weight: 3, metrics: {seats: 1, arr: 1}}
  other: {weight: 1, metrics: {tenure: 1}}
buckets: {green: 70, yellow: 45, hysteresis: 0}
missing_data: {min_weight_share: 0.5, on_low_confidence: POLICY, cap_bucket: yellow}
"""


def _missing_card(policy: str = "flag") -> Scorecard:
    return card(MISSING_CARD.replace("POLICY", policy))


def test_weights_of_missing_metrics_are_redistributed() -> None:
    complete = state_of([event("account", at(0), seats=80, arr=40, customer_since=at(-20))])
    ev = evaluate(complete, at(0), _missing_card())
    weights = {c.metric: round(c.weight, 4) for c in ev.components}
    assert weights == {"seats": 0.375, "arr": 0.375, "tenure": 0.25}
    assert ev.score == pytest.approx(0.375 * 80 + 0.375 * 40 + 0.25 * 20)
    assert ev.missing == () and not ev.low_confidence

    no_arr = state_of([event("account", at(0), seats=80, customer_since=at(-20))])
    ev = evaluate(no_arr, at(0), _missing_card())
    assert {c.metric: round(c.weight, 4) for c in ev.components} == {
        "seats": 0.75,
        "arr": 0.0,
        "tenure": 0.25,
    }
    assert ev.missing == ("arr",)
    assert ev.weight_share == 0.625 and not ev.low_confidence

    only_seats = state_of([seats(80, at(0))])
    ev = evaluate(only_seats, at(0), _missing_card())
    assert ev.score == 80.0  # the whole weight moves to the one known metric
    assert ev.missing == ("arr", "tenure")
    assert ev.weight_share == 0.375 and ev.low_confidence
    assert sum(c.weight for c in ev.components) == pytest.approx(1.0)
    assert sum(c.contribution for c in ev.components) == pytest.approx(ev.score)


@pytest.mark.parametrize(
    ("policy", "previous", "expected"),
    [
        ("flag", None, "green"),  # computed, only flagged
        ("cap", None, "yellow"),  # at most cap_bucket
        ("hold", None, "green"),  # first score: computed and flagged
        ("hold", "red", "red"),  # later: the previous bucket is kept
    ],
)
def test_low_confidence_policy(policy: str, previous: str | None, expected: str) -> None:
    state = state_of([seats(90, at(0))])
    state.bucket = previous
    ev = evaluate(state, at(0), _missing_card(policy))
    assert ev.low_confidence and ev.score == 90.0
    assert ev.bucket == expected


# ================================================================ profiles

PROFILE_CARD = """
name: staged
version: 1
metrics:
  seats: {normalise: {poor: 0, good: 100}}
  arr: {normalise: {poor: 0, good: 100}}
groups:
  all: {weight: 1, metrics: {seats: 1, arr: 1}}
buckets: {green: 70, yellow: 45}
missing_data: {min_weight_share: 0}
profiles:
  - name: onboarding
    when: {stages: [onboarding]}
    groups: {all: {weight: 1, metrics: {arr: 1}}}
    buckets: {green: 30, yellow: 10}
  - name: smb
    when: {segments: [smb]}
    normalise: {seats: {poor: 0, good: 10}}
  - name: enterprise_renewal
    when: {stages: [renewal], segments: [enterprise]}
    gates: [{name: renewal_watch, when: {metric: seats, op: ">=", value: 0}, cap: yellow}]
"""


@pytest.mark.parametrize(
    ("snapshot", "profile", "stage", "score", "bucket"),
    [
        ({}, "default", "unknown", 30.0, "red"),
        ({"lifecycle_stage": "onboarding"}, "onboarding", "onboarding", 40.0, "green"),
        (
            {"lifecycle_stage": "onboarding", "segment": "smb"},
            "onboarding",
            "onboarding",
            40.0,
            "green",
        ),
        ({"segment": "smb"}, "smb", "unknown", 70.0, "green"),
        (
            {"lifecycle_stage": "renewal", "segment": "enterprise"},
            "enterprise_renewal",
            "renewal",
            30.0,
            "red",
        ),
        ({"lifecycle_stage": "renewal", "segment": "mid"}, "default", "renewal", 30.0, "red"),
    ],
)
def test_profiles_by_stage_and_segment(
    snapshot: dict[str, str], profile: str, stage: str, score: float, bucket: str
) -> None:
    state = state_of([event("account", at(0), seats=20, arr=40, **snapshot)])
    ev = evaluate(state, at(0), card(PROFILE_CARD))
    assert (ev.profile, ev.stage, ev.score, ev.bucket) == (profile, stage, score, bucket)


def test_profile_gates_are_merged_with_the_defaults_by_name() -> None:
    scorecard = card(
        PROFILE_CARD + "gates: [{name: base, when: {metric: seats, op: '<', value: 0}, cap: red}]"
    )
    names = {p.name: [g.name for g in p.gates] for p in scorecard.resolved_profiles}
    assert names == {
        "onboarding": ["base"],
        "smb": ["base"],
        "enterprise_renewal": ["base", "renewal_watch"],
        "default": ["base"],
    }
    # A profile gate of the same name replaces the default's in place;
    # drop_gates removes one.
    replaced = card(
        PROFILE_CARD.replace(
            "name: smb\n",
            "name: smb\n    gates: [{name: base, when: {metric: seats, op: '<', value: 5},"
            " cap: yellow}]\n",
        ).replace("name: onboarding\n", "name: onboarding\n    drop_gates: [base]\n")
        + "gates: [{name: base, when: {metric: seats, op: '<', value: 0}, cap: red}]"
    )
    by_name = {p.name: p for p in replaced.resolved_profiles}
    assert [(g.name, g.cap) for g in by_name["smb"].gates] == [("base", "yellow")]
    assert by_name["onboarding"].gates == ()


# ================================================================ the domain rule

# "Healthy at the adoption stage means more than 80% of seats active AND at
# least 50% of users use key feature A or B or C AND the KPI newsletters_sent
# is increasing"; not healthy caps at yellow.
RULE_CARD = """
name: mailboom
version: 2024.1
metrics:
  active_seat_ratio_30d:
    source: active_seat_ratio
    params: {days: 30}
    normalise: {poor: 0.2, good: 0.8}
  key_feature_adoption_30d:
    source: key_feature_adoption
    params: {features: [contacts_import, contacts_export, newsletter_create]}
    normalise: {poor: 0.1, good: 0.5}
  uses_import:
    source: key_feature_adoption
    params: {features: [contacts_import]}
    normalise: {poor: 0, good: 1}
  uses_export:
    source: key_feature_adoption
    params: {features: [contacts_export]}
    normalise: {poor: 0, good: 1}
  uses_newsletters:
    source: key_feature_adoption
    params: {features: [newsletter_create]}
    normalise: {poor: 0, good: 1}
  newsletters_trend_14d:
    source: kpi_trend
    params: {metric: newsletters_sent, days: 14}
    normalise: {poor: -0.5, good: 0.1}
groups:
  usage:
    weight: 1
    metrics: {active_seat_ratio_30d: 1, key_feature_adoption_30d: 1, newsletters_trend_14d: 1}
buckets: {green: 60, yellow: 30, hysteresis: 0}
missing_data: {min_weight_share: 0}
profiles:
  - name: adoption
    when: {stages: [adoption]}
    gates:
      - name: healthy_adoption
        reason: healthy at adoption needs >80% seats active, >=50% on a key feature, KPI rising
        unless:
          all:
            - {metric: active_seat_ratio_30d, op: ">", value: 0.8}
            - {metric: key_feature_adoption_30d, op: ">=", value: 0.5}
            - {metric: newsletters_trend_14d, op: ">", value: 0}
        cap: yellow
      - name: healthy_adoption_per_feature
        reason: the same rule, "A or B or C" read as any single key feature used by half the users
        unless:
          all:
            - {metric: active_seat_ratio_30d, op: ">", value: 0.8}
            - any:
                - {metric: uses_import, op: ">=", value: 0.5}
                - {metric: uses_export, op: ">=", value: 0.5}
                - {metric: uses_newsletters, op: ">=", value: 0.5}
            - {metric: newsletters_trend_14d, op: ">", value: 0}
        cap: yellow
"""


def _adoption_account(
    active: int, key_users: int, kpi: tuple[float, float] | None, stage: str = "adoption"
) -> AccountState:
    events = [event("account", at(-40), seats=10, lifecycle_stage=stage)]
    for u in range(active):
        events.append(event("login", at(20), user_id=f"u{u}"))
        feature = "newsletter_create" if u < key_users else "templates"
        events.append(event("feature_use", at(21), user_id=f"u{u}", feature=feature))
    if kpi is not None:
        events.append(event("kpi", at(10), metric="newsletters_sent", value=kpi[0]))
        events.append(event("kpi", at(25), metric="newsletters_sent", value=kpi[1]))
    return state_of(events)


@pytest.mark.parametrize(
    ("active", "key_users", "kpi", "stage", "bucket", "fired"),
    [
        (9, 5, (100, 120), "adoption", "green", ()),  # all three hold
        (
            8,
            5,
            (100, 120),
            "adoption",
            "yellow",
            ("healthy_adoption", "healthy_adoption_per_feature"),
        ),  # 80% is not "more than 80%"
        (
            9,
            4,
            (100, 120),
            "adoption",
            "yellow",
            ("healthy_adoption", "healthy_adoption_per_feature"),
        ),  # 44% on key features
        (
            9,
            5,
            (100, 90),
            "adoption",
            "yellow",
            ("healthy_adoption", "healthy_adoption_per_feature"),
        ),  # KPI falling
        (
            9,
            5,
            None,
            "adoption",
            "yellow",
            ("healthy_adoption", "healthy_adoption_per_feature"),
        ),  # KPI unknown: not shown healthy
        (9, 4, (100, 90), "maturity", "green", ()),  # the rule belongs to the adoption stage
    ],
)
def test_the_adoption_rule(
    active: int,
    key_users: int,
    kpi: tuple[float, float] | None,
    stage: str,
    bucket: str,
    fired: tuple[str, ...],
) -> None:
    state = _adoption_account(active, key_users, kpi, stage)
    ev = evaluate(state, at(27), card(RULE_CARD))
    assert ev.score >= 60  # green by score: the rule alone decides
    assert (ev.bucket, ev.gates_fired) == (bucket, fired)


# ================================================================ rescore


def test_first_score_is_not_a_change_and_later_changes_name_their_drivers() -> None:
    scorecard = _missing_card("flag")
    state = state_of([event("account", at(0), seats=90, arr=90, customer_since=at(-200))])
    first, change = rescore(state, at(0), scorecard, now_ms=NOW)
    assert change is None and first.bucket == "green"
    state.apply(event("account", at(1), arr=10))
    state.apply(event("account", at(1), seats=80))
    score, change = rescore(state, at(1), scorecard, now_ms=NOW)
    assert change is not None
    assert (change.from_bucket, change.to_bucket) == ("green", "yellow")
    assert change.previous_score == first.score and change.score == score.score
    assert change.change_id == change_id("acme", "green", "yellow", at(1))
    assert [d.metric for d in change.drivers] == ["arr", "seats"]
    assert (change.drivers[0].before, change.drivers[0].after) == (90.0, 10.0)
    assert change.drivers[0].contribution_delta == pytest.approx(-30.0)
    assert change.as_of == score.as_of == "2024-03-05T09:00:00Z"


def test_a_capping_gate_names_its_metric_first() -> None:
    scorecard = card(GATED_CARD)
    state = state_of([seats(95, at(0)), event("pulse", at(0), rating="green", reason="ok")])
    rescore(state, at(0), scorecard)
    state.apply(event("pulse", at(1), rating="red", reason="champion left"))
    _, change = rescore(state, at(1), scorecard)
    assert change is not None and change.to_bucket == "yellow"
    assert change.drivers[0].metric == "pulse"
    assert (change.drivers[0].before, change.drivers[0].after) == (1.0, 0.0)


def test_trend_compares_with_the_score_7_and_30_days_earlier() -> None:
    scorecard = card(SEATS_CARD)
    state = AccountState.new("acme")
    for d in range(31):
        state.apply(seats(50 + d, at(d)))
        score, _ = rescore(state, at(d), scorecard)
    assert score.score == 80.0
    assert (score.trend.delta_7d, score.trend.delta_30d) == (7.0, 30.0)
    young = state_of([seats(50, at(0))])
    score, _ = rescore(young, at(0), scorecard)
    assert (score.trend.delta_7d, score.trend.delta_30d) == (None, None)


def test_rescore_never_goes_back_in_time() -> None:
    scorecard = card(SEATS_CARD)
    state = state_of([seats(80, at(5))])
    rescore(state, at(5), scorecard)
    score, _ = rescore(state, at(1), scorecard)
    assert score.as_of == "2024-03-09T09:00:00Z" and state.scored_at == at(5)


def test_due_ticks_are_interval_multiples_after_the_last_rescore() -> None:
    scorecard = card(SEATS_CARD)
    state = state_of([seats(80, at(0, 9.5))])
    assert list(due_ticks(state, at(1), scorecard)) == []  # never scored: no ticks
    rescore(state, at(0, 9.5), scorecard)
    assert list(due_ticks(state, at(0, 12), scorecard)) == [at(0, 10), at(0, 11), at(0, 12)]


def test_score_at_does_not_touch_the_state() -> None:
    scorecard = card(SEATS_CARD)
    state = state_of([seats(80, at(0))])
    rescore(state, at(0), scorecard)
    before = state.to_dict()
    assert score_at(state, at(3), scorecard).as_of == "2024-03-07T09:00:00Z"
    assert state.to_dict() == before


def test_cached_ticks_equal_recomputation_from_a_restored_state() -> None:
    # Ticks within a day reuse the last evaluation; a state restored from
    # bytes (no cache) must give identical messages.
    from service.model.scorecard import default_scorecard

    scorecard = default_scorecard()
    events = _varied_events()
    state = AccountState.new("acme")
    for e in events:
        on_event(state, e, scorecard)
    for tick in range(at(6), at(9), HOUR):
        cold = AccountState.from_bytes(state.to_bytes())
        warm_score, warm_change = rescore(state, tick, scorecard, now_ms=NOW)
        cold_score, cold_change = rescore(cold, tick, scorecard, now_ms=NOW)
        assert warm_score == cold_score and warm_change == cold_change
        assert state.to_dict() == cold.to_dict()


def test_health_score_message_shape() -> None:
    from service.model.scorecard import default_scorecard

    state = state_of(_varied_events())
    score, _ = rescore(state, at(6), default_scorecard(), now_ms=NOW)
    assert score.scorecard.name == "default" and score.scorecard.version == "2"
    assert score.stage == "adoption"
    assert score.computed_at == "2027-01-15T08:00:00Z"
    present = [c for c in score.components if c.metric not in score.missing]
    assert sum(c.weight for c in present) == pytest.approx(1.0, abs=1e-3)
    assert sum(c.contribution for c in score.components) == pytest.approx(score.score, abs=0.1)
    assert all(
        c.weight == 0 and c.value is None for c in score.components if c.metric in score.missing
    )


# ================================================================ the fast paths
#
# evaluate() reuses metric values between calls (see service/model/scoring.py) and
# health_score() assembles the message without re-validating it. These tests
# pin both to their reference definitions.

HEALTH_SCORE_SCHEMA = Draft202012Validator(
    orjson.loads(
        (Path(__file__).parents[2] / "schemas/json/outputs/health-score.schema.json").read_bytes()
    )
)


def _fields(ev: Evaluation) -> tuple[Any, ...]:
    # Every field, values in order, floats compared bit for bit through repr.
    return (repr(ev), list(ev.values.items()))


@pytest.mark.parametrize("name", ["default", "missing", "gated", "rule"])
@given(known=st.integers(0, 2**40))
@settings(max_examples=40, deadline=None)
def test_plan_weights_match_weigh(name: str, known: int) -> None:
    scorecard = {
        "default": default_scorecard(),
        "missing": _missing_card("flag"),
        "gated": card(GATED_CARD),
        "rule": card(RULE_CARD),
    }[name]
    for profile in scorecard.resolved_profiles:
        plan = _plan(profile)
        values: list[float | None] = [None] * len(profile.metrics)
        mask = 0
        for slot, i in enumerate(plan.weighted):
            if known >> slot & 1:
                values[i] = (known >> (slot + 3) & 7) / 7  # some value in 0..1
                mask |= 1 << slot
        values_by_metric = dict(zip(profile.metrics, values, strict=True))
        components, missing, share, total = _weigh(profile, values_by_metric)
        effective, plan_share, plan_missing = plan.weights(mask)
        assert plan.components(values, effective) == list(components)
        assert [repr(c) for c in plan.components(values, effective)] == [
            repr(c) for c in components
        ]
        assert (plan_share, plan_missing) == (share, tuple(missing))
        running = 0.0
        for component in plan.components(values, effective):
            running += component.contribution
        assert repr(running) == repr(total)


CONDITION = st.recursive(
    st.builds(
        lambda metric, op, value: {"metric": metric, "op": op, "value": value},
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
        st.sampled_from([0, 0.5, 1]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"all": parts}),
        st.lists(inner, min_size=1, max_size=3).map(lambda parts: {"any": parts}),
        inner.map(lambda part: {"not": part}),
    ),
    max_leaves=6,
)


@given(
    condition=CONDITION,
    values=st.fixed_dictionaries(
        {m: st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0])) for m in "abc"}
    ),
)
@settings(max_examples=200, deadline=None)
def test_compiled_conditions_agree_with_evaluate_condition(
    condition: dict[str, Any], values: dict[str, float | None]
) -> None:
    scorecard = card(
        f"""
        name: c
        version: 1
        metrics:
          a: {{source: seats, normalise: {{poor: 0, good: 1}}}}
          b: {{source: arr, normalise: {{poor: 0, good: 1}}}}
          c: {{source: tenure_days, normalise: {{poor: 0, good: 1}}}}
        groups: {{g: {{weight: 1, metrics: {{a: 1}}}}}}
        buckets: {{green: 70, yellow: 45}}
        gates: [{{name: g, when: {orjson.dumps(condition).decode()}, cap: yellow}}]
        """
    )
    cond = scorecard.gates[0].condition
    assert compile_condition(cond)(values) is evaluate_condition(cond, values)


def _stream_states(events: list[Event], scorecard: Scorecard) -> AccountState:
    state = AccountState.new("acme")
    watermark: int | None = None
    for e in sorted(events, key=lambda e: e.occurred_at):
        on_event(state, e, scorecard, watermark=watermark)
        watermark = e.occurred_at if watermark is None else max(watermark, e.occurred_at)
    return state


@settings(max_examples=60, deadline=None)
@given(
    events=random_events(),
    steps=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 23), st.booleans()), min_size=1, max_size=25
    ),
)
def test_cached_evaluations_equal_fresh_ones(
    events: list[Event], steps: list[tuple[int, int, bool]]
) -> None:
    # However the values cached in a state were reached (events, ticks,
    # same-day and later-day evaluations, compaction), evaluating it gives
    # what evaluating a copy without any cache gives.
    scorecard = default_scorecard()
    state = _stream_states(events, scorecard)
    assert state.scored_at is not None
    now = state.scored_at
    for days, hour, tick in steps:
        now = (now // DAY_MS + days) * DAY_MS + hour * HOUR
        if tick:
            on_timer(state, now, scorecard)
        fresh = AccountState.from_bytes(state.to_bytes())
        assert _fields(evaluate(state, now, scorecard)) == _fields(evaluate(fresh, now, scorecard))
        if days == 0 and hour % 5 == 0:
            extra = event("login", now, user_id=f"late-{hour}")
            state.apply(extra)
            fresh.apply(extra)
            assert _fields(evaluate(state, now, scorecard)) == _fields(
                evaluate(fresh, now, scorecard)
            )


STABILITY_CASES: list[tuple[str, dict[str, Any]]] = [
    ("active_seat_ratio", {"days": 30}),
    ("active_users", {"days": 7}),
    ("logins_per_active_user", {"days": 7, "base_days": 30}),
    ("login_consistency", {"days": 10}),
    ("days_since_last_activity", {}),
    ("silence_ratio", {"days": 90}),
    ("feature_breadth", {"days": 30}),
    ("key_feature_adoption", {"features": ["a", "b"], "days": 14}),
    ("usage_trend", {"days": 7, "min_events": 2}),
    ("open_tickets", {}),
    ("tickets_per_seat", {"days": 30}),
    ("resolution_hours", {"days": 20}),
    ("escalations", {"days": 90}),
    ("csat", {"days": 30}),
    ("nps", {"days": 90}),
    ("csm_touches", {"days": 14}),
    ("days_since_csm_touch", {}),
    ("milestones_reached", {"names": ["a", "b"]}),
    ("tenure_days", {}),
    ("days_to_renewal", {}),
    ("seats", {}),
    ("arr", {}),
    ("kpi_total", {"metric": "newsletters_sent", "days": 7}),
    ("kpi_trend", {"metric": "newsletters_sent", "days": 7}),
    ("contract_events", {"actions": ["downgrade", "upsell"], "days": 30}),
    ("invoice_overdue", {}),
]


def test_every_source_but_the_pulse_says_how_long_its_value_lasts() -> None:
    assert {s for s, _ in STABILITY_CASES} == set(CATALOG) - {"csm_pulse"}


@settings(max_examples=60, deadline=None)
@given(events=random_events(), offset=st.integers(-5, 200))
def test_a_value_holds_until_its_stable_day(events: list[Event], offset: int) -> None:
    # Source.stable promises: with no event applied, the value at every day
    # from the as-of day up to the day it returns is the value at the as-of day.
    state = state_of(events)
    assert state.last_event_at is not None
    day = state.last_event_at // DAY_MS + offset
    for source, params in STABILITY_CASES:
        extract = build_extractor(source, params)
        value = extract(state, day * DAY_MS + 3 * HOUR)
        until = build_stability(source, params)(state, day * DAY_MS + 3 * HOUR, value)
        assert until >= day, source
        for later in range(day, min(until, day + 200) + 1):
            assert repr(extract(state, later * DAY_MS + 20 * HOUR)) == repr(value), (
                source,
                later,
            )


def _scenario_evaluations() -> list[Evaluation]:
    scorecard = default_scorecard()
    out: list[Evaluation] = []
    state = AccountState.new("acme")
    for e in sorted(_varied_events(), key=lambda e: e.occurred_at):
        step = on_event(state, e, scorecard)
        assert step.evaluation is not None
        out.append(step.evaluation)
    for k in range(1, 60, 4):
        step = on_timer(state, at(6 + k, 13.25), scorecard)
        if step.evaluation is not None:
            out.append(step.evaluation)
    return out


@pytest.mark.parametrize("now_ms", [NOW, 1_714_555_800_123, 0])
def test_health_score_is_the_validated_message(now_ms: int) -> None:
    # The message assembled without validation is the one validation gives,
    # field for field (types included), and it passes the model and the
    # JSON Schema of the topic.
    for ev in _scenario_evaluations():
        fast = health_score(ev, now_ms=now_ms)
        slow = _validated_health_score(ev, now_ms)
        assert fast == slow
        assert fast.model_dump_json() == slow.model_dump_json()
        assert fast.model_fields_set == slow.model_fields_set
        assert [c.model_fields_set for c in fast.components] == [
            c.model_fields_set for c in slow.components
        ]
        assert HealthScore.model_validate_json(fast.model_dump_json()) == fast
        HEALTH_SCORE_SCHEMA.validate(orjson.loads(fast.model_dump_json()))
        again = health_score(ev, now_ms=now_ms)  # component models reused
        assert again == fast and again.model_dump_json() == fast.model_dump_json()


def test_a_non_finite_value_takes_the_validating_path() -> None:
    ev = _scenario_evaluations()[-1]
    bad = ev.components[0]._replace(value=math.inf)
    broken = Evaluation(
        **{
            **{f: getattr(ev, f) for f in ev.__dataclass_fields__},
            "components": (bad, *ev.components[1:]),
        }
    )
    with pytest.raises(ValidationError):
        health_score(broken, now_ms=NOW)


@given(st.integers(0, 253_402_300_799_999))
def test_message_timestamps_are_format_utc(ms: int) -> None:
    assert _utc(ms) == format_utc(ms)


# ================================================================ state form


def test_playbook_memory_round_trips_under_its_own_key() -> None:
    state = state_of(_varied_events())
    assert state.playbooks is None and "pb" not in state.to_dict()
    state.playbooks = {"churn_watch": {"active": True, "since": at(3)}, "n": [1, 2]}
    data = orjson.loads(state.to_bytes())
    assert data["pb"] == state.playbooks
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored.playbooks == state.playbooks
    assert restored.to_dict() == state.to_dict()
    with pytest.raises(ValueError):
        AccountState.from_dict({**data, "pb": [1]})


def _format_1(state: AccountState) -> dict[str, Any]:
    # The serialised form before version 2 (how changelogs written by older
    # workers look).
    data = state.to_dict()
    data["v"] = 1
    data["n"] = dict(state.counts)
    data["sn"] = state.snapshot
    data["h"] = (
        [
            min(state.score_history),
            *[
                state.score_history.get(d)
                for d in range(min(state.score_history), max(state.score_history) + 1)
            ],
        ]
        if state.score_history
        else []
    )
    data["bl"] = {m: [v, c] for m, (v, c) in state.baseline.items() if v is not None or c}
    data["g"] = list(state.gates)
    # 8-byte id digests (format 3 keeps their first 6 bytes; the rest is noise).
    ids = state.dedup
    digests = (ids[i : i + ID_DIGEST_BYTES] for i in range(0, len(ids), ID_DIGEST_BYTES))
    data["ids"] = base64.b64encode(b"".join(d + b"\xff\xee" for d in digests)).decode()
    data.pop("ofs", None)
    return {k: v for k, v in data.items() if v or k in ("v", "id", "pd")}


def test_format_1_states_are_still_read() -> None:
    scorecard = default_scorecard()
    state = AccountState.new("acme")
    for e in sorted(_varied_events(), key=lambda e: e.occurred_at):
        on_event(state, e, scorecard)
    on_timer(state, at(40), scorecard)
    old = AccountState.from_bytes(orjson.dumps(_format_1(state)))
    assert old.to_dict() == state.to_dict()
    assert _fields(evaluate(old, at(41), scorecard)) == _fields(evaluate(state, at(41), scorecard))


def test_an_idle_account_state_fits_in_2_kb() -> None:
    # A busy 20-user account (the benchmark's), then 91 days of silence.
    from service.tools.bench_scoring import account_events

    scorecard = default_scorecard()
    state = AccountState.new("acct-20")
    watermark: int | None = None
    for e in account_events("acct-20", 91):
        on_event(state, e, scorecard, watermark=watermark)
        watermark = e.occurred_at
    assert state.last_event_at is not None
    on_timer(state, state.last_event_at + 91 * DAY_MS, scorecard)
    assert len(state.to_bytes()) <= 2048


@settings(max_examples=40, deadline=None)
@given(events=random_events(), every=st.integers(1, 5), silence=st.integers(0, 120))
def test_the_serialised_form_does_not_depend_on_when_it_was_taken(
    events: list[Event], every: int, silence: int
) -> None:
    # The stream serialises the state after every event (parts of the form
    # are kept between calls); the form must be what a state serialised only
    # at the end gives.
    scorecard = default_scorecard()
    watched, plain = AccountState.new("acme"), AccountState.new("acme")
    for i, e in enumerate(sorted(events, key=lambda e: e.occurred_at)):
        on_event(watched, e, scorecard)
        on_event(plain, e, scorecard)
        if i % every == 0:
            watched.to_bytes()
    assert watched.last_event_at is not None
    for k in range(0, silence, 7):
        on_timer(watched, watched.last_event_at + k * DAY_MS, scorecard)
        on_timer(plain, watched.last_event_at + k * DAY_MS, scorecard)
        watched.to_bytes()
    assert watched.to_dict() == plain.to_dict()
    assert AccountState.from_bytes(watched.to_bytes()).to_dict() == plain.to_dict()
