"""The back-test's figures against cases computed by hand, and the outcome labels."""

from __future__ import annotations

import random

import pytest

from service.backtest.figures import (
    bootstrap,
    churn_rates,
    first_time_in,
    fit_weights,
    histogram,
    lift_by_decile,
    pr_auc,
    precision_at_k,
    quartiles,
    roc_auc,
    roc_curve,
    weighted_score,
)
from service.backtest.outcomes import Label, Outcome, OutcomeFileError, Outcomes, read_outcomes

DAY = 86_400_000

# Churners scored 10 and 30, the others 20 and 40. Of the 4 (churner,
# non-churner) pairs, the churner scores lower in 3: (10,20), (10,40), (30,40).
SCORES = [10.0, 20.0, 30.0, 40.0]
CHURNED = [True, False, True, False]


def test_roc_auc_of_a_small_ranking() -> None:
    assert roc_auc(SCORES, CHURNED) == pytest.approx(3 / 4)


def test_roc_auc_counts_ties_as_half() -> None:
    # Pairs: churner 1 vs 1 (tie: 1/2), churner 1 vs 2 (win): 1.5 of 2.
    assert roc_auc([1.0, 1.0, 2.0], [True, False, False]) == pytest.approx(0.75)
    assert roc_auc([5.0, 5.0, 5.0, 5.0], [True, False, True, False]) == pytest.approx(0.5)


def test_a_score_that_ranks_churners_healthiest_is_under_one_half() -> None:
    assert roc_auc([90.0, 80.0, 10.0, 20.0], [True, True, False, False]) == 0.0
    # Of 6 pairs only (30, 60) has the churner lower.
    assert roc_auc([90.0, 30.0, 10.0, 20.0, 60.0], [True, True, False, False, False]) == (
        pytest.approx(1 / 6)
    )


def test_roc_auc_needs_both_classes() -> None:
    assert roc_auc([1.0, 2.0], [False, False]) is None
    assert roc_auc([], []) is None


def test_weights_count_a_row_that_many_times() -> None:
    weighted = roc_auc(SCORES, CHURNED, [2.0, 1.0, 1.0, 0.0])
    repeated = roc_auc([10.0, 10.0, 20.0, 30.0], [True, True, False, True])
    assert weighted == repeated == pytest.approx(2 / 3)
    assert pr_auc(SCORES, CHURNED, [2.0, 1.0, 1.0, 0.0]) == pytest.approx(
        pr_auc([10.0, 10.0, 20.0, 30.0], [True, True, False, True])
    )


def test_roc_curve_points() -> None:
    assert roc_curve(SCORES, CHURNED) == [
        (0.0, 0.0),
        (0.0, 0.5),  # flag 10: one churner of two
        (0.5, 0.5),  # flag 20: one non-churner of two
        (0.5, 1.0),
        (1.0, 1.0),
    ]


def test_pr_auc_is_average_precision() -> None:
    # Flag 10: recall +1/2 at precision 1; flag 30: recall +1/2 at precision 2/3.
    assert pr_auc(SCORES, CHURNED) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Tied rows are flagged together: precision 1/2 for the whole step.
    assert pr_auc([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    assert pr_auc([1.0], [False]) is None


def test_churn_rates_per_group() -> None:
    rates = churn_rates(["green", "red", "red", "yellow", "red"], [False, True, False, True, True])
    assert {k: (v.rows, v.churned, v.rate) for k, v in rates.items()} == {
        "green": (1, 0, 0.0),
        "red": (3, 2, pytest.approx(2 / 3)),
        "yellow": (1, 1, 1.0),
    }


def test_lift_by_decile_of_a_known_split() -> None:
    # 20 rows scored 1..20; churners at 1, 2, 3 and 11: overall rate 4/20 = 0.2.
    scores = [float(s) for s in range(20, 0, -1)]  # any input order
    churned = [s in (1.0, 2.0, 3.0, 11.0) for s in scores]
    rows = lift_by_decile(scores, churned)
    assert [r.rows for r in rows] == [2] * 10
    assert [(r.score_from, r.score_to) for r in rows][:2] == [(1.0, 2.0), (3.0, 4.0)]
    assert [r.churned for r in rows] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert [r.lift for r in rows] == pytest.approx([5.0, 2.5, 0, 0, 0, 2.5, 0, 0, 0, 0])
    assert lift_by_decile([1.0] * 9, [True] * 9) == []


def test_lift_splits_ties_by_the_tiebreak() -> None:
    scores = [1.0] * 10
    churned = [i == 3 for i in range(10)]
    rows = lift_by_decile(scores, churned, [f"acct-{9 - i}" for i in range(10)])
    # Row 3 is "acct-6": the 7th in tie-break order.
    assert [r.churned for r in rows] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]


def test_precision_at_k_per_date() -> None:
    dates = [1, 1, 1, 1, 2, 2, 2]
    accounts = ["a", "b", "c", "d", "a", "b", "c"]
    scores = [10.0, 20.0, 30.0, 40.0, 50.0, 5.0, 5.0]
    churned = [False, True, True, False, True, False, True]
    found = precision_at_k(dates, accounts, scores, churned, k=2)
    # Date 1 flags a, b (1 churner of 2); date 2 flags b, c (tie by id; 1 of 2).
    assert found.by_date == [(1, 2, 1, 2), (2, 2, 1, 2)]
    assert found.precision == pytest.approx(0.5)
    assert found.recall == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(dates, accounts, scores, churned, k=0)


def test_lead_times_of_two_accounts() -> None:
    # A: green, yellow from day 10, red from day 20; churns on day 40.
    a = [(0, "green"), (10 * DAY, "yellow"), (20 * DAY, "red")]
    assert first_time_in(a, ["red"], 40 * DAY - 90 * DAY, 40 * DAY) == 20 * DAY  # 20 days
    assert first_time_in(a, ["yellow", "red"], -50 * DAY, 40 * DAY) == 10 * DAY  # 30 days
    # B: red from its start; the window starts on day 5 (the first snapshot date):
    # red at the start counts from there, 25 days before its churn on day 30.
    b = [(0, "red")]
    assert first_time_in(b, ["red"], 5 * DAY, 30 * DAY) == 5 * DAY
    # Red only after the churn became known (day 35): no warning from the score.
    c = [(0, "green"), (35 * DAY, "red")]
    assert first_time_in(c, ["red"], 0, 35 * DAY) is None
    # Before the account existed nothing counts.
    d = [(12 * DAY, "red")]
    assert first_time_in(d, ["red"], 0, 30 * DAY) == 12 * DAY


def test_histogram_and_quartiles() -> None:
    # The last bin is closed on the right (14 is in it); 99 is outside.
    assert histogram([0.0, 6.9, 7.0, 13.0, 14.0, 99.0], [0.0, 7.0, 14.0]) == [2, 3]
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    assert quartiles([]) is None


def test_bootstrap_resamples_accounts() -> None:
    rng = random.Random(3)
    accounts, scores, churned = [], [], []
    for a in range(60):
        risky = a % 4 == 0
        for _ in range(5):  # five snapshots per account, correlated
            accounts.append(f"a{a}")
            scores.append(rng.gauss(40 if risky else 70, 12))
            churned.append(risky)

    def statistic(weights: object) -> dict[str, float | None]:
        return {"auc": roc_auc(scores, churned, weights), "one": 1.0}  # type: ignore[arg-type]

    first = bootstrap(accounts, statistic, 100, seed=7)
    assert first == bootstrap(accounts, statistic, 100, seed=7)  # deterministic
    low, high = first["auc"]  # type: ignore[misc]
    point = roc_auc(scores, churned)
    assert point is not None and low < point < high and high - low < 0.2
    assert first["one"] == (1.0, 1.0)
    assert bootstrap(accounts, statistic, 0, seed=7) == {"auc": None, "one": None}


def test_weighted_score_spreads_unknown_weight() -> None:
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    assert weighted_score([("a", 80.0), ("b", 40.0), ("c", 40.0)], weights) == 60.0
    # c unknown: a and b share its weight in proportion (2:1).
    assert weighted_score([("a", 80.0), ("b", 20.0), ("c", None)], weights) == 60.0
    assert weighted_score([("c", None), ("d", 50.0)], weights) is None


def test_fit_weights_finds_the_predictive_metric() -> None:
    rng = random.Random(5)
    rows, fallback, churned = [], [], []
    for _ in range(400):
        label = rng.random() < 0.2
        good = rng.uniform(0, 40) if label else rng.uniform(30, 100)  # predictive
        noise = rng.uniform(0, 100)
        backwards = rng.uniform(60, 100) if label else rng.uniform(0, 70)  # the wrong way
        rows.append({"good": good, "noise": noise, "backwards": backwards, "gap": None})
        fallback.append(50.0)
        churned.append(label)
    fitted = fit_weights(rows, fallback, churned, ["good", "noise", "backwards", "gap"])
    assert fitted is not None
    assert sum(fitted.weights.values()) == pytest.approx(1.0)
    assert fitted.weights["good"] > 0.8
    assert fitted.weights["backwards"] == 0.0  # a weight cannot be negative
    assert fit_weights(rows, fallback, [False] * 400, ["good"]) is None


# ------------------------------------------------------------------ outcomes


def _outcomes() -> Outcomes:
    outcomes = Outcomes()
    outcomes.add(Outcome("gone", "churned", 100 * DAY))
    outcomes.add(Outcome("kept", "renewed", 50 * DAY))
    outcomes.add_notice("gone", 80 * DAY)
    return outcomes


@pytest.mark.parametrize(
    ("account", "at", "label"),
    [
        ("gone", 9 * DAY, Label.RETAINED),  # churns after its horizon (90 days)
        ("gone", 10 * DAY, Label.CHURNED),  # churns exactly at the horizon's end
        ("gone", 99 * DAY, Label.CHURNED),
        ("gone", 100 * DAY, Label.AFTER_CHURN),
        ("kept", 49 * DAY, Label.RETAINED),  # renews after the snapshot
        ("kept", 70 * DAY, Label.UNKNOWN),  # renewed before: only observation counts
        ("kept", 150 * DAY - 90 * DAY, Label.RETAINED),  # horizon ends when observation does
        ("quiet", 61 * DAY, Label.UNKNOWN),
        ("quiet", 60 * DAY, Label.RETAINED),
    ],
)
def test_labels(account: str, at: int, label: Label) -> None:
    assert _outcomes().label(account, at, 90 * DAY, observed_until=150 * DAY) is label


def test_churn_becomes_known_at_its_notice() -> None:
    outcomes = _outcomes()
    outcomes.add(Outcome("abrupt", "churned", 30 * DAY))
    assert outcomes.churn_known(90 * DAY) == {"gone": 80 * DAY, "abrupt": 30 * DAY}
    assert outcomes.churn_known(10 * DAY) == {"gone": 100 * DAY, "abrupt": 30 * DAY}
    assert outcomes.noticed_by("gone", 80 * DAY) and not outcomes.noticed_by("gone", 79 * DAY)


def test_outcomes_file() -> None:
    lines = [
        b'{"account_id": "a", "outcome": "churned", "date": "2024-05-31", "crm": 1}\n',
        b"\n",
        b'{"account_id": "b", "outcome": "renewed", "date": "2024-06-01T12:00:00+02:00"}\n',
        b'{"account_id": "c", "outcome": "churned", "date": 1717200000000}\n',
    ]
    assert read_outcomes(lines, "crm.jsonl") == [
        Outcome("a", "churned", 1717113600000),
        Outcome("b", "renewed", 1717236000000),
        Outcome("c", "churned", 1717200000000),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{oops", "crm.jsonl line 2: not JSON"),
        (b"[1]", "crm.jsonl line 2: not a JSON object"),
        (b'{"account_id": "a", "outcome": "churned"}', "crm.jsonl line 2: missing date"),
        (b'{"account_id": "", "outcome": "churned", "date": 0}', "line 2: account_id must be"),
        (b'{"account_id": "a", "outcome": "left", "date": 0}', 'outcome must be "churned" or'),
        (b'{"account_id": "a", "outcome": "churned", "date": "2024-02-30"}', "not a calendar"),
        (b'{"account_id": "a", "outcome": "churned", "date": "May 1"}', "line 2: date: "),
    ],
)
def test_a_bad_outcomes_line_is_one_error_naming_it(line: bytes, message: str) -> None:
    good = b'{"account_id": "x", "outcome": "renewed", "date": 0}'
    with pytest.raises(OutcomeFileError) as raised:
        read_outcomes([good, line], "crm.jsonl")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
