"""The scorecard format's ways of saying what a CSM means: lift gates, ``at_least``,
unknown-as-true comparisons, merged profile gates, ``extends``, ``product``
references, feeds, tenure profiles, key-feature adoption over seats with regular
use, labels; and the shipped adoption-rule example built with them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from schemas.events import Event
from service.model.account_state import AccountState
from service.model.scorecard import (
    AtLeast,
    Compare,
    Scorecard,
    ScorecardError,
    compile_condition,
    load_scorecard,
    parse_scorecard,
    shipped_scorecard,
)
from service.model.scoring import evaluate, evaluate_condition, on_event, on_timer, score_at
from service.model.windows import day_of
from tests.unit.test_scoring import NOW, at, event, state_of

DAY = 86_400_000

SMALL = """
name: small
version: 1
metrics:
  seats: {normalise: {poor: 0, good: 100}}
  arr: {normalise: {poor: 0, good: 100}}
groups:
  all: {weight: 1, metrics: {seats: 1}}
buckets: {green: 70, yellow: 45}
missing_data: {min_weight_share: 0}
"""


def small(gates: str) -> Scorecard:
    return parse_scorecard(SMALL + gates, "small.yaml")


# ------------------------------------------------------------------ lift gates


@pytest.mark.parametrize(
    ("seats", "arr", "bucket", "deciding"),
    [
        (50, 10, "green", ["lift"]),  # score yellow, condition true: lifted
        (50, 0, "yellow", []),  # condition false: the score decides
        (20, 10, "red", []),  # score red: lift_from [yellow] leaves it red
        (90, 10, "green", []),  # already green: the lift decided nothing
    ],
)
def test_a_lift_gate_raises_the_score_bucket_it_lifts_from(
    seats: int, arr: int, bucket: str, deciding: list[str]
) -> None:
    card = small(
        "gates: [{name: lift, reason: customer pays, when: {metric: arr, op: '>', value: 5},"
        " lift: green, lift_from: [yellow]}]"
    )
    ev = evaluate(state_of([event("account", at(0), seats=seats, arr=arr)]), at(0), card)
    assert (ev.bucket, list(ev.deciding_gates)) == (bucket, deciding)


def test_caps_win_over_lifts() -> None:
    card = small(
        "gates:\n"
        "  - {name: lift, when: {metric: arr, op: '>', value: 5}, lift: green}\n"
        "  - {name: cap, reason: too few seats, when: {metric: seats, op: '<', value: 60},"
        " cap: yellow}\n"
    )
    ev = evaluate(state_of([event("account", at(0), seats=30, arr=10)]), at(0), card)
    assert ev.bucket == "yellow"
    # Both pulled the bucket; the cap, where it ended, set it.
    assert list(ev.deciding_gates) == ["lift", "cap"]
    assert [(g.name, g.effect, g.decided) for g in ev.gates] == [
        ("lift", "lift", False),
        ("cap", "cap", True),
    ]


@pytest.mark.parametrize(
    ("gate", "reason"),
    [
        ("{name: g, when: {metric: seats, op: '<', value: 1}}", "exactly one of 'cap' or 'lift'"),
        (
            "{name: g, when: {metric: seats, op: '<', value: 1}, cap: red, lift: green}",
            "exactly one of 'cap' or 'lift'",
        ),
        (
            "{name: g, when: {metric: seats, op: '<', value: 1}, lift: yellow,"
            " lift_from: [yellow]}",
            "not below yellow",
        ),
        (
            "{name: g, when: {metric: seats, op: '<', value: 1}, cap: red, lift_from: [red]}",
            "belongs to a 'lift' gate",
        ),
    ],
)
def test_invalid_gate_effects_are_rejected(gate: str, reason: str) -> None:
    with pytest.raises(ScorecardError) as err:
        small(f"gates: [{gate}]")
    assert reason in err.value.reason


# ------------------------------------------------------------ conditions


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": 1, "b": 1, "c": 0}, True),
        ({"a": 1, "b": 0, "c": 0}, False),
        ({"a": 1, "b": None, "c": 0}, None),  # could still reach 2
        ({"a": 0, "b": None, "c": 0}, False),  # cannot reach 2 any more
        ({"a": 1, "b": None, "c": 1}, True),
    ],
)
def test_at_least_counts_true_conditions(
    values: dict[str, float | None], expected: bool | None
) -> None:
    three = AtLeast(
        at_least=2,
        of=[
            Compare(metric="a", op=">", value=0),
            Compare(metric="b", op=">", value=0),
            Compare(metric="c", op=">", value=0),
        ],
    )
    assert evaluate_condition(three, values) is expected
    assert compile_condition(three)(values) is expected


def test_at_least_more_than_its_conditions_is_rejected() -> None:
    with pytest.raises(ScorecardError) as err:
        small(
            "gates: [{name: g, cap: red,"
            " when: {at_least: 3, of: [{metric: seats, op: '>', value: 0}]}}]"
        )
    assert "only 1 conditions" in err.value.reason


@pytest.mark.parametrize(("unknown", "expected"), [(None, None), (True, True), (False, False)])
def test_a_comparison_says_what_an_unknown_metric_counts_as(
    unknown: bool | None, expected: bool | None
) -> None:
    cond = Compare(metric="m", op=">=", value=30, unknown=unknown)
    assert evaluate_condition(cond, {"m": None}) is expected
    assert compile_condition(cond)({"m": None}) is expected
    assert evaluate_condition(cond, {"m": 31}) is True  # a known value decides as usual


# ---------------------------------------------------------- extends, product


def test_extends_merges_over_a_shipped_scorecard(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "extends: default\nname: mine\nversion: 7\n"
        "product: {key_features: [reports], outcome_kpi: invoices_sent}\n"
        "buckets: {green: 75}\n"
        "profiles: [{name: smb, when: {segments: [small]}}]\n"
    )
    card = load_scorecard(path)
    default = shipped_scorecard("default")
    assert (card.name, card.version, card.extends) == ("mine", "7", "default")
    assert (card.buckets.green, card.buckets.yellow) == (75, default.buckets.yellow)
    assert card.unconfigured == []  # the product is given
    smb = next(p for p in card.profiles if p.name == "smb")
    assert (
        smb.when.segments == ["small"]
        and smb.groups == next(p for p in default.profiles if p.name == "smb").groups
    )  # merged by name: only `when` changed
    assert [g.name for g in card.gates] == [g.name for g in default.gates]


def test_extends_a_file_beside_it_and_needs_its_own_name(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(SMALL)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nbuckets: {green: 60}\n")
    assert load_scorecard(tmp_path / "child.yaml").buckets.green == 60
    (tmp_path / "anon.yaml").write_text("extends: base.yaml\nbuckets: {green: 60}\n")
    with pytest.raises(ScorecardError) as err:
        load_scorecard(tmp_path / "anon.yaml")
    assert (err.value.path, "its own name" in err.value.reason) == ("name", True)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nname: loop\n")
    with pytest.raises(ScorecardError, match="levels of extends"):
        load_scorecard(tmp_path / "loop.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\nname: lost\n")
    with pytest.raises(ScorecardError, match=r"nowhere\.yaml"):
        load_scorecard(tmp_path / "lost.yaml")


def test_an_unconfigured_product_metric_is_missing_not_zero() -> None:
    default = shipped_scorecard("default")
    demo = shipped_scorecard("demo")
    assert default.unconfigured == ["key_feature_adoption_30d", "outcome_kpi_trend_14d"]
    events = [
        event("account", at(0), seats=5, lifecycle_stage="adoption"),
        event("feature_use", at(1), user_id="u1", feature="automation"),
    ]
    unconfigured = evaluate(state_of(events), at(2), default)
    configured = evaluate(state_of(events), at(2), demo)
    assert unconfigured.values["key_feature_adoption_30d"] is None
    assert "key_feature_adoption_30d" in unconfigured.missing
    assert configured.values["key_feature_adoption_30d"] == 1.0


def test_a_bad_product_reference_is_named() -> None:
    text = SMALL.replace(
        "  arr: {normalise: {poor: 0, good: 100}}",
        "  arr: {source: kpi_total, params: {metric: $Bad-Name}, normalise: {poor: 0, good: 1}}",
    )
    with pytest.raises(ScorecardError) as err:
        parse_scorecard(text, "t.yaml")
    assert err.value.path == "metrics.arr.params.metric"


# ------------------------------------------------------------------- feeds


def test_a_metric_of_a_feed_never_sent_is_missing_until_its_first_event() -> None:
    card = shipped_scorecard("default")
    state = state_of([event("account", at(0), seats=5), event("login", at(0), user_id="u")])
    assert evaluate(state, at(1), card).values["open_high_priority_tickets"] is None
    # The first ticket ever (resolved at once): now zero open tickets is data.
    for e in [
        event("support_ticket", at(1), ticket_id="t", status="opened"),
        event("support_ticket", at(1, 10), ticket_id="t", status="resolved"),
    ]:
        state.apply(e)
    assert evaluate(state, at(2), card).values["open_high_priority_tickets"] == 0.0


def test_a_connected_feed_counts_silence_as_data() -> None:
    card = parse_scorecard(
        SMALL.replace(
            "  arr: {normalise: {poor: 0, good: 100}}",
            "  tickets: {source: open_tickets, normalise: {poor: 3, good: 0}}",
        )
        + "feeds: {connected: [support_ticket]}\n",
        "t.yaml",
    )
    state = state_of([event("account", at(0), seats=5)])
    assert card.extractor("tickets")(state, at(1)) == 0.0


def test_an_unknown_feed_is_rejected() -> None:
    with pytest.raises(ScorecardError) as err:
        parse_scorecard(SMALL + "feeds: {connected: [emails]}\n", "t.yaml")
    assert "unknown feed 'emails'" in err.value.reason


# ------------------------------------------------------------ tenure profiles


def test_profiles_are_chosen_by_tenure() -> None:
    card = parse_scorecard(
        SMALL + "profiles:\n"
        "  - {name: young, when: {max_tenure_days: 179}, buckets: {green: 10, yellow: 5}}\n"
        "  - {name: settled, when: {min_tenure_days: 180}}\n",
        "t.yaml",
    )
    state = state_of([event("account", at(0), seats=50, customer_since=at(-170))])
    assert evaluate(state, at(5), card).profile == "young"
    assert evaluate(state, at(10), card).profile == "settled"  # 180 days since
    unknown = state_of([event("account", at(0), seats=50)])
    assert evaluate(unknown, at(5), card).profile == "default"


# ------------------------------------------------- key features: seats, regular use


def _adoption_events(users: int, key_users: int, key_days: list[int]) -> list[Event]:
    out = [event("account", at(0), seats=10)]
    for d in range(30):
        for u in range(users):
            out.append(event("login", at(d, 8) + u, user_id=f"u{u}"))
    for d in key_days:
        for u in range(key_users):
            out.append(event("feature_use", at(d, 9) + u, user_id=f"u{u}", feature="reports"))
    return sorted(out, key=lambda e: e.occurred_at)


@pytest.mark.parametrize(
    ("params", "key_days", "expected"),
    [
        ("{features: [reports], days: 30}", [29], 4 / 8),  # of active users
        ("{features: [reports], days: 30, per: seats}", [29], 4 / 10),  # of paid seats
        ("{features: [reports], days: 30, per: seats, min_days: 4}", [3, 10, 17, 24], 4 / 10),
        ("{features: [reports], days: 30, per: seats, min_days: 4}", [10, 17, 24], 0.0),
        ("{features: [reports], days: 30, min_days: 2}", [0, 29], 4 / 8),
    ],
)
def test_key_feature_adoption_over_seats_and_regular_use(
    params: str, key_days: list[int], expected: float
) -> None:
    card = parse_scorecard(
        SMALL.replace(
            "  arr: {normalise: {poor: 0, good: 100}}",
            f"  adoption: {{source: key_feature_adoption, params: {params},"
            " normalise: {poor: 0, good: 1}}",
        ),
        "t.yaml",
    )
    state = AccountState.new("acme")
    for e in _adoption_events(8, 4, key_days):
        state.apply(e, regular=card.regular_features)
    assert card.extractor("adoption")(state, at(29, 23)) == pytest.approx(expected)
    # Regular-use days survive the changelog.
    again = AccountState.from_bytes(state.to_bytes())
    assert card.extractor("adoption")(again, at(29, 23)) == pytest.approx(expected)


def test_regular_days_leave_the_window_and_are_compacted() -> None:
    state = AccountState.new("acme")
    regular = frozenset({"reports"})
    for d in (0, 1, 2):
        state.apply(event("feature_use", at(d), user_id="u", feature="reports"), regular=regular)
    d0 = day_of(at(0))
    assert state.regular_days("u", ("reports",), d0, d0 + 2) == 3
    # Days 0 and 1 left a window that starts on day 2.
    assert state.regular_days("u", ("reports",), d0 + 2, d0 + 40) == 1
    state.apply(event("login", at(200), user_id="v"))  # 200 days later: everything old goes
    assert state.feature_days == {}


def test_min_days_longer_than_the_window_is_rejected() -> None:
    with pytest.raises(ScorecardError) as err:
        parse_scorecard(
            SMALL.replace(
                "  arr: {normalise: {poor: 0, good: 100}}",
                "  a: {source: key_feature_adoption, params: {features: [x], days: 7, min_days: 8},"
                " normalise: {poor: 0, good: 1}}",
            ),
            "t.yaml",
        )
    assert "min_days (8) is longer than days (7)" in err.value.reason


# --------------------------------------------------------------------- labels


def test_labels_come_from_label_or_the_description() -> None:
    card = parse_scorecard(
        SMALL.replace(
            "  arr: {normalise: {poor: 0, good: 100}}",
            "  arr: {normalise: {poor: 0, good: 100}, description: Annual revenue (ARR). More.}",
        ).replace(
            "  seats: {normalise: {poor: 0, good: 100}}",
            "  seats: {normalise: {poor: 0, good: 100}, label: Paid seats}",
        ),
        "t.yaml",
    )
    assert (card.label("seats"), card.label("arr"), card.label("nope")) == (
        "Paid seats",
        "Annual revenue",
        "nope",
    )


# ------------------------------------------------------ the adoption-rule example


@dataclass(frozen=True)
class Team:
    seats: int = 10
    active: int = 9
    #: Users using a key feature, and on which days of each week.
    key_users: int = 6
    key_weekdays: tuple[int, ...] = (1, 3)
    kpi_growth: float = 1.02
    tenure_days: int = 200
    pulse: str | None = None


def _team_events(name: str, team: Team) -> list[Event]:
    days = 60
    out = [
        event(
            "account",
            at(0, 0),
            name,
            seats=team.seats,
            lifecycle_stage="adoption",
            segment="mid_market",
            customer_since=at(days - team.tenure_days, 0),
            renewal_at=at(days + 200, 0),
        ),
        event("invoice", at(0, 1), name, status="paid"),
    ]
    for d in range(days):
        if d % 7 < 5:
            for u in range(team.active):
                out.append(event("login", at(d, 8) + u, name, user_id=f"u{u}"))
                out.append(
                    event("feature_use", at(d, 9) + u, name, user_id=f"u{u}", feature="campaigns")
                )
        if d % 7 in team.key_weekdays:
            for u in range(team.key_users):
                out.append(
                    event(
                        "feature_use",
                        at(d, 10) + u,
                        name,
                        user_id=f"u{u}",
                        feature="contacts_import",
                    )
                )
        out.append(
            event("kpi", at(d, 20), name, metric="newsletters_sent", value=100 * team.kpi_growth**d)
        )
        if d % 7 == 2:
            out.append(event("csm_touch", at(d, 15), name, channel="call"))
    if team.pulse is not None:
        out.append(event("pulse", at(days - 2, 12), name, rating=team.pulse, reason="CSM read"))
    return sorted(out, key=lambda e: e.occurred_at)


def _rule_score(team: Team) -> tuple[str, str, list[str]]:
    card = shipped_scorecard("adoption-rule")
    state = AccountState.new("team")
    watermark = None
    for e in _team_events("team", team):
        on_event(state, e, card, watermark=watermark, now_ms=NOW)
        watermark = e.occurred_at
    on_timer(state, at(60, 0), card, now_ms=NOW)
    score = score_at(state, at(60, 0), card, now_ms=NOW)
    return score.profile, score.bucket, [g.name for g in score.gates if g.decided]


@pytest.mark.parametrize(
    ("team", "expected"),
    [
        (Team(), ("adoption_rule", "green", [])),
        # 2. fails: 4 of 10 seats on a key feature weekly.
        (Team(key_users=4), ("adoption_rule", "yellow", ["adoption_rule_missed"])),
        # 2. fails: six users on a key feature, but only once a fortnight or so.
        (Team(key_weekdays=()), ("adoption_rule", "yellow", ["adoption_rule_missed"])),
        # 1. fails: 8 of 10 seats active is not more than 80%.
        (Team(active=8), ("adoption_rule", "yellow", ["adoption_rule_missed"])),
        # 3. fails: newsletters sent falling.
        (Team(kpi_growth=0.98), ("adoption_rule", "yellow", ["adoption_rule_missed"])),
        # The rule holds, but the CSM says red: risk gates still win.
        (Team(pulse="red"), ("adoption_rule", "red", ["red_pulse"])),
        # Not yet six months in: the rule does not apply.
        (Team(key_users=4, tenure_days=100), ("default", "green", [])),
    ],
)
def test_the_adoption_rule_example_decides_green_exactly(
    team: Team, expected: tuple[str, str, list[str]]
) -> None:
    assert _rule_score(team) == expected
