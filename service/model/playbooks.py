"""Playbooks: the YAML format, its validation and the pure trigger decision.

A playbook turns scores into action: when its trigger fires for an account,
vitals publishes a :class:`~schemas.outputs.PlaybookTrigger` on
``vitals.playbooks.triggers`` (and optionally POSTs it to a webhook, see
:mod:`service.runtime.webhook`). docs/playbooks.md documents the format with the
shipped ``service/model/scorecards/playbooks.yaml`` as the example.

Trigger kinds:

* ``bucket_transition`` -- a bucket change ``from`` -> ``to`` (either may be
  ``any``); one trigger per matching change.
* ``metric_condition`` -- a condition over metric values in the scorecard's
  condition language (``{metric, op, value}``, ``all``, ``any``, ``not``),
  optionally only in some buckets or lifecycle stages.
* ``score_drop`` -- the score fell by at least ``points`` over ``period``
  (``7d`` or ``30d``: the score trend of the ``HealthScore``).

``metric_condition`` and ``score_drop`` are *edge-triggered*: they fire when
their condition goes from not true to true, not on every rescore while it
stays true. An unknown answer (a metric it reads is missing) changes nothing:
no trigger and the remembered truth stays. Every trigger then passes the
playbook's ``cooldown``: a trigger less than ``cooldown`` (event time) after
the playbook last fired for the account is *suppressed*, and the edge it came
from is consumed (it does not fire later while the condition stays true).

This module is pure (no faust or Kafka import). The per-account memory that
cooldowns and edges need is a :class:`PlaybookMemory` the caller keeps with
the account state; :func:`decide` reads and updates it.

Loading validates everything; a problem is one :class:`PlaybookError` whose
text is ``FILE: path.to.field: reason``. Metric names are checked against a
scorecard separately (:meth:`PlaybookSet.check_metrics`), because the same
playbooks may run with different scorecards.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from schemas.events import parse_timestamp
from schemas.outputs import BucketChange, HealthScore, PlaybookTrigger, format_utc
from service.model.scorecard import (
    AllOf,
    AnyCondition,
    AtLeast,
    BucketName,
    Compare,
    Condition,
    NotOf,
    Scorecard,
    compile_condition,
    condition_metrics,
)
from service.model.scoring import Evaluation, evaluate_condition
from service.model.yaml_config import ConfigError, RefError, load_text, parse_model

if TYPE_CHECKING:
    from service.model.account_state import AccountState

__all__ = [
    "DEFAULT_PLAYBOOKS_RESOURCE",
    "KINDS",
    "BucketTransition",
    "Decision",
    "MetricCondition",
    "Playbook",
    "PlaybookError",
    "PlaybookMemory",
    "PlaybookSet",
    "ScoreDrop",
    "Suppressed",
    "decide",
    "decide_point",
    "default_playbooks",
    "describe_condition",
    "load_playbooks",
    "metric_values_for",
    "parse_duration",
    "parse_playbooks",
    "trigger_id",
]

#: Where the default playbooks live (package data next to the default scorecard).
DEFAULT_PLAYBOOKS_RESOURCE: Final = "service/model/scorecards/playbooks.yaml"
#: Trigger kinds, in documentation order.
KINDS: Final = ("bucket_transition", "metric_condition", "score_drop")

_DURATION_RE: Final = re.compile(r"([0-9]+)([smhdw])")
_UNIT_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
#: Longest cooldown accepted (ten years): anything longer is a typo.
_MAX_DURATION_MS: Final = 3650 * 86_400_000
_COND_TAG: Final = "cond:"  # the scorecard's condition union tags; not part of a path


class PlaybookError(ConfigError):
    """An invalid playbooks file: ``source`` (file), dotted ``path`` inside it, ``reason``."""


def parse_duration(text: str) -> int:
    """``"7d"`` -> milliseconds. Units ``s m h d w``; ``"0s"`` is no duration.

    Raises ``ValueError`` with a readable message for anything else.
    """
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: give a whole number and a unit, "
            "like 7d, 12h, 30m, 2w (units s, m, h, d, w)"
        )
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if ms > _MAX_DURATION_MS:
        raise ValueError(f"{text!r} is longer than 3650 days")
    return ms


# ------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Side = Literal["green", "yellow", "red", "any"]


class BucketTransition(_Model):
    """Fires on a bucket change from ``from`` to ``to`` (``any`` matches every bucket)."""

    kind: Literal["bucket_transition"]
    from_: Side = Field(alias="from")
    to: Side

    @field_validator("to")
    @classmethod
    def _differs(cls, to: str, info: ValidationInfo) -> str:
        from_ = info.data.get("from_")
        if to != "any" and to == from_:
            raise ValueError(
                f"'from' and 'to' are both {to!r}: a bucket change always moves between "
                "two different buckets"
            )
        return to

    def matches(self, from_bucket: str, to_bucket: str) -> bool:
        return self.from_ in ("any", from_bucket) and self.to in ("any", to_bucket)


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class MetricCondition(_Model):
    """Fires when ``when`` becomes true (edge-triggered), optionally only while
    the account is in one of ``bucket`` and one of ``stages``."""

    kind: Literal["metric_condition"]
    when: Condition
    #: One bucket or a list; stored as a list.
    bucket: (
        Annotated[list[BucketName], BeforeValidator(_one_or_many), Field(min_length=1)] | None
    ) = None
    stages: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None


class ScoreDrop(_Model):
    """Fires when the score fell by at least ``points`` over ``period`` (edge-triggered).

    The drop is the score's trend (``trend.delta_7d`` / ``trend.delta_30d``):
    the score now minus the score in effect ``period`` ago.
    """

    kind: Literal["score_drop"]
    points: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
    period: Literal["7d", "30d"]


Trigger = Annotated[BucketTransition | MetricCondition | ScoreDrop, Field(discriminator="kind")]


class Playbook(_Model):
    """One playbook: a name, what it is for, its cooldown and its trigger."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
    description: str = ""
    cooldown: str
    trigger: Trigger

    @field_validator("cooldown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        parse_duration(value)  # raises ValueError with the readable message
        return value.strip()

    @functools.cached_property
    def cooldown_ms(self) -> int:
        return parse_duration(self.cooldown)

    @property
    def kind(self) -> str:
        return self.trigger.kind


class PlaybookSet(_Model):
    """A whole playbooks file."""

    description: str = ""
    playbooks: list[Playbook]

    def model_post_init(self, context: Any) -> None:
        seen: set[str] = set()
        for i, playbook in enumerate(self.playbooks):
            if playbook.name in seen:
                raise RefError(f"playbooks.{i}.name", f"duplicate playbook name {playbook.name!r}")
            seen.add(playbook.name)

    @functools.cached_property
    def metrics(self) -> frozenset[str]:
        """Every metric a ``metric_condition`` reads."""
        return frozenset(
            metric
            for playbook in self.playbooks
            if isinstance(playbook.trigger, MetricCondition)
            for metric in condition_metrics(playbook.trigger.when)
        )

    @functools.cached_property
    def compiled(self) -> _Compiled:
        """The playbooks in the form :func:`decide_point`'s quiet check reads."""
        return _Compiled(self)

    def check_metrics(self, scorecard: Scorecard, source: str = "<string>") -> None:
        """Raise :class:`PlaybookError` if a condition reads a metric that
        ``scorecard`` does not define (it would never be known)."""
        for i, playbook in enumerate(self.playbooks):
            if not isinstance(playbook.trigger, MetricCondition):
                continue
            for metric in condition_metrics(playbook.trigger.when):
                if metric not in scorecard.metrics:
                    raise PlaybookError(
                        source,
                        f"playbooks.{i}.trigger.when",
                        f"unknown metric {metric!r}: scorecard {scorecard.name!r} "
                        f"defines {', '.join(sorted(scorecard.metrics))}",
                    )

    def summary(self, source: str) -> dict[str, Any]:
        """One JSON-ready line describing a valid file (``playbooks check``)."""
        return {
            "ok": True,
            "file": source,
            "playbooks": [
                {"name": p.name, "kind": p.kind, "cooldown": p.cooldown} for p in self.playbooks
            ],
            "metrics": sorted(self.metrics),
        }


# ------------------------------------------------------------------- loading


def _error_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        text = str(part)
        if text.startswith(_COND_TAG):
            continue
        # The trigger union adds its tag (the kind) to the location: drop it.
        if text in KINDS and i > 0 and loc[i - 1] == "trigger":
            continue
        parts.append(text)
    return ".".join(parts) or "(root)"


def _error_reason(err: Mapping[str, Any]) -> str:
    kinds = ", ".join(KINDS)
    if err["type"] == "union_tag_not_found":
        return f"missing 'kind' (one of {kinds})"
    if err["type"] == "union_tag_invalid":
        return f"unknown kind {err['ctx']['tag']!r} (one of {kinds})"
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return " ".join(message.split())


def parse_playbooks(text: str, source: str = "<string>") -> PlaybookSet:
    """Parse and validate playbooks YAML; raises :class:`PlaybookError`."""
    return parse_model(
        PlaybookSet,
        text,
        source,
        PlaybookError,
        what="a playbooks file",
        path_of=_error_path,
        reason_of=_error_reason,
    )


def load_playbooks(path: str | Path) -> PlaybookSet:
    """Read and validate a playbooks file; raises :class:`PlaybookError`."""
    return parse_playbooks(load_text(path, PlaybookError), str(path))


@functools.cache
def default_playbooks() -> PlaybookSet:
    """The playbooks shipped in ``service/model/scorecards/playbooks.yaml``."""
    resource = importlib.resources.files("service.model.scorecards") / "playbooks.yaml"
    return parse_playbooks(resource.read_text(encoding="utf-8"), DEFAULT_PLAYBOOKS_RESOURCE)


# -------------------------------------------------------------------- memory


@dataclass
class PlaybookMemory:
    """What playbooks remember about one account, kept with its state.

    ``fired``: playbook -> event time (ms) it last fired, while its cooldown
    runs (older entries are dropped). ``active``: edge-triggered playbooks
    whose condition was true at the last known evaluation (absent = false).
    """

    fired: dict[str, int] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.fired or self.active)

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON form: ``{"f": {name: ms}, "a": [name, ...]}``, empty parts omitted."""
        out: dict[str, Any] = {}
        if self.fired:
            out["f"] = dict(sorted(self.fired.items()))
        if self.active:
            out["a"] = sorted(self.active)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PlaybookMemory:
        """Inverse of :meth:`to_dict` (``None`` or ``{}``: empty); ``ValueError`` if malformed."""
        if not data:
            return cls()
        fired = data.get("f", {})
        active = data.get("a", [])
        if not isinstance(fired, Mapping) or not all(
            isinstance(k, str) and type(v) is int for k, v in fired.items()
        ):
            raise ValueError("malformed playbook memory: 'f' must map names to integer ms")
        if not isinstance(active, list) or not all(isinstance(n, str) for n in active):
            raise ValueError("malformed playbook memory: 'a' must be a list of names")
        return cls(dict(fired), set(active))


# ------------------------------------------------------------------ decision


def trigger_id(playbook: str, account_id: str, as_of_ms: int) -> str:
    """Deterministic id of a trigger: sha256 of ``playbook|account_id|as_of`` (32 hex)."""
    return hashlib.sha256(f"{playbook}|{account_id}|{as_of_ms}".encode()).hexdigest()[:32]


class Suppressed(NamedTuple):
    """A trigger held back by its playbook's cooldown."""

    playbook: str
    account_id: str
    as_of_ms: int
    #: When the cooldown ends (the playbook may fire again from then on).
    until_ms: int


@dataclass
class Decision:
    """What :func:`decide` found: trigger messages (JSON-ready dicts, in
    playbook-file order) and the triggers suppressed by a cooldown."""

    triggers: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)


class _Score(NamedTuple):
    score: float
    bucket: str
    stage: str
    delta_7d: float | None
    delta_30d: float | None


class _Change(NamedTuple):
    change_id: str
    from_bucket: str
    to_bucket: str
    score: float
    previous_score: float
    drivers: list[dict[str, Any]]
    as_of_ms: int
    #: The gates that decided the new bucket (dicts of the message's ``gates``).
    gates: list[dict[str, Any]]


ScoreLike = HealthScore | Evaluation | Mapping[str, Any]
ChangeLike = BucketChange | Mapping[str, Any]


def _score_view(score: ScoreLike) -> _Score:
    if isinstance(score, Evaluation):
        # The stream's path: no HealthScore message is built for a step whose
        # score is not published.
        return _Score(score.score, score.bucket, score.stage, score.delta_7d, score.delta_30d)
    if isinstance(score, HealthScore):
        trend = score.trend
        return _Score(score.score, score.bucket, score.stage, trend.delta_7d, trend.delta_30d)
    trend_map = score.get("trend") or {}
    return _Score(
        float(score["score"]),
        str(score["bucket"]),
        str(score.get("stage", "unknown")),
        trend_map.get("delta_7d"),
        trend_map.get("delta_30d"),
    )


def _change_view(change: ChangeLike) -> _Change:
    if isinstance(change, BucketChange):
        return _Change(
            change.change_id,
            change.from_bucket,
            change.to_bucket,
            change.score,
            change.previous_score,
            [d.model_dump(mode="json") for d in change.drivers],
            parse_timestamp(change.as_of),
            [g.model_dump(mode="json") for g in change.gates],
        )
    return _Change(
        str(change.get("change_id", "")),
        str(change["from_bucket"]),
        str(change["to_bucket"]),
        float(change["score"]),
        float(change["previous_score"]),
        [dict(d) for d in change.get("drivers", [])],
        parse_timestamp(change["as_of"]),
        [dict(g) for g in change.get("gates", [])],
    )


def _changes(change: ChangeLike | Sequence[ChangeLike] | None) -> list[_Change]:
    if change is None:
        return []
    if isinstance(change, BucketChange | Mapping):
        return [_change_view(change)]
    return [_change_view(c) for c in change]


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def describe_condition(cond: AnyCondition, label: Callable[[str], str] | None = None) -> str:
    """A condition as text: ``a > 1 and (b < 2 or c == 0)``; with ``label``,
    each metric is named by it (the scorecard's words for people)."""
    if isinstance(cond, Compare):
        name = cond.metric if label is None else label(cond.metric)
        text = f"{name} {cond.op} {cond.value:g}"
        if cond.unknown is not None:
            text += f" (unknown: {str(cond.unknown).lower()})"
        return text
    if isinstance(cond, NotOf):
        return f"not ({describe_condition(cond.not_, label)})"
    if isinstance(cond, AtLeast):
        inner = ", ".join(describe_condition(p, label) for p in cond.of)
        return f"at least {cond.at_least} of ({inner})"
    parts = cond.all if isinstance(cond, AllOf) else cond.any
    joiner = " and " if isinstance(cond, AllOf) else " or "
    texts = [
        describe_condition(p, label)
        if isinstance(p, Compare | NotOf)
        else f"({describe_condition(p, label)})"
        for p in parts
    ]
    return joiner.join(texts)


def _period_days(period: str) -> int:
    return 7 if period == "7d" else 30


def decide(
    playbooks: PlaybookSet | Iterable[Playbook],
    *,
    account_id: str,
    score: ScoreLike,
    previous: ScoreLike | None = None,
    change: ChangeLike | Sequence[ChangeLike] | None = None,
    metric_values: Mapping[str, float | None],
    memory: PlaybookMemory,
    as_of_ms: int,
    label: Callable[[str], str] | None = None,
) -> Decision:
    """Which playbooks fire for one rescore of an account. Pure; updates ``memory``.

    * ``score``: the new score (``Evaluation``, ``HealthScore`` or its JSON
      dict) at ``as_of_ms``;
    * ``previous``: the account's previous score, if known (reported in the
      trigger context only);
    * ``change``: the bucket change(s) this rescore step produced (a cadence
      step may produce several, each with its own ``as_of``), or ``None``;
    * ``metric_values``: metric -> value (``None`` = unknown), at least every
      metric the conditions read (see :func:`metric_values_for`);
    * ``memory``: the account's :class:`PlaybookMemory`, updated in place;
    * ``label``: metric id -> the name people read (``Scorecard.label``), used
      in the triggers' ``reason`` text (``condition`` and ``metrics`` keep ids).

    Deterministic: the same inputs and memory give the same triggers, and the
    same ``trigger_id`` values (transition triggers carry the change's
    ``as_of``, the others ``as_of_ms``). Calls must not go back in time.
    """
    books = list(playbooks.playbooks if isinstance(playbooks, PlaybookSet) else playbooks)
    view = _score_view(score)
    changes = _changes(change)
    offers = _Offers(account_id, memory)
    base = {
        "score": view.score,
        "bucket": view.bucket,
        "stage": view.stage,
        "previous_score": _score_view(previous).score if previous is not None else None,
    }
    for playbook in books:
        trigger = playbook.trigger
        if isinstance(trigger, BucketTransition):
            _on_transitions(playbook, trigger, changes, view, offers)
        elif isinstance(trigger, MetricCondition):
            _on_condition(playbook, trigger, view, metric_values, base, as_of_ms, offers, label)
        else:
            _on_score_drop(playbook, trigger, view, base, as_of_ms, offers)
    _prune(memory, books, as_of_ms)
    return offers.decision


class _Offers:
    """Triggers offered for one rescore: published, or held back by a cooldown."""

    def __init__(self, account_id: str, memory: PlaybookMemory) -> None:
        self.account_id = account_id
        self.memory = memory
        self.decision = Decision()

    def offer(self, playbook: Playbook, at: int, reason: str, context: dict[str, Any]) -> None:
        memory, account_id = self.memory, self.account_id
        last = memory.fired.get(playbook.name)
        if last is not None and at - last < playbook.cooldown_ms:
            self.decision.suppressed.append(
                Suppressed(playbook.name, account_id, at, last + playbook.cooldown_ms)
            )
            return
        memory.fired[playbook.name] = at
        message = PlaybookTrigger(
            trigger_id=trigger_id(playbook.name, account_id, at),
            playbook=playbook.name,
            account_id=account_id,
            reason=reason,
            as_of=format_utc(at),
            context={"kind": playbook.kind, **context},
        )
        self.decision.triggers.append(message.model_dump(mode="json"))

    def edge(self, playbook: Playbook, truth: bool | None) -> bool:
        """True on a false -> true edge; unknown keeps the remembered truth."""
        if truth is None:
            return False
        active = self.memory.active
        was = playbook.name in active
        if truth:
            active.add(playbook.name)
        else:
            active.discard(playbook.name)
        return truth and not was


def _on_transitions(
    playbook: Playbook,
    trigger: BucketTransition,
    changes: Sequence[_Change],
    view: _Score,
    offers: _Offers,
) -> None:
    for ch in changes:
        if not trigger.matches(ch.from_bucket, ch.to_bucket):
            continue
        offers.offer(
            playbook,
            ch.as_of_ms,
            change_reason(ch),
            {
                "score": ch.score,
                "bucket": ch.to_bucket,
                "stage": view.stage,
                "previous_score": ch.previous_score,
                "from_bucket": ch.from_bucket,
                "to_bucket": ch.to_bucket,
                "change_id": ch.change_id,
                "drivers": ch.drivers,
                "gates": ch.gates,
            },
        )


def change_reason(ch: _Change) -> str:
    """A bucket change in one sentence for people: the gates that decided it (with
    their reasons), the score (its move only when it moved) and the main driver.

    ``Moved from green to red: the CSM's live pulse is red; score 98.7.``
    ``Moved from green to yellow: score 72.0 -> 40.0, mostly Seats in use (0.8 -> 0.3).``
    """
    if round(ch.previous_score, 1) != round(ch.score, 1):
        score = f"score {ch.previous_score:.1f} -> {ch.score:.1f}"
    else:
        score = f"score {ch.score:.1f}"
    reasons = [str(g.get("reason") or g.get("name", "")) for g in ch.gates]
    details = "; ".join([*(r for r in reasons if r), score])
    text = f"Moved from {ch.from_bucket} to {ch.to_bucket}: {details}"
    if ch.drivers:
        top = ch.drivers[0]
        name = top.get("label") or top["metric"]
        text += f", mostly {name} ({_num(top.get('before'))} -> {_num(top.get('after'))})"
    return text + "."


def _on_condition(
    playbook: Playbook,
    trigger: MetricCondition,
    view: _Score,
    metric_values: Mapping[str, float | None],
    base: dict[str, Any],
    as_of_ms: int,
    offers: _Offers,
    label: Callable[[str], str] | None = None,
) -> None:
    buckets, stages = trigger.bucket, trigger.stages
    truth: bool | None
    if (buckets is not None and view.bucket not in buckets) or (
        stages is not None and view.stage not in stages
    ):
        truth = False
    else:
        truth = evaluate_condition(trigger.when, metric_values)
    if not offers.edge(playbook, truth):
        return
    read = dict.fromkeys(condition_metrics(trigger.when))
    values = {m: metric_values.get(m) for m in read}
    # The reason is for people: metrics in the scorecard's words; the
    # condition and values stay by metric id for machines.
    name = (lambda m: m) if label is None else label
    shown = ", ".join(f"{name(m)} = {_num(v)}" for m, v in values.items())
    offers.offer(
        playbook,
        as_of_ms,
        f"{describe_condition(trigger.when, label)} became true ({shown}) while "
        f"{view.bucket} in stage {view.stage}, score {view.score:.1f}.",
        {**base, "condition": describe_condition(trigger.when), "metrics": values},
    )


def _on_score_drop(
    playbook: Playbook,
    trigger: ScoreDrop,
    view: _Score,
    base: dict[str, Any],
    as_of_ms: int,
    offers: _Offers,
) -> None:
    delta = view.delta_7d if trigger.period == "7d" else view.delta_30d
    truth = None if delta is None else delta <= -trigger.points
    if not offers.edge(playbook, truth):
        return
    assert delta is not None
    offers.offer(
        playbook,
        as_of_ms,
        f"Score fell {-delta:g} points in {_period_days(trigger.period)} days, "
        f"to {view.score:.1f} (threshold {trigger.points:g} points).",
        {**base, "delta": delta, "period": trigger.period, "points": trigger.points},
    )


def _prune(memory: PlaybookMemory, playbooks: Sequence[Playbook], as_of_ms: int) -> None:
    # Keep the memory small: forget playbooks no longer configured and
    # cooldowns that have run out (absent means "not in a cooldown").
    cooldowns = {p.name: p.cooldown_ms for p in playbooks}
    for name in [
        n for n, at in memory.fired.items() if n not in cooldowns or as_of_ms - at >= cooldowns[n]
    ]:
        del memory.fired[name]
    memory.active.intersection_update(cooldowns)


def metric_values_for(
    playbooks: PlaybookSet,
    scorecard: Scorecard,
    state: AccountState,
    as_of_ms: int,
    known: Mapping[str, float | None],
) -> Mapping[str, float | None]:
    """``known`` (usually ``Evaluation.values``) completed with every metric the
    playbooks read that the account's scoring profile did not evaluate.

    Profiles evaluate only the metrics they weigh or gate (e.g. the default
    onboarding profile has no ``tenure_days``); missing ones are extracted
    with the scorecard's own extractors, rounded like scoring rounds them.
    Metrics must be defined in the scorecard (:meth:`PlaybookSet.check_metrics`).
    """
    missing = [m for m in playbooks.metrics if m not in known]
    if not missing:
        return known
    values = dict(known)
    for metric in sorted(missing):
        value = scorecard.extractor(metric)(state, as_of_ms)
        values[metric] = None if value is None else round(float(value), 4)
    return values


class _Compiled:
    """A playbook set as plain tuples: (name, kind, trigger, compiled condition or
    None) per playbook, and the cooldown of each name."""

    __slots__ = ("book", "cooldowns", "has_transitions", "rows")

    def __init__(self, playbooks: PlaybookSet) -> None:
        self.book = playbooks
        rows = []
        for playbook in playbooks.playbooks:
            trigger = playbook.trigger
            condition = (
                compile_condition(trigger.when) if isinstance(trigger, MetricCondition) else None
            )
            rows.append((playbook.name, playbook.kind, trigger, condition))
        self.rows = tuple(rows)
        self.cooldowns = {p.name: p.cooldown_ms for p in playbooks.playbooks}
        self.has_transitions = any(kind == "bucket_transition" for _, kind, _, _ in rows)


def _quiet(
    compiled: _Compiled,
    scorecard: Scorecard,
    state: AccountState,
    evaluation: Evaluation,
    change: BucketChange | None,
    memory: PlaybookMemory,
) -> bool:
    """Whether :func:`decide` at this point would fire nothing, hold nothing
    back and leave ``memory`` as it is: no bucket change for a transition
    playbook, every condition's and score drop's truth unknown or the one
    remembered, and nothing for ``_prune`` to forget. Reads metrics the profile
    did not evaluate only for conditions whose bucket and stage filters pass."""
    if change is not None and compiled.has_transitions:
        return False
    as_of = evaluation.as_of
    cooldowns = compiled.cooldowns
    for name, at in memory.fired.items():
        cooldown = cooldowns.get(name)
        if cooldown is None or as_of - at >= cooldown:
            return False
    active = memory.active
    if not active.issubset(cooldowns):
        return False
    values: Mapping[str, float | None] = evaluation.values
    completed = False
    for name, kind, trigger, condition in compiled.rows:
        truth: bool | None
        if kind == "metric_condition":
            assert isinstance(trigger, MetricCondition) and condition is not None
            buckets, stages = trigger.bucket, trigger.stages
            if (buckets is not None and evaluation.bucket not in buckets) or (
                stages is not None and evaluation.stage not in stages
            ):
                truth = False
            else:
                if not completed:
                    values = metric_values_for(
                        compiled.book, scorecard, state, as_of, evaluation.values
                    )
                    completed = True
                truth = condition(values)
        elif kind == "score_drop":
            assert isinstance(trigger, ScoreDrop)
            delta = evaluation.delta_7d if trigger.period == "7d" else evaluation.delta_30d
            truth = None if delta is None else delta <= -trigger.points
        else:
            continue
        if truth is not None and truth != (name in active):
            return False
    return True


def decide_point(
    playbooks: PlaybookSet,
    scorecard: Scorecard,
    state: AccountState,
    evaluation: Evaluation,
    change: BucketChange | None,
    memory: PlaybookMemory,
) -> Decision:
    """The playbook decision at one rescore point of an account (right after it,
    with ``state`` as it is then): ``evaluation`` and the bucket change it made.

    The stream and replay both run it at every rescore point
    (``service.model.cadence``), so their triggers agree whenever the ticks run.
    ``memory`` (cooldowns, edge states) is updated in place; the caller stores it
    in ``state.playbooks``.
    """
    compiled = playbooks.compiled
    if _quiet(compiled, scorecard, state, evaluation, change, memory):
        # Most rescores: nothing fires and nothing changes; the full decision
        # below would say the same (tests compare both on every point).
        return Decision()
    values = metric_values_for(playbooks, scorecard, state, evaluation.as_of, evaluation.values)
    return decide(
        playbooks,
        account_id=state.account_id,
        score=evaluation,
        change=change,
        metric_values=values,
        memory=memory,
        as_of_ms=evaluation.as_of,
        label=scorecard.label,
    )
