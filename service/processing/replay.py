"""Replay: run the streaming model in-process over a JSON-lines file of events.

``vitals replay EVENTS.jsonl --as-of TIME`` gives the scores, bucket changes
and playbook triggers the stream would publish for the same events: every line
goes through the same decoder as the Kafka path (``schemas.decode.decode_event``,
without the topic, key and future-time checks, which belong to the transport)
and every valid event through the same path as in the worker
(:class:`service.model.cadence.Cadence`: an account's pending ticks, apply,
rescore, and the playbooks at every rescore point), then every account's ticks
up to the as-of time. See ``service.model.scoring`` for the cadence contract.

* Lines are processed in file order; per account that is the order the
  stream would see them in (it applies each partition's events in event-time
  order). An account's ticks run up to each of its events (as in the stream,
  whose timer ticks run the same rescore points earlier: the results are the
  same, see ``service.model.cadence``).
* Events after ``as_of`` are skipped (counted in ``after_as_of``).
* Invalid lines (not JSON, failed validation...) are reported with their
  line number and reason and skipped; they never stop a replay. Blank lines
  are ignored.
* The result holds one score per account at exactly ``as_of`` (evaluated,
  not remembered, so it equals what the stream would publish if it rescored
  at that instant), sorted by ``account_id``, and the bucket changes of
  every rescore point up to ``as_of``, sorted by ``as_of`` then account.
* ``instants`` / ``on_instant`` let one pass look at the accounts at several
  times (the back-test): see :func:`replay`. Without them nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.decode import Rejected, decode_event
from schemas.events import MAX_TIMESTAMP_MS, Event, parse_timestamp
from schemas.outputs import BucketChange, HealthScore, format_utc
from service.model.account_state import AccountState, ApplyResult
from service.model.cadence import Cadence, Outcome
from service.model.playbooks import PlaybookSet
from service.model.scorecard import Scorecard
from service.model.scoring import score_at

__all__ = ["InvalidLine", "ReplayResult", "ReplayStats", "decode_lines", "replay"]


@dataclass(frozen=True)
class InvalidLine:
    """A skipped input line: 1-based number, machine reason, human detail."""

    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.detail}"


@dataclass
class ReplayStats:
    """Counts of one replay (the stderr summary line)."""

    lines: int = 0
    events: int = 0
    invalid: int = 0
    applied: int = 0
    triggers: int = 0
    duplicates: int = 0
    late: int = 0
    after_as_of: int = 0
    accounts: int = 0
    changes: int = 0
    as_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReplayResult:
    """Scores (sorted by account), changes (sorted by as-of, account), playbook
    triggers (sorted by as-of, account, playbook) and stats."""

    scores: list[HealthScore]
    changes: list[BucketChange]
    stats: ReplayStats
    triggers: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[InvalidLine] = field(default_factory=list)
    as_of: int | None = None


def decode_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, Event | InvalidLine]]:
    """``(line number, event or InvalidLine)`` for every non-blank line."""
    for number, raw in enumerate(lines, start=1):
        value = raw.strip()
        if not value:
            continue
        try:
            # now_ms at the end of time: replay data may lie anywhere in time.
            event = decode_event(value, topic_kind=None, key=None, now_ms=MAX_TIMESTAMP_MS)
        except Rejected as rejected:
            yield number, InvalidLine(number, rejected.reason, rejected.detail)
            continue
        yield number, event


def replay(
    lines: Iterable[bytes],
    scorecard: Scorecard,
    *,
    as_of: int | None = None,
    on_invalid: Callable[[InvalidLine], None] | None = None,
    now_ms: int | None = None,
    instants: Iterable[int] = (),
    on_instant: Callable[[int, Mapping[str, AccountState]], None] | None = None,
    playbooks: PlaybookSet | None = None,
) -> ReplayResult:
    """Replay JSON lines of events; ``as_of`` defaults to the latest event time.

    ``playbooks``: the playbooks to run (as the worker runs them); none by default.

    ``on_invalid`` is called for each invalid line as it is met (the CLI
    prints it); ``now_ms`` fixes ``computed_at`` (wall clock by default).

    ``on_instant(T, states)`` is called once for each of the ``instants``
    (epoch ms, any order; each distinct one once, in ascending order) when
    the replay reaches T: just before the first event read after T (by
    ``occurred_at``, among those not skipped by ``as_of``) goes through the
    cadence, or at the end for the instants no such event passed. Every
    account's pending ticks up to T have run then (as ``as_of=T`` runs them
    before scoring; their bucket changes are in the result as usual), so for
    a file in event-time order ``evaluate(states[a], T, scorecard)`` is the
    score ``replay(lines, scorecard, as_of=T)`` gives account ``a``. The
    callback must only read the states (``evaluate``/``score_at``); it does
    not change what the replay produces: ticks up to T would run before
    anything later anyway. Instants after ``as_of`` (or after the last
    event) are reached after the result's final scores are taken.
    """
    pending = sorted(set(instants)) if on_instant is not None else []
    next_instant = pending[0] if pending else None
    cadence = Cadence(scorecard, playbooks)
    stats = ReplayStats()
    invalid: list[InvalidLine] = []
    states: dict[str, AccountState] = {}
    changes: list[tuple[int, str, BucketChange]] = []
    triggers: list[dict[str, Any]] = []
    watermark: int | None = None
    last_line = 0
    for number, item in decode_lines(lines):
        last_line = number
        if isinstance(item, InvalidLine):
            stats.invalid += 1
            invalid.append(item)
            if on_invalid is not None:
                on_invalid(item)
            continue
        stats.events += 1
        if as_of is not None and item.occurred_at > as_of:
            stats.after_as_of += 1
            continue
        if next_instant is not None and item.occurred_at > next_instant:
            assert on_instant is not None
            while pending and pending[0] < item.occurred_at:
                _reach(pending.pop(0), states, cadence, changes, triggers, on_instant)
            next_instant = pending[0] if pending else None
        state = states.get(item.account_id)
        if state is None:
            state = states[item.account_id] = AccountState.new(item.account_id)
        outcome = cadence.event(state, item)
        step = outcome.step
        triggers.extend(outcome.triggers)
        if step.result is ApplyResult.APPLIED:
            stats.applied += 1
        elif step.result is ApplyResult.DUPLICATE:
            stats.duplicates += 1
        else:
            stats.late += 1
        changes.extend(_keyed(step.changes, state))
        if watermark is None or item.occurred_at > watermark:
            watermark = item.occurred_at
    stats.lines = last_line
    final = as_of if as_of is not None else watermark
    if on_instant is not None:
        while pending and final is not None and pending[0] <= final:
            _reach(pending.pop(0), states, cadence, changes, triggers, on_instant)
    scores: list[HealthScore] = []
    if final is not None:
        for account_id in sorted(states):
            state = states[account_id]
            _collect(cadence.timer(state, final), state, changes, triggers)
            scores.append(score_at(state, final, scorecard, now_ms=now_ms))
        stats.as_of = format_utc(final)
    if on_instant is not None:
        for instant in pending:
            _reach(instant, states, cadence, [], [], on_instant)
    changes.sort(key=lambda row: (row[0], row[1]))
    triggers.sort(key=lambda t: (parse_timestamp(t["as_of"]), t["account_id"], t["playbook"]))
    stats.accounts = len(states)
    stats.changes = len(changes)
    stats.triggers = len(triggers)
    return ReplayResult(
        scores=scores,
        changes=[change for _, _, change in changes],
        stats=stats,
        invalid=invalid,
        as_of=final,
        triggers=triggers,
    )


def _reach(
    instant: int,
    states: dict[str, AccountState],
    cadence: Cadence,
    changes: list[tuple[int, str, BucketChange]],
    triggers: list[dict[str, Any]],
    on_instant: Callable[[int, Mapping[str, AccountState]], None],
) -> None:
    # Every account's ticks up to the instant, as replay(as_of=instant) runs
    # them before scoring; then the caller looks.
    for state in states.values():
        _collect(cadence.timer(state, instant), state, changes, triggers)
    on_instant(instant, states)


def _collect(
    outcome: Outcome,
    state: AccountState,
    changes: list[tuple[int, str, BucketChange]],
    triggers: list[dict[str, Any]],
) -> None:
    changes.extend(_keyed(outcome.step.changes, state))
    triggers.extend(outcome.triggers)


def _keyed(
    changes: list[BucketChange], state: AccountState
) -> Iterator[tuple[int, str, BucketChange]]:
    # Sort key: the change's own as-of time (ms), then the account.
    for change in changes:
        yield parse_timestamp(change.as_of), state.account_id, change
