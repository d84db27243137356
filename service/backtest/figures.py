"""The back-test's statistics: pure functions of scores, labels and weights.

Conventions, the same in every function:

* A *score* is a health score: higher is healthier. An account is *flagged*
  (predicted to churn) when its score is at or below a threshold, so the
  riskiest accounts are the lowest-scored ones.
* ``churned[i]`` is the label of row ``i``: it churned within the horizon.
* ``weights[i]`` (default 1) is how many times row ``i`` counts. The
  bootstrap resamples *accounts* and passes how often each row's account was
  drawn, so every figure below is also its own bootstrap statistic.
* A figure that needs both classes (or any row) returns ``None`` without them.

Nothing here knows about accounts' states, files or scorecards; the back-test
(:mod:`service.backtest.lab`) feeds it numbers.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TypeVar

import numpy as np

__all__ = [
    "DecileRow",
    "FittedWeights",
    "GroupRate",
    "PrecisionAtK",
    "bootstrap",
    "churn_rates",
    "first_time_in",
    "fit_weights",
    "histogram",
    "lift_by_decile",
    "pr_auc",
    "precision_at_k",
    "quartiles",
    "roc_auc",
    "roc_curve",
    "weighted_score",
]

K = TypeVar("K", bound=Hashable)


def _weights(n: int, weights: Sequence[float] | None) -> Sequence[float]:
    return [1.0] * n if weights is None else weights


def _tie_groups(
    scores: Sequence[float], churned: Sequence[bool], weights: Sequence[float]
) -> list[tuple[float, float, float]]:
    """``(score, churner weight, non-churner weight)`` per distinct score, lowest first."""
    rows = sorted(range(len(scores)), key=scores.__getitem__)
    groups: list[tuple[float, float, float]] = []
    for score, members in groupby(rows, key=scores.__getitem__):
        pos = neg = 0.0
        for i in members:
            if churned[i]:
                pos += weights[i]
            else:
                neg += weights[i]
        groups.append((score, pos, neg))
    return groups


def roc_auc(
    scores: Sequence[float], churned: Sequence[bool], weights: Sequence[float] | None = None
) -> float | None:
    """Area under the ROC curve of the score as a churn predictor.

    The probability that a churner scores *lower* than a non-churner, ties
    counting one half (the Mann-Whitney statistic). 1 is a perfect ranking,
    0.5 is chance, below 0.5 the score ranks churners as healthier than the
    rest. ``None`` without churners or without non-churners.
    """
    w = _weights(len(scores), weights)
    groups = _tie_groups(scores, churned, w)
    total_pos = sum(g[1] for g in groups)
    total_neg = sum(g[2] for g in groups)
    if total_pos <= 0 or total_neg <= 0:
        return None
    above = total_neg  # non-churner weight at or above the current score
    wins = 0.0
    for _, pos, neg in groups:
        above -= neg
        # Churners here beat every non-churner scored higher, and half-beat the tied ones.
        wins += pos * (above + 0.5 * neg)
    return wins / (total_pos * total_neg)


def roc_curve(scores: Sequence[float], churned: Sequence[bool]) -> list[tuple[float, float]]:
    """ROC points ``(false-positive rate, true-positive rate)`` from flagging
    nothing ``(0, 0)`` to flagging everyone ``(1, 1)``, one point per distinct
    score (flag every account scored at or below it). Empty without both classes.
    """
    groups = _tie_groups(scores, churned, _weights(len(scores), None))
    total_pos = sum(g[1] for g in groups)
    total_neg = sum(g[2] for g in groups)
    if total_pos <= 0 or total_neg <= 0:
        return []
    points = [(0.0, 0.0)]
    tp = fp = 0.0
    for _, pos, neg in groups:
        tp += pos
        fp += neg
        points.append((fp / total_neg, tp / total_pos))
    return points


def pr_auc(
    scores: Sequence[float], churned: Sequence[bool], weights: Sequence[float] | None = None
) -> float | None:
    """Area under the precision-recall curve (average precision).

    Flagging accounts from the lowest score up, one distinct score at a time
    (tied accounts are flagged together), it is the sum over steps of the
    recall gained times the precision reached. Its chance level is the churn
    rate (prevalence), not 0.5. ``None`` without churners.
    """
    w = _weights(len(scores), weights)
    groups = _tie_groups(scores, churned, w)
    total_pos = sum(g[1] for g in groups)
    if total_pos <= 0:
        return None
    tp = flagged = 0.0
    area = 0.0
    for _, pos, neg in groups:
        tp += pos
        flagged += pos + neg
        if pos:
            area += (pos / total_pos) * (tp / flagged)
    return area


@dataclass(frozen=True)
class GroupRate:
    """Churn among the rows of one group (a bucket, a grade)."""

    rows: float
    churned: float

    @property
    def rate(self) -> float | None:
        return self.churned / self.rows if self.rows > 0 else None


def churn_rates(
    groups: Sequence[K], churned: Sequence[bool], weights: Sequence[float] | None = None
) -> dict[K, GroupRate]:
    """Rows and churners per group (only groups with rows)."""
    w = _weights(len(groups), weights)
    rows: dict[K, float] = defaultdict(float)
    positives: dict[K, float] = defaultdict(float)
    for group, label, weight in zip(groups, churned, w, strict=True):
        if weight:
            rows[group] += weight
            if label:
                positives[group] += weight
    return {group: GroupRate(rows[group], positives[group]) for group in rows}


@dataclass(frozen=True)
class DecileRow:
    """One tenth of the rows, riskiest (lowest score) first."""

    decile: int
    rows: int
    churned: int
    rate: float
    lift: float | None
    score_from: float
    score_to: float


def lift_by_decile(
    scores: Sequence[float],
    churned: Sequence[bool],
    tiebreak: Sequence[str] | None = None,
    parts: int = 10,
) -> list[DecileRow]:
    """Churn rate and lift of each tenth of the rows, lowest scores first.

    Rows are ordered by score, then ``tiebreak`` (e.g. account and date, so
    the split of tied scores is deterministic), then position; decile ``d``
    (1-based) holds the rows at positions ``floor((d-1) n / 10)`` up to
    ``floor(d n / 10)``. Lift is the decile's churn rate over the overall
    rate: 3 means three times as many churners as picking at random. Empty
    when there are fewer rows than parts.
    """
    n = len(scores)
    if n < parts:
        return []
    keys = tiebreak if tiebreak is not None else [""] * n
    order = sorted(range(n), key=lambda i: (scores[i], keys[i], i))
    overall = sum(1 for label in churned if label) / n
    rows: list[DecileRow] = []
    for d in range(1, parts + 1):
        members = order[(d - 1) * n // parts : d * n // parts]
        positives = sum(1 for i in members if churned[i])
        rate = positives / len(members)
        rows.append(
            DecileRow(
                decile=d,
                rows=len(members),
                churned=positives,
                rate=rate,
                lift=rate / overall if overall > 0 else None,
                score_from=scores[members[0]],
                score_to=scores[members[-1]],
            )
        )
    return rows


@dataclass(frozen=True)
class PrecisionAtK:
    """Flagging the ``k`` lowest-scored accounts at each date."""

    k: int
    #: ``(date, flagged, churners among them, churners that date)`` per date.
    by_date: list[tuple[int, int, int, int]]

    @property
    def precision(self) -> float | None:
        """Churners among all flagged accounts, over every date."""
        flagged = sum(row[1] for row in self.by_date)
        return sum(row[2] for row in self.by_date) / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        """Share of the churners that were flagged, over every date."""
        positives = sum(row[3] for row in self.by_date)
        return sum(row[2] for row in self.by_date) / positives if positives else None


def precision_at_k(
    dates: Sequence[int],
    accounts: Sequence[str],
    scores: Sequence[float],
    churned: Sequence[bool],
    k: int,
) -> PrecisionAtK:
    """At each date, flag the ``k`` lowest-scored rows (ties by account id) and
    count the churners among them: what a team that can work ``k`` accounts at
    a time would have caught."""
    if k < 1:
        raise ValueError("k must be at least 1")
    by_date: dict[int, list[int]] = defaultdict(list)
    for i, date in enumerate(dates):
        by_date[date].append(i)
    rows = []
    for date in sorted(by_date):
        members = sorted(by_date[date], key=lambda i: (scores[i], accounts[i]))
        flagged = members[:k]
        rows.append(
            (
                date,
                len(flagged),
                sum(1 for i in flagged if churned[i]),
                sum(1 for i in members if churned[i]),
            )
        )
    return PrecisionAtK(k, rows)


def first_time_in(
    timeline: Sequence[tuple[int, str]], targets: Iterable[str], since: int, until: int
) -> int | None:
    """The first instant in ``[since, until)`` at which the bucket was one of ``targets``.

    ``timeline`` is ``(time, bucket)`` points in time order, each bucket in
    effect from its time until the next point. ``since`` itself counts when
    the bucket in effect then is a target (the account was already there);
    ``None`` when it never was in the interval.
    """
    wanted = set(targets)
    if since >= until:
        return None
    at_since: str | None = None  # the bucket in effect at `since` (None: no account yet)
    for at, bucket in timeline:
        if at > since:
            break
        at_since = bucket
    if at_since in wanted:
        return since
    for at, bucket in timeline:
        if since < at < until and bucket in wanted:
            return at
    return None


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``[edges[i], edges[i+1])``, the last bin closed on the right."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        for i in range(len(counts)):
            last = i == len(counts) - 1
            if edges[i] <= value < edges[i + 1] or (last and value == edges[i + 1]):
                counts[i] += 1
                break
    return counts


def quartiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    """First quartile, median and third quartile (inclusive method); ``None`` if empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def bootstrap(
    accounts: Sequence[str],
    statistic: Callable[[Sequence[float] | None], Mapping[str, float | None]],
    reps: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float] | None]:
    """Percentile confidence intervals by resampling *accounts* with replacement.

    Snapshots of one account are not independent (a red account stays red
    for weeks), so a resample draws whole accounts: ``statistic`` gets row
    weights equal to how often each row's account was drawn, and returns
    named figures. ``None`` for a figure with fewer than ``reps / 2``
    defined resamples (e.g. no churner drawn). Deterministic in ``seed``.
    """
    names = sorted(set(accounts))
    index = {account: i for i, account in enumerate(names)}
    row_account = [index[account] for account in accounts]
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        drawn = Counter(rng.choices(range(len(names)), k=len(names)))
        weights = [float(drawn[a]) for a in row_account]
        for name, value in statistic(weights).items():
            if value is not None and math.isfinite(value):
                samples[name].append(value)
    tail = (1.0 - level) / 2.0
    result: dict[str, tuple[float, float] | None] = {}
    for name in statistic(None):
        values = sorted(samples.get(name, []))
        if reps == 0 or len(values) < reps / 2:
            result[name] = None
            continue
        result[name] = (_percentile(values, tail), _percentile(values, 1.0 - tail))
    return result


def _percentile(ordered: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default method).
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ------------------------------------------------------------------ weights


def weighted_score(
    components: Iterable[tuple[str, float | None]], weights: Mapping[str, float]
) -> float | None:
    """The score ``components`` (``(metric, 0-100 score or None)``) would get
    with ``weights``: their weighted mean over the known metrics, the weight
    of unknown ones spread over the others as the scorecard does. ``None``
    when no known metric has a weight."""
    total = weight_sum = 0.0
    for metric, score in components:
        weight = weights.get(metric, 0.0)
        if score is not None and weight > 0:
            total += weight * score
            weight_sum += weight
    return total / weight_sum if weight_sum > 0 else None


@dataclass(frozen=True)
class FittedWeights:
    """Non-negative weights summing to 1 (``weights``), or none found."""

    weights: dict[str, float]
    #: The logistic model's coefficient per metric: churn log-odds fall by
    #: this much per point (of 100) the metric's score rises.
    coefficients: dict[str, float]
    iterations: int


def fit_weights(
    rows: Sequence[Mapping[str, float | None]],
    fallback: Sequence[float],
    churned: Sequence[bool],
    metrics: Sequence[str],
    *,
    l2: float = 1e-3,
    iterations: int = 4000,
) -> FittedWeights | None:
    """Weights for ``metrics`` that make the weighted score separate churners.

    A logistic regression of churn on the metrics' 0-100 scores (scaled to
    0-1), with every coefficient constrained to "a better metric score means
    less churn" (so each can be a scorecard weight), L2-regularised and with
    both classes weighted equally (churners are rare). A metric unknown in a
    row takes that row's ``fallback`` score (its current overall score): the
    scorecard spreads an unknown metric's weight over the known ones, which
    is the same as giving it their weighted mean. Fitted by projected
    gradient descent (step 1/L, L the gradient's Lipschitz bound, so it
    never diverges); the weights are the coefficients scaled to sum to 1.
    ``None`` when both classes are not present or every coefficient is 0 (no
    metric helps).
    """
    n = len(rows)
    y = np.array([1.0 if label else 0.0 for label in churned])
    positives = float(y.sum())
    if n == 0 or positives == 0 or positives == n:
        return None
    x = np.empty((n, len(metrics)))
    for i, row in enumerate(rows):
        for j, metric in enumerate(metrics):
            value = row.get(metric)
            x[i, j] = (fallback[i] if value is None else value) / 100.0
    # Each class carries half of the total weight.
    sample = np.where(y == 1.0, 0.5 / positives, 0.5 / (n - positives))
    # The log loss's curvature is at most 1/4 per row: L bounds the Hessian of
    # the weighted loss in (beta, bias), plus the L2 term.
    with_bias = np.hstack([x, np.ones((n, 1))])
    curvature = 0.25 * float(np.linalg.eigvalsh(with_bias.T @ (with_bias * sample[:, None]))[-1])
    step = 1.0 / (curvature + 2.0 * l2)
    beta = np.zeros(len(metrics))  # churn log-odds fall by beta_j per unit of x_j
    bias = 0.0
    for _ in range(iterations):
        logits = bias - x @ beta
        p = 1.0 / (1.0 + np.exp(-logits))
        error = (p - y) * sample  # d(loss)/d(logit), per row
        grad_beta = -(x.T @ error) + 2.0 * l2 * beta
        grad_bias = float(error.sum())
        beta = np.maximum(0.0, beta - step * grad_beta)
        bias -= step * grad_bias
    total = float(beta.sum())
    if total <= 0:
        return None
    return FittedWeights(
        weights={m: float(b) / total for m, b in zip(metrics, beta, strict=True)},
        coefficients={m: float(b) / 100.0 for m, b in zip(metrics, beta, strict=True)},
        iterations=iterations,
    )
