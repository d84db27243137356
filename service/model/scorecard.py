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

from service.model.metrics_catalog import (
    CATALOG,
    Extractor,
    ParamsError,
    Stability,
    build_extractor,
    build_stability,
)
from service.model.yaml_config import ConfigError, RefError, load_text, parse_model

__all__ = [
    "BUCKETS",
    "BUCKET_RANK",
    "STAGES",
    "AllOf",
    "AnyOf",
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
    """A scorecard metric: a catalogue source with parameters and a normalisation."""

    source: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    normalise: Normalisation
    description: str = ""

    def source_name(self, metric: str) -> str:
        return self.source or metric


class Group(_Model):
    """Metrics weighted inside a group; groups are weighted against each other."""

    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    metrics: Annotated[dict[str, Weight], Field(min_length=1)]


# ---------------------------------------------------------------- conditions


class Compare(_Model):
    """``metric op value``; unknown (``None``) when the metric is missing."""

    metric: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: Finite


class AllOf(_Model):
    """True when every condition is true (false if any is false, else unknown)."""

    all: Annotated[list[Condition], Field(min_length=1)]


class AnyOf(_Model):
    """True when some condition is true (false if all are false, else unknown)."""

    any: Annotated[list[Condition], Field(min_length=1)]


class NotOf(_Model):
    """Negation; unknown stays unknown."""

    not_: Condition = Field(alias="not")


_TAG: Final = "cond:"


def _condition_kind(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return _TAG + key
        return _TAG + "compare"
    if isinstance(value, AllOf):
        return _TAG + "all"
    if isinstance(value, AnyOf):
        return _TAG + "any"
    if isinstance(value, NotOf):
        return _TAG + "not"
    return _TAG + "compare"


Condition = Annotated[
    Annotated[Compare, Tag(_TAG + "compare")]
    | Annotated[AllOf, Tag(_TAG + "all")]
    | Annotated[AnyOf, Tag(_TAG + "any")]
    | Annotated[NotOf, Tag(_TAG + "not")],
    Discriminator(_condition_kind),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


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


def compile_condition(cond: Compare | AllOf | AnyOf | NotOf) -> CompiledCondition:
    """A function equivalent to ``service.model.scoring.evaluate_condition(cond, values)``.

    Three-valued: ``None`` when a needed metric is unknown and the answer
    depends on it (``all`` with a false part is false, ``any`` with a true
    part is true, whatever is unknown). Built once per scorecard (the hot path
    of gates); ``evaluate_condition`` stays the reference.
    """
    if isinstance(cond, Compare):
        metric, op, ref = cond.metric, _OPS[cond.op], cond.value

        def compare(values: Mapping[str, float | None]) -> bool | None:
            value = values.get(metric)
            return None if value is None else op(value, ref)

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


def condition_metrics(cond: Compare | AllOf | AnyOf | NotOf) -> Iterator[str]:
    """Every metric a condition reads, in order of appearance."""
    if isinstance(cond, Compare):
        yield cond.metric
    elif isinstance(cond, AllOf):
        for sub in cond.all:
            yield from condition_metrics(sub)
    elif isinstance(cond, AnyOf):
        for sub in cond.any:
            yield from condition_metrics(sub)
    else:
        yield from condition_metrics(cond.not_)


class Gate(_Model):
    """A rule that caps the bucket.

    ``when: COND`` caps when COND is true; ``unless: COND`` caps when COND is
    not true (a requirement for the better buckets). ``on_unknown`` says what
    an unknown condition (a missing metric) does: the default is ``skip`` for
    ``when`` (no evidence of the risk) and ``fire`` for ``unless`` (the
    requirement is not shown to hold). ``release`` is the gate's hysteresis:
    once the gate fired, it keeps capping until ``release`` is true (not
    merely until its own condition stops holding), so a metric wobbling
    around the gate's threshold does not flap the bucket.
    """

    name: Name
    reason: str = ""
    when: Condition | None = None
    unless: Condition | None = None
    release: Condition | None = None
    cap: Literal["yellow", "red"]
    on_unknown: Literal["fire", "skip"] | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Gate:
        if (self.when is None) == (self.unless is None):
            raise ValueError("a gate needs exactly one of 'when' or 'unless'")
        return self

    @property
    def condition(self) -> Compare | AllOf | AnyOf | NotOf:
        cond = self.when if self.when is not None else self.unless
        assert cond is not None
        return cond

    @property
    def fires_on_unknown(self) -> bool:
        if self.on_unknown is not None:
            return self.on_unknown == "fire"
        return self.unless is not None


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
    """Which accounts a profile applies to; both lists given = both must match."""

    stages: Annotated[list[Stage], Field(min_length=1)] | None = None
    segments: Annotated[list[NonEmpty], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _something(self) -> ProfileWhen:
        if self.stages is None and self.segments is None:
            raise ValueError("give stages and/or segments")
        return self

    def matches(self, stage: str | None, segment: str | None) -> bool:
        if self.stages is not None and stage not in self.stages:
            return False
        return self.segments is None or segment in self.segments


class Profile(_Model):
    """Overrides for matching accounts. ``groups``, ``buckets``, ``grades``,
    ``gates`` and ``missing_data`` replace the default's; ``normalise`` is
    merged per metric."""

    name: Name
    description: str = ""
    when: ProfileWhen
    groups: Annotated[dict[str, Group], Field(min_length=1)] | None = None
    normalise: dict[str, Normalisation] | None = None
    buckets: Buckets | None = None
    grades: Grades | None = None
    gates: list[Gate] | None = None
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
    #: Scratch space for forms compiled from this profile by their users
    #: (``service.model.scoring`` keeps its evaluation plan here); not compared.
    compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
    #: Timer cadence on the event-time clock (see docs/scorecard.md, "Rescoring").
    rescore_interval_minutes: Annotated[int, Field(ge=1, le=1440)] = 60
    metrics: Annotated[dict[str, MetricDef], Field(min_length=1)]
    groups: Annotated[dict[str, Group], Field(min_length=1)]
    buckets: Buckets
    grades: Grades = Grades()
    gates: list[Gate] = Field(default_factory=list)
    missing_data: MissingData = MissingData()
    profiles: list[Profile] = Field(default_factory=list)

    _extractors: dict[str, Extractor] = PrivateAttr(default_factory=dict)
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
            try:
                self._extractors[metric] = build_extractor(source, definition.params)
                self._reads[metric] = CATALOG[source].dependencies
                self._stables[metric] = build_stability(source, definition.params)
            except ParamsError as exc:
                raise RefError(_join("metrics", metric, "params", exc.field), exc.reason) from None
        self._check_profile("", self.groups, None, self.gates)
        names: set[str] = set()
        for i, profile in enumerate(self.profiles):
            if profile.name == "default" or profile.name in names:
                raise RefError(f"profiles.{i}.name", f"duplicate profile name {profile.name!r}")
            names.add(profile.name)
            self._check_profile(f"profiles.{i}.", profile.groups, profile.normalise, profile.gates)
        self._resolve()
        return self

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
        for i, gate in enumerate(gates or []):
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
                        profile.gates if profile.gates is not None else self.gates,
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
        )

    # ------------------------------------------------------------------ use

    def profile_for(self, stage: str | None, segment: str | None) -> ResolvedProfile:
        """The first profile (in file order) whose ``when`` matches, else the default."""
        for when, profile in self._resolved:
            if when is None or when.matches(stage, segment):
                return profile
        raise AssertionError("the default profile always matches")  # pragma: no cover

    @property
    def resolved_profiles(self) -> list[ResolvedProfile]:
        """Every resolved profile, the default last."""
        return [profile for _, profile in self._resolved]

    def extractor(self, metric: str) -> Extractor:
        """The bound extractor of a defined metric."""
        return self._extractors[metric]

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


_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]*")


def _is_name(text: str) -> bool:
    return _NAME_RE.fullmatch(text) is not None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


# ------------------------------------------------------------------- loading


def _error_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(_TAG)]
    return ".".join(parts) or "(root)"


def parse_scorecard(text: str, source: str = "<string>") -> Scorecard:
    """Parse and validate scorecard YAML; raises :class:`ScorecardError`."""
    return parse_model(
        Scorecard, text, source, ScorecardError, what="a scorecard", path_of=_error_path
    )


def load_scorecard(path: str | Path) -> Scorecard:
    """Read and validate a scorecard file; raises :class:`ScorecardError`."""
    return parse_scorecard(load_text(path, ScorecardError), str(path))


@functools.cache
def default_scorecard() -> Scorecard:
    """The scorecard shipped in ``service/model/scorecards/default.yaml``."""
    resource = importlib.resources.files("service.model.scorecards") / "default.yaml"
    return parse_scorecard(
        resource.read_text(encoding="utf-8"), "service/model/scorecards/default.yaml"
    )
