"""The back-test report: labelled snapshots of each scorecard turned into figures.

:func:`build_report` takes what :mod:`service.backtest.snapshots` scored and
what :mod:`service.backtest.outcomes` knows, labels every snapshot, and
computes each figure (docs/backtest.md says how to read them) into one
JSON-ready dict; :mod:`service.backtest.report` draws it.

How the figures deal with what the data is:

* **Dependence.** An account has a snapshot at every date and they are
  correlated (an account red today is likely red next week), so the
  intervals are percentile bootstraps over *accounts* (whole accounts are
  resampled, with all their snapshots), not over snapshots.
* **Out-of-time weights.** Suggested weights are fitted on the snapshots of
  the earlier dates and judged on those of the later dates.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

from schemas.outputs import format_utc
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
from service.backtest.outcomes import Label, Outcomes
from service.backtest.snapshots import ScoredHistory, Snapshot
from service.model.scorecard import ResolvedProfile, Scorecard

__all__ = ["REPORT_VERSION", "BacktestOptions", "Labelled", "build_report", "label_snapshots"]

#: Version of the report's JSON layout.
REPORT_VERSION: Final = 1
DAY_MS: Final = 86_400_000
BUCKETS: Final = ("green", "yellow", "red")
GRADES: Final = ("A", "B", "C", "D", "F")
#: A metric whose AUC is this close to 0.5 is called not predictive.
NOT_PREDICTIVE: Final = 0.05
#: Fewer churned (or retained) snapshots than this: too few to judge.
MIN_CLASS: Final = 5
#: Fewer churned accounts than this: the report says the sample is small.
FEW_CHURNERS: Final = 10
#: Points of the ROC curve kept in the report.
ROC_POINTS: Final = 120
#: Churned-while-green accounts listed.
MAX_GREEN_CHURNERS: Final = 50


@dataclass(frozen=True)
class BacktestOptions:
    """What the back-test was asked (times in epoch ms)."""

    horizon_ms: int
    every_ms: int
    dates: tuple[int, ...]
    observed_until: int
    capacity: int = 20
    fit_share: float = 0.5
    bootstrap: int = 200
    seed: int = 0


@dataclass
class Labelled:
    """The snapshots that have a label, with it, and what was dropped."""

    snapshots: list[Snapshot]
    churned: list[bool]
    dropped: Counter[str]


def label_snapshots(
    history: ScoredHistory, outcomes: Outcomes, options: BacktestOptions
) -> Labelled:
    """Label every snapshot (:meth:`Outcomes.label`); keep the labelled ones."""
    kept: list[Snapshot] = []
    churned: list[bool] = []
    dropped: Counter[str] = Counter()
    for snapshot in history.snapshots:
        label = outcomes.label(
            snapshot.account_id, snapshot.at, options.horizon_ms, options.observed_until
        )
        if label in (Label.CHURNED, Label.RETAINED):
            kept.append(snapshot)
            churned.append(label is Label.CHURNED)
        else:
            dropped[label.value] += 1
    return Labelled(kept, churned, dropped)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]


def _figure(value: float | None, ci: tuple[float, float] | None) -> dict[str, Any]:
    return {"value": _round(value), "ci": _interval(ci)}


def build_report(
    histories: Sequence[tuple[ScoredHistory, Scorecard | None, str]],
    outcomes: Outcomes,
    options: BacktestOptions,
    source: Mapping[str, Any],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole report: settings, method, outcomes and, per scorecard
    (``(history, scorecard or None, file)``), its figures."""
    churned_accounts = outcomes.churned_accounts()
    report: dict[str, Any] = {
        "report": "vitals backtest",
        "version": REPORT_VERSION,
        "generated_at": format_utc(int(time.time() * 1000)),
        "source": dict(source),
        "settings": {
            "horizon_days": options.horizon_ms / DAY_MS,
            "every_days": options.every_ms / DAY_MS,
            "dates": [format_utc(d) for d in options.dates],
            "observed_until": format_utc(options.observed_until),
            "capacity": options.capacity,
            "fit_share": options.fit_share,
            "bootstrap": options.bootstrap,
            "seed": options.seed,
        },
        "method": _method(options),
        "outcomes": {
            "churned_accounts": len(churned_accounts),
            "renewed_accounts": sum(1 for t in outcomes.renewals.values() if t),
            "churn_notices": sum(1 for t in outcomes.notices.values() if t),
        },
        "scorecards": [],
    }
    for history, scorecard, file in histories:
        if progress is not None:
            progress(f"figures of scorecard {history.scorecard[0]} v{history.scorecard[1]}")
        figures = scorecard_figures(history, outcomes, options, scorecard)
        figures["scorecard"] = {
            "name": history.scorecard[0],
            "version": history.scorecard[1],
            "file": file,
            "source": history.source,
        }
        figures["notes"] = list(history.notes)
        churned = figures["sample"]["churned_accounts"]
        if churned < FEW_CHURNERS:
            figures["notes"].append(
                f"only {churned} churned account(s) among the labelled snapshots: every figure "
                "rests on them, and the intervals understate how little that is"
            )
        report["scorecards"].append(figures)
    # What charts and tables call each scorecard: its name and version, and its
    # file when two scorecards share them.
    names = Counter(
        (f["scorecard"]["name"], f["scorecard"]["version"]) for f in report["scorecards"]
    )
    for figures in report["scorecards"]:
        card = figures["scorecard"]
        card["label"] = f"{card['name']} v{card['version']}"
        if names[(card["name"], card["version"])] > 1:
            card["label"] += f" ({card['file']})"
    return report


def _method(options: BacktestOptions) -> dict[str, str]:
    horizon = f"{options.horizon_ms / DAY_MS:g} days"
    return {
        "scores": (
            "At each snapshot date every account's score is taken exactly as `vitals replay "
            "--as-of DATE` gives it (or, from the history database, the newest score stored at "
            "or before the date)."
        ),
        "label": (
            f"A snapshot is a churner when the account churned within {horizon} after it; it is "
            "retained when the account churned only later, renewed after the date, or the data "
            "runs past the horizon without a churn. Snapshots after an account's churn are "
            "dropped, and so are those whose horizon runs past what is known (censored)."
        ),
        "dependence": (
            "Snapshots of one account are not independent: every interval is a 95% percentile "
            f"bootstrap over accounts ({options.bootstrap} resamples of whole accounts with "
            "all their snapshots), not over snapshots."
        ),
        "split": (
            f"Suggested weights are fitted on the snapshots of the first {options.fit_share:.0%} "
            "of the dates and judged on the later dates. The labels of the earlier dates look "
            f"{horizon} ahead, so both periods can share outcomes: out-of-time for the scores, "
            "not for the outcomes."
        ),
    }


def scorecard_figures(
    history: ScoredHistory,
    outcomes: Outcomes,
    options: BacktestOptions,
    scorecard: Scorecard | None,
) -> dict[str, Any]:
    """Every figure of one scorecard's snapshots."""
    labelled = label_snapshots(history, outcomes, options)
    snaps, churned = labelled.snapshots, labelled.churned
    scores = [s.score for s in snaps]
    accounts = [s.account_id for s in snaps]
    buckets = [s.bucket for s in snaps]
    grades = [s.grade for s in snaps]
    positives = sum(churned)

    def statistic(weights: Sequence[float] | None) -> dict[str, float | None]:
        found: dict[str, float | None] = {
            "roc_auc": roc_auc(scores, churned, weights),
            "pr_auc": pr_auc(scores, churned, weights),
        }
        for name, groups in (("bucket", buckets), ("grade", grades)):
            for group, rate in churn_rates(groups, churned, weights).items():
                found[f"{name}:{group}"] = rate.rate
        return found

    intervals = bootstrap(accounts, statistic, options.bootstrap, options.seed) if snaps else {}
    point = statistic(None) if snaps else {}
    figures: dict[str, Any] = {
        "sample": {
            "snapshots": len(snaps),
            "accounts": len(set(accounts)),
            "churned_snapshots": positives,
            "retained_snapshots": len(snaps) - positives,
            "churned_accounts": len({a for a, c in zip(accounts, churned, strict=True) if c}),
            "prevalence": _round(positives / len(snaps)) if snaps else None,
            "dropped_after_churn": labelled.dropped.get(Label.AFTER_CHURN.value, 0),
            "dropped_unknown_outcome": labelled.dropped.get(Label.UNKNOWN.value, 0),
        },
        "roc_auc": _figure(point.get("roc_auc"), intervals.get("roc_auc")),
        "roc_curve": _thin(roc_curve(scores, churned)),
        "pr_auc": {
            **_figure(point.get("pr_auc"), intervals.get("pr_auc")),
            "baseline": _round(positives / len(snaps)) if snaps else None,
        },
    }
    figures["churn_rate_by_bucket"] = _rates(
        BUCKETS, "bucket", churn_rates(buckets, churned), intervals
    )
    known = [row["rate"] for row in figures["churn_rate_by_bucket"] if row["rate"] is not None]
    figures["rises_green_to_red"] = len(known) >= 2 and all(a < b for a, b in pairwise(known))
    figures["churn_rate_by_grade"] = _rates(
        GRADES, "grade", churn_rates(grades, churned), intervals
    )
    figures["lift_by_decile"] = [
        {
            "decile": row.decile,
            "snapshots": row.rows,
            "churned": row.churned,
            "rate": _round(row.rate),
            "lift": _round(row.lift, 3),
            "score_from": row.score_from,
            "score_to": row.score_to,
        }
        for row in lift_by_decile(scores, churned, [f"{s.account_id}|{s.at}" for s in snaps])
    ]
    figures["precision_at_k"] = _precision(snaps, churned, options.capacity, positives)
    figures["lead_time"] = _lead_times(history, outcomes, options)
    figures["at_churn"] = _at_churn(history, outcomes, options.horizon_ms)
    figures["metrics"] = _metrics(snaps, churned, scorecard)
    figures["weights"] = _weights(snaps, churned, options, scorecard)
    figures["leakage"] = _leakage(snaps, churned, outcomes)
    return figures


def _thin(points: list[tuple[float, float]]) -> list[list[float]]:
    # Enough points to draw the curve; always the first and the last.
    if len(points) > ROC_POINTS:
        step = (len(points) - 1) / (ROC_POINTS - 1)
        points = [points[round(i * step)] for i in range(ROC_POINTS)]
    return [[round(x, 4), round(y, 4)] for x, y in points]


def _rates(
    names: Sequence[str],
    kind: str,
    rates: Mapping[str, Any],
    intervals: Mapping[str, tuple[float, float] | None],
) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        rate = rates.get(name)
        rows.append(
            {
                kind: name,
                "snapshots": int(rate.rows) if rate else 0,
                "churned": int(rate.churned) if rate else 0,
                "rate": _round(rate.rate) if rate else None,
                "ci": _interval(intervals.get(f"{kind}:{name}")),
            }
        )
    return rows


def _precision(
    snaps: Sequence[Snapshot], churned: Sequence[bool], k: int, positives: int
) -> dict[str, Any]:
    found = precision_at_k(
        [s.at for s in snaps], [s.account_id for s in snaps], [s.score for s in snaps], churned, k
    )
    return {
        "k": k,
        "precision": _round(found.precision),
        "recall": _round(found.recall),
        "base_rate": _round(positives / len(snaps)) if snaps else None,
        "by_date": [
            {"date": format_utc(date), "flagged": flagged, "churned": hits, "churners": total}
            for date, flagged, hits, total in found.by_date
        ],
    }


def _lead_times(
    history: ScoredHistory, outcomes: Outcomes, options: BacktestOptions
) -> dict[str, Any]:
    """Days from an account's first red (first yellow or red) to its churn.

    Searched from ``horizon`` before the churn (not before the first
    snapshot date: earlier, a replay's windows are still filling up) to the
    moment the churn became known: red that a churn notice caused is the
    notice's warning, not the score's.
    """
    horizon = options.horizon_ms
    weeks = max(1, -(-horizon // (7 * DAY_MS)))
    edges = [7.0 * w for w in range(weeks)] + [horizon / DAY_MS]
    result: dict[str, Any] = {
        "horizon_days": horizon / DAY_MS,
        "not_before": format_utc(options.dates[0]) if options.dates else None,
    }
    churns = outcomes.churned_accounts()
    known = outcomes.churn_known(horizon)
    first_date = options.dates[0] if options.dates else 0
    judged = sorted(a for a in churns if a in history.timelines and churns[a] > first_date)
    for name, targets in (("red", ("red",)), ("yellow", ("yellow", "red"))):
        leads: list[float] = []
        from_start = 0
        for account_id in judged:
            churned_at = churns[account_id]
            since = max(churned_at - horizon, first_date)
            first = first_time_in(history.timelines[account_id], targets, since, known[account_id])
            if first is not None:
                leads.append((churned_at - first) / DAY_MS)
                from_start += first == since
        spread = quartiles(sorted(leads))
        result[name] = {
            "accounts": len(judged),
            "reached": len(leads),
            "never": len(judged) - len(leads),
            "already_at_start": from_start,
            "quartiles_days": None if spread is None else [round(q, 1) for q in spread],
            "histogram": [
                {"from_days": edges[i], "to_days": edges[i + 1], "accounts": count}
                for i, count in enumerate(histogram(leads, edges))
            ],
        }
    return result


def _at_churn(history: ScoredHistory, outcomes: Outcomes, horizon: int) -> dict[str, Any]:
    """Buckets just before each churn became known, and the accounts green then."""
    churns = outcomes.churned_accounts()
    known = outcomes.churn_known(horizon)
    by_bucket: Counter[str] = Counter()
    green: list[dict[str, Any]] = []
    for account_id in sorted(history.before_churn, key=lambda a: (churns.get(a, 0), a)):
        message = history.before_churn[account_id]
        by_bucket[message["bucket"]] += 1
        if message["bucket"] == "green":
            components = sorted(
                (c for c in message["components"] if c["value"] is not None),
                key=lambda c: c["score"],
            )
            green.append(
                {
                    "account_id": account_id,
                    "churned_at": format_utc(churns[account_id]),
                    "known_at": format_utc(known[account_id]),
                    "score": message["score"],
                    "grade": message["grade"],
                    "stage": message.get("stage"),
                    "low_confidence": message.get("low_confidence", False),
                    "weakest": components[:4],
                    "strongest": components[::-1][:3],
                    "missing": message.get("missing", []),
                    "explanation": message,
                }
            )
    return {
        "accounts": sum(by_bucket.values()),
        "known_by_notice": sum(1 for a in history.before_churn if known[a] < churns[a]),
        "by_bucket": {bucket: by_bucket.get(bucket, 0) for bucket in BUCKETS},
        "churned_while_green": green[:MAX_GREEN_CHURNERS],
        "churned_while_green_total": len(green),
    }


def _scorecard_direction(scorecard: Scorecard | None, metric: str) -> str | None:
    if scorecard is None or metric not in scorecard.metrics:
        return None
    directions = set()
    for profile in scorecard.resolved_profiles:
        norm = profile.normalise.get(metric)
        if norm is None:
            continue
        if norm.bands is not None:
            low, high = norm.bands[0].score, norm.bands[-1].score
        else:
            assert norm.poor is not None and norm.good is not None
            low, high = norm.poor, norm.good
        directions.add("higher is healthier" if high > low else "lower is healthier")
    return directions.pop() if len(directions) == 1 else ("mixed" if directions else None)


def _metrics(
    snaps: Sequence[Snapshot], churned: Sequence[bool], scorecard: Scorecard | None
) -> list[dict[str, Any]]:
    values: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    component_scores: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    weights: dict[str, float] = defaultdict(float)
    for snapshot, label in zip(snaps, churned, strict=True):
        for metric, value in snapshot.values.items():
            if value is not None:
                values[metric].append((value, label))
        for c in snapshot.components:
            weights[c.metric] += c.weight
            if c.score is not None:
                component_scores[c.metric].append((c.score, label))
    rows = []
    for metric in sorted(values.keys() | component_scores.keys()):
        known = values.get(metric, [])
        positives = sum(1 for _, label in known if label)
        auc_value = roc_auc([v for v, _ in known], [lab for _, lab in known]) if known else None
        scored = component_scores.get(metric, [])
        auc_score = roc_auc([v for v, _ in scored], [lab for _, lab in scored]) if scored else None
        if positives < MIN_CLASS or len(known) - positives < MIN_CLASS or auc_value is None:
            verdict = "too few snapshots"
        elif abs(auc_value - 0.5) < NOT_PREDICTIVE:
            verdict = "not predictive"
        elif auc_score is None:
            verdict = "predictive (not weighted)"
        elif auc_score < 0.5 - NOT_PREDICTIVE:
            verdict = "weighed the wrong way round"
        elif auc_score <= 0.5 + NOT_PREDICTIVE:
            verdict = "predictive, but not as the scorecard scores it"
        else:
            verdict = "agrees"
        direction = None
        if auc_value is not None and abs(auc_value - 0.5) >= NOT_PREDICTIVE:
            direction = "higher is healthier" if auc_value > 0.5 else "lower is healthier"
        rows.append(
            {
                "metric": metric,
                "snapshots_known": len(known),
                "churned_known": positives,
                "auc_of_value": _round(auc_value),
                "direction_in_data": direction,
                "auc_of_metric_score": _round(auc_score),
                "scorecard_direction": _scorecard_direction(scorecard, metric),
                "mean_weight": _round(weights[metric] / len(snaps)) if snaps else None,
                "verdict": verdict,
            }
        )
    return rows


def _profile(scorecard: Scorecard, name: str) -> ResolvedProfile:
    for profile in scorecard.resolved_profiles:
        if profile.name == name:
            return profile
    return scorecard.resolved_profiles[-1]  # the default


def _nominal_weights(profile: ResolvedProfile) -> dict[str, float]:
    # The profile's share of each metric with every metric known.
    groups = profile.groups
    total = sum(weight for _, weight, _ in groups)
    shares: dict[str, float] = {}
    for _, weight, members in groups:
        inside = sum(w for _, w in members)
        for metric, w in members:
            shares[metric] = weight / total * w / inside
    return shares


def _weights(
    snaps: Sequence[Snapshot],
    churned: Sequence[bool],
    options: BacktestOptions,
    scorecard: Scorecard | None,
) -> dict[str, Any]:
    dates = sorted({s.at for s in snaps})
    result: dict[str, Any] = {"fitted": False}
    if len(dates) < 2:
        result["reason"] = "needs at least two snapshot dates"
        return result
    n_fit = min(len(dates) - 1, max(1, round(len(dates) * options.fit_share)))
    split = dates[n_fit]
    fit = [i for i, s in enumerate(snaps) if s.at < split]
    judge = [i for i, s in enumerate(snaps) if s.at >= split]
    result.update(
        fit_dates=[format_utc(d) for d in dates[:n_fit]],
        judge_dates=[format_utc(d) for d in dates[n_fit:]],
        fit_snapshots=len(fit),
        judge_snapshots=len(judge),
        fit_churned=sum(churned[i] for i in fit),
        judge_churned=sum(churned[i] for i in judge),
    )
    if min(result["fit_churned"], len(fit) - result["fit_churned"]) < MIN_CLASS:
        result["reason"] = f"fewer than {MIN_CLASS} churned or retained snapshots to fit on"
        return result
    metrics = sorted({c.metric for i in fit for c in snaps[i].components})
    rows = [{c.metric: c.score for c in snaps[i].components} for i in fit]
    fitted = fit_weights(rows, [snaps[i].score for i in fit], [churned[i] for i in fit], metrics)
    if fitted is None:
        result["reason"] = "no metric separates churners on the fit dates"
        return result
    suggested = fitted.weights

    def rescored(indices: Sequence[int]) -> list[float]:
        out = []
        for i in indices:
            components = [(c.metric, c.score) for c in snaps[i].components]
            score = weighted_score(components, suggested)
            out.append(snaps[i].score if score is None else score)
        return out

    judge_labels = [churned[i] for i in judge]
    judge_current = [snaps[i].score for i in judge]
    judge_suggested = rescored(judge)

    def statistic(weights: Sequence[float] | None) -> dict[str, float | None]:
        return {
            "current": roc_auc(judge_current, judge_labels, weights),
            "suggested": roc_auc(judge_suggested, judge_labels, weights),
        }

    intervals = (
        bootstrap([snaps[i].account_id for i in judge], statistic, options.bootstrap, options.seed)
        if judge
        else {}
    )
    point = statistic(None)
    carried: dict[str, float] = defaultdict(float)
    for i in fit:
        for c in snaps[i].components:
            carried[c.metric] += c.weight / len(fit)
    # The profile most fit snapshots were scored by (default when not known).
    profiles = Counter(snaps[i].profile or "default" for i in fit)
    profile_name, profile_rows = profiles.most_common(1)[0]
    profile = _profile(scorecard, profile_name) if scorecard is not None else None
    nominal = _nominal_weights(profile) if profile is not None else {}
    fit_labels = [churned[i] for i in fit]
    result.update(
        fitted=True,
        judge_auc_current=_figure(point["current"], intervals.get("current")),
        judge_auc_suggested=_figure(point["suggested"], intervals.get("suggested")),
        fit_auc_current=_round(roc_auc([snaps[i].score for i in fit], fit_labels)),
        fit_auc_suggested=_round(roc_auc(rescored(fit), fit_labels)),
        profile=profile.name if profile is not None else profile_name,
        profile_share=_round(profile_rows / len(fit)),
        weights=[
            {
                "metric": metric,
                "scorecard": _round(nominal.get(metric)) if scorecard is not None else None,
                "carried": _round(carried.get(metric, 0.0)),
                "suggested": _round(suggested[metric]),
            }
            for metric in metrics
        ],
        groups_yaml=_groups_yaml(profile, suggested, set(metrics)) if profile is not None else None,
    )
    return result


def _groups_yaml(profile: ResolvedProfile, suggested: Mapping[str, float], seen: set[str]) -> str:
    """The profile's ``groups:`` with the suggested weights (percent)."""
    lines = [f"# groups of profile {profile.name} with the suggested weights (percent)", "groups:"]
    placed: set[str] = set()
    for group, _, members in profile.groups:
        placed.update(m for m, _ in members)
        judged = [(m, round(100 * suggested[m], 1)) for m, _ in members if m in seen]
        unseen = [m for m, _ in members if m not in seen]
        total = round(sum(w for _, w in judged), 1)
        if total <= 0:
            lines.append(f"  # {group}: no suggested weight for any of its metrics")
            continue
        lines.append(f"  {group}:")
        lines.append(f"    weight: {total:g}")
        lines.append("    metrics:")
        lines.extend(f"      {metric}: {weight:g}" for metric, weight in judged)
        if unseen:
            lines.append(f"      # not in the fit snapshots (keep or judge): {', '.join(unseen)}")
    others = sorted(m for m in suggested if m not in placed and suggested[m] > 0)
    if others:
        lines.append(
            "  # weighted in other profiles only: "
            + ", ".join(f"{m} {100 * suggested[m]:.1f}" for m in others)
        )
    return "\n".join(lines) + "\n"


def _leakage(
    snaps: Sequence[Snapshot], churned: Sequence[bool], outcomes: Outcomes
) -> dict[str, Any]:
    noticed = [outcomes.noticed_by(s.account_id, s.at) for s in snaps]
    kept = [i for i, flag in enumerate(noticed) if not flag]
    return {
        "churned_snapshots_after_notice": sum(
            1 for flag, label in zip(noticed, churned, strict=True) if flag and label
        ),
        "snapshots_after_notice": sum(noticed),
        "roc_auc_without_them": _round(
            roc_auc([snaps[i].score for i in kept], [churned[i] for i in kept])
        ),
    }
