"""Everything the scoring model computes for a few histories, as lines of text.

The compiled model (README, "Compiled model") must compute exactly what the
interpreted one does; tests/unit/test_compiled_model.py runs this trace both
ways (here in process, on the compiled model, and in a child process on the
source tree) and compares the lines. Each history goes through
``service.model.cadence`` (the stream's and replay's one path). Per event:
the metric values of the step's evaluation (``repr``: ``1`` and ``1.0``
differ), its score JSON, bucket changes and playbook triggers; every few
events the account's state bytes (read back for the next event, so the load
path runs too), the whole evaluation, its health message and an explain at a
later instant; at the end each account's ticks of 40 silent days, with their
changes and triggers, and its final state.

    python -m tests.model_trace OUT.txt    # from the repository root; "-": stdout

The first line names the file ``service.model.scoring`` was loaded from.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
from pydantic import ValidationError

from schemas.events import event_adapter
from service.model.account_state import AccountState
from service.model.cadence import Cadence
from service.model.playbooks import default_playbooks
from service.model.scorecard import Scorecard, parse_scorecard, shipped_scorecard
from service.model.scoring import Evaluation, health_score, on_timer, score_json
from service.model.windows import DAY_MS
from service.tools.simulate import generate_history

#: 2026-01-01T00:00:00Z
END_MS = 1_767_225_600_000
#: Every this many events: the state through its bytes, the message, an explain.
EVERY = 7

#: (scorecard, source of the history, accounts, days, seed): the shipped
#: scorecards, an hourly cadence, more than 91 days (compaction), and the
#: golden history of test_replay (out-of-order events, a redelivery, whole
#: and fractional KPIs).
CASES = (
    ("default", "simulator", 25, 100, 3),
    ("default-hourly", "simulator", 15, 12, 5),
    ("demo", "simulator", 20, 40, 11),
    ("adoption-rule", "simulator", 20, 40, 13),
    ("default", "golden", 20, 30, 20240301),
)


def scorecard(name: str) -> Scorecard:
    if name == "default-hourly":
        text = (Path(__file__).parents[1] / "service/model/scorecards/default.yaml").read_text()
        hourly = text.replace("rescore_interval_minutes: 1440", "rescore_interval_minutes: 60")
        assert hourly != text
        return parse_scorecard(hourly, "default-hourly")
    return shipped_scorecard(name)


def history(source: str, accounts: int, days: int, seed: int) -> Iterable[bytes]:
    if source == "golden":
        from tests.unit.test_replay import golden_lines

        return golden_lines(accounts, days, seed)
    return (e.value for e in generate_history(accounts, days, end_ms=END_MS, seed=seed))


def _evaluation(ev: Evaluation | None) -> str:
    if ev is None:
        return "-"
    fields = {k: v for k, v in vars(ev).items() if not k.startswith("_")}
    fields["values"] = dict(fields["values"])
    return repr(fields)


def trace_case(card_name: str, source: str, accounts: int, days: int, seed: int) -> Iterator[str]:
    card = scorecard(card_name)
    cadence = Cadence(card, default_playbooks())
    states: dict[str, AccountState] = {}
    yield f"case {card_name} {source} {accounts} {days} {seed}"
    for n, line in enumerate(history(source, accounts, days, seed)):
        try:
            event = event_adapter.validate_json(line)
        except ValidationError:
            yield f"{n} invalid"
            continue
        state = states.get(event.account_id)
        if state is None:
            state = states[event.account_id] = AccountState.new(event.account_id)
        outcome = cadence.event(state, event, now_ms=0)
        step = outcome.step
        ev = step.evaluation
        if ev is None:
            yield f"{n} {step.result}"
        else:
            yield f"{n} {step.result} {dict(ev.values)!r} {score_json(ev, now_ms=0).decode()}"
        yield from (change.model_dump_json() for change in step.changes)
        yield from (orjson.dumps(trigger).decode() for trigger in outcome.triggers)
        if n % EVERY == 0:
            data = state.to_bytes()
            yield data.decode()
            state = states[event.account_id] = AccountState.from_bytes(data)
            if ev is not None:
                yield _evaluation(ev)
                yield health_score(ev, now_ms=0).model_dump_json()
                later = on_timer(AccountState.from_bytes(data), ev.as_of + 3 * DAY_MS, card)
                yield _evaluation(later.evaluation)
    for account in sorted(states):
        state = states[account]
        outcome = cadence.timer(state, END_MS + 40 * DAY_MS, now_ms=0)
        yield f"{account} {_evaluation(outcome.step.evaluation)}"
        yield from (change.model_dump_json() for change in outcome.step.changes)
        yield from (orjson.dumps(trigger).decode() for trigger in outcome.triggers)
        yield state.to_bytes().decode()


def trace() -> Iterator[str]:
    import service.model.scoring

    yield f"scoring {service.model.scoring.__file__}"
    for case in CASES:
        yield from trace_case(*case)


def lines() -> Iterator[str]:
    """:func:`trace`, one line each (a newline inside a line is escaped)."""
    for line in trace():
        yield line.replace("\n", "\\n") + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["-"]:
        sys.stdout.writelines(lines())
    else:
        with open(sys.argv[1], "w") as out:
            out.writelines(lines())
