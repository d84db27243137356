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
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

import orjson
from mypy_extensions import mypyc_attr
from pydantic import BaseModel
from pydantic_core import to_json

from schemas.events import Event
from schemas.outputs import (
    BucketChange,
    Component,
    Driver,
    GateOut,
    HealthScore,
    Pulse,
    ScorecardRef,
    Trend,
    format_utc,
)
from service.model.account_state import (
    NOTHING_REMOVED,
    PARTS,
    RETAIN_DAYS,
    AccountState,
    ApplyResult,
)
from service.model.metrics_catalog import (
    EXACT_TIME,
    PAST_SHIFT,
    Extractor,
    Stability,
    next_change_at,
)
from service.model.scorecard import (
    BUCKET_RANK,
    BUCKETS,
    AllOf,
    AnyCondition,
    AnyOf,
    AtLeast,
    BucketName,
    Buckets,
    Compare,
    CompiledCondition,
    MissingData,
    NotOf,
    ResolvedProfile,
    Scorecard,
    compile_condition,
    condition_metrics,
)
from service.model.windows import DAY_MS, day_of

__all__ = [
    "MAX_DRIVERS",
    "SCORE_SCHEMA_VERSION",
    "UNKNOWN_STAGE",
    "ComponentResult",
    "Evaluation",
    "GateResult",
    "OnPoint",
    "PulseView",
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
    "score_json",
]

#: ``schema_version`` of the score messages built here.
SCORE_SCHEMA_VERSION: Final = 2
#: Stage reported when the account snapshot has no lifecycle_stage.
UNKNOWN_STAGE: Final = "unknown"
#: Drivers named in a bucket change.
MAX_DRIVERS: Final = 3
_RANKED: Final[tuple[BucketName, ...]] = tuple(reversed(BUCKETS))  # rank -> bucket
_EPS: Final = 1e-9
#: ``AccountState.changed_since`` when nothing changed.
_NO_CHANGE: Final = 1 << 62
#: A metric at day D reads no day before D - _READ_SPAN (the retained horizon).
_READ_SPAN: Final = RETAIN_DAYS - 1
_M = TypeVar("_M", bound=BaseModel)
GradeName = Literal["A", "B", "C", "D", "F"]


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


class GateResult(NamedTuple):
    """A gate that fired: its reason, what it does (``cap`` or ``lift``) and to
    which bucket, and whether it decided the account's bucket."""

    name: str
    reason: str
    effect: Literal["cap", "lift"]
    bucket: BucketName
    decided: bool


class PulseView(NamedTuple):
    """A live CSM pulse, as a score shows it."""

    rating: str
    reason: str
    author: str | None
    expires_at: int


class _CompiledGate(NamedTuple):
    name: str
    condition: CompiledCondition
    is_when: bool
    on_unknown: bool
    release: CompiledCondition | None
    #: Rank it caps at (2: no cap), rank it lifts to (-1: no lift).
    cap: int
    lift: int
    lifts_from: frozenset[int]
    #: Its GateResult when it fired without / with deciding the bucket.
    undecided: GateResult
    decided: GateResult


# A plain Python class even when this module is compiled (mypyc makes classes
# native, without a __dict__): _evaluation builds it by setting its __dict__.
@mypyc_attr(native_class=False)
@dataclass(frozen=True)
class Evaluation:
    """Everything a score is made of; deterministic in (state, as_of, scorecard)."""

    account_id: str
    as_of: int
    score: float
    bucket: BucketName
    grade: GradeName
    stage: str
    profile: str
    scorecard: tuple[str, str]
    components: tuple[ComponentResult, ...]
    #: Per component: the metric's label for people.
    labels: tuple[str, ...]
    #: Every metric evaluated (weighted and gate-only); ``None`` = unknown.
    values: Mapping[str, float | None]
    missing: tuple[str, ...]
    #: Share (0-1) of the profile's weight carried by known metrics.
    weight_share: float
    low_confidence: bool
    #: Bucket from score and hysteresis alone, before gates and policy.
    score_bucket: BucketName
    #: Gates that pulled the bucket: caps below the (lifted) score bucket, lifts
    #: that raised it (``GateResult.decided`` marks the one that set it).
    deciding_gates: tuple[str, ...]
    gates_fired: tuple[str, ...]
    #: Every fired gate with its reason, in scorecard order.
    gates: tuple[GateResult, ...]
    #: The CSM pulse in effect at ``as_of`` (not expired), if any.
    pulse: PulseView | None
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

    def score_json(self) -> bytes | None:
        """The newest score message as JSON bytes (see :func:`score_json`)."""
        if self.evaluation is None:
            return None
        if self._score is not None:
            return to_json(self._score)
        return score_json(self.evaluation, now_ms=self._now_ms)

    def __repr__(self) -> str:
        bucket = None if self.evaluation is None else self.evaluation.bucket
        return f"Step(result={self.result}, bucket={bucket}, changes={len(self.changes)})"


# ------------------------------------------------------------------ pieces


def evaluate_condition(cond: AnyCondition, values: Mapping[str, float | None]) -> bool | None:
    """Three-valued: ``None`` when a needed metric is unknown and the answer
    depends on it (``all`` with a false part is false, ``any`` with a true
    part is true, whatever is unknown), unless a comparison says what its
    unknown metric counts as."""
    if isinstance(cond, Compare):
        value = values.get(cond.metric)
        if value is None:
            return cond.unknown
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
    if isinstance(cond, AtLeast):
        verdicts = [evaluate_condition(sub, values) for sub in cond.of]
        if verdicts.count(True) >= cond.at_least:
            return True
        return False if len(verdicts) - verdicts.count(False) < cond.at_least else None
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


def _score_then(history: dict[int, float], day: int) -> float | None:
    # The score in effect on `day`: the last one recorded on or before it.
    exact = history.get(day)
    if exact is not None:
        return exact
    # A history's days are in ascending order (a rescore writes its own day,
    # never an earlier one; loading and compaction keep the order): a day
    # before the first has no score, one after the last has the last one.
    # A young account's 7- and 30-day lookups would otherwise scan it all.
    if not history:
        return None
    first = next(iter(history))
    if day < first:
        return None
    last = next(reversed(history))
    if day > last:
        return history[last]
    best = max(filter(day.__ge__, history), default=-1)  # the latest day <= day
    return history[best] if best >= 0 else None


def _delta(score: float, then: float | None) -> float | None:
    return None if then is None else round(score - then, 1)


def change_id(account_id: str, from_bucket: str, to_bucket: str, as_of: int) -> str:
    """Deterministic id of a bucket change: sha256 of ``account|from|to|as_of`` (32 hex)."""
    digest = hashlib.sha256(f"{account_id}|{from_bucket}|{to_bucket}|{as_of}".encode())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- evaluate
#
# evaluate() is the hot path: it runs after every applied event and at every
# tick of every account. It computes exactly what the plain definition says
# (the reference is kept in evaluate_condition, hysteresis_bucket and _weigh;
# tests check the fast forms against them, and tests/unit/test_replay.py pins
# a digest of the whole output) but
#
# * compiles each resolved profile once into a _Plan (extractors in order,
#   the parts of the state each reads, gates as closures, one ComponentResult
#   per unknown metric, and the weights per set of known metrics, computed
#   with the same float operations as _weigh and cached);
# * keeps in the state the metric values of its last evaluation (_Memory): a
#   metric is recomputed only if an event changed a part of the state it
#   reads, if it depends on the as-of time itself, or, on a later day, if
#   its value may have moved since (metrics_catalog's Source.stable says
#   until when it lasts); a component is rebuilt only when its value or the
#   set of known metrics changed, a gate only when a value it reads or
#   whether it was holding changed;
# * builds the Evaluation without the dataclass __init__ (same object).


class _Plan:
    """A resolved profile compiled for :func:`evaluate` (built once per profile)."""

    __slots__ = (
        "any_gate_bits",
        "extractors",
        "gate_bits",
        "gates",
        "grade_floors",
        "green",
        "hysteresis",
        "labels",
        "metric_bits",
        "metrics",
        "name",
        "nones",
        "policy",
        "positions",
        "profile",
        "reads",
        "scorers",
        "slots",
        "stables",
        "stale_by_mask",
        "weighted",
        "weights_by_mask",
        "yellow",
    )

    def __init__(self, profile: ResolvedProfile) -> None:
        self.profile = profile
        self.name = profile.name
        self.metrics = profile.metrics
        self.extractors: tuple[Extractor, ...] = tuple(e for _, e in profile.extractors)
        always = PARTS | EXACT_TIME | PARTS << PAST_SHIFT
        self.reads = profile.reads or (always,) * len(profile.metrics)
        self.stables: tuple[Stability, ...] = profile.stables or (_daily,) * len(profile.metrics)
        position = {metric: i for i, metric in enumerate(profile.metrics)}
        weighted = [metric for _, _, members in profile.groups for metric, _ in members]
        #: Position in ``metrics`` of each weighted metric, in component order.
        self.weighted = tuple(position[m] for m in weighted)
        #: Per metric (``metrics`` order): the bit of its component, 0 if not weighted.
        bits = [0] * len(profile.metrics)
        for slot, metric in enumerate(weighted):
            bits[position[metric]] = 1 << slot
        self.metric_bits = tuple(bits)
        self.scorers: tuple[Callable[[float], float], ...] = tuple(
            profile.scorers[m] for m in weighted
        )
        self.nones = tuple(ComponentResult(m, None, 0.0, 0.0, 0.0) for m in weighted)
        #: Per component: the metric's label for people.
        self.labels = tuple(profile.labels.get(m, m) for m in weighted)
        #: Per gate: bits (``metrics`` positions) of the metrics it reads.
        gate_bits = []
        for gate in profile.gates:
            read = list(condition_metrics(gate.condition))
            if gate.release is not None:
                read.extend(condition_metrics(gate.release))
            gate_bits.append(sum({1 << position[metric] for metric in read}))
        self.gate_bits = tuple(gate_bits)
        #: Bits of every metric some gate reads.
        self.any_gate_bits = 0
        for read_bits in gate_bits:
            self.any_gate_bits |= read_bits
        self.gates: tuple[_CompiledGate, ...] = tuple(
            _CompiledGate(
                gate.name,
                compile_condition(gate.condition),
                gate.when is not None,
                gate.fires_on_unknown,
                None if gate.release is None else compile_condition(gate.release),
                BUCKET_RANK[gate.cap] if gate.cap is not None else 2,
                BUCKET_RANK[gate.lift] if gate.lift is not None else -1,
                gate.lifts_from,
                GateResult(gate.name, gate.reason, gate.effect, gate.bucket, False),
                GateResult(gate.name, gate.reason, gate.effect, gate.bucket, True),
            )
            for gate in profile.gates
        )
        buckets = profile.buckets
        self.green, self.yellow, self.hysteresis = (
            buckets.green,
            buckets.yellow,
            buckets.hysteresis,
        )
        grades = profile.grades
        self.grade_floors = (grades.A, grades.B, grades.C, grades.D)
        self.policy: MissingData = profile.missing_data
        self.weights_by_mask: dict[int, tuple[tuple[float, ...], float, tuple[str, ...]]] = {}
        self.positions = range(len(profile.metrics))
        #: Per metric (``metrics`` order): its component's slot, -1 if not weighted.
        slots = [-1] * len(profile.metrics)
        for slot, i in enumerate(self.weighted):
            slots[i] = slot
        self.slots = tuple(slots)
        self.stale_by_mask: dict[int, tuple[int, ...]] = {}

    def stale(self, dirty: int) -> tuple[int, ...]:
        """Positions of the metrics that read any of the ``dirty`` bits."""
        found = self.stale_by_mask.get(dirty)
        if found is None:
            found = tuple(i for i, reads in enumerate(self.reads) if reads & dirty)
            if len(self.stale_by_mask) < 1024:
                self.stale_by_mask[dirty] = found
        return found

    def components(
        self, values: list[float | None], effective: tuple[float, ...]
    ) -> list[ComponentResult]:
        """Every component, in order."""
        out: list[ComponentResult] = []
        append = out.append
        nones = self.nones
        scorers = self.scorers
        for slot, i in enumerate(self.weighted):
            value = values[i]
            if value is None:
                append(nones[slot])
            else:
                weight = effective[slot]
                metric_score = scorers[slot](value)
                append(
                    _new_component(
                        ComponentResult,
                        (nones[slot][0], value, metric_score, weight, metric_score * weight),
                    )
                )
        return out

    def weights(self, known: int) -> tuple[tuple[float, ...], float, tuple[str, ...]]:
        """Effective weight per component, known weight share and missing metrics
        when the components whose bit is set in ``known`` are known (see _weigh)."""
        cached = self.weights_by_mask.get(known)
        if cached is not None:
            return cached
        groups = self.profile.groups
        slot = 0
        masked: list[tuple[str, float, tuple[tuple[str, float, bool], ...]]] = []
        for group, weight, members in groups:
            marked: list[tuple[str, float, bool]] = []
            for metric, w in members:
                marked.append((metric, w, bool(known >> slot & 1)))
                slot += 1
            masked.append((group, weight, tuple(marked)))
        # The float operations of _weigh, in the same order.
        total_groups = sum(weight for _, weight, _ in groups)
        known_groups = 0.0
        share = 0.0
        known_in: dict[str, float] = {}
        for group, weight, flags in masked:
            group_total = sum(w for _, w, _ in flags)
            known_weight = sum(w for _, w, is_known in flags if is_known)
            known_in[group] = known_weight
            share += weight / total_groups * known_weight / group_total
            if known_weight > 0:
                known_groups += weight
        effective: list[float] = []
        missing: list[str] = []
        for group, weight, flags in masked:
            for metric, w, is_known in flags:
                if is_known:
                    effective.append(weight / known_groups * w / known_in[group])
                else:
                    effective.append(0.0)
                    missing.append(metric)
        result = (tuple(effective), share, tuple(missing))
        if len(self.weights_by_mask) < 1024:
            self.weights_by_mask[known] = result
        return result


def _daily(state: AccountState, as_of: int, value: float | None) -> int:
    return as_of // DAY_MS


def _plan(profile: ResolvedProfile) -> _Plan:
    plan = profile.compiled.get("scoring")
    if plan is None:
        plan = profile.compiled["scoring"] = _Plan(profile)
    assert isinstance(plan, _Plan)
    return plan


class _Memory:
    """The last evaluation's values, kept in the state (``AccountState._scoring``):
    valid for ``plan`` on ``day`` apart from the parts changed since
    (``AccountState.changed``), and each until its ``until`` day."""

    __slots__ = (
        "components",
        "day",
        "gate_key",
        "gates",
        "known",
        "models",
        "plan",
        "scorecard",
        "segment",
        "stage",
        "until",
        "values",
    )

    def __init__(
        self,
        scorecard: Scorecard,
        stage: str | None,
        segment: str | None,
        plan: _Plan,
        day: int,
        values: list[float | None],
        until: list[int],
        known: int,
        components: list[ComponentResult],
        models: list[dict[str, Any] | None],
        gates: _GateVerdict,
        gate_key: tuple[int, int, tuple[str, ...]],
    ) -> None:
        #: ``plan`` is ``scorecard``'s profile for ``stage`` and ``segment``.
        self.scorecard = scorecard
        self.stage = stage
        self.segment = segment
        self.plan = plan
        self.day = day
        self.values = values
        #: Per metric: the last day its value holds without events.
        self.until = until
        self.known = known
        self.components = components
        #: Message fields of each component, built on demand by score_json
        #: and health_score.
        self.models = models
        #: What the gates made of it; ``gates.verdicts`` per gate: (whether it
        #: was held, i.e. in ``AccountState.gates``, whether it fired).
        self.gates = gates
        #: (score rank, plain score rank, held gates) the gates were judged with.
        self.gate_key = gate_key


_new_object = object.__new__
_set_attribute = object.__setattr__
_new_component = tuple.__new__


def _same(value: float | None, before: float | None) -> bool:
    """Whether a recomputed value is the one its component was made of (bit
    for bit: 0.0 and -0.0 are equal but print differently)."""
    if value is None or before is None:
        return value is before
    return (
        value == before
        and type(value) is type(before)
        and (value != 0 or math.copysign(1.0, value) == math.copysign(1.0, before))
    )


def _evaluation(fields: dict[str, Any]) -> Evaluation:
    # Same object as Evaluation(**fields) without the frozen __init__'s cost;
    # extra keys starting with "_" are caches, not fields (not compared).
    ev: Evaluation = _new_object(Evaluation)
    _set_attribute(ev, "__dict__", fields)
    return ev


class _MetricPass(NamedTuple):
    """The metric values of one evaluation and what they make (see :func:`evaluate`)."""

    values: list[float | None]
    #: Per metric: the last day its value holds without events.
    until: list[int]
    #: Bits (``_Plan.metric_bits``) of the weighted metrics that are known.
    known: int
    effective: tuple[float, ...]
    share: float
    missing: tuple[str, ...]
    components: list[ComponentResult]
    #: Message fields of each component, filled by score_json / health_score.
    models: list[dict[str, Any] | None]
    #: Bits (``metrics`` positions) of the values that changed; -1: all are new.
    moved: int


class _GateVerdict(NamedTuple):
    rank: int
    verdicts: list[tuple[bool, bool]]
    fired: list[str]
    #: Cap gates below the (lifted) score bucket, and lift gates that raised it.
    deciding: list[str]
    #: Every fired gate, in scorecard order.
    results: list[GateResult]


def evaluate(state: AccountState, as_of: int, scorecard: Scorecard) -> Evaluation:
    """The health score of ``state`` at ``as_of`` (epoch ms); reads, never writes.

    Hysteresis is relative to the state's current bucket, the trend to its
    score history. Exact for ``as_of`` at or after ``state.clock``. (The
    state keeps transient caches of metric values, which never change a
    result.)
    """
    snapshot = state.snapshot
    stage_entry = snapshot.get("lifecycle_stage")
    segment_entry = snapshot.get("segment")
    stage = stage_entry[0] if stage_entry is not None else None
    segment = segment_entry[0] if segment_entry is not None else None
    memory: _Memory | None = state._scoring
    day = as_of // DAY_MS
    if scorecard.uses_tenure:
        since = snapshot.get("customer_since")
        tenure = None if since is None else max(0, day - since[0] // DAY_MS)
        plan = _plan(scorecard.profile_for(stage, segment, tenure))
    elif (
        memory is not None
        and memory.scorecard is scorecard
        and memory.stage == stage
        and memory.segment == segment
    ):
        plan = memory.plan
    else:
        plan = _plan(scorecard.profile_for(stage, segment))

    # Memory is usable for the same or a later day unless compaction removed
    # days that day's metrics read.
    if (
        memory is not None
        and memory.plan is plan
        and memory.day <= day
        and state.removed_before <= day - _READ_SPAN
    ):
        metrics = _updated_metrics(state, as_of, day, plan, memory)
        previous: _Memory | None = memory
    else:
        metrics = _fresh_metrics(state, as_of, day, plan)
        previous = None
    values = dict(zip(plan.metrics, metrics.values, strict=True))
    # The score: contributions added in component order (see _weigh). An
    # unknown metric's 0.0 leaves the running total's bits unchanged.
    total = 0.0
    for component in metrics.components:
        total += component[4]
    score = round(min(100.0, max(0.0, total)), 1)

    previous_bucket = state.bucket
    score_rank = _score_rank(score, previous_bucket, plan)
    held = state.gates
    gate_key = (score_rank, _plain_rank(score, plan), tuple(held))
    if (
        previous is not None
        and not metrics.moved & plan.any_gate_bits
        and previous.gate_key == gate_key
    ):
        # No value a gate reads moved, the same gates are held and the score
        # is in the same buckets: every verdict, and so the outcome, is the same.
        gates = previous.gates
    else:
        gates = _judge_gates(
            plan,
            values,
            held,
            None if previous is None else previous.gates.verdicts,
            metrics.moved,
            score,
            score_rank,
        )
    state._scoring = _Memory(
        scorecard,
        stage,
        segment,
        plan,
        day,
        metrics.values,
        metrics.until,
        metrics.known,
        metrics.components,
        metrics.models,
        gates,
        gate_key,
    )
    state.changed = 0
    state.changed_since = _NO_CHANGE
    state.removed_before = NOTHING_REMOVED
    rank = gates.rank
    policy = plan.policy
    low_confidence = metrics.share + _EPS < policy.min_weight_share
    if low_confidence:
        if policy.on_low_confidence == "cap":
            rank = min(rank, BUCKET_RANK[policy.cap_bucket])
        elif policy.on_low_confidence == "hold" and previous_bucket is not None:
            rank = BUCKET_RANK[previous_bucket]

    # The scores in effect 7 and 30 days ago, kept while the day and the
    # history's days (its newest, its size) are the same: a rescore only
    # writes its own day, compaction only drops old days.
    history = state.score_history
    key = (day, len(history), next(reversed(history), None))
    trend = state._trend
    if trend is None or trend[0] != key:
        trend = state._trend = (
            key,
            _score_then(history, day - 7),
            _score_then(history, day - 30),
        )
    then_7d, then_30d = trend[1], trend[2]
    return _evaluation(
        {
            "account_id": state.account_id,
            "as_of": as_of,
            "score": score,
            "bucket": _RANKED[rank],
            "grade": _grade(_within_bucket(score, rank, plan), plan.grade_floors),
            "stage": stage or UNKNOWN_STAGE,
            "profile": plan.name,
            "scorecard": (scorecard.name, scorecard.version),
            "components": tuple(metrics.components),
            "labels": plan.labels,
            "values": values,
            "missing": metrics.missing,
            "weight_share": round(metrics.share, 4),
            "low_confidence": low_confidence,
            "score_bucket": _RANKED[score_rank],
            "deciding_gates": tuple(gates.deciding),
            "gates_fired": tuple(gates.fired),
            "gates": tuple(gates.results),
            "pulse": _live_pulse(state.pulse, as_of),
            "delta_7d": _delta(score, then_7d),
            "delta_30d": _delta(score, then_30d),
            "_models": metrics.models,
        }
    )


def _fresh_metrics(state: AccountState, as_of: int, day: int, plan: _Plan) -> _MetricPass:
    """Every metric computed from the state (no usable memory)."""
    values: list[float | None] = []
    known = 0
    bits = plan.metric_bits
    for i, extract in enumerate(plan.extractors):
        value = extract(state, as_of)
        if value is None:
            values.append(None)
        else:
            values.append(round(value, 4))
            known |= bits[i]
    effective, share, missing = plan.weights(known)
    components = plan.components(values, effective)
    return _MetricPass(
        values,
        [day] * len(values),
        known,
        effective,
        share,
        missing,
        components,
        [None] * len(components),
        -1,
    )


def _updated_metrics(
    state: AccountState, as_of: int, day: int, plan: _Plan, memory: _Memory
) -> _MetricPass:
    """The memory's metric values, brought to ``as_of``.

    Recomputes those whose inputs may have changed or whose value has expired,
    then the components of the values that moved (all of them if the set of
    known metrics changed).
    """
    changed = state.changed
    dirty = changed | EXACT_TIME
    skipped = changed << PAST_SHIFT
    if state.changed_since < day:
        dirty |= skipped
        skipped = 0
    stale: Iterable[int] = plan.stale(dirty)
    same_day = memory.day == day
    if not same_day:
        until = memory.until
        expired = list(compress(plan.positions, map(day.__gt__, until)))
        expired.extend(i for i in stale if until[i] >= day)
        stale = expired
    extractors = plan.extractors
    bits = plan.metric_bits
    values = memory.values.copy()
    until = memory.until.copy()
    known = memory.known
    stables = plan.stables
    moved = 0
    for i in stale:
        value = extractors[i](state, as_of)
        if value is not None:
            value = round(value, 4)
        if not _same(value, values[i]):
            values[i] = value
            moved |= 1 << i
            if value is None:
                known &= ~bits[i]
            else:
                known |= bits[i]
            # A value that moved is recomputed tomorrow: it will likely
            # move again (busy usage, day counters), so asking how long
            # it lasts would not pay.
            until[i] = day
        else:
            # Same day: how long it lasts is worked out when it matters.
            until[i] = day if same_day else stables[i](state, as_of, value)
    if skipped:
        # Changed parts read only for earlier days: today's value holds,
        # but not beyond today.
        for i in plan.stale(skipped):
            if until[i] > day:
                until[i] = day
    effective, share, missing = plan.weights(known)
    if known != memory.known:
        components = plan.components(values, effective)
        return _MetricPass(
            values,
            until,
            known,
            effective,
            share,
            missing,
            components,
            [None] * len(components),
            moved,
        )
    components = memory.components.copy()
    models = memory.models.copy()
    if moved:
        slots = plan.slots
        nones = plan.nones
        scorers = plan.scorers
        for i in stale:
            slot = slots[i]
            if slot >= 0 and moved >> i & 1:
                value = values[i]
                if value is None:
                    components[slot] = nones[slot]
                else:  # as _Plan.components
                    weight = effective[slot]
                    metric_score = scorers[slot](value)
                    components[slot] = _new_component(
                        ComponentResult,
                        (nones[slot][0], value, metric_score, weight, metric_score * weight),
                    )
                models[slot] = None
    return _MetricPass(values, until, known, effective, share, missing, components, models, moved)


def _score_rank(score: float, previous_bucket: str | None, plan: _Plan) -> int:
    """The bucket rank of ``score`` with hysteresis (:func:`hysteresis_bucket` inlined)."""
    green, yellow = plan.green, plan.yellow
    if previous_bucket is None:
        return 2 if score >= green else 1 if score >= yellow else 0
    lower, upper = score - plan.hysteresis, score + plan.hysteresis
    low = 2 if lower >= green else 1 if lower >= yellow else 0
    high = 2 if upper >= green else 1 if upper >= yellow else 0
    return min(high, max(low, BUCKET_RANK[previous_bucket]))


def _plain_rank(score: float, plan: _Plan) -> int:
    """The bucket rank of ``score`` by the thresholds alone (no hysteresis)."""
    return 2 if score >= plan.green else 1 if score >= plan.yellow else 0


def _judge_gates(
    plan: _Plan,
    values: Mapping[str, float | None],
    held: Iterable[str],
    previous_verdicts: list[tuple[bool, bool]] | None,
    moved: int,
    score: float,
    score_rank: int,
) -> _GateVerdict:
    """Which gates fire, and the bucket rank they leave: lifts raise the score's
    bucket first, then caps lower it (a risk always wins over a lift).

    A gate's verdict is kept while the values it reads and whether it is held
    (fired last time) are the same as at the last evaluation.
    """
    verdicts: list[tuple[bool, bool]] = []
    append = verdicts.append
    firing: list[_CompiledGate] = []
    gate_bits = plan.gate_bits
    for g, gate in enumerate(plan.gates):
        # (Tuple unpacking: a NamedTuple's attributes cost more on this path.)
        name, condition, is_when, on_unknown, release = gate[:5]
        was_held = name in held
        if (
            previous_verdicts is not None
            and not moved & gate_bits[g]
            and previous_verdicts[g][0] == was_held
        ):
            fires = previous_verdicts[g][1]
        else:
            verdict = condition(values)
            if verdict is None:
                fires = on_unknown
            elif is_when:
                fires = verdict
            else:
                fires = not verdict
            if not fires and release is not None and was_held:
                # Gate hysteresis: a firing gate holds until its release is true.
                # Idempotent like the bucket hysteresis: re-evaluating with the
                # gates this returns gives the same gates.
                fires = release(values) is not True
        append((was_held, fires))
        if fires:
            firing.append(gate)
    if not firing:
        return _GateVerdict(score_rank, verdicts, [], [], [])
    lifted = score_rank
    for gate in firing:
        if gate.lift > lifted and score_rank in gate.lifts_from:
            lifted = gate.lift
    rank = lifted
    for gate in firing:
        if gate.cap < rank:
            rank = gate.cap
    # Whether a gate set the bucket is judged against the score's plain bucket
    # (the thresholds people read), not the hysteresis band: a score
    # re-evaluated after its rescore must say the same (hysteresis is relative
    # to the bucket the rescore stored).
    plain = _plain_rank(score, plan)
    plain_lifted = plain
    for gate in firing:
        if gate.lift > plain_lifted and plain in gate.lifts_from:
            plain_lifted = gate.lift
    deciding: list[str] = []
    results: list[GateResult] = []
    for gate in firing:
        lifting = gate.lift > score_rank and score_rank in gate.lifts_from
        if gate.cap < lifted or lifting:
            deciding.append(gate.name)
        # It set the bucket: the cap the account ended at, below what the score
        # alone gives, or the lift it kept, above it (of several caps, only the
        # lowest set it).
        decided = (gate.cap < plain_lifted and gate.cap == rank) or (
            gate.lift > plain and plain in gate.lifts_from and gate.lift == rank
        )
        results.append(gate.decided if decided else gate.undecided)
    return _GateVerdict(rank, verdicts, [gate.name for gate in firing], deciding, results)


def _within_bucket(score: float, rank: int, plan: _Plan) -> float:
    """The score moved into its bucket's range, for the grade: a gated, lifted
    or hysteresis-held account is graded like the nearest score of its bucket
    (a red account is never graded A)."""
    if rank == 2:
        return score if score >= plan.green else plan.green
    if rank == 1:
        if score < plan.yellow:
            return plan.yellow
        return score if score < plan.green else math.nextafter(plan.green, 0.0)
    return score if score < plan.yellow else math.nextafter(plan.yellow, 0.0)


def _live_pulse(pulse: list[Any] | None, as_of: int) -> PulseView | None:
    if pulse is None or as_of >= pulse[3]:
        return None
    return PulseView(pulse[0], pulse[1], pulse[4] if len(pulse) > 4 else None, pulse[3])


def _grade(score: float, floors: tuple[float, float, float, float]) -> GradeName:
    grade_a, grade_b, grade_c, grade_d = floors
    if score >= grade_a:
        return "A"
    if score >= grade_b:
        return "B"
    if score >= grade_c:
        return "C"
    if score >= grade_d:
        return "D"
    return "F"


def _weigh(
    profile: ResolvedProfile, values: Mapping[str, float | None]
) -> tuple[tuple[ComponentResult, ...], list[str], float, float]:
    """Components with redistributed weights, missing metrics, the known
    weight share and the unrounded score.

    Nominal weight of metric m in group g: (W_g / sum W) * (w_m / sum w in g).
    Known metrics share their group's weight in proportion to w_m; groups
    with no known metric give their weight to the other groups in proportion
    to W_g. Unknown metrics get weight 0.

    The reference definition; :func:`evaluate` computes the same numbers
    with the same float operations through :meth:`_Plan.weights` (a test
    checks they agree).
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
    previous_score: float,
    previous_gates: Iterable[str],
) -> list[Driver]:
    """Metrics that moved the account since it entered its previous bucket.

    A metric drives the change when its own 0-100 score moved in the change's
    direction (a metric that became known with a score below the previous
    total, or stopped being known with one above it, pulls the total down; the
    mirror image pulls it up). A metric whose score did not move, or moved the
    other way, is never named, even if its contribution moved because other
    metrics appeared or went missing. First the metrics of the gates that
    decide the new bucket or stopped firing (when their value changed), then
    by contribution change, largest first; ties by name. At most MAX_DRIVERS.
    """
    after = _baseline(ev)
    profile = {p.name: p for p in scorecard.resolved_profiles}[ev.profile]
    scorers = profile.scorers
    still = set(ev.gates_fired)
    was = set(previous_gates)
    cause: set[str] = set()
    for gate in profile.gates:
        if gate.name in ev.deciding_gates or (gate.name in was and gate.name not in still):
            cause.update(condition_metrics(gate.condition))
    rows: list[tuple[int, float, str, Driver]] = []
    for metric in dict.fromkeys([*before, *after]):
        v0, c0 = before.get(metric, (None, 0.0))
        v1, c1 = after.get(metric, (None, 0.0))
        if v0 == v1:
            continue
        delta = round(c1 - c0, 2)
        gate_moved = metric in cause
        scorer = scorers.get(metric)
        # Weighted metrics, and the metrics of the gates that set the bucket
        # (a gate-only metric has a normalisation too), count only when their
        # own score moved toward the change.
        if scorer is None or not (gate_moved or c0 != 0.0 or c1 != 0.0):
            continue
        pull = _pull(
            None if v0 is None else scorer(v0),
            None if v1 is None else scorer(v1),
            previous_score,
        )
        if not (pull < 0 if down else pull > 0):
            continue
        driver = Driver(
            metric=metric,
            label=scorecard.label(metric),
            before=v0,
            after=v1,
            contribution_delta=delta,
        )
        rows.append((0 if gate_moved else 1, -abs(delta), metric, driver))
    rows.sort(key=lambda row: row[:3])
    return [row[3] for row in rows[:MAX_DRIVERS]]


def _pull(s0: float | None, s1: float | None, total: float) -> float:
    """Which way a metric's own score moved the total: its change when known
    before and after; its distance from the total when it appeared (or, negated,
    when it went missing)."""
    if s0 is not None and s1 is not None:
        return s1 - s0
    if s1 is not None:
        return s1 - total
    if s0 is not None:
        return total - s0
    return 0.0


def _gate_outs(ev: Evaluation, *, decided_only: bool) -> list[GateOut]:
    return [
        GateOut(name=g.name, reason=g.reason, effect=g.effect, bucket=g.bucket, decided=g.decided)
        for g in ev.gates
        if g.decided or not decided_only
    ]


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
        fields = memo[4].__dict__.copy()
        fields["as_of"] = as_of
        ev = _evaluation(fields)
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
                previous_score=previous_score if previous_score is not None else ev.score,
                previous_gates=state.gates,
            ),
            gates=_gate_outs(ev, decided_only=True),
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
    else is determined by the evaluation. The fields come from values the
    scoring model has already checked (finite numbers in their ranges,
    timestamps formatted by :func:`format_utc`), so the message is assembled
    without re-validation: the same object ``HealthScore.model_validate``
    would return (tests check both against the model and the JSON Schema).
    Anything unexpected (a non-finite number) takes the validating path,
    which raises as before. Component models are kept with the evaluation's
    components and reused while a component is unchanged.
    """
    computed = int(time.time() * 1000) if now_ms is None else now_ms
    cached: list[dict[str, Any] | None] | None = ev.__dict__.get("_models")
    if cached is None:
        cached = [None] * len(ev.components)
    models: list[Component] = []
    labels = ev.labels
    for i, fields in enumerate(cached):
        if fields is None:
            fields = _component_fields(ev.components[i], labels[i])
            if fields is None:
                return _validated_health_score(ev, computed)
            cached[i] = fields
        models.append(_model(Component, fields, _COMPONENT_SET))
    if not _score_fields_ok(ev):
        return _validated_health_score(ev, computed)
    delta_7d, delta_30d = ev.delta_7d, ev.delta_30d
    score = ev.score
    return _model(
        HealthScore,
        {
            "account_id": ev.account_id,
            "score": score,
            "bucket": ev.bucket,
            "grade": ev.grade,
            "stage": ev.stage,
            "profile": ev.profile,
            "scorecard": _scorecard_ref(ev.scorecard),
            "components": models,
            "missing": list(ev.missing),
            "gates": _gate_outs(ev, decided_only=False) if ev.gates else [],
            "pulse": None if ev.pulse is None else _pulse_model(ev.pulse),
            "trend": _model(Trend, {"delta_7d": delta_7d, "delta_30d": delta_30d}, _TREND_SET),
            "as_of": _utc(ev.as_of),
            "computed_at": _utc(computed),
            "low_confidence": ev.low_confidence,
            "schema_version": SCORE_SCHEMA_VERSION,
        },
        _HEALTH_SCORE_SET,
    )


def score_json(ev: Evaluation, *, now_ms: int | None = None) -> bytes:
    """``pydantic_core.to_json(health_score(ev, now_ms=now_ms))``, without the models.

    The stream publishes one score per changed account per batch; building
    the pydantic message and serialising it was a fifth of a worker's time.
    The JSON is the same (same keys in the same order, same rounding, same
    float formatting: tests compare both on thousands of evaluations).
    Anything ``health_score`` would have to validate takes its path instead.
    """
    computed = int(time.time() * 1000) if now_ms is None else now_ms
    # The component message fields are kept with the evaluation (and carried
    # over while a component is unchanged, see _updated_metrics).
    cached: list[dict[str, Any] | None] | None = ev.__dict__.get("_models")
    if cached is None:
        cached = [None] * len(ev.components)
    components: list[dict[str, Any]] = []
    labels = ev.labels
    for i, fields in enumerate(cached):
        if fields is None:
            fields = _component_fields(ev.components[i], labels[i])
            if fields is None:
                return to_json(health_score(ev, now_ms=computed))
            cached[i] = fields
        components.append(fields)
    if not _score_fields_ok(ev):
        return to_json(health_score(ev, now_ms=computed))
    name, version = ev.scorecard
    pulse = ev.pulse
    return orjson.dumps(
        {
            "account_id": ev.account_id,
            "score": ev.score,
            "bucket": ev.bucket,
            "grade": ev.grade,
            "stage": ev.stage,
            "profile": ev.profile,
            "scorecard": {"name": name, "version": version},
            "components": components,
            "missing": list(ev.missing),
            "gates": [_gate_fields(g) for g in ev.gates],
            "pulse": None
            if pulse is None
            else {
                "rating": pulse.rating,
                "reason": pulse.reason,
                "author": pulse.author,
                "expires_at": _utc(pulse.expires_at),
            },
            "trend": {"delta_7d": ev.delta_7d, "delta_30d": ev.delta_30d},
            "as_of": _utc(ev.as_of),
            "computed_at": _utc(computed),
            "low_confidence": ev.low_confidence,
            "schema_version": SCORE_SCHEMA_VERSION,
        }
    )


def _validated_health_score(ev: Evaluation, computed: int) -> HealthScore:
    # The reference construction: one dict, validated by the model.
    return HealthScore.model_validate(
        {
            "account_id": ev.account_id,
            "score": ev.score,
            "bucket": ev.bucket,
            "grade": ev.grade,
            "stage": ev.stage,
            "profile": ev.profile,
            "scorecard": {"name": ev.scorecard[0], "version": ev.scorecard[1]},
            "components": [
                {
                    "metric": c.metric,
                    "label": label,
                    "value": c.value,
                    "score": round(c.score, 1),
                    "weight": round(c.weight, 4),
                    "contribution": round(c.contribution, 2),
                }
                for c, label in zip(ev.components, ev.labels, strict=True)
            ],
            "missing": list(ev.missing),
            "gates": [_gate_fields(g) for g in ev.gates],
            "pulse": None
            if ev.pulse is None
            else {
                "rating": ev.pulse.rating,
                "reason": ev.pulse.reason,
                "author": ev.pulse.author,
                "expires_at": format_utc(ev.pulse.expires_at),
            },
            "trend": {"delta_7d": ev.delta_7d, "delta_30d": ev.delta_30d},
            "as_of": format_utc(ev.as_of),
            "computed_at": format_utc(computed),
            "low_confidence": ev.low_confidence,
        }
    )


# The fields a validated message has "set" (schema_version is a default).
# Shared by every message built here: frozen models never add to it, and
# model_copy copies it before an update.
_HEALTH_SCORE_SET: Final = set(HealthScore.model_fields) - {"schema_version"}
_TREND_SET: Final = set(Trend.model_fields)
_COMPONENT_SET: Final = set(Component.model_fields)


def _model(cls: type[_M], fields: dict[str, Any], fields_set: set[str]) -> _M:
    # What BaseModel.model_construct ends with, without its per-field loop:
    # the fields are complete and already valid (the caller checked them).
    model = _new_object(cls)
    _set_attribute(model, "__dict__", fields)
    _set_attribute(model, "__pydantic_fields_set__", fields_set)
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model


_isfinite = math.isfinite
_INF: Final = math.inf

#: GateResult -> its message fields. A scorecard's gates have two results
#: each (decided or not), so this stays small; orjson only reads the dicts.
_GATE_FIELDS: dict[GateResult, dict[str, Any]] = {}


def _gate_fields(gate: GateResult) -> dict[str, Any]:
    fields = _GATE_FIELDS.get(gate)
    if fields is None:
        fields = gate._asdict()
        if len(_GATE_FIELDS) < 4096:
            _GATE_FIELDS[gate] = fields
    return fields


def _score_fields_ok(ev: Evaluation) -> bool:
    """Whether the score and trend of ``ev`` are what the message model accepts."""
    delta_7d, delta_30d = ev.delta_7d, ev.delta_30d
    score = ev.score
    return (
        type(score) is float
        and 0.0 <= score <= 100.0
        and (delta_7d is None or (type(delta_7d) is float and math.isfinite(delta_7d)))
        and (delta_30d is None or (type(delta_30d) is float and math.isfinite(delta_30d)))
    )


def _pulse_model(pulse: PulseView) -> Pulse:
    return Pulse(
        rating=cast(BucketName, pulse.rating),
        reason=pulse.reason,
        author=pulse.author,
        expires_at=format_utc(pulse.expires_at),
    )


def _component_fields(c: ComponentResult, label: str) -> dict[str, Any] | None:
    """The message fields of a component (rounded), or ``None`` if they would
    not validate (the caller then takes the validating path)."""
    metric, value, score, weight, contribution = c
    if value is not None and (type(value) is not float or not _isfinite(value)):
        return None
    score = round(score, 1)
    weight = round(weight, 4)
    contribution = round(contribution, 2)
    if not (
        label
        and type(score) is float
        and type(weight) is float
        and type(contribution) is float
        and 0.0 <= score <= 100.0
        and 0.0 <= weight < _INF
        and -_INF < contribution < _INF
    ):
        return None
    return {
        "metric": metric,
        "label": label,
        "value": value,
        "score": score,
        "weight": weight,
        "contribution": contribution,
    }


_SCORECARD_REFS: dict[tuple[str, str], ScorecardRef] = {}


def _scorecard_ref(ref: tuple[str, str]) -> ScorecardRef:
    model = _SCORECARD_REFS.get(ref)
    if model is None:
        model = ScorecardRef(name=ref[0], version=ref[1])
        if len(_SCORECARD_REFS) < 256:
            _SCORECARD_REFS[ref] = model
    return model


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DATES: dict[int, str] = {}
_TWO_DIGITS: Final = tuple(f"{n:02d}" for n in range(60))


def _utc(ms: int) -> str:
    """:func:`schemas.outputs.format_utc`, with the date part cached per day."""
    day, rest = divmod(ms, DAY_MS)
    date = _DATES.get(day)
    if date is None:
        if len(_DATES) >= 4096:
            _DATES.clear()
        date = _DATES[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
    seconds, millis = divmod(rest, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    two = _TWO_DIGITS
    if millis:
        return f"{date}{two[hours]}:{two[minutes]}:{two[seconds]}.{millis:03d}Z"
    return f"{date}{two[hours]}:{two[minutes]}:{two[seconds]}Z"


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


#: Called at every rescore point of a cadence step with its evaluation and the
#: bucket change it made (``None``: the bucket stayed), right after the rescore.
OnPoint = Callable[[Evaluation, BucketChange | None], None]


def _run_ticks(
    state: AccountState,
    until: int,
    scorecard: Scorecard,
    changes: list[BucketChange],
    on_point: OnPoint | None,
) -> Evaluation | None:
    last: Evaluation | None = None
    for tick in due_ticks(state, until, scorecard):
        last, change = _rescore(state, tick, scorecard)
        if change is not None:
            changes.append(change)
        if on_point is not None:
            on_point(last, change)
    return last


def on_event(
    state: AccountState,
    event: Event,
    scorecard: Scorecard,
    *,
    watermark: int | None = None,
    now_ms: int | None = None,
    newest_read: int | None = None,
    on_point: OnPoint | None = None,
) -> Step:
    """One event through the cadence: pending ticks up to ``max(watermark,
    event time)``, then ``apply``, then (if applied) a rescore at the event's
    time. ``watermark`` is the driver's largest ``occurred_at`` *before* this
    event (``None``: none yet); ``newest_read`` is passed to
    ``AccountState.apply`` (lateness by arrival order); ``on_point`` sees every
    rescore point (the playbooks run there: ``service.model.cadence``)."""
    changes: list[BucketChange] = []
    until = event.occurred_at if watermark is None else max(watermark, event.occurred_at)
    last = _run_ticks(state, until, scorecard, changes, on_point)
    result = state.apply(event, newest_read, scorecard.regular_features)
    if result is ApplyResult.APPLIED:
        last, change = _rescore(state, event.occurred_at, scorecard)
        if change is not None:
            changes.append(change)
        if on_point is not None:
            on_point(last, change)
    return Step(result, last, changes, now_ms=now_ms)


def on_timer(
    state: AccountState,
    watermark: int,
    scorecard: Scorecard,
    *,
    now_ms: int | None = None,
    on_point: OnPoint | None = None,
) -> Step:
    """Run the account's pending ticks up to ``watermark`` (silence decays health)."""
    changes: list[BucketChange] = []
    last = _run_ticks(state, watermark, scorecard, changes, on_point)
    return Step(None, last, changes, now_ms=now_ms)
