"""Scorecards: the YAML format, its validation and the resolved per-profile view.

A scorecard says which metrics count, how each is normalised to 0-100, how
they are weighted (in groups), how a score maps to a bucket (with
hysteresis) and a grade, which gates cap the bucket, what happens when data
is missing, and how all of that differs per lifecycle stage or segment
(profiles). docs/scorecard.md documents the format with the shipped
``service/model/scorecards/default.yaml`` as the example.

Loading validates everything, including cross-references (every weighted or
gated metric is defined, every source exists in
:data:`service.model.metrics_catalog.CATALOG` with valid parameters). A problem is
one :class:`ScorecardError` whose text is ``FILE: path.to.field: reason``.
"""

from __future__ import annotations

import functools
import importlib.resources
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    model_validator,
)

from service.model.account_state import PARTS_OF_TYPE
from service.model.metrics_catalog import (
    CATALOG,
    FEEDS,
    FOREVER,
    Extractor,
    ParamsError,
    Stability,
    build_extractor,
    build_stability,
)
from service.model.yaml_config import (
    ConfigError,
    RefError,
    load_mapping,
    load_text,
    merge_over,
    parse_model,
)

__all__ = [
    "BUCKETS",
    "BUCKET_RANK",
    "SHIPPED",
    "STAGES",
    "AllOf",
    "AnyCondition",
    "AnyOf",
    "AtLeast",
    "Band",
    "BucketName",
    "Buckets",
    "Compare",
    "CompiledCondition",
    "Condition",
    "Gate",
    "Grades",
    "Group",
    "MetricDef",
    "MissingData",
    "Normalisation",
    "NotOf",
    "Profile",
    "ProfileWhen",
    "ResolvedProfile",
    "Scorecard",
    "ScorecardError",
    "compile_condition",
    "condition_metrics",
    "default_scorecard",
    "load_scorecard",
    "parse_scorecard",
    "shipped_scorecard",
    "shipped_source",
    "shipped_text",
]

BucketName = Literal["green", "yellow", "red"]
#: Buckets from best to worst.
BUCKETS: Final[tuple[BucketName, ...]] = ("green", "yellow", "red")
#: Higher is healthier; ``min`` of ranks is the stricter bucket.
BUCKET_RANK: Final[dict[str, int]] = {"red": 0, "yellow": 1, "green": 2}
#: Lifecycle stages of DESIGN.md.
STAGES: Final = ("onboarding", "adoption", "maturity", "renewal")

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
Score = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonEmpty = Annotated[str, Field(min_length=1)]
Stage = Literal["onboarding", "adoption", "maturity", "renewal"]
FeedName = Annotated[str, Field(pattern=r"^[a-z_]+$")]


class ScorecardError(ConfigError):
    """An invalid scorecard: ``source`` (file), dotted ``path`` inside it, ``reason``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------- normalisation


class Band(_Model):
    """Values from ``from`` (inclusive) up to the next band's ``from`` score ``score``."""

    from_: Finite | None = Field(default=None, alias="from")
    score: Score


class Normalisation(_Model):
    """Metric value -> 0-100: linear from ``poor`` (0) to ``good`` (100), or bands.

    Linear clamps outside the range and works both ways: ``poor > good``
    means lower is better. Bands: the first band has no ``from`` (it covers
    everything below the second), the others have strictly increasing ``from``.
    """

    poor: Finite | None = None
    good: Finite | None = None
    bands: list[Band] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Normalisation:
        linear = self.poor is not None or self.good is not None
        if linear and self.bands is not None:
            raise ValueError("give either poor/good (linear) or bands, not both")
        if self.bands is None:
            if self.poor is None or self.good is None:
                raise ValueError("linear normalisation needs both poor and good (or use bands)")
            if self.poor == self.good:
                raise ValueError("poor and good must differ")
            return self
        if not self.bands:
            raise ValueError("bands must not be empty")
        if self.bands[0].from_ is not None:
            raise ValueError("the first band must not have 'from' (it covers the lowest values)")
        previous: float | None = None
        for i, band in enumerate(self.bands[1:], start=1):
            if band.from_ is None:
                raise ValueError(f"band {i} needs 'from'")
            if previous is not None and band.from_ <= previous:
                raise ValueError(f"band {i}: 'from' must be greater than the previous band's")
            previous = band.from_
        return self

    def apply(self, value: float) -> float:
        """The 0-100 score of ``value``."""
        return self.compile()(value)

    def compile(self) -> Callable[[float], float]:
        """A plain function equivalent to :meth:`apply` (scoring's hot path)."""
        if self.bands is not None:
            first = self.bands[0].score
            steps = tuple((band.from_, band.score) for band in self.bands[1:])

            def banded(value: float) -> float:
                score = first
                for start, band_score in steps:
                    assert start is not None
                    if value < start:
                        break
                    score = band_score
                return score

            return banded
        assert self.poor is not None and self.good is not None
        poor, span = self.poor, self.good - self.poor

        def linear(value: float) -> float:
            t = (value - poor) / span
            return 0.0 if t <= 0 else 100.0 if t >= 1 else 100.0 * t

        return linear


class MetricDef(_Model):
    """A scorecard metric: a catalogue source with parameters and a normalisation.

    ``label`` is the short name people read in scores and bucket changes
    ("Seats in use, 30 days"); ``description`` says what it measures. A
    parameter written ``$name`` takes the value ``name`` of the scorecard's
    ``product`` section (a metric whose product value is not given is unknown).
    """

    source: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    normalise: Normalisation
    label: Annotated[str, Field(max_length=80)] = ""
    description: str = ""

    def source_name(self, metric: str) -> str:
        return self.source or metric

    def short_label(self) -> str:
        """``label``, else the description up to its first stop (at most 80 characters)."""
        if self.label:
            return self.label
        text = self.description.strip()
        for stop in (". ", "; ", " (", ": "):
            if stop in text:
                text = text[: text.index(stop)]
        text = text.rstrip(".")
        return text if len(text) <= 80 else text[:79].rstrip() + "\u2026"


class Group(_Model):
    """Metrics weighted inside a group; groups are weighted against each other."""

    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    metrics: Annotated[dict[str, Weight], Field(min_length=1)]


# ---------------------------------------------------------------- conditions


class Compare(_Model):
    """``metric op value``; unknown (``None``) when the metric is missing, unless
    ``unknown`` says what a missing metric counts as (``true``: "no touch recorded"
    counts as "a touch long ago")."""

    metric: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: Finite
    unknown: bool | None = None


class AllOf(_Model):
    """True when every condition is true (false if any is false, else unknown)."""

    all: Annotated[list[Condition], Field(min_length=1)]


class AnyOf(_Model):
    """True when some condition is true (false if all are false, else unknown)."""

    any: Annotated[list[Condition], Field(min_length=1)]


class NotOf(_Model):
    """Negation; unknown stays unknown."""

    not_: Condition = Field(alias="not")


class AtLeast(_Model):
    """True when at least ``at_least`` of ``of`` are true; false when too few can
    still be (true ones plus unknown ones are fewer); else unknown."""

    at_least: Annotated[int, Field(ge=1)]
    of: Annotated[list[Condition], Field(min_length=1)]

    @model_validator(mode="after")
    def _reachable(self) -> AtLeast:
        if self.at_least > len(self.of):
            raise ValueError(f"at_least is {self.at_least} but only {len(self.of)} conditions")
        return self


#: Any condition.
AnyCondition = Compare | AllOf | AnyOf | NotOf | AtLeast


_TAG: Final = "cond:"


def _condition_kind(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("all", "any", "not", "at_least"):
            if key in value:
                return _TAG + key
        return _TAG + "compare"
    if isinstance(value, AllOf):
        return _TAG + "all"
    if isinstance(value, AnyOf):
        return _TAG + "any"
    if isinstance(value, NotOf):
        return _TAG + "not"
    if isinstance(value, AtLeast):
        return _TAG + "at_least"
    return _TAG + "compare"


Condition = Annotated[
    Annotated[Compare, Tag(_TAG + "compare")]
    | Annotated[AllOf, Tag(_TAG + "all")]
    | Annotated[AnyOf, Tag(_TAG + "any")]
    | Annotated[NotOf, Tag(_TAG + "not")]
    | Annotated[AtLeast, Tag(_TAG + "at_least")],
    Discriminator(_condition_kind),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()
AtLeast.model_rebuild()


#: A condition as a function of metric values (three-valued, see ``compile_condition``).
CompiledCondition = Callable[[Mapping[str, float | None]], bool | None]

_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def compile_condition(cond: AnyCondition) -> CompiledCondition:
    """A function equivalent to ``service.model.scoring.evaluate_condition(cond, values)``.

    Three-valued: ``None`` when a needed metric is unknown and the answer
    depends on it (``all`` with a false part is false, ``any`` with a true
    part is true, whatever is unknown). Built once per scorecard (the hot path
    of gates); ``evaluate_condition`` stays the reference.
    """
    if isinstance(cond, Compare):
        metric, op, ref, unknown = cond.metric, _OPS[cond.op], cond.value, cond.unknown

        def compare(values: Mapping[str, float | None]) -> bool | None:
            value = values.get(metric)
            return unknown if value is None else op(value, ref)

        return compare
    if isinstance(cond, NotOf):
        inner = compile_condition(cond.not_)

        def negate(values: Mapping[str, float | None]) -> bool | None:
            verdict = inner(values)
            return None if verdict is None else not verdict

        return negate
    if isinstance(cond, AllOf):
        parts = tuple(compile_condition(sub) for sub in cond.all)

        def all_of(values: Mapping[str, float | None]) -> bool | None:
            unknown = False
            for part in parts:
                verdict = part(values)
                if verdict is None:
                    unknown = True
                elif not verdict:
                    return False
            return None if unknown else True

        return all_of
    if isinstance(cond, AtLeast):
        needed, counted = cond.at_least, tuple(compile_condition(sub) for sub in cond.of)

        def at_least(values: Mapping[str, float | None]) -> bool | None:
            true = unknown = 0
            for part in counted:
                verdict = part(values)
                if verdict is None:
                    unknown += 1
                elif verdict:
                    true += 1
            if true >= needed:
                return True
            return False if true + unknown < needed else None

        return at_least
    alternatives = tuple(compile_condition(sub) for sub in cond.any)

    def any_of(values: Mapping[str, float | None]) -> bool | None:
        unknown = False
        for part in alternatives:
            verdict = part(values)
            if verdict is None:
                unknown = True
            elif verdict:
                return True
        return None if unknown else False

    return any_of


def condition_metrics(cond: AnyCondition) -> Iterator[str]:
    """Every metric a condition reads, in order of appearance."""
    if isinstance(cond, Compare):
        yield cond.metric
    elif isinstance(cond, AllOf):
        for sub in cond.all:
            yield from condition_metrics(sub)
    elif isinstance(cond, AnyOf):
        for sub in cond.any:
            yield from condition_metrics(sub)
    elif isinstance(cond, AtLeast):
        for sub in cond.of:
            yield from condition_metrics(sub)
    else:
        yield from condition_metrics(cond.not_)


class Gate(_Model):
    """A rule that caps the bucket (``cap``) or lifts it (``lift``).

    ``when: COND`` fires when COND is true; ``unless: COND`` fires when COND is
    not true (a requirement for the better buckets). ``on_unknown`` says what
    an unknown condition (a missing metric) does: the default is ``skip`` for
    ``when`` (no evidence of the risk) and ``fire`` for ``unless`` (the
    requirement is not shown to hold). ``release`` is the gate's hysteresis:
    once the gate fired, it keeps firing until ``release`` is true (not
    merely until its own condition stops holding), so a metric wobbling
    around the gate's threshold does not flap the bucket.

    A firing ``cap`` gate holds the bucket at ``cap`` or worse; a firing
    ``lift`` gate raises the score's bucket to ``lift`` when that bucket is one
    of ``lift_from`` (default: every worse bucket). Lifts apply to the score's
    bucket first, caps after them: a risk always wins over a lift. ``reason``
    is shown to people with the score (and in bucket changes and triggers).
    """

    name: Name
    reason: str = ""
    when: Condition | None = None
    unless: Condition | None = None
    release: Condition | None = None
    cap: Literal["yellow", "red"] | None = None
    lift: Literal["yellow", "green"] | None = None
    lift_from: Annotated[list[Literal["yellow", "red"]], Field(min_length=1)] | None = None
    on_unknown: Literal["fire", "skip"] | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Gate:
        if (self.when is None) == (self.unless is None):
            raise ValueError("a gate needs exactly one of 'when' or 'unless'")
        if (self.cap is None) == (self.lift is None):
            raise ValueError("a gate needs exactly one of 'cap' or 'lift'")
        if self.lift_from is not None:
            if self.lift is None:
                raise ValueError("'lift_from' belongs to a 'lift' gate")
            for bucket in self.lift_from:
                if BUCKET_RANK[bucket] >= BUCKET_RANK[self.lift]:
                    raise ValueError(f"lift_from: {bucket} is not below {self.lift}")
        return self

    @property
    def condition(self) -> AnyCondition:
        cond = self.when if self.when is not None else self.unless
        assert cond is not None
        return cond

    @property
    def fires_on_unknown(self) -> bool:
        if self.on_unknown is not None:
            return self.on_unknown == "fire"
        return self.unless is not None

    @property
    def effect(self) -> Literal["cap", "lift"]:
        return "cap" if self.cap is not None else "lift"

    @property
    def bucket(self) -> BucketName:
        """The bucket the gate caps at or lifts to."""
        bucket = self.cap if self.cap is not None else self.lift
        assert bucket is not None
        return bucket

    @property
    def lifts_from(self) -> frozenset[int]:
        """Ranks (``BUCKET_RANK``) of the buckets a lift gate raises."""
        if self.lift is None:
            return frozenset()
        if self.lift_from is not None:
            return frozenset(BUCKET_RANK[b] for b in self.lift_from)
        return frozenset(r for r in BUCKET_RANK.values() if r < BUCKET_RANK[self.lift])


# ----------------------------------------------------- buckets, grades, policy


class Buckets(_Model):
    """Score thresholds: green at or above ``green``, yellow at or above ``yellow``.

    ``hysteresis`` (points): leaving a bucket needs the score to cross the
    threshold by this margin, so a score wobbling around a threshold does not
    flap. The first score of an account uses the plain thresholds.
    """

    green: Score
    yellow: Score
    hysteresis: Annotated[float, Field(ge=0, le=20, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> Buckets:
        if not self.yellow < self.green:
            raise ValueError("yellow must be below green")
        if self.green + self.hysteresis > 100 or self.yellow - self.hysteresis < 0:
            raise ValueError("hysteresis pushes a threshold outside 0-100")
        return self


class Grades(_Model):
    """Minimum score of each grade; below ``D`` is ``F``."""

    A: Score = 85
    B: Score = 70
    C: Score = 55
    D: Score = 40

    @model_validator(mode="after")
    def _decreasing(self) -> Grades:
        if not self.A > self.B > self.C > self.D:
            raise ValueError("grade thresholds must decrease strictly from A to D")
        return self

    def grade(self, score: float) -> Literal["A", "B", "C", "D", "F"]:
        if score >= self.A:
            return "A"
        if score >= self.B:
            return "B"
        if score >= self.C:
            return "C"
        if score >= self.D:
            return "D"
        return "F"


class MissingData(_Model):
    """What happens when metrics are unknown.

    Weights of unknown metrics are always redistributed (within their group,
    and across groups when a whole group is unknown). If the known metrics
    carry less than ``min_weight_share`` of the profile's total weight, the
    score is ``low_confidence`` and ``on_low_confidence`` decides the bucket:
    ``flag`` -- computed as usual, only flagged; ``cap`` -- at most
    ``cap_bucket``; ``hold`` -- the previous bucket is kept (the first score
    of an account is computed and flagged).
    """

    min_weight_share: Annotated[float, Field(ge=0, le=1)] = 0.6
    on_low_confidence: Literal["flag", "cap", "hold"] = "cap"
    cap_bucket: Literal["yellow", "red"] = "yellow"


# ------------------------------------------------------------------ profiles


class ProfileWhen(_Model):
    """Which accounts a profile applies to; every condition given must match.

    ``min_tenure_days`` / ``max_tenure_days``: whole days since the snapshot's
    ``customer_since`` (an account without it matches no tenure condition).
    """

    stages: Annotated[list[Stage], Field(min_length=1)] | None = None
    segments: Annotated[list[NonEmpty], Field(min_length=1)] | None = None
    min_tenure_days: Annotated[int, Field(ge=0)] | None = None
    max_tenure_days: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _something(self) -> ProfileWhen:
        if (
            self.stages is None
            and self.segments is None
            and self.min_tenure_days is None
            and self.max_tenure_days is None
        ):
            raise ValueError("give stages, segments and/or min_tenure_days / max_tenure_days")
        if (
            self.min_tenure_days is not None
            and self.max_tenure_days is not None
            and self.max_tenure_days < self.min_tenure_days
        ):
            raise ValueError("max_tenure_days is below min_tenure_days")
        return self

    @property
    def uses_tenure(self) -> bool:
        return self.min_tenure_days is not None or self.max_tenure_days is not None

    def matches(self, stage: str | None, segment: str | None, tenure_days: int | None) -> bool:
        if self.stages is not None and stage not in self.stages:
            return False
        if self.segments is not None and segment not in self.segments:
            return False
        if self.uses_tenure:
            if tenure_days is None:
                return False
            if self.min_tenure_days is not None and tenure_days < self.min_tenure_days:
                return False
            if self.max_tenure_days is not None and tenure_days > self.max_tenure_days:
                return False
        return True


class Profile(_Model):
    """Overrides for matching accounts. ``groups``, ``buckets``, ``grades`` and
    ``missing_data`` replace the default's; ``normalise`` is merged per metric;
    ``gates`` are merged by name (a gate named like a default gate replaces it,
    a new name is added) and ``drop_gates`` removes default gates."""

    name: Name
    description: str = ""
    when: ProfileWhen
    groups: Annotated[dict[str, Group], Field(min_length=1)] | None = None
    normalise: dict[str, Normalisation] | None = None
    buckets: Buckets | None = None
    grades: Grades | None = None
    gates: list[Gate] | None = None
    drop_gates: list[Name] | None = None
    missing_data: MissingData | None = None


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile with the default filled in: what scoring actually uses.

    ``groups`` is ``((group, weight, ((metric, weight), ...)), ...)`` with
    zero weights dropped; ``metrics`` lists every metric to evaluate
    (weighted ones first, then gate-only ones).
    """

    name: str
    groups: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...]
    normalise: Mapping[str, Normalisation]
    buckets: Buckets
    grades: Grades
    gates: tuple[Gate, ...]
    missing_data: MissingData
    metrics: tuple[str, ...]
    #: ``(metric, extractor)`` for every metric in ``metrics``, same order.
    extractors: tuple[tuple[str, Extractor], ...]
    #: metric -> compiled ``normalise`` (value -> 0-100).
    scorers: Mapping[str, Callable[[float], float]]
    #: Parts of the account state each metric in ``metrics`` reads (its
    #: source's ``dependencies``), same order.
    reads: tuple[int, ...] = ()
    #: How long each metric's value lasts without events, same order.
    stables: tuple[Stability, ...] = ()
    #: metric -> short label for people (every metric in ``metrics``).
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Scratch space for forms compiled from this profile by their users
    #: (``service.model.scoring`` keeps its evaluation plan here); not compared.
    compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class Feeds(_Model):
    """Which input feeds every account has.

    A metric whose catalogue source reads a feed (support tickets, surveys,
    CSM touches, contract events...) is unknown for an account that never
    sent an event of that feed, unless the feed is listed in ``connected``:
    then silence on it is data (no ticket ever means no open ticket).
    """

    connected: list[FeedName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known(self) -> Feeds:
        for feed in self.connected:
            if feed not in FEEDS:
                raise ValueError(f"unknown feed {feed!r} (feeds: {', '.join(FEEDS)})")
        return self


def _unknown(state: Any, as_of: int) -> float | None:
    return None


def _unknown_lasts(state: Any, as_of: int, value: float | None) -> int:
    return FOREVER


def _fed(
    extractor: Extractor, stable: Stability, feeds: tuple[str, ...]
) -> tuple[Extractor, Stability]:
    """``extractor`` unknown, and its unknown lasting, until a ``feeds`` event was applied."""

    def extract(state: Any, as_of: int) -> float | None:
        counts = state.counts
        for feed in feeds:
            if feed in counts:
                return extractor(state, as_of)
        return None

    def lasts(state: Any, as_of: int, value: float | None) -> int:
        counts = state.counts
        for feed in feeds:
            if feed in counts:
                return stable(state, as_of, value)
        return FOREVER  # until an event of the feed (which recomputes it)

    return extract, lasts


def _version(value: Any) -> Any:
    # YAML reads `version: 3` as an int and `version: 2024.1` as a float;
    # both are versions. (Quote versions such as "1.10" that YAML would
    # shorten to 1.1.)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class Scorecard(_Model):
    """A whole scorecard file. The top level is the ``default`` profile."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
    version: Annotated[
        Annotated[str, StringConstraints(min_length=1, max_length=32)],
        BeforeValidator(_version),
    ]
    description: str = ""
    #: The shipped scorecard or file this one was merged over (see ``parse_scorecard``).
    extends: str | None = None
    #: Timer cadence on the event-time clock (see docs/scorecard.md, "Rescoring").
    rescore_interval_minutes: Annotated[int, Field(ge=1, le=1440)] = 60
    #: What only the user knows about their product (key features, outcome KPI),
    #: referenced from metric parameters as ``$name``.
    product: dict[str, Any] = Field(default_factory=dict)
    feeds: Feeds = Field(default_factory=lambda: Feeds())
    metrics: Annotated[dict[str, MetricDef], Field(min_length=1)]
    groups: Annotated[dict[str, Group], Field(min_length=1)]
    buckets: Buckets
    grades: Grades = Grades()
    gates: list[Gate] = Field(default_factory=list)
    missing_data: MissingData = MissingData()
    profiles: list[Profile] = Field(default_factory=list)

    _extractors: dict[str, Extractor] = PrivateAttr(default_factory=dict)
    _labels: dict[str, str] = PrivateAttr(default_factory=dict)
    _unconfigured: set[str] = PrivateAttr(default_factory=set)
    _regular: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _reads: dict[str, int] = PrivateAttr(default_factory=dict)
    _stables: dict[str, Stability] = PrivateAttr(default_factory=dict)
    _resolved: list[tuple[ProfileWhen | None, ResolvedProfile]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Scorecard:
        if 1440 % self.rescore_interval_minutes:
            raise RefError("rescore_interval_minutes", "must divide a day (1440 minutes)")
        for metric, definition in self.metrics.items():
            if not _is_name(metric):
                raise RefError(f"metrics.{metric}", "metric names are lower_snake_case")
            source = definition.source_name(metric)
            if source not in CATALOG:
                where = "source" if definition.source else ""
                raise RefError(
                    _join("metrics", metric, where),
                    f"unknown metric source {source!r} (known: {', '.join(sorted(CATALOG))})",
                )
            params = self._product_params(metric, definition.params)
            if params is None:
                # A product value it needs is not given: unknown, never 0.
                self._unconfigured.add(metric)
                self._extractors[metric] = _unknown
                self._reads[metric] = 0
                self._stables[metric] = _unknown_lasts
                continue
            try:
                extractor = build_extractor(source, params)
                stable = build_stability(source, params)
            except ParamsError as exc:
                raise RefError(_join("metrics", metric, "params", exc.field), exc.reason) from None
            if source == "key_feature_adoption" and params.get("min_days", 1) > 1:
                self._regular = self._regular | frozenset(params["features"])
            reads = CATALOG[source].dependencies
            feeds = CATALOG[source].feeds
            if feeds and not any(f in self.feeds.connected for f in feeds):
                # None of its feeds is declared connected: unknown for an account
                # that never sent one of them (not perfect). The first event of a
                # feed must recompute it, so it reads what such events change.
                extractor, stable = _fed(extractor, stable, feeds)
                for feed in feeds:
                    reads |= PARTS_OF_TYPE[feed]
            self._extractors[metric] = extractor
            self._reads[metric] = reads
            self._stables[metric] = stable
        self._check_profile("", self.groups, None, self.gates)
        names: set[str] = set()
        default_gates = {gate.name for gate in self.gates}
        for i, profile in enumerate(self.profiles):
            if profile.name == "default" or profile.name in names:
                raise RefError(f"profiles.{i}.name", f"duplicate profile name {profile.name!r}")
            names.add(profile.name)
            for j, dropped in enumerate(profile.drop_gates or []):
                if dropped not in default_gates:
                    raise RefError(
                        f"profiles.{i}.drop_gates.{j}",
                        f"no default gate named {dropped!r} to drop",
                    )
            self._check_profile(f"profiles.{i}.", profile.groups, profile.normalise, profile.gates)
        self._resolve()
        return self

    def _product_params(self, metric: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """``params`` with every ``$name`` replaced by ``product[name]``; ``None``
        when a referenced product value is absent, null or empty."""
        resolved: dict[str, Any] = {}
        for key, value in params.items():
            if isinstance(value, str) and value.startswith("$"):
                name = value[1:]
                if not _is_name(name):
                    raise RefError(
                        f"metrics.{metric}.params.{key}",
                        f"{value!r}: a product reference is $ and a lower_snake_case name",
                    )
                value = self.product.get(name)
                if value is None or value == [] or value == "":
                    return None
            resolved[key] = value
        return resolved

    def _check_profile(
        self,
        prefix: str,
        groups: Mapping[str, Group] | None,
        normalise: Mapping[str, Normalisation] | None,
        gates: list[Gate] | None,
    ) -> None:
        if groups is not None:
            seen: dict[str, str] = {}
            total = 0.0
            for group, spec in groups.items():
                for metric, weight in spec.metrics.items():
                    path = f"{prefix}groups.{group}.metrics.{metric}"
                    if metric not in self.metrics:
                        raise RefError(path, f"unknown metric {metric!r} (define it in metrics)")
                    if metric in seen:
                        raise RefError(path, f"metric already weighted in group {seen[metric]!r}")
                    seen[metric] = group
                    total += weight
            if total <= 0:
                raise RefError(f"{prefix}groups", "at least one metric needs a weight above 0")
        for metric in normalise or {}:
            if metric not in self.metrics:
                raise RefError(f"{prefix}normalise.{metric}", f"unknown metric {metric!r}")
        seen_gates: set[str] = set()
        for i, gate in enumerate(gates or []):
            if gate.name in seen_gates:
                raise RefError(f"{prefix}gates.{i}.name", f"duplicate gate name {gate.name!r}")
            seen_gates.add(gate.name)
            parts = [("when" if gate.when is not None else "unless", gate.condition)]
            if gate.release is not None:
                parts.append(("release", gate.release))
            for part, cond in parts:
                for metric in condition_metrics(cond):
                    if metric not in self.metrics:
                        raise RefError(
                            f"{prefix}gates.{i}.{part}",
                            f"unknown metric {metric!r} (define it in metrics)",
                        )

    def _resolve(self) -> None:
        base = self._build(
            "default", self.groups, {}, self.buckets, self.grades, self.gates, self.missing_data
        )
        resolved: list[tuple[ProfileWhen | None, ResolvedProfile]] = []
        for profile in self.profiles:
            resolved.append(
                (
                    profile.when,
                    self._build(
                        profile.name,
                        profile.groups if profile.groups is not None else self.groups,
                        profile.normalise or {},
                        profile.buckets or self.buckets,
                        profile.grades or self.grades,
                        _merged_gates(self.gates, profile.gates, profile.drop_gates),
                        profile.missing_data or self.missing_data,
                    ),
                )
            )
        resolved.append((None, base))
        self._resolved = resolved

    def _build(
        self,
        name: str,
        groups: Mapping[str, Group],
        normalise: Mapping[str, Normalisation],
        buckets: Buckets,
        grades: Grades,
        gates: list[Gate],
        missing_data: MissingData,
    ) -> ResolvedProfile:
        weighted = tuple(
            (
                group,
                spec.weight,
                tuple((metric, w) for metric, w in spec.metrics.items() if w > 0),
            )
            for group, spec in groups.items()
        )
        weighted = tuple(g for g in weighted if g[2])
        order = [metric for _, _, members in weighted for metric, _ in members]
        for gate in gates:
            order.extend(condition_metrics(gate.condition))
            if gate.release is not None:
                order.extend(condition_metrics(gate.release))
        merged = {m: normalise.get(m, self.metrics[m].normalise) for m in self.metrics}
        metrics = tuple(dict.fromkeys(order))
        return ResolvedProfile(
            name=name,
            groups=weighted,
            normalise=merged,
            buckets=buckets,
            grades=grades,
            gates=tuple(gates),
            missing_data=missing_data,
            metrics=metrics,
            extractors=tuple((m, self._extractors[m]) for m in metrics),
            scorers={m: n.compile() for m, n in merged.items()},
            reads=tuple(self._reads[m] for m in metrics),
            stables=tuple(self._stables[m] for m in metrics),
            labels={m: self.label(m) for m in metrics},
        )

    # ------------------------------------------------------------------ use

    def profile_for(
        self, stage: str | None, segment: str | None, tenure_days: int | None = None
    ) -> ResolvedProfile:
        """The first profile (in file order) whose ``when`` matches, else the default."""
        for when, profile in self._profiles:
            if when is None or when.matches(stage, segment, tenure_days):
                return profile
        raise AssertionError("the default profile always matches")  # pragma: no cover

    @property
    def resolved_profiles(self) -> list[ResolvedProfile]:
        """Every resolved profile, the default last."""
        return [profile for _, profile in self._resolved]

    def extractor(self, metric: str) -> Extractor:
        """The bound extractor of a defined metric."""
        return self._extractor_map[metric]

    @functools.cached_property
    def _extractor_map(self) -> dict[str, Extractor]:
        # A plain attribute once read: pydantic private attributes go through
        # __getattr__, which cost microseconds per call on the hot path.
        return self._extractors

    @functools.cached_property
    def _profiles(self) -> list[tuple[ProfileWhen | None, ResolvedProfile]]:
        return self._resolved

    @functools.cached_property
    def uses_tenure(self) -> bool:
        """Whether a profile is chosen by tenure (it then depends on the as-of day)."""
        return any(p.when.uses_tenure for p in self.profiles)

    def label(self, metric: str) -> str:
        """A short human label of ``metric`` (its ``label``, else derived from its
        ``description``, else the metric id)."""
        labels = self._labels
        found = labels.get(metric)
        if found is None:
            definition = self.metrics.get(metric)
            found = labels[metric] = (
                metric if definition is None else definition.short_label() or metric
            )
        return found

    @functools.cached_property
    def regular_features(self) -> frozenset[str]:
        """Features whose days of use accounts must keep: the key features of
        metrics that ask for regular use (``min_days`` above 1)."""
        return self._regular

    @property
    def unconfigured(self) -> list[str]:
        """Metrics that need a ``product`` value the scorecard does not give
        (always unknown until it does)."""
        return sorted(self._unconfigured)

    @property
    def rescore_interval_ms(self) -> int:
        return self.rescore_interval_minutes * 60_000

    def summary(self, source: str) -> dict[str, Any]:
        """One JSON-ready line describing a valid scorecard (``scorecard check``)."""
        return {
            "ok": True,
            "file": source,
            "name": self.name,
            "version": self.version,
            "metrics": len(self.metrics),
            "groups": sorted(self.groups),
            "gates": len(self.gates),
            "profiles": [p.name for p in self.profiles],
            "rescore_interval_minutes": self.rescore_interval_minutes,
        }


def _merged_gates(
    default: list[Gate], profile: list[Gate] | None, dropped: list[str] | None
) -> list[Gate]:
    """The default's gates with the profile's merged in by name (replacing in
    place, new ones appended), minus the dropped ones."""
    by_name = {gate.name: gate for gate in profile or []}
    merged = [by_name.pop(gate.name, gate) for gate in default]
    merged.extend(by_name.values())
    gone = set(dropped or ())
    return [gate for gate in merged if gate.name not in gone]


_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*")


def _is_name(text: str) -> bool:
    return _NAME_RE.fullmatch(text) is not None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


# ------------------------------------------------------------------- loading


def _error_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(_TAG)]
    return ".".join(parts) or "(root)"


#: Shipped scorecards (package data) that ``extends`` and the command line may name.
SHIPPED: Final = ("default", "demo", "adoption-rule")
_EXTENDS_DEPTH: Final = 8


def parse_scorecard(text: str, source: str = "<string>") -> Scorecard:
    """Parse and validate scorecard YAML; raises :class:`ScorecardError`.

    A file with ``extends: NAME`` is merged over the shipped scorecard NAME (or
    over the file NAME, relative to this one): mappings key by key, lists of
    named items (profiles, gates) by name, other values replaced. It must give
    its own ``name``.
    """

    def prepare(data: dict[str, Any]) -> dict[str, Any]:
        return _resolve_extends(data, source, 0)

    return parse_model(
        Scorecard,
        text,
        source,
        ScorecardError,
        what="a scorecard",
        path_of=_error_path,
        prepare=prepare,
    )


def _resolve_extends(data: dict[str, Any], source: str, depth: int) -> dict[str, Any]:
    base_name = data.get("extends")
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise RefError("extends", "give a shipped scorecard name or a file path")
    if "name" not in data:
        raise RefError("name", "a scorecard that extends another needs its own name")
    if depth >= _EXTENDS_DEPTH:
        raise RefError("extends", f"more than {_EXTENDS_DEPTH} levels of extends (a cycle?)")
    base_source, base_text = _base_text(base_name, source)
    base = load_mapping(base_text, base_source, ScorecardError, what="a scorecard")
    base = _resolve_extends(base, base_source, depth + 1)
    merged = merge_over(base, data)
    assert isinstance(merged, dict)
    merged["extends"] = base_name
    return merged


def _base_text(name: str, source: str) -> tuple[str, str]:
    if name in SHIPPED:
        return shipped_source(name), shipped_text(name)
    path = Path(name)
    if not path.is_absolute() and not source.startswith("<"):
        path = Path(source).parent / path
    try:
        return str(path), path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RefError("extends", f"{name}: {reason}") from None


def shipped_source(name: str) -> str:
    """The display path of a shipped scorecard."""
    return f"service/model/scorecards/{name}.yaml"


def shipped_text(name: str) -> str:
    """The YAML text of the shipped scorecard ``name`` (one of :data:`SHIPPED`)."""
    resource = importlib.resources.files("service.model.scorecards") / f"{name}.yaml"
    return resource.read_text(encoding="utf-8")


def load_scorecard(path: str | Path) -> Scorecard:
    """Read and validate a scorecard file, or a shipped scorecard by name
    (``default``, ``demo``...); raises :class:`ScorecardError`."""
    if str(path) in SHIPPED:
        return shipped_scorecard(str(path))
    return parse_scorecard(load_text(path, ScorecardError), str(path))


@functools.cache
def shipped_scorecard(name: str) -> Scorecard:
    """A scorecard shipped in ``service/model/scorecards/`` (one of :data:`SHIPPED`)."""
    return parse_scorecard(shipped_text(name), shipped_source(name))


def default_scorecard() -> Scorecard:
    """The scorecard shipped in ``service/model/scorecards/default.yaml``."""
    return shipped_scorecard("default")
