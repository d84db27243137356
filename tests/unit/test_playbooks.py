"""Playbooks: the YAML format and its errors, each trigger kind, edge triggering,
cooldowns, deterministic trigger ids, the memory's serialised form and the
``vitals playbooks check`` command."""

from __future__ import annotations

import hashlib
import itertools
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from schemas import load_schema
from schemas.events import event_adapter, parse_timestamp
from schemas.outputs import (
    BucketChange,
    Driver,
    GateOut,
    HealthScore,
    PlaybookTrigger,
    format_utc,
)
from service.cli.playbooks import playbooks as playbooks_cli
from service.model.account_state import AccountState
from service.model.cadence import Outcome
from service.model.playbooks import (
    Decision,
    PlaybookError,
    PlaybookMemory,
    PlaybookSet,
    decide,
    default_playbooks,
    describe_condition,
    load_playbooks,
    metric_values_for,
    parse_duration,
    parse_playbooks,
    trigger_id,
)
from service.model.scorecard import default_scorecard, parse_scorecard
from service.model.scoring import Step
from service.model.scoring import evaluate as evaluate_score
from service.runtime.metrics import REGISTRY

SCORECARDS = Path(__file__).resolve().parents[2] / "service" / "model" / "scorecards"

DAY = 86_400_000
#: 2024-03-04T00:00:00Z.
T0 = 1_709_510_400_000
ACCOUNT = "acme"
_ids = itertools.count()


def at(day: float) -> int:
    return T0 + int(day * DAY)


def book(body: str) -> PlaybookSet:
    return parse_playbooks(textwrap.dedent(body), "test.yaml")


def one(name: str, cooldown: str, trigger: str) -> PlaybookSet:
    """A file with one playbook; ``trigger`` is a YAML flow mapping."""
    return book(f"playbooks:\n  - {{name: {name}, cooldown: {cooldown}, trigger: {trigger}}}\n")


def score(
    value: float = 80.0,
    bucket: str = "green",
    stage: str = "adoption",
    d7: float | None = None,
    d30: float | None = None,
    when: int = T0,
) -> HealthScore:
    return HealthScore.model_validate(
        {
            "account_id": ACCOUNT,
            "score": value,
            "bucket": bucket,
            "grade": "B",
            "stage": stage,
            "profile": "default",
            "scorecard": {"name": "default", "version": "1"},
            "components": [],
            "missing": [],
            "gates": [],
            "pulse": None,
            "trend": {"delta_7d": d7, "delta_30d": d30},
            "as_of": format_utc(when),
            "computed_at": format_utc(when),
            "low_confidence": False,
        }
    )


def change(from_: str, to: str, when: int = T0, value: float = 40.0) -> BucketChange:
    return BucketChange(
        change_id=f"c-{from_}-{to}-{when}",
        account_id=ACCOUNT,
        from_bucket=from_,  # type: ignore[arg-type]
        to_bucket=to,  # type: ignore[arg-type]
        score=value,
        previous_score=72.0,
        drivers=[
            Driver(
                metric="active_seat_ratio_30d",
                label="Seats in use",
                before=0.8,
                after=0.3,
                contribution_delta=-9.5,
            )
        ],
        gates=[],
        as_of=format_utc(when),
    )


def run(
    playbooks: PlaybookSet,
    memory: PlaybookMemory | None = None,
    *,
    when: int = T0,
    new: HealthScore | None = None,
    changes: Any = None,
    values: dict[str, float | None] | None = None,
) -> Decision:
    return decide(
        playbooks,
        account_id=ACCOUNT,
        score=new if new is not None else score(when=when),
        change=changes,
        metric_values=values or {},
        memory=memory if memory is not None else PlaybookMemory(),
        as_of_ms=when,
    )


def fired(decision: Decision) -> list[str]:
    return [t["playbook"] for t in decision.triggers]


# ============================================================ the YAML format


def test_default_playbooks_are_valid_and_read_default_scorecard_metrics() -> None:
    defaults = default_playbooks()
    defaults.check_metrics(default_scorecard())
    assert [(p.name, p.kind, p.cooldown) for p in defaults.playbooks] == [
        ("check-in", "bucket_transition", "14d"),
        ("escalation", "bucket_transition", "7d"),
        ("upsell", "metric_condition", "30d"),
        ("onboarding-late", "metric_condition", "30d"),
        ("score-drop", "score_drop", "7d"),
    ]
    assert defaults.metrics == {"active_seat_ratio_30d", "tenure_days", "milestones_reached"}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0s", 0),
        ("45s", 45_000),
        ("30m", 1_800_000),
        ("12h", 43_200_000),
        ("7d", 7 * DAY),
        ("2w", 14 * DAY),
        (" 3d ", 3 * DAY),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["7", "7 d", "1.5d", "-1d", "d", "7y", "", "3651d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


GOOD = "{kind: bucket_transition, from: green, to: yellow}"


def with_trigger(trigger: str) -> str:
    """A file with one playbook ``a`` whose trigger is the YAML flow mapping ``trigger``."""
    return f"playbooks: [{{name: a, cooldown: 1d, trigger: {trigger}}}]"


def with_playbook(fields: str) -> str:
    return f"playbooks: [{{{fields}}}]"


BT = "kind: bucket_transition"
MC = "kind: metric_condition"
SD = "kind: score_drop"
LT1 = "{metric: m, op: '<', value: 1}"
THREE = "\n  - ".join(f"{{name: {n}, cooldown: 1d, trigger: {GOOD}}}" for n in "aba")

# (YAML, error path, a fragment of the reason)
BAD_FILES: list[tuple[str, str, str]] = [
    ("- just a list", "(root)", "must be a YAML mapping"),
    ("playbooks: [", "(yaml)", "line 1 column"),
    ("playbooks: []\nplaybooks: []", "(yaml)", "duplicate key 'playbooks'"),
    ("description: x", "playbooks", "Field required"),
    ("playbooks: []\nextra: 1", "extra", "Extra inputs are not permitted"),
    (with_playbook(f"name: Bad, cooldown: 1d, trigger: {GOOD}"), "playbooks.0.name", "pattern"),
    (with_playbook(f"name: a, trigger: {GOOD}"), "playbooks.0.cooldown", "Field required"),
    (with_playbook(f"name: a, cooldown: 7, trigger: {GOOD}"), "playbooks.0.cooldown", "7 is not"),
    (
        with_playbook(f"name: a, cooldown: 7 days, trigger: {GOOD}"),
        "playbooks.0.cooldown",
        "7d, 12h",
    ),
    (with_playbook("name: a, cooldown: 1d"), "playbooks.0.trigger", "Field required"),
    (with_trigger("{from: green, to: red}"), "playbooks.0.trigger", "missing 'kind'"),
    (with_trigger("{kind: nope}"), "playbooks.0.trigger", "unknown kind 'nope'"),
    (with_trigger(f"{{{BT}, from: blue, to: red}}"), "playbooks.0.trigger.from", "'red' or 'any'"),
    (with_trigger(f"{{{BT}, from: red, to: red}}"), "playbooks.0.trigger.to", "both 'red'"),
    (with_trigger(f"{{{BT}, to: red}}"), "playbooks.0.trigger.from", "Field required"),
    (with_trigger(f"{{{BT}, from: any, to: red, x: 1}}"), "playbooks.0.trigger.x", "Extra inputs"),
    (with_trigger(f"{{{MC}}}"), "playbooks.0.trigger.when", "Field required"),
    (
        with_trigger(f"{{{MC}, when: {{all: [{{metric: m, op: '=~', value: 1}}]}}}}"),
        "playbooks.0.trigger.when.all.0.op",
        "Input should be '<'",
    ),
    (
        with_trigger(f"{{{MC}, when: {{metric: m, op: '<'}}}}"),
        "playbooks.0.trigger.when.value",
        "Field required",
    ),
    (
        with_trigger(f"{{{MC}, bucket: blue, when: {LT1}}}"),
        "playbooks.0.trigger.bucket.0",
        "'green', 'yellow' or 'red'",
    ),
    (
        with_trigger(f"{{{MC}, stages: [], when: {LT1}}}"),
        "playbooks.0.trigger.stages",
        "at least 1 item",
    ),
    (
        with_trigger(f"{{{SD}, points: 0, period: 7d}}"),
        "playbooks.0.trigger.points",
        "greater than 0",
    ),
    (
        with_trigger(f"{{{SD}, points: 10, period: 14d}}"),
        "playbooks.0.trigger.period",
        "'7d' or '30d'",
    ),
    (f"playbooks:\n  - {THREE}", "playbooks.2.name", "duplicate playbook name 'a'"),
]


@pytest.mark.parametrize(("text", "path", "reason"), BAD_FILES)
def test_invalid_files_name_the_path_and_reason(text: str, path: str, reason: str) -> None:
    with pytest.raises(PlaybookError) as caught:
        parse_playbooks(text, "pb.yaml")
    assert (caught.value.source, caught.value.path) == ("pb.yaml", path), str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"pb.yaml: {path}: ")
    assert "\n" not in str(caught.value)


def test_load_reports_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PlaybookError) as caught:
        load_playbooks(missing)
    assert (caught.value.source, caught.value.path) == (str(missing), "(file)")


def test_unknown_metric_is_caught_against_a_scorecard() -> None:
    playbooks = book(
        """
        playbooks:
          - {name: ok, cooldown: 1d, trigger: {kind: score_drop, points: 5, period: 7d}}
          - name: typo
            cooldown: 1d
            trigger:
              kind: metric_condition
              when:
                any:
                  - {metric: tenure_days, op: '>', value: 1}
                  - {metric: tenur, op: '<', value: 1}
        """
    )
    with pytest.raises(PlaybookError) as caught:
        playbooks.check_metrics(default_scorecard(), "pb.yaml")
    assert caught.value.path == "playbooks.1.trigger.when"
    assert "unknown metric 'tenur'" in caught.value.reason


def test_a_single_bucket_filter_is_a_list() -> None:
    playbooks = one(
        "a", "1d", "{kind: metric_condition, bucket: green, when: {metric: m, op: '>', value: 1}}"
    )
    assert playbooks.playbooks[0].trigger.bucket == ["green"]  # type: ignore[union-attr]


def test_conditions_read_as_text() -> None:
    playbooks = book(
        """
        playbooks:
          - name: a
            cooldown: 1d
            trigger:
              kind: metric_condition
              when:
                all:
                  - {metric: a, op: '>', value: 30}
                  - any: [{metric: b, op: '<', value: 0.5}, {not: {metric: c, op: '==', value: 1}}]
        """
    )
    trigger = playbooks.playbooks[0].trigger
    assert describe_condition(trigger.when) == "a > 30 and (b < 0.5 or not (c == 1))"  # type: ignore[union-attr]


# ============================================================ trigger kinds


@pytest.mark.parametrize(
    ("spec_from", "spec_to", "from_", "to", "fires"),
    [
        ("green", "yellow", "green", "yellow", True),
        ("green", "yellow", "yellow", "green", False),
        ("green", "yellow", "green", "red", False),
        ("any", "red", "green", "red", True),
        ("any", "red", "yellow", "red", True),
        ("any", "red", "red", "yellow", False),
        ("red", "any", "red", "green", True),
        ("any", "any", "yellow", "green", True),
    ],
)
def test_bucket_transition(spec_from: str, spec_to: str, from_: str, to: str, fires: bool) -> None:
    playbooks = one("t", "7d", f"{{kind: bucket_transition, from: {spec_from}, to: {spec_to}}}")
    decision = run(playbooks, changes=change(from_, to))
    assert fired(decision) == (["t"] if fires else [])


def test_no_change_no_transition_trigger() -> None:
    playbooks = one("t", "7d", "{kind: bucket_transition, from: any, to: any}")
    assert fired(run(playbooks, changes=None)) == []
    assert fired(run(playbooks, changes=[])) == []


UPSELL = "{kind: metric_condition, bucket: green, when: {metric: util, op: '>', value: 0.9}}"
LATE = (
    "{kind: metric_condition, stages: [onboarding], when: {all: ["
    "{metric: tenure_days, op: '>', value: 30}, "
    "{metric: milestones_reached, op: '<', value: 0.6}]}}"
)


@pytest.mark.parametrize(
    ("trigger", "bucket", "stage", "values", "fires"),
    [
        (UPSELL, "green", "adoption", {"util": 0.95}, True),
        (UPSELL, "green", "adoption", {"util": 0.9}, False),
        (UPSELL, "yellow", "adoption", {"util": 0.95}, False),
        (UPSELL, "green", "adoption", {"util": None}, False),
        (UPSELL, "green", "adoption", {}, False),
        (LATE, "yellow", "onboarding", {"tenure_days": 31, "milestones_reached": 1 / 3}, True),
        (LATE, "yellow", "onboarding", {"tenure_days": 30, "milestones_reached": 1 / 3}, False),
        (LATE, "yellow", "onboarding", {"tenure_days": 45, "milestones_reached": 2 / 3}, False),
        (LATE, "yellow", "adoption", {"tenure_days": 45, "milestones_reached": 0.0}, False),
        # Unknown tenure, but one false part settles "all": false, no trigger.
        (LATE, "red", "onboarding", {"tenure_days": None, "milestones_reached": 1.0}, False),
    ],
)
def test_metric_condition(
    trigger: str, bucket: str, stage: str, values: dict[str, float | None], fires: bool
) -> None:
    playbooks = one("m", "30d", trigger)
    decision = run(playbooks, new=score(bucket=bucket, stage=stage), values=values)
    assert fired(decision) == (["m"] if fires else [])


@pytest.mark.parametrize(
    ("points", "period", "d7", "d30", "fires"),
    [
        (15, "7d", -15.0, None, True),
        (15, "7d", -20.5, None, True),
        (15, "7d", -14.9, -40.0, False),
        (15, "7d", 10.0, None, False),
        (15, "7d", None, -30.0, False),
        (20, "30d", -5.0, -20.0, True),
        (20, "30d", -25.0, None, False),
    ],
)
def test_score_drop(
    points: int, period: str, d7: float | None, d30: float | None, fires: bool
) -> None:
    playbooks = one("d", "7d", f"{{kind: score_drop, points: {points}, period: {period}}}")
    decision = run(playbooks, new=score(value=50, d7=d7, d30=d30))
    assert fired(decision) == (["d"] if fires else [])


# ====================================================== edges and cooldowns

#: Condition truth at successive rescores (None = unknown) -> rescores that fire.
EDGE_CASES = [
    ([True], [0]),
    ([False, True, True, True], [1]),
    ([True, False, True], [0, 2]),
    ([True, None, True], [0]),  # unknown keeps the remembered truth
    ([None, True, None, False, None, True], [1, 5]),
    ([False, False], []),
]


@pytest.mark.parametrize(("truths", "firing"), EDGE_CASES)
def test_metric_conditions_fire_on_the_rising_edge(
    truths: list[bool | None], firing: list[int]
) -> None:
    playbooks = one("m", "0s", "{kind: metric_condition, when: {metric: x, op: '>=', value: 1}}")
    memory = PlaybookMemory()
    got = []
    for i, truth in enumerate(truths):
        value = None if truth is None else float(truth)
        if fired(run(playbooks, memory, when=at(i), values={"x": value})):
            got.append(i)
    assert got == firing


@pytest.mark.parametrize(("truths", "firing"), EDGE_CASES)
def test_score_drops_fire_on_the_rising_edge(truths: list[bool | None], firing: list[int]) -> None:
    playbooks = one("d", "0s", "{kind: score_drop, points: 10, period: 7d}")
    memory = PlaybookMemory()
    got = []
    for i, truth in enumerate(truths):
        d7 = None if truth is None else (-12.0 if truth else -2.0)
        if fired(run(playbooks, memory, when=at(i), new=score(d7=d7, when=at(i)))):
            got.append(i)
    assert got == firing


def test_leaving_the_bucket_filter_rearms_the_condition() -> None:
    playbooks = one("upsell", "0s", UPSELL)
    memory = PlaybookMemory()
    seq = [("green", 1), ("yellow", 0), ("green", 1)]
    got = [
        fired(run(playbooks, memory, when=at(i), new=score(bucket=b), values={"util": 0.95}))
        for i, (b, _) in enumerate(seq)
    ]
    assert got == [["upsell"], [], ["upsell"]]


@pytest.mark.parametrize(
    ("cooldown", "days", "firing"),
    [
        ("7d", [0, 3, 6.99, 7, 8, 14], [0, 7, 14]),
        ("12h", [0, 0.25, 0.5, 0.75], [0, 0.5]),
        ("0s", [0, 0, 1], [0, 0, 1]),
    ],
)
def test_cooldown_suppresses_transitions(
    cooldown: str, days: list[float], firing: list[float]
) -> None:
    playbooks = one("escalation", cooldown, "{kind: bucket_transition, from: any, to: red}")
    memory = PlaybookMemory()
    got: list[float] = []
    held: list[float] = []
    for day in days:
        decision = run(playbooks, memory, when=at(day), changes=change("yellow", "red", at(day)))
        got.extend(day for _ in decision.triggers)
        held.extend(day for _ in decision.suppressed)
    assert got == firing
    assert sorted(got + held) == sorted(days)


def test_suppressed_edge_is_consumed() -> None:
    playbooks = one("m", "10d", "{kind: metric_condition, when: {metric: x, op: '>', value: 0}}")
    memory = PlaybookMemory()
    timeline = [
        (0, 1.0, True),
        (1, 0.0, False),
        (2, 1.0, False),
        (20, 1.0, False),
        (21, 0.0, False),
        (22, 1.0, True),
    ]
    for day, x, fires in timeline:
        decision = run(playbooks, memory, when=at(day), values={"x": x})
        assert bool(decision.triggers) is fires, day
    # The suppressed one (day 2) said when the cooldown ends.
    again = PlaybookMemory()
    run(playbooks, again, when=at(0), values={"x": 1.0})
    run(playbooks, again, when=at(1), values={"x": 0.0})
    (held,) = run(playbooks, again, when=at(2), values={"x": 1.0}).suppressed
    assert (held.playbook, held.account_id, held.as_of_ms, held.until_ms) == (
        "m",
        ACCOUNT,
        at(2),
        at(10),
    )


def test_cooldowns_are_per_playbook() -> None:
    playbooks = book(
        """
        playbooks:
          - name: check-in
            cooldown: 14d
            trigger: {kind: bucket_transition, from: green, to: yellow}
          - name: escalation
            cooldown: 7d
            trigger: {kind: bucket_transition, from: any, to: red}
        """
    )
    memory = PlaybookMemory()
    slipped = run(playbooks, memory, when=at(0), changes=change("green", "yellow", at(0)))
    fell = run(playbooks, memory, when=at(1), changes=change("yellow", "red", at(1)))
    assert (fired(slipped), fired(fell)) == (["check-in"], ["escalation"])


def test_the_worker_counts_suppressed_triggers() -> None:
    # The model only reports what a cooldown held back; the worker counts it.
    from streams.processor import Processor

    playbooks = one("counted", "7d", "{kind: bucket_transition, from: any, to: red}")
    memory = PlaybookMemory()

    def suppressed() -> float:
        value = REGISTRY.get_sample_value(
            "vitals_playbook_suppressed_total", {"playbook": "counted"}
        )
        return value or 0.0

    def outcome(when: int, from_bucket: str) -> Outcome:
        decision = run(playbooks, memory, when=when, changes=change(from_bucket, "red", when))
        return Outcome(Step(None, None, []), decision.triggers, decision.suppressed)

    before = suppressed()
    first = Processor.triggers_of(outcome(at(0), "green"))
    second = Processor.triggers_of(outcome(at(1), "yellow"))
    assert [len(first), len(second)] == [1, 0]
    assert suppressed() == before + 1


# =============================================================== messages


def test_trigger_id_is_deterministic() -> None:
    expected = hashlib.sha256(f"upsell|{ACCOUNT}|{T0}".encode()).hexdigest()[:32]
    assert trigger_id("upsell", ACCOUNT, T0) == expected
    variants = [("upsell", "other", T0), ("upsell", ACCOUNT, T0 + 1), ("check-in", ACCOUNT, T0)]
    assert len({expected, *(trigger_id(*v) for v in variants)}) == 4

    def once() -> list[dict[str, Any]]:
        return run(
            default_playbooks(), changes=change("green", "yellow", at(3)), when=at(4)
        ).triggers

    first, second = once(), once()
    assert first == second
    assert [t["trigger_id"] for t in first] == [trigger_id("check-in", ACCOUNT, at(3))]


def test_trigger_messages_follow_the_contract() -> None:
    validator = Draft202012Validator(load_schema("outputs", "playbook-trigger"))
    memory = PlaybookMemory()
    decision = run(
        default_playbooks(),
        memory,
        when=at(5),
        new=score(value=41.0, bucket="red", stage="onboarding", d7=-31.0),
        changes=[change("green", "yellow", at(4)), change("yellow", "red", at(5))],
        values={"active_seat_ratio_30d": 0.2, "tenure_days": 40.0, "milestones_reached": 1 / 3},
    )
    assert fired(decision) == ["check-in", "escalation", "onboarding-late", "score-drop"]
    for message in decision.triggers:
        validator.validate(message)
        assert PlaybookTrigger.model_validate(message).model_dump(mode="json") == message
        assert message["account_id"] == ACCOUNT
        assert message["reason"].endswith(".") and "\n" not in message["reason"]
    by_name = {t["playbook"]: t for t in decision.triggers}
    check_in = by_name["check-in"]
    assert check_in["as_of"] == format_utc(at(4))  # the change's own time
    assert check_in["reason"] == (
        "Moved from green to yellow: score 72.0 -> 40.0, mostly Seats in use (0.8 -> 0.3)."
    )
    assert check_in["context"]["kind"] == "bucket_transition"
    assert check_in["context"]["drivers"][0]["metric"] == "active_seat_ratio_30d"
    assert check_in["context"]["change_id"] == f"c-green-yellow-{at(4)}"
    late = by_name["onboarding-late"]
    assert late["as_of"] == format_utc(at(5))
    assert late["context"]["metrics"] == {"tenure_days": 40.0, "milestones_reached": 1 / 3}
    assert late["context"]["bucket"] == "red" and late["context"]["score"] == 41.0
    assert "tenure_days > 30 and milestones_reached < 0.6 became true" in late["reason"]
    drop = by_name["score-drop"]
    assert drop["reason"] == "Score fell 31 points in 7 days, to 41.0 (threshold 15 points)."
    assert drop["context"]["delta"] == -31.0
    assert memory.fired == {
        "check-in": at(4),
        "escalation": at(5),
        "onboarding-late": at(5),
        "score-drop": at(5),
    }


def test_json_dicts_are_accepted_like_models() -> None:
    as_models = run(
        default_playbooks(),
        new=score(value=50.0, bucket="yellow", d7=-20.0),
        changes=change("green", "yellow"),
    )
    as_dicts = run(
        default_playbooks(),
        new=orjson.loads(orjson.dumps(score(value=50.0, bucket="yellow", d7=-20.0).model_dump())),
        changes=[change("green", "yellow").model_dump(mode="json")],
    )
    assert as_models.triggers == as_dicts.triggers and len(as_models.triggers) == 2


# ================================================================= memory


def test_memory_round_trips_compactly() -> None:
    assert PlaybookMemory().to_dict() == {}
    assert not PlaybookMemory.from_dict(None) and not PlaybookMemory.from_dict({})
    memory = PlaybookMemory({"b": 2, "a": 1}, {"upsell", "score-drop"})
    data = memory.to_dict()
    assert data == {"f": {"a": 1, "b": 2}, "a": ["score-drop", "upsell"]}
    assert PlaybookMemory.from_dict(orjson.loads(orjson.dumps(data))) == memory


@pytest.mark.parametrize("data", [{"f": {"a": "1"}}, {"f": [1]}, {"a": "upsell"}, {"a": [1]}])
def test_malformed_memory_is_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed playbook memory"):
        PlaybookMemory.from_dict(data)


def test_memory_forgets_expired_cooldowns_and_removed_playbooks() -> None:
    playbooks = one("m", "7d", "{kind: metric_condition, when: {metric: x, op: '>', value: 0}}")
    memory = PlaybookMemory({"m": at(0), "gone": at(0)}, {"m", "gone"})
    run(playbooks, memory, when=at(1), values={"x": 1.0})
    assert memory == PlaybookMemory({"m": at(0)}, {"m"})
    run(playbooks, memory, when=at(7), values={"x": 1.0})
    assert memory == PlaybookMemory({}, {"m"})


# ======================================================= with the scorer


def _event(type_: str, when: int, **fields: Any) -> Any:
    data = {"event_id": f"e{next(_ids)}", "account_id": ACCOUNT, "type": type_, "occurred_at": when}
    return event_adapter.validate_python({**data, **fields})


def test_metric_values_for_fills_metrics_the_profile_did_not_evaluate() -> None:
    card = default_scorecard()
    state = AccountState.new(ACCOUNT)
    for e in [
        _event("account", at(0), seats=10, segment="smb", customer_since=at(-40)),
        _event("milestone", at(0), name="account_configured"),
        _event("login", at(0), user_id="u1"),
    ]:
        state.apply(e)
    ev = evaluate_score(state, at(0), card)
    # The smb profile neither weighs nor gates these two.
    assert ev.profile == "smb" and not {"tenure_days", "milestones_reached"} & set(ev.values)
    defaults = default_playbooks()
    values = metric_values_for(defaults, card, state, at(0), ev.values)
    assert values["tenure_days"] == 40.0
    assert values["milestones_reached"] == round(1 / 3, 4)
    # Nothing to add: the mapping is returned as is.
    assert metric_values_for(defaults, card, state, at(0), values) is values


def test_metric_values_for_uses_the_scorecard_in_use() -> None:
    card = parse_scorecard(
        "name: t\nversion: 1\nmetrics:\n  seats: {normalise: {poor: 0, good: 100}}\n"
        "groups:\n  all: {weight: 1, metrics: {seats: 1}}\nbuckets: {green: 70, yellow: 45}\n",
        "t.yaml",
    )
    playbooks = one("m", "1d", "{kind: metric_condition, when: {metric: seats, op: '>', value: 5}}")
    playbooks.check_metrics(card)
    state = AccountState.new(ACCOUNT)
    state.apply(_event("account", at(0), seats=8))
    assert metric_values_for(playbooks, card, state, at(0), {}) == {"seats": 8.0}


# ===================================================================== CLI


def test_cli_check_prints_a_summary_line() -> None:
    result = CliRunner().invoke(playbooks_cli, ["check", "service/model/scorecards/playbooks.yaml"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    summary = orjson.loads(line)
    assert summary["ok"] is True
    assert [p["name"] for p in summary["playbooks"]] == [
        p.name for p in default_playbooks().playbooks
    ]
    assert summary["scorecard"] == {"name": "default", "version": "2"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            with_playbook(
                "name: a, cooldown: soon, trigger: {kind: score_drop, points: 5, period: 7d}"
            ),
            "playbooks.0.cooldown: 'soon' is not a duration",
        ),
        (
            with_trigger("{kind: metric_condition, when: {metric: nope, op: '>', value: 1}}"),
            "playbooks.0.trigger.when: unknown metric 'nope'",
        ),
    ],
)
def test_cli_check_fails_with_one_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    result = CliRunner().invoke(playbooks_cli, ["check", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"vitals: error: {path}: {error}")


# ==================================================================== docs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "playbooks.md"


def _block(after: str, lang: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start : text.index("```\n", start)]


def test_docs_show_the_shipped_defaults() -> None:
    shipped = SCORECARDS / "playbooks.yaml"
    assert _block("## The defaults", "yaml") == shipped.read_text(encoding="utf-8")


def test_docs_example_trigger_is_what_decide_produces() -> None:
    documented = orjson.loads(_block("## Trigger messages", "json"))
    when = parse_timestamp(documented["as_of"])
    new = score(value=63.5, bucket="yellow", when=when)
    slip = BucketChange(
        change_id=documented["context"]["change_id"],
        account_id="acme-corp",
        from_bucket="green",
        to_bucket="yellow",
        score=63.5,
        previous_score=72.0,
        drivers=[Driver(**documented["context"]["drivers"][0])],
        gates=[GateOut(**documented["context"]["gates"][0])],
        as_of=documented["as_of"],
    )
    decision = decide(
        default_playbooks(),
        account_id="acme-corp",
        score=new,
        change=slip,
        metric_values={},
        memory=PlaybookMemory(),
        as_of_ms=when,
    )
    assert decision.triggers[0] == documented


def test_the_quiet_point_shortcut_decides_as_the_full_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # decide_point skips the full decision where nothing can fire or change;
    # over a whole history both give the same triggers and playbook memory.
    from service.model import playbooks as module
    from service.model.scorecard import shipped_scorecard
    from service.processing.replay import replay
    from tests.unit.test_replay import golden_lines

    card, book = shipped_scorecard("demo"), default_playbooks()
    lines = golden_lines(accounts=15, days=40)
    fast = replay(lines, card, playbooks=book, now_ms=0)
    calls = {"quiet": 0}
    real_quiet = module._quiet

    def never_quiet(*args: Any) -> bool:
        if real_quiet(*args):
            calls["quiet"] += 1
        return False

    monkeypatch.setattr(module, "_quiet", never_quiet)
    full = replay(lines, card, playbooks=book, now_ms=0)
    assert fast.triggers == full.triggers and len(full.triggers) > 5
    assert calls["quiet"] > 100  # the shortcut was taken, and changed nothing


def test_a_condition_reason_names_metrics_by_their_labels() -> None:
    """People read the reason (scorecard labels); machines read the condition and
    the values (metric ids)."""
    from service.model.scorecard import shipped_scorecard

    card = shipped_scorecard("demo")
    playbooks = one(
        "upsell",
        "1d",
        "{kind: metric_condition, when: {metric: active_seat_ratio_30d, op: '>', value: 0.9}}",
    )
    decision = decide(
        playbooks,
        account_id="a1",
        score={"score": 80.0, "bucket": "green", "stage": "adoption"},
        metric_values={"active_seat_ratio_30d": 1.0},
        memory=PlaybookMemory(),
        as_of_ms=1_700_000_000_000,
        label=card.label,
    )
    (trigger,) = decision.triggers
    label = card.label("active_seat_ratio_30d")
    assert label != "active_seat_ratio_30d"
    assert trigger["reason"].startswith(f"{label} > 0.9 became true ({label} = 1)")
    assert trigger["context"]["condition"] == "active_seat_ratio_30d > 0.9"
    assert trigger["context"]["metrics"] == {"active_seat_ratio_30d": 1.0}
