"""The stream's direct score JSON equals the pydantic message, byte for byte."""

from __future__ import annotations

import math
from dataclasses import replace

import orjson
import pytest
from pydantic_core import to_json

from schemas.decode import decode_event
from service.model.account_state import AccountState
from service.model.scorecard import default_scorecard
from service.model.scoring import Step, health_score, on_event, score_json
from service.tools.simulate import generate_history

END = 1_795_000_000_000
NOW = 1_795_000_123_456


def _steps(accounts: int, days: int) -> list[Step]:
    card = default_scorecard()
    states: dict[str, AccountState] = {}
    steps = []
    for sim in generate_history(accounts, days, END, 11):
        event = decode_event(sim.value, topic_kind=None, key=sim.key, now_ms=END)
        state = states.setdefault(event.account_id, AccountState.new(event.account_id))
        step = on_event(state, event, card, now_ms=NOW)
        if step.evaluation is not None:
            steps.append(step)
    return steps


def test_score_json_equals_the_model_json_for_simulated_histories() -> None:
    steps = _steps(60, 40)
    assert len(steps) > 2000
    for step in steps:
        assert step.evaluation is not None
        expected = to_json(health_score(step.evaluation, now_ms=NOW))
        assert score_json(step.evaluation, now_ms=NOW) == expected
        assert step.score_json() == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_values_the_model_rejects_take_the_validating_path(bad: float) -> None:
    step = _steps(3, 5)[-1]
    assert step.evaluation is not None
    broken = replace(step.evaluation, score=bad)
    with pytest.raises(ValueError):
        score_json(broken, now_ms=NOW)


def test_the_json_is_an_object_with_the_contract_fields() -> None:
    step = _steps(3, 5)[-1]
    assert step.evaluation is not None
    message = orjson.loads(score_json(step.evaluation, now_ms=NOW))
    assert list(message)[:3] == ["account_id", "score", "bucket"]
    assert message["schema_version"] == 2
