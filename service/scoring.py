"""Scoring: (account state, as-of time, scorecard) -> health score and bucket changes.

Pure functions, no I/O and no faust or Kafka import. The stream, replay and
the HTTP explain endpoint all call them.

* :func:`evaluate` -- the score of a state at an as-of time; reads the state,
  never changes it.
* :func:`rescore` -- evaluate, then remember the result in the state
  (previous bucket for hysteresis, daily score history for the trend, the
  components at bucket entry for drivers) and return the ``HealthScore`` and
  the ``BucketChange`` if the bucket changed. The first score of an account
  is not a change.
* :func:`on_event` / :func:`on_timer` -- the rescoring cadence (below), the
  one sequence of ``apply`` and ``rescore`` calls that the stream and replay
  both run, so the same events give the same scores and the same changes.

Rescoring cadence (the contract that makes stream and replay equivalent)
-----------------------------------------------------------------------

Rescore points of an account are (a) every *tick*: each multiple of the
scorecard's ``rescore_interval_minutes`` on the event-time clock (epoch-aligned
UTC, e.g. every full hour), and (b) right after each applied event, at the
event's ``occurred_at``. A rescore never goes back in time: its as-of is
raised to the account's last rescore time (``state.scored_at``).

A driver (stream worker or replay) keeps a watermark W: the largest
``occurred_at`` it has processed. For each event e of account A it calls
``on_event(state_A, e, card, watermark=W)`` *before* raising W to e's time;
that runs A's pending ticks up to ``max(W, e.occurred_at)``, applies e and
rescores at e's time. On its timer it calls ``on_timer(state, W, card)`` for
idle accounts (only pending ticks run, so calling it more often changes
nothing). Per account, the sequence of operations is then a function of the
account's events and of W at each of them; for input whose events arrive
in event-time order it depends on the account's events alone, so a stream
and ``vitals replay`` of the same events produce identical scores and
bucket changes (``computed_at``, a wall-clock time, aside).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal, NamedTuple, cast

from schemas.events import Event
from schemas.outputs import BucketChange, Driver, HealthScore, format_utc
from service.account_state import AccountState, ApplyResult
from service.metrics_catalog import next_change_at
from service.scorecard import (
    BUCKET_RANK,
    BUCKETS,
    AllOf,
    AnyOf,
    BucketName,
    Buckets,
    Compare,
    NotOf,
    ResolvedProfile,
    Scorecard,
    condition_metrics,
)
from service.windows import day_of

__all__ = [
    "MAX_DRIVERS",
    "UNKNOWN_STAGE",
    "ComponentResult",
    "Evaluation",
    "Step",
    "change_id",
    "due_ticks",
    "evaluate",
    "evaluate_condition",
    "health_score",
    "hysteresis_bucket",
    "on_event",
    "on_timer",
    "rescore",
    "score_at",
]

#: Stage reported when the account snapshot has no lifecycle_stage.
UNKNOWN_STAGE: Final = "unknown"
#: Drivers named in a bucket change.
MAX_DRIVERS: Final = 3
_RANKED: Final[tuple[BucketName, ...]] = tuple(reversed(BUCKETS))  # rank -> bucket
_EPS: Final = 1e-9


class ComponentResult(NamedTuple):
    """One weighted metric of an evaluation, unrounded (``weight`` sums to 1 over
    known metrics; ``contribution = score * weight``, the contributions add up
    to the score). Messages round score to 0.1, weight to 0.0001 and
    contribution to 0.01."""

    metric: str
    value: float | None
    score: float
    weight: float
    contribution: float


@dataclass(frozen=True)
class Evaluation:
    """Everything a score is made of; deterministic in (state, as_of, scorecard)."""

    account_id: str
    as_of: int
    score: float
    bucket: BucketName
    grade: Literal["A", "B", "C", "D", "F"]
    stage: str
    profile: str
    scorecard: tuple[str, str]
    components: tuple[ComponentResult, ...]
    #: Every metric evaluated (weighted and gate-only); ``None`` = unknown.
    values: Mapping[str, float | None]
    missing: tuple[str, ...]
    #: Share (0-1) of the profile's weight carried by known metrics.
    weight_share: float
    low_confidence: bool
    #: Bucket from score and hysteresis alone, before gates and policy.
    score_bucket: BucketName
    #: Gates whose cap is below ``score_bucket`` (they decided the bucket).
    capping_gates: tuple[str, ...]
    gates_fired: tuple[str, ...]
    delta_7d: float | None
    delta_30d: float | None


class Step:
    """What one cadence step produced: the apply outcome (events only), the
    newest evaluation (``None`` when nothing was rescored) and the bucket
    changes in order. ``score`` builds the ``HealthScore`` message on first
    access, so a caller that does not publish every score does not pay for it.
    """

    __slots__ = ("_now_ms", "_score", "changes", "evaluation", "result")

    def __init__(
        self,
        result: ApplyResult | None,
        evaluation: Evaluation | None,
        changes: list[BucketChange],
        *,
        now_ms: int | None = None,
    ) -> None:
        self.result = result
        self.evaluation = evaluation
        self.changes = changes
        self._now_ms = now_ms
        self._score: HealthScore | None = None

    @property
    def score(self) -> HealthScore | None:
        """The newest score message, or ``None`` when nothing was rescored."""
        if self._score is None and self.evaluation is not None:
            self._score = health_score(self.evaluation, now_ms=self._now_ms)
        return self._score

    def __repr__(self) -> str:
        bucket = None if self.evaluation is None else self.evaluation.bucket
        return f"Step(result={self.result}, bucket={bucket}, changes={len(self.changes)})"


# ------------------------------------------------------------------ pieces


def evaluate_condition(
    cond: Compare | AllOf | AnyOf | NotOf, values: Mapping[str, float | None]
) -> bool | None:
    """Three-valued: ``None`` when a needed metric is unknown and the answer
    depends on it (``all`` with a false part is false, ``any`` with a true
    part is true, whatever is unknown)."""
    if isinstance(cond, Compare):
        value = values.get(cond.metric)
        if value is None:
            return None
        op, ref = cond.op, cond.value
        if op == "<":
            return value < ref
        if op == "<=":
            return value <= ref
        if op == ">":
            return value > ref
        if op == ">=":
            return value >= ref
        if op == "==":
            return value == ref
        return value != ref
    if isinstance(cond, NotOf):
        inner = evaluate_condition(cond.not_, values)
        return None if inner is None else not inner
    parts = [
        evaluate_condition(sub, values)
        for sub in (cond.all if isinstance(cond, AllOf) else cond.any)
    ]
    decisive = isinstance(cond, AnyOf)  # the value that settles the combinator
    if decisive in parts:
        return decisive
    if None in parts:
        return None
    return not decisive


def _plain_bucket(score: float, buckets: Buckets) -> int:
    if score >= buckets.green:
        return 2
    if score >= buckets.yellow:
        return 1
    return 0


def hysteresis_bucket(score: float, previous: str | None, buckets: Buckets) -> BucketName:
    """Bucket of ``score`` given the previous bucket.

    Moving up needs ``score >= threshold + hysteresis``, moving down needs
    ``score < threshold - hysteresis``; in between the previous bucket stays.
    Formally ``clamp(previous, plain(score - h), plain(score + h))``, which
    is idempotent: re-evaluating with the bucket it returned gives it back.
    Without a previous bucket the plain thresholds apply.
    """
    if previous is None:
        return _RANKED[_plain_bucket(score, buckets)]
    low = _plain_bucket(score - buckets.hysteresis, buckets)
    high = _plain_bucket(score + buckets.hysteresis, buckets)
    return _RANKED[min(high, max(low, BUCKET_RANK[previous]))]


def _score_then(history: Mapping[int, float], day: int) -> float | None:
    # The score in effect on `day`: the last one recorded on or before it.
    exact = history.get(day)
    if exact is not None:
        return exact
    best = -1
    for d in history:
        if best < d <= day:
            best = d
    return history[best] if best >= 0 else None


def _delta(score: float, then: float | None) -> float | None:
    return None if then is None else round(score - then, 1)


def change_id(account_id: str, from_bucket: str, to_bucket: str, as_of: int) -> str:
    """Deterministic id of a bucket change: sha256 of ``account|from|to|as_of`` (32 hex)."""
    digest = hashlib.sha256(f"{account_id}|{from_bucket}|{to_bucket}|{as_of}".encode())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- evaluate


def evaluate(state: AccountState, as_of: int, scorecard: Scorecard) -> Evaluation:
    """The health score of ``state`` at ``as_of`` (epoch ms); reads, never writes.

    Hysteresis is relative to the state's current bucket, the trend to its
    score history. Exact for ``as_of`` at or after ``state.clock``.
    """
    snapshot = state.snapshot
    stage_entry = snapshot.get("lifecycle_stage")
    segment_entry = snapshot.get("segment")
    stage = stage_entry[0] if stage_entry is not None else None
    segment = segment_entry[0] if segment_entry is not None else None
    profile = scorecard.profile_for(stage, segment)
    values: dict[str, float | None] = {}
    for metric, extract in profile.extractors:
        value = extract(state, as_of)
        values[metric] = None if value is None else round(value, 4)
    components, missing, share, total = _weigh(profile, values)
    score = round(min(100.0, max(0.0, total)), 1)

    previous = state.bucket
    score_bucket = hysteresis_bucket(score, previous, profile.buckets)
    rank = BUCKET_RANK[score_bucket]
    fired: list[str] = []
    capping: list[str] = []
    held = state.gates
    for gate in profile.gates:
        verdict = evaluate_condition(gate.condition, values)
        if verdict is None:
            fires = gate.fires_on_unknown
        else:
            fires = verdict if gate.when is not None else not verdict
        if not fires and gate.release is not None and gate.name in held:
            # Gate hysteresis: a firing gate holds until its release is true.
            # Idempotent like the bucket hysteresis: re-evaluating with the
            # gates this returns gives the same gates.
            fires = evaluate_condition(gate.release, values) is not True
        if fires:
            fired.append(gate.name)
            if BUCKET_RANK[gate.cap] < BUCKET_RANK[score_bucket]:
                capping.append(gate.name)
            rank = min(rank, BUCKET_RANK[gate.cap])
    policy = profile.missing_data
    low_confidence = share + _EPS < policy.min_weight_share
    if low_confidence:
        if policy.on_low_confidence == "cap":
            rank = min(rank, BUCKET_RANK[policy.cap_bucket])
        elif policy.on_low_confidence == "hold" and previous is not None:
            rank = BUCKET_RANK[previous]

    day = day_of(as_of)
    history = state.score_history
    return Evaluation(
        account_id=state.account_id,
        as_of=as_of,
        score=score,
        bucket=_RANKED[rank],
        grade=profile.grades.grade(score),
        stage=stage or UNKNOWN_STAGE,
        profile=profile.name,
        scorecard=(scorecard.name, scorecard.version),
        components=components,
        values=values,
        missing=tuple(missing),
        weight_share=round(share, 4),
        low_confidence=low_confidence,
        score_bucket=score_bucket,
        capping_gates=tuple(capping),
        gates_fired=tuple(fired),
        delta_7d=_delta(score, _score_then(history, day - 7)),
        delta_30d=_delta(score, _score_then(history, day - 30)),
    )


def _weigh(
    profile: ResolvedProfile, values: Mapping[str, float | None]
) -> tuple[tuple[ComponentResult, ...], list[str], float, float]:
    """Components with redistributed weights, missing metrics, the known
    weight share and the unrounded score.

    Nominal weight of metric m in group g: (W_g / sum W) * (w_m / sum w in g).
    Known metrics share their group's weight in proportion to w_m; groups
    with no known metric give their weight to the other groups in proportion
    to W_g. Unknown metrics get weight 0.
    """
    total_groups = sum(weight for _, weight, _ in profile.groups)
    known_groups = 0.0
    share = 0.0
    known_in: dict[str, float] = {}
    for group, weight, members in profile.groups:
        group_total = sum(w for _, w in members)
        known = sum(w for m, w in members if values[m] is not None)
        known_in[group] = known
        share += weight / total_groups * known / group_total
        if known > 0:
            known_groups += weight
    components: list[ComponentResult] = []
    missing: list[str] = []
    total = 0.0
    scorers = profile.scorers
    for group, weight, members in profile.groups:
        for metric, w in members:
            value = values[metric]
            if value is None:
                missing.append(metric)
                components.append(ComponentResult(metric, None, 0.0, 0.0, 0.0))
                continue
            effective = weight / known_groups * w / known_in[group]
            metric_score = scorers[metric](value)
            contribution = metric_score * effective
            total += contribution
            components.append(ComponentResult(metric, value, metric_score, effective, contribution))
    return tuple(components), missing, share, total


# ----------------------------------------------------------------- rescore


def _baseline(ev: Evaluation) -> dict[str, tuple[float | None, float]]:
    base: dict[str, tuple[float | None, float]] = {
        c.metric: (c.value, round(c.contribution, 2)) for c in ev.components
    }
    for metric, value in ev.values.items():
        base.setdefault(metric, (value, 0.0))
    return base


def _drivers(
    before: Mapping[str, tuple[float | None, float]],
    ev: Evaluation,
    scorecard: Scorecard,
    *,
    down: bool,
) -> list[Driver]:
    """Metrics that moved the account since it entered its previous bucket.

    First the metrics of the gates that now cap the bucket (when their value
    changed), then the metrics whose value changed and whose contribution
    moved in the direction of the change, largest first; ties by name. At
    most MAX_DRIVERS.
    """
    after = _baseline(ev)
    profile = {p.name: p for p in scorecard.resolved_profiles}[ev.profile]
    cause: set[str] = set()
    for gate in profile.gates:
        if gate.name in ev.capping_gates:
            cause.update(condition_metrics(gate.condition))
    rows: list[tuple[int, float, str, Driver]] = []
    for metric in dict.fromkeys([*before, *after]):
        v0, c0 = before.get(metric, (None, 0.0))
        v1, c1 = after.get(metric, (None, 0.0))
        delta = round(c1 - c0, 2)
        gate_moved = metric in cause and v0 != v1
        # A metric whose value stayed put did not drive anything, even if its
        # contribution moved because other metrics appeared or went missing.
        toward = v0 != v1 and (delta < 0 if down else delta > 0)
        if not (gate_moved or toward):
            continue
        driver = Driver(metric=metric, before=v0, after=v1, contribution_delta=delta)
        rows.append((0 if gate_moved else 1, -abs(delta), metric, driver))
    rows.sort(key=lambda row: row[:3])
    return [row[3] for row in rows[:MAX_DRIVERS]]


def _rescore(
    state: AccountState, as_of: int, scorecard: Scorecard
) -> tuple[Evaluation, BucketChange | None]:
    if state.scored_at is not None and as_of < state.scored_at:
        as_of = state.scored_at
    day = day_of(as_of)
    memo = state._memo
    if (
        memo is not None
        and memo[0] is scorecard
        and memo[1] == state._version
        and memo[2] == day
        and as_of < memo[3]
    ):
        # Nothing applied and no metric can have moved since: same evaluation
        # (hysteresis is idempotent), only the as-of time differs.
        ev = replace(memo[4], as_of=as_of)
    else:
        ev = evaluate(state, as_of, scorecard)
        state._memo = (scorecard, state._version, day, next_change_at(state, as_of), ev)
    previous_bucket, previous_score = state.bucket, state.score
    change: BucketChange | None = None
    if previous_bucket is None:
        state.baseline = _baseline(ev)
    elif ev.bucket != previous_bucket:
        change = BucketChange(
            change_id=change_id(state.account_id, previous_bucket, ev.bucket, as_of),
            account_id=state.account_id,
            from_bucket=cast(BucketName, previous_bucket),
            to_bucket=ev.bucket,
            score=ev.score,
            previous_score=previous_score if previous_score is not None else ev.score,
            drivers=_drivers(
                state.baseline,
                ev,
                scorecard,
                down=BUCKET_RANK[ev.bucket] < BUCKET_RANK[previous_bucket],
            ),
            as_of=format_utc(as_of),
        )
        state.baseline = _baseline(ev)
    state.bucket = ev.bucket
    state.gates = list(ev.gates_fired)
    state.score = ev.score
    state.scored_at = as_of
    state.score_history[day] = ev.score
    if day > state.pruned_day:
        state.compact(max(as_of, state.last_event_at or as_of))
    return ev, change


def health_score(ev: Evaluation, *, now_ms: int | None = None) -> HealthScore:
    """The ``vitals.health.scores`` message of an evaluation.

    ``computed_at`` is the wall clock (``now_ms`` overrides it); everything
    else is determined by the evaluation. Built as one dict and validated
    once (cheaper than constructing the nested models one by one).
    """
    computed = int(time.time() * 1000) if now_ms is None else now_ms
    return HealthScore.model_validate(
        {
            "account_id": ev.account_id,
            "score": ev.score,
            "bucket": ev.bucket,
            "grade": ev.grade,
            "stage": ev.stage,
            "scorecard": {"name": ev.scorecard[0], "version": ev.scorecard[1]},
            "components": [
                {
                    "metric": c.metric,
                    "value": c.value,
                    "score": round(c.score, 1),
                    "weight": round(c.weight, 4),
                    "contribution": round(c.contribution, 2),
                }
                for c in ev.components
            ],
            "missing": list(ev.missing),
            "trend": {"delta_7d": ev.delta_7d, "delta_30d": ev.delta_30d},
            "as_of": format_utc(ev.as_of),
            "computed_at": format_utc(computed),
            "low_confidence": ev.low_confidence,
        }
    )


def rescore(
    state: AccountState, as_of: int, scorecard: Scorecard, *, now_ms: int | None = None
) -> tuple[HealthScore, BucketChange | None]:
    """Score the account at ``as_of`` and remember the result in ``state``.

    ``as_of`` earlier than the last rescore (``state.scored_at``) is raised to
    it. Returns the score message and the bucket change (``None`` when the
    bucket stayed, and for the first score of an account). Deterministic:
    the same state, as-of and scorecard give the same result (apart from
    ``computed_at``).
    """
    ev, change = _rescore(state, as_of, scorecard)
    return health_score(ev, now_ms=now_ms), change


def score_at(
    state: AccountState, as_of: int, scorecard: Scorecard, *, now_ms: int | None = None
) -> HealthScore:
    """The score at ``as_of`` without remembering it (explain, replay output)."""
    return health_score(evaluate(state, as_of, scorecard), now_ms=now_ms)


# ----------------------------------------------------------------- cadence


def due_ticks(state: AccountState, until: int, scorecard: Scorecard) -> range:
    """Tick times after the account's last rescore up to ``until`` (inclusive).

    Empty for an account never scored: its first rescore is its first event.
    """
    if state.scored_at is None:
        return range(0)
    step = scorecard.rescore_interval_ms
    return range((state.scored_at // step + 1) * step, until + 1, step)


def _run_ticks(
    state: AccountState, until: int, scorecard: Scorecard, changes: list[BucketChange]
) -> Evaluation | None:
    last: Evaluation | None = None
    for tick in due_ticks(state, until, scorecard):
        last, change = _rescore(state, tick, scorecard)
        if change is not None:
            changes.append(change)
    return last


def on_event(
    state: AccountState,
    event: Event,
    scorecard: Scorecard,
    *,
    watermark: int | None = None,
    now_ms: int | None = None,
) -> Step:
    """One event through the cadence: pending ticks up to ``max(watermark,
    event time)``, then ``apply``, then (if applied) a rescore at the event's
    time. ``watermark`` is the driver's largest ``occurred_at`` *before* this
    event (``None``: none yet)."""
    changes: list[BucketChange] = []
    until = event.occurred_at if watermark is None else max(watermark, event.occurred_at)
    last = _run_ticks(state, until, scorecard, changes)
    result = state.apply(event)
    if result is ApplyResult.APPLIED:
        last, change = _rescore(state, event.occurred_at, scorecard)
        if change is not None:
            changes.append(change)
    return Step(result, last, changes, now_ms=now_ms)


def on_timer(
    state: AccountState, watermark: int, scorecard: Scorecard, *, now_ms: int | None = None
) -> Step:
    """Run the account's pending ticks up to ``watermark`` (silence decays health)."""
    changes: list[BucketChange] = []
    last = _run_ticks(state, watermark, scorecard, changes)
    return Step(None, last, changes, now_ms=now_ms)
