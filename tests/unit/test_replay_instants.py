"""``replay(..., instants=, on_instant=)``: looking at the accounts at several times
in one pass changes nothing the replay produces, and shows what ``as_of`` shows."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from schemas.outputs import HealthScore
from service.model.account_state import AccountState
from service.model.scorecard import default_scorecard
from service.model.scoring import score_at
from service.processing.replay import replay
from tests.unit.test_replay import DAY, golden_lines


def _dump(scores: list[HealthScore]) -> list[bytes]:
    return [orjson.dumps(s.model_dump(mode="json")) for s in scores]


def test_instants_change_nothing_the_replay_produces() -> None:
    # golden_lines has events out of order and a redelivery: the hard case.
    lines = golden_lines()
    card = default_scorecard()
    plain = replay(lines, card, now_ms=0)
    first = orjson.loads(lines[0])["occurred_at"]
    instants = [first + k * DAY // 3 for k in range(0, 120)]  # before, during, after the data
    seen: list[int] = []

    def look(instant: int, states: Mapping[str, AccountState]) -> None:
        seen.append(instant)
        for state in states.values():
            score_at(state, instant, card, now_ms=0)  # reads (and caches) only

    looked = replay(lines, card, now_ms=0, instants=reversed(instants), on_instant=look)
    assert seen == sorted(instants)
    assert _dump(looked.scores) == _dump(plain.scores)
    assert [c.model_dump() for c in looked.changes] == [c.model_dump() for c in plain.changes]
    assert looked.stats == plain.stats


def test_each_instant_shows_what_replay_as_of_scores_for_a_file_in_time_order() -> None:
    lines = sorted(golden_lines(accounts=12), key=lambda line: orjson.loads(line)["occurred_at"])
    card = default_scorecard()
    first = orjson.loads(lines[0])["occurred_at"]
    instants = [first + DAY * 3 // 2, first + 9 * DAY, first + 20 * DAY + 7, first + 45 * DAY]
    looked: dict[int, list[bytes]] = {}

    def look(instant: int, states: Mapping[str, AccountState]) -> None:
        looked[instant] = _dump(
            [score_at(states[a], instant, card, now_ms=0) for a in sorted(states)]
        )

    replay(lines, card, now_ms=0, instants=instants, on_instant=look)
    for instant in instants:
        assert looked[instant] == _dump(replay(lines, card, as_of=instant, now_ms=0).scores)


def test_instants_after_as_of_come_after_the_final_scores() -> None:
    lines = golden_lines(accounts=5)
    card = default_scorecard()
    first = orjson.loads(lines[0])["occurred_at"]
    as_of = first + 10 * DAY
    seen: list[int] = []
    result = replay(
        lines,
        card,
        as_of=as_of,
        now_ms=0,
        instants=[as_of + DAY, first + DAY],
        on_instant=lambda instant, states: seen.append(instant),
    )
    assert seen == [first + DAY, as_of + DAY]
    assert _dump(result.scores) == _dump(replay(lines, card, as_of=as_of, now_ms=0).scores)
