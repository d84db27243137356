"""The account page's overview (``/accounts/{id}/overview``) and the account summary, pure."""

from __future__ import annotations

import itertools
from typing import Any

from schemas.events import Event, event_adapter
from service.api.account_view import account_overview
from service.api.portfolio import summary_from_state, summary_of
from service.model.account_state import AccountState
from service.model.scorecard import default_scorecard
from service.model.scoring import evaluate, on_event

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
DAY = 86_400_000
_ids = itertools.count()


def event(type_: str, when: int, **fields: Any) -> Event:
    data = {"event_id": f"ev-{next(_ids)}", "account_id": "acme", "type": type_}
    return event_adapter.validate_python({**data, "occurred_at": when, **fields})


def under_licensed() -> AccountState:
    """20 seats, one user active every working day, a red pulse at the end."""
    card = default_scorecard()
    state = AccountState.new("acme")
    events = [
        event(
            "account",
            T0,
            seats=20,
            arr=12_000.0,
            segment="mid_market",
            lifecycle_stage="maturity",
            csm_owner="csm-ana",
        )
    ]
    for day in range(30):
        when = T0 + day * DAY + 9 * 3_600_000
        events.append(event("login", when, user_id="u1"))
        events.append(event("feature_use", when + 60_000, user_id="u1", feature="reports"))
    events.append(
        event("pulse", T0 + 30 * DAY, rating="red", reason="champion left", author="csm-ana")
    )
    for e in events:
        on_event(state, e, card)
    return state


def test_the_overview_names_the_gates_with_their_reasons() -> None:
    card = default_scorecard()
    state = under_licensed()
    assert state.scored_at is not None
    overview = account_overview(state, card, state.scored_at)
    evaluation = evaluate(state, state.scored_at, card)
    reasons = {gate.name: (gate.reason, gate.bucket) for gate in card.gates}

    names = [gate["name"] for gate in overview["gates"]]
    assert {"low_seat_activation", "shelfware", "red_pulse"} <= set(names)
    for gate in overview["gates"]:
        assert (gate["reason"], gate["bucket"]) == reasons[gate["name"]]
        assert gate["effect"] == "cap"
    decided = {gate["name"] for gate in overview["gates"] if gate["decided"]}
    assert overview["health"]["bucket"] == "red"
    assert evaluation.score_bucket != "red", "the gates, not the score, make it red"
    assert {"shelfware", "red_pulse"} <= set(evaluation.deciding_gates)
    assert decided == {"shelfware", "red_pulse"}, "the red caps set the bucket"
    assert overview["health"]["score"] == round(evaluation.score, 1)
    assert overview["labels"]["active_seat_ratio_30d"] == "Seats in use (30 days)"
    assert overview["buckets"] == {"green": 70, "yellow": 45, "hysteresis": 3}
    assert overview["state"]["counts"]["login"] == 30
    assert overview["state"]["snapshot"]["csm_owner"] == "csm-ana"


def test_the_overview_shows_the_pulse_and_when_it_expires() -> None:
    card = default_scorecard()
    state = under_licensed()
    assert state.scored_at is not None
    pulse = account_overview(state, card, state.scored_at)["pulse"]
    assert pulse == {
        "rating": "red",
        "reason": "champion left",
        "author": "csm-ana",
        "occurred_at": "2024-04-03T00:00:00Z",
        "expires_at": "2024-05-03T00:00:00Z",
        "expired": False,
    }
    later = account_overview(state, card, T0 + 61 * DAY)["pulse"]
    assert later["expired"] is True
    assert account_overview(AccountState.new("x"), card, T0)["pulse"] is None


def test_summaries_carry_segment_stage_owner_and_trends() -> None:
    state = under_licensed()
    summary = summary_of(state, "red", 30.0, grade="F", delta_7d=-1.0, delta_30d=-4.0)
    assert (summary.segment, summary.stage, summary.csm_owner) == (
        "mid_market",
        "maturity",
        "csm-ana",
    )
    assert (summary.arr, summary.grade, summary.delta_30d) == (12_000.0, "F", -4.0)
    restored = summary_from_state(state)
    assert restored is not None
    assert (restored.bucket, restored.csm_owner, restored.delta_7d) == (
        state.bucket,
        "csm-ana",
        None,
    )
    assert summary_from_state(AccountState.new("never-scored")) is None
    bare = AccountState.new("bare")
    on_event(bare, event("login", T0, user_id="u1"), default_scorecard())
    assert summary_from_state(bare) is not None
    assert summary_from_state(bare).stage == "unknown"  # type: ignore[union-attr]


def test_only_the_gate_whose_cap_is_the_bucket_decided_it() -> None:
    """Two gates cap below a green score (yellow and red): the red one set the bucket."""
    card = default_scorecard()
    state = AccountState.new("acme")
    events = [event("account", T0, seats=4, segment="mid_market", lifecycle_stage="maturity")]
    for day in range(40):
        for user in ("u1", "u2", "u3", "u4"):
            when = T0 + day * DAY + 9 * 3_600_000
            events.append(event("login", when, user_id=user))
            events.append(event("feature_use", when + 1, user_id=user, feature="reports"))
    events.append(event("csm_touch", T0 + 39 * DAY, channel="call"))
    for e in events:
        on_event(state, e, card)
    silent = T0 + 60 * DAY  # 20 days without activity: quiet (yellow) and gone_silent (red)
    evaluation = evaluate(state, silent, card)
    overview = account_overview(state, card, silent)
    fired = {gate["name"]: gate for gate in overview["gates"]}
    assert {"quiet", "gone_silent"} <= set(fired), evaluation
    assert overview["health"]["bucket"] == "red"
    assert fired["gone_silent"]["decided"] is True
    assert fired["quiet"]["decided"] is False
