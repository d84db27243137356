"""Scenarios on synthetic accounts, scored with the shipped default scorecard."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import orjson
import pytest

from schemas.events import Event, event_to_json
from schemas.outputs import BucketChange, HealthScore
from service.model.account_state import AccountState
from service.model.scorecard import Scorecard, shipped_scorecard
from service.model.scoring import Step, evaluate, on_event, on_timer, score_at
from service.model.windows import DAY_MS
from service.processing.replay import replay
from tests.unit.test_scoring import NOW, at, event

USAGE_METRICS = {
    "active_seat_ratio_30d",
    "days_since_last_activity",
    "logins_per_active_user_7d",
    "login_consistency_30d",
    "key_feature_adoption_30d",
    "usage_trend_14d",
    "feature_breadth_30d",
}
KEY = ["automation", "integrations", "reports"]
EVERYDAY = ["campaigns", "templates", "newsletters", "segments"]


def account_events(
    account: str,
    days: int,
    *,
    seats: int = 25,
    active_users: Callable[[int], int] = lambda day: 20,
    stage: str = "adoption",
    segment: str = "mid_market",
    start: int = 0,
) -> list[Event]:
    """A well-run account: weekday logins, key features used by half of the
    users, a rising KPI, weekly CSM calls, promoters, a green pulse."""
    out = [
        event(
            "account",
            at(start, 0),
            account,
            seats=seats,
            lifecycle_stage=stage,
            segment=segment,
            customer_since=at(start - 800),
            renewal_at=at(start + 300),
        ),
        event("invoice", at(start, 1), account, status="paid"),
    ]
    for d in range(start, start + days):
        if d % 7 < 5:
            for u in range(active_users(d)):
                out.append(event("login", at(d, 8) + u * 1000, account, user_id=f"u{u}"))
                feature = KEY[u % 3] if u % 2 == 0 else EVERYDAY[u % 4]
                out.append(
                    event(
                        "feature_use",
                        at(d, 10) + u * 1000,
                        account,
                        user_id=f"u{u}",
                        feature=feature,
                    )
                )
        out.append(event("kpi", at(d, 20), account, metric="newsletters_sent", value=1000 + 5 * d))
        if d % 7 == 2:
            out.append(event("csm_touch", at(d, 15), account, channel="call"))
        if d % 20 == 3:
            out.append(event("survey", at(d, 16), account, kind="nps", score=9 + d % 2))
        if d % 20 == 0:
            out.append(event("pulse", at(d, 17), account, rating="green", reason="on track"))
    return sorted(out, key=lambda e: e.occurred_at)


def stream(
    events: Iterable[Event], scorecard: Scorecard
) -> tuple[dict[str, AccountState], list[BucketChange], dict[str, Step]]:
    """The stream's cadence in-process: on_event with the running watermark."""
    states: dict[str, AccountState] = {}
    changes: list[BucketChange] = []
    last: dict[str, Step] = {}
    watermark: int | None = None
    for e in events:
        state = states.setdefault(e.account_id, AccountState.new(e.account_id))
        step = on_event(state, e, scorecard, watermark=watermark, now_ms=NOW)
        changes.extend(step.changes)
        last[e.account_id] = step
        watermark = e.occurred_at if watermark is None else max(watermark, e.occurred_at)
    return states, changes, last


@pytest.fixture(scope="module")
def card() -> Scorecard:
    # The accounts use the simulated product's key features and KPI, which the
    # demo scorecard (the default with that product filled in) knows.
    return shipped_scorecard("demo")


def test_a_healthy_account_is_green(card: Scorecard) -> None:
    _, changes, last = stream(account_events("healthy", 60), card)
    score = last["healthy"].score
    assert score is not None
    assert (score.bucket, score.stage, score.low_confidence) == ("green", "adoption", False)
    assert score.score >= 85 and score.grade == "A"
    # No support ticket and no contract event ever: those feeds say nothing yet.
    assert score.missing == [
        "open_high_priority_tickets",
        "escalations_90d",
        "csat_90d",
        "tickets_per_seat_30d",
        "resolution_hours_90d",
        "downgrades_90d",
    ]
    # Once the data is in, a healthy account stays green day after day.
    assert all(c.as_of < "2024-03-05" for c in changes)


def test_an_account_that_goes_silent_for_three_weeks_turns_red(card: Scorecard) -> None:
    states, _, last = stream(account_events("quiet", 60), card)
    state = states["quiet"]
    assert last["quiet"].score is not None and last["quiet"].score.bucket == "green"
    silent_from = state.last_event_at
    assert silent_from is not None
    scores: list[HealthScore] = []
    changes: list[BucketChange] = []
    for days in (3, 7, 14, 21):
        step = on_timer(state, silent_from + days * DAY_MS, card, now_ms=NOW)
        assert step.result is None and step.score is not None
        scores.append(step.score)
        changes.extend(step.changes)
    assert [s.bucket for s in scores][-1] == "red"
    assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    assert scores[-1].score < scores[0].score - 15
    assert [(c.from_bucket, c.to_bucket) for c in changes] == [
        ("green", "yellow"),
        ("yellow", "red"),
    ]
    assert all("days_since_last_activity" in [d.metric for d in c.drivers] for c in changes)
    # Rescored at hourly ticks of event time, not only at the timer calls.
    assert all(c.as_of.endswith(":00:00Z") for c in changes)


def test_an_account_whose_usage_halves_over_two_weeks_goes_green_to_yellow(card: Scorecard) -> None:
    def users(day: int) -> int:  # 20 users, halving linearly over days 45..59, then 10
        return 20 if day < 45 else max(10, 20 - (day - 44) * 10 // 14)

    events = account_events("declining", 80, active_users=users)
    _, changes, _ = stream(events, card)
    before = [c for c in changes if c.as_of < "2024-04-18"]  # day 45
    after = [c for c in changes if c.as_of >= "2024-04-18"]
    assert not before or before[-1].to_bucket == "green"
    assert after, "the decline must change the bucket"
    first = after[0]
    assert (first.from_bucket, first.to_bucket) == ("green", "yellow")
    assert first.score < first.previous_score + 0.5
    assert USAGE_METRICS & {d.metric for d in first.drivers}
    assert first.drivers[0].metric in USAGE_METRICS
    assert first.as_of < "2024-05-16"  # within four weeks of the decline's start
    # The decline gate holds (release at -25%): no flapping back within a week.
    recovered = [c for c in after[1:] if c.to_bucket == "green"]
    assert not recovered or recovered[0].as_of > f"2024-05-{int(first.as_of[8:10]) + 7:02d}"


def test_an_account_with_10_percent_of_seats_active_is_not_green(card: Scorecard) -> None:
    states, _, last = stream(account_events("shelf", 60, seats=50, active_users=lambda d: 5), card)
    score = last["shelf"].score
    assert score is not None and score.bucket != "green"
    ev = evaluate(states["shelf"], states["shelf"].scored_at or 0, card)
    assert ev.values["active_seat_ratio_30d"] == 0.1
    assert {"shelfware", "low_seat_activation"} <= set(ev.gates_fired)


def _onboarding(account: str, stage: str) -> list[Event]:
    out = account_events(account, 21, seats=20, active_users=lambda d: 5, stage=stage)
    for day, name in ((2, "account_configured"), (6, "users_invited"), (15, "first_campaign_sent")):
        out.append(event("milestone", at(day, 12), account, name=name))
    return sorted(out, key=lambda e: e.occurred_at)


def test_an_onboarding_account_is_judged_by_the_onboarding_profile(card: Scorecard) -> None:
    _, _, last = stream(_onboarding("newco", "onboarding"), card)
    score = last["newco"].score
    assert score is not None
    assert score.stage == "onboarding"
    # Group share x metric share, from the onboarding profile; the support
    # group is unknown (no ticket ever), so its 15 go to the other groups.
    expected_weights = {
        "milestones_reached": 50 / 85 * 4 / 8,
        "csm_pulse": 50 / 85 * 2 / 8,
        "days_since_csm_touch": 50 / 85 * 2 / 8,
        "days_since_last_activity": 35 / 85 * 3 / 6,
        "active_seat_ratio_30d": 35 / 85 * 2 / 6,
        "login_consistency_30d": 35 / 85 * 1 / 6,
        "open_high_priority_tickets": 0.0,
        "escalations_90d": 0.0,
    }
    assert {c.metric: c.weight for c in score.components} == pytest.approx(
        expected_weights, abs=1e-4
    )
    assert score.bucket == "green"  # 25% of seats is on track while onboarding
    # The same account at the adoption stage is held back by the seat gates.
    _, _, last = stream(_onboarding("grown", "adoption"), card)
    adult = last["grown"].score
    assert adult is not None and adult.stage == "adoption" and adult.bucket != "green"


# ------------------------------------------------------------ stream == replay


def _mixed_events() -> list[Event]:
    def declining(day: int) -> int:
        return 20 if day < 30 else max(4, 20 - (day - 29))

    out = [
        *account_events("acme", 70),
        *account_events("bolt", 70, active_users=declining),
        *account_events("cove", 35, seats=40, segment="smb"),  # then silent
        *account_events("dune", 40, stage="onboarding", active_users=lambda d: 3, start=20),
    ]
    out.append(
        event(
            "support_ticket", at(31, 9), "bolt", ticket_id="t1", status="opened", priority="urgent"
        )
    )
    out.append(
        event(
            "support_ticket",
            at(33, 9),
            "bolt",
            ticket_id="t1",
            status="escalated",
            priority="urgent",
        )
    )
    out.append(event("pulse", at(40, 9), "bolt", rating="red", reason="budget cut"))
    out.append(out[5])  # a redelivered event
    return sorted(out, key=lambda e: e.occurred_at)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_and_replay_give_the_same_scores_and_changes(card: Scorecard, seed: int) -> None:
    events = _mixed_events()
    as_of = at(75, 13.5)
    lines = [orjson.dumps(event_to_json(e)) for e in events]
    replayed = replay(lines, card, as_of=as_of, now_ms=NOW)

    # A two-partition "stream": partitions interleaved at random, a timer
    # firing at random moments with each partition's watermark, and every
    # state going through its changelog bytes after every step.
    rng = random.Random(seed)
    partitions: list[list[Event]] = [[], []]
    for e in events:
        partitions[sum(e.account_id.encode()) % 2].append(e)
    stored: dict[str, bytes] = {}
    marks = [0, 0]
    owner: dict[str, int] = {}
    changes: list[BucketChange] = []

    def timer(p: int) -> None:
        for account, raw in sorted(stored.items()):
            if owner[account] == p:
                state = AccountState.from_bytes(raw)
                changes.extend(on_timer(state, marks[p], card).changes)
                stored[account] = state.to_bytes()

    while partitions[0] or partitions[1]:
        p = rng.choice([i for i in (0, 1) if partitions[i]])
        for _ in range(rng.randint(1, 40)):
            if not partitions[p]:
                break
            e = partitions[p].pop(0)
            owner[e.account_id] = p
            raw = stored.get(e.account_id)
            state = AccountState.from_bytes(raw) if raw else AccountState.new(e.account_id)
            changes.extend(on_event(state, e, card).changes)
            stored[e.account_id] = state.to_bytes()
            marks[p] = max(marks[p], e.occurred_at)
            if rng.random() < 0.05:
                timer(p)
    marks = [as_of, as_of]
    timer(0)
    timer(1)
    finals = [
        score_at(AccountState.from_bytes(stored[a]), as_of, card, now_ms=NOW)
        for a in sorted(stored)
    ]

    assert finals == replayed.scores
    key = lambda c: (c.as_of, c.account_id)  # noqa: E731
    assert sorted(changes, key=key) == replayed.changes
    transitions = {(c.account_id, c.from_bucket, c.to_bucket) for c in replayed.changes}
    assert ("cove", "yellow", "red") in transitions  # silence after day 35
    assert any(a == "bolt" and to != "green" for a, _, to in transitions)
    assert replayed.stats.duplicates == 1
