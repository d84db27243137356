"""Scorecards: the shipped default, normalisation, validation errors, the CLI."""

from __future__ import annotations

import copy
import importlib.resources
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from service.cli.scorecard import scorecard as scorecard_cli
from service.model.account_state import PARTS_OF_TYPE
from service.model.metrics_catalog import CATALOG
from service.model.scorecard import (
    Normalisation,
    ScorecardError,
    default_scorecard,
    load_scorecard,
    parse_scorecard,
)

DEFAULT_TEXT = (importlib.resources.files("service.model.scorecards") / "default.yaml").read_text()

# ------------------------------------------------------------ the default


def test_the_default_scorecard_loads_with_its_profiles() -> None:
    card = default_scorecard()
    assert (card.name, card.version) == ("default", "2")
    assert [p.name for p in card.resolved_profiles] == ["onboarding", "renewal", "smb", "default"]
    assert card.profile_for("onboarding", "smb").name == "onboarding"
    assert card.profile_for("maturity", "smb").name == "smb"
    assert card.profile_for(None, None).name == "default"
    assert card.rescore_interval_ms == 86_400_000


def _content_lines(start: int, end: int, lines: list[str]) -> list[str]:
    # The node's lines without the trailing comments/blanks that belong to
    # whatever follows it.
    block = lines[start : end + 1]
    while block and (not block[-1].strip() or block[-1].strip().startswith("#")):
        block.pop()
    return block


def _has_comment(block: list[str]) -> bool:
    return any(line.strip().startswith("#") for line in block)


def test_every_threshold_of_the_default_carries_a_reason() -> None:
    lines = DEFAULT_TEXT.splitlines()
    root = yaml.compose(DEFAULT_TEXT)
    assert isinstance(root, yaml.MappingNode)
    top = {key.value: value for key, value in root.value}
    unexplained = []
    for key, value in top["metrics"].value:
        if not _has_comment(_content_lines(key.start_mark.line, value.end_mark.line, lines)):
            unexplained.append(f"metrics.{key.value}")
    for section in ("buckets", "grades", "missing_data"):
        node = top[section]
        if not _has_comment(_content_lines(node.start_mark.line - 1, node.end_mark.line, lines)):
            unexplained.append(section)
    gate_lists = [("gates", top["gates"])]
    for i, profile in enumerate(top["profiles"].value):
        fields = {k.value: v for k, v in profile.value}
        if "gates" in fields:
            gate_lists.append((f"profiles.{i}.gates", fields["gates"]))
        for key, _ in fields.get("normalise", yaml.MappingNode("", [])).value:
            if not lines[key.start_mark.line - 1].strip().startswith("#"):
                unexplained.append(f"profiles.{i}.normalise.{key.value}")
    for path, gates in gate_lists:
        for j, gate in enumerate(gates.value):
            if not _has_comment(_content_lines(gate.start_mark.line, gate.end_mark.line, lines)):
                unexplained.append(f"{path}.{j}")
    assert unexplained == []


# ------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("poor", "good", "value", "expected"),
    [
        (0.2, 0.8, 0.5, 50.0),
        (0.2, 0.8, 0.2, 0.0),
        (0.2, 0.8, 0.1, 0.0),  # clamped below poor
        (0.2, 0.8, 0.8, 100.0),
        (0.2, 0.8, 3.0, 100.0),  # clamped above good
        (14, 1, 7.5, 50.0),  # lower is better
        (14, 1, 20, 0.0),
        (14, 1, 0, 100.0),
        (-0.5, 0.0, -0.25, 50.0),
    ],
)
def test_linear_normalisation(poor: float, good: float, value: float, expected: float) -> None:
    norm = Normalisation(poor=poor, good=good)
    assert norm.apply(value) == pytest.approx(expected)


BANDS = {"bands": [{"score": 100}, {"from": 1, "score": 50}, {"from": 3, "score": 0}]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-5, 100), (0, 100), (0.99, 100), (1, 50), (2.5, 50), (3, 0), (10, 0)],
)
def test_band_normalisation(value: float, expected: float) -> None:
    assert Normalisation.model_validate(BANDS).apply(value) == expected


def test_bands_can_go_either_way() -> None:
    rising = Normalisation.model_validate(
        {"bands": [{"score": 0}, {"from": 0.5, "score": 60}, {"from": 0.8, "score": 100}]}
    )
    assert [rising.apply(v) for v in (0.1, 0.5, 0.79, 0.8)] == [0, 60, 60, 100]


# ------------------------------------------------------------ validation

BASE: dict[str, Any] = {
    "name": "t",
    "version": 1,
    "metrics": {
        "ratio": {
            "source": "active_seat_ratio",
            "params": {"days": 30},
            "normalise": {"poor": 0.2, "good": 0.8},
        },
        "tickets": {"source": "open_tickets", "normalise": BANDS},
        "seats": {"normalise": {"poor": 0, "good": 100}},
    },
    "groups": {
        "g": {"weight": 2, "metrics": {"ratio": 1, "tickets": 1}},
        "h": {"weight": 1, "metrics": {"seats": 1}},
    },
    "buckets": {"green": 70, "yellow": 45, "hysteresis": 3},
    "gates": [
        {"name": "low", "when": {"metric": "ratio", "op": "<", "value": 0.5}, "cap": "yellow"}
    ],
    "profiles": [{"name": "onb", "when": {"stages": ["onboarding"]}}],
}


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()


def test_the_base_of_the_error_table_is_valid() -> None:
    card = parse_scorecard(yaml.safe_dump(BASE))
    assert card.version == "1" and [p.name for p in card.resolved_profiles] == ["onb", "default"]


@pytest.mark.parametrize(
    ("path", "value", "error_path", "reason"),
    [
        ("name", _DELETE, "name", "Field required"),
        ("version", "", "version", "at least 1 character"),
        ("colour", "blue", "colour", "Extra inputs are not permitted"),
        ("rescore_interval_minutes", 7, "rescore_interval_minutes", "must divide a day"),
        (
            "metrics.ratio.normalise",
            {"poor": 1},
            "metrics.ratio.normalise",
            "needs both poor and good",
        ),
        (
            "metrics.ratio.normalise",
            {"poor": 1, "good": 1},
            "metrics.ratio.normalise",
            "must differ",
        ),
        (
            "metrics.ratio.normalise",
            {"poor": 0, "good": 1, **BANDS},
            "metrics.ratio.normalise",
            "not both",
        ),
        (
            "metrics.tickets.normalise.bands.0",
            {"from": 0, "score": 1},
            "metrics.tickets.normalise",
            "first band must not have 'from'",
        ),
        (
            "metrics.tickets.normalise.bands.2",
            {"from": 1, "score": 1},
            "metrics.tickets.normalise",
            "greater than the previous",
        ),
        (
            "metrics.tickets.normalise.bands.1",
            {"from": 1, "score": 120},
            "metrics.tickets.normalise.bands.1.score",
            "less than or equal to 100",
        ),
        (
            "metrics.ratio.source",
            "active_seats",
            "metrics.ratio.source",
            "unknown metric source 'active_seats'",
        ),
        ("metrics.Bad", {"normalise": {"poor": 0, "good": 1}}, "metrics.Bad", "lower_snake_case"),
        (
            "metrics.ratio.params",
            {"dayz": 3},
            "metrics.ratio.params.dayz",
            "Extra inputs are not permitted",
        ),
        (
            "metrics.ratio.params",
            {"days": 91},
            "metrics.ratio.params.days",
            "less than or equal to 90",
        ),
        (
            "metrics.k",
            {
                "source": "key_feature_adoption",
                "params": {"features": []},
                "normalise": {"poor": 0, "good": 1},
            },
            "metrics.k.params.features",
            "at least 1 item",
        ),
        (
            "metrics.k",
            {"normalise": {"poor": 0, "good": 1}},
            "metrics.k",
            "unknown metric source 'k'",
        ),
        ("groups.g.metrics.nope", 1, "groups.g.metrics.nope", "unknown metric 'nope'"),
        ("groups.h.metrics.ratio", 1, "groups.h.metrics.ratio", "already weighted in group 'g'"),
        ("groups.g.weight", 0, "groups.g.weight", "greater than 0"),
        ("groups.g.metrics.ratio", -1, "groups.g.metrics.ratio", "greater than or equal to 0"),
        ("groups", {"g": {"weight": 1, "metrics": {"ratio": 0}}}, "groups", "weight above 0"),
        ("buckets.yellow", 80, "buckets", "yellow must be below green"),
        ("buckets.hysteresis", 30, "buckets.hysteresis", "less than or equal to 20"),
        ("grades", {"A": 80, "B": 85}, "grades", "decrease strictly"),
        (
            "gates.0.unless",
            {"metric": "ratio", "op": ">", "value": 1},
            "gates.0",
            "exactly one of 'when' or 'unless'",
        ),
        ("gates.0.when.op", "=>", "gates.0.when.op", "Input should be '<'"),
        ("gates.0.when.metric", "zzz", "gates.0.when", "unknown metric 'zzz'"),
        (
            "gates.0.when",
            {
                "all": [
                    {"metric": "ratio", "op": "<", "value": 1},
                    {"any": [{"metric": "seats", "op": "<", "value": "x"}]},
                ]
            },
            "gates.0.when.all.1.any.0.value",
            "valid number",
        ),
        (
            "gates.0.when",
            {"not": {"metric": "ratio", "op": "<"}},
            "gates.0.when.not.value",
            "Field required",
        ),
        (
            "gates.0.release",
            {"metric": "nope", "op": "<", "value": 1},
            "gates.0.release",
            "unknown metric 'nope'",
        ),
        ("gates.0.cap", "green", "gates.0.cap", "'yellow' or 'red'"),
        ("gates.0.name", "Low Seats", "gates.0.name", "should match pattern"),
        (
            "missing_data",
            {"min_weight_share": 2},
            "missing_data.min_weight_share",
            "less than or equal to 1",
        ),
        (
            "missing_data",
            {"on_low_confidence": "ignore"},
            "missing_data.on_low_confidence",
            "'flag', 'cap' or 'hold'",
        ),
        ("profiles.0.when", {}, "profiles.0.when", "give stages, segments and/or min_tenure_days"),
        (
            "profiles.0.when",
            {"stages": ["teen"]},
            "profiles.0.when.stages.0",
            "Input should be 'onboarding'",
        ),
        (
            "profiles.0.groups",
            {"g": {"weight": 1, "metrics": {"nope": 1}}},
            "profiles.0.groups.g.metrics.nope",
            "unknown metric 'nope'",
        ),
        (
            "profiles.0.normalise",
            {"nope": {"poor": 0, "good": 1}},
            "profiles.0.normalise.nope",
            "unknown metric",
        ),
        (
            "profiles.0.gates",
            [{"name": "x", "when": {"metric": "q", "op": "<", "value": 1}, "cap": "red"}],
            "profiles.0.gates.0.when",
            "unknown metric 'q'",
        ),
        ("profiles.0.name", "default", "profiles.0.name", "duplicate profile name"),
    ],
)
def test_invalid_scorecards_name_the_field_and_the_reason(
    path: str, value: Any, error_path: str, reason: str
) -> None:
    data = copy.deepcopy(BASE)
    _set(data, path, value)
    with pytest.raises(ScorecardError) as caught:
        parse_scorecard(yaml.safe_dump(data), "cards/t.yaml")
    err = caught.value
    assert (err.source, err.path) == ("cards/t.yaml", error_path)
    assert reason in err.reason
    assert str(err) == f"cards/t.yaml: {error_path}: {err.reason}"
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("name: [unclosed\n", "(yaml)", "line 2 column 1"),
        ("name: a\nname: b\n", "(yaml)", "duplicate key 'name'"),
        ("- just\n- a list\n", "(root)", "a scorecard must be a YAML mapping"),
        ("", "(root)", "a scorecard must be a YAML mapping"),
    ],
)
def test_yaml_level_errors(text: str, path: str, reason: str) -> None:
    with pytest.raises(ScorecardError) as caught:
        parse_scorecard(text, "x.yaml")
    assert caught.value.path == path and reason in caught.value.reason


def test_a_missing_file_is_a_scorecard_error(tmp_path: Path) -> None:
    with pytest.raises(ScorecardError) as caught:
        load_scorecard(tmp_path / "nope.yaml")
    assert caught.value.path == "(file)" and "No such file" in caught.value.reason


@pytest.mark.parametrize(("raw", "version"), [(3, "3"), (2024.1, "2024.1"), ("1.10", "1.10")])
def test_versions_are_strings(raw: Any, version: str) -> None:
    assert parse_scorecard(yaml.safe_dump({**BASE, "version": raw})).version == version


# ------------------------------------------------------------ the CLI


def test_scorecard_check_prints_a_json_summary(tmp_path: Path) -> None:
    path = tmp_path / "card.yaml"
    path.write_text(DEFAULT_TEXT)
    result = CliRunner().invoke(scorecard_cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["ok"] is True and summary["name"] == "default" and summary["version"] == "2"
    assert summary["profiles"] == ["onboarding", "renewal", "smb"]


def test_scorecard_check_reports_one_line_and_exits_1(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["buckets"]["hysteresis"] = 30
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(scorecard_cli, ["check", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        f"{path}: buckets.hysteresis: Input should be less than or equal to 20"
    )


def test_resolved_profiles_carry_what_each_metric_reads_and_how_long_it_lasts() -> None:
    card = default_scorecard()
    for profile in card.resolved_profiles:
        assert len(profile.reads) == len(profile.stables) == len(profile.metrics)
        for metric, reads in zip(profile.metrics, profile.reads, strict=True):
            definition = card.metrics[metric]
            source = CATALOG[definition.source_name(metric)]
            if metric in card.unconfigured:  # always unknown: reads nothing
                assert reads == 0
                continue
            expected = source.dependencies
            if not set(source.feeds) & set(card.feeds.connected):
                # Unknown until its feed's first event, which must recompute it.
                for feed in source.feeds:
                    expected |= PARTS_OF_TYPE[feed]
            assert reads == expected
    # Scoring's compiled form lives with the profile, not in comparisons.
    profile = card.resolved_profiles[0]
    profile.compiled["probe"] = object()
    assert profile == replace(profile, compiled={})
    del profile.compiled["probe"]
