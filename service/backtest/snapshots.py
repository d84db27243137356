"""Every account's score at each snapshot date, from a replay or from the SQL history.

From events (:func:`replay_scores`): one replay of the file, looking at the
accounts at each date through the replay's ``instants`` hook, so the score of
account A at date T is exactly what ``vitals replay EVENTS --as-of T`` prints
for A (the same cadence has run up to T; nothing after T is applied). A file
that is not in event-time order around a date (an event at or before T read
after one later than T) cannot be looked at in one pass there: such dates are
replayed on their own with ``as_of``, which is slower but exact.

The same pass also keeps, for the lead times, every account's bucket over time
(its first bucket and each bucket change), and, for each churned account, the
score and its explanation one millisecond before its churn became known (its
churn notice, else the churn: see ``Outcomes.churn_known``).

From the history database (:func:`stored_scores`): the newest score the
history sink stored at or before each date (it stores a score on change and
at least daily), the bucket of every stored score, and the newest stored score
before each churn became known.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic_core import PydanticCustomError

from schemas.decode import Rejected, decode_event
from schemas.events import MAX_TIMESTAMP_MS, parse_timestamp
from service.backtest.outcomes import Outcomes, outcome_of_event
from service.history.db import (
    create_engine,
    score_history,
    score_points,
    score_time_range,
    scores_as_of,
)
from service.model.account_state import AccountState
from service.model.scorecard import Scorecard
from service.model.scoring import Evaluation, evaluate, health_score
from service.processing.replay import ReplayResult, replay

__all__ = [
    "Component",
    "EventScan",
    "ScoredHistory",
    "Snapshot",
    "replay_scores",
    "scan_events",
    "stored_range",
    "stored_scores",
]

#: Lines between two progress calls.
PROGRESS_LINES = 20_000


@dataclass(frozen=True, slots=True)
class Component:
    """A weighted metric of a score: value, 0-100 score (``None``: unknown), weight."""

    metric: str
    value: float | None
    score: float | None
    weight: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One account's score at one snapshot date."""

    account_id: str
    at: int
    score: float
    bucket: str
    grade: str
    #: The scorecard profile that scored it ("" when not known: the history).
    profile: str
    low_confidence: bool
    components: tuple[Component, ...]
    #: Every metric's value: weighted and gate-only (replay), weighted (history).
    values: Mapping[str, float | None]
    #: Gates that capped the bucket (replay only).
    capping_gates: tuple[str, ...]


@dataclass
class ScoredHistory:
    """One scorecard's scores, as the back-test needs them."""

    scorecard: tuple[str, str]
    source: str
    snapshots: list[Snapshot]
    #: account -> ``(time, bucket)``: its first bucket, then every change.
    timelines: dict[str, list[tuple[int, str]]]
    #: churned account -> its score message (plus ``capping_gates``) just
    #: before its churn became known.
    before_churn: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- scan


@dataclass
class EventScan:
    """What one quick read of an events file tells before the replay."""

    lines: int = 0
    first_at: int | None = None
    last_at: int | None = None
    outcomes: Outcomes = field(default_factory=Outcomes)
    #: Merged intervals ``[t, m)``: an event at ``t`` was read after one at ``m > t``.
    disorder: list[tuple[int, int]] = field(default_factory=list)

    def in_order_at(self, instant: int) -> bool:
        """Whether no event at or before ``instant`` comes after a later one."""
        return not any(low <= instant < high for low, high in self.disorder)


def scan_events(lines: Iterable[bytes]) -> EventScan:
    """Count lines, find the time range, the disorder and the outcome events.

    Only ``contract`` events are fully decoded (as the replay decodes them, so
    an invalid one is skipped here too); every other line is only parsed for
    its ``occurred_at``.
    """
    scan = EventScan()
    newest: int | None = None
    for raw in lines:
        scan.lines += 1
        try:
            obj = orjson.loads(raw)
            at = parse_timestamp(obj["occurred_at"])
        except (orjson.JSONDecodeError, PydanticCustomError, KeyError, TypeError):
            continue
        if newest is None or at >= newest:
            newest = at
        else:
            _add_disorder(scan.disorder, at, newest)
        if scan.first_at is None or at < scan.first_at:
            scan.first_at = at
        if scan.last_at is None or at > scan.last_at:
            scan.last_at = at
        if obj.get("type") == "contract":
            _scan_contract(raw, scan.outcomes)
    return scan


def _add_disorder(intervals: list[tuple[int, int]], low: int, high: int) -> None:
    # `high` (the running maximum) never decreases, so only the last interval can overlap.
    if intervals and low <= intervals[-1][1]:
        last_low, _ = intervals[-1]
        intervals[-1] = (min(last_low, low), high)
    else:
        intervals.append((low, high))


def _scan_contract(raw: bytes, outcomes: Outcomes) -> None:
    try:
        event = decode_event(raw.strip(), topic_kind=None, key=None, now_ms=MAX_TIMESTAMP_MS)
    except Rejected:
        return
    found = outcome_of_event(event)
    if found == "notice":
        outcomes.add_notice(event.account_id, event.occurred_at)
    elif found is not None:
        outcomes.add(found)


# ------------------------------------------------------------------- replay


def _replay(
    lines: Iterable[bytes],
    scorecard: Scorecard,
    instants: Iterable[int],
    on_instant: Callable[[int, Mapping[str, AccountState]], None],
    as_of: int | None = None,
) -> ReplayResult:
    """The one place the back-test drives the replay: when the replay becomes the
    driver it shares with the stream, only this function should have to change."""
    return replay(lines, scorecard, as_of=as_of, now_ms=0, instants=instants, on_instant=on_instant)


def _counted(lines: Iterable[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    for number, line in enumerate(lines, start=1):
        if progress is not None and number % PROGRESS_LINES == 0:
            progress(number)
        yield line


def _snapshot(ev: Evaluation) -> Snapshot:
    return Snapshot(
        account_id=ev.account_id,
        at=ev.as_of,
        score=ev.score,
        bucket=ev.bucket,
        grade=ev.grade,
        profile=ev.profile,
        low_confidence=ev.low_confidence,
        components=tuple(
            Component(c.metric, c.value, None if c.value is None else c.score, c.weight)
            for c in ev.components
        ),
        values=ev.values,
        capping_gates=ev.deciding_gates,
    )


def _explained(ev: Evaluation) -> dict[str, Any]:
    message = health_score(ev, now_ms=ev.as_of).model_dump(mode="json")
    del message["computed_at"]
    message["capping_gates"] = list(ev.deciding_gates)
    return message


def replay_scores(
    open_lines: Callable[[], Iterable[bytes]],
    scorecard: Scorecard,
    dates: Sequence[int],
    churns: Mapping[str, int],
    known: Mapping[str, int],
    *,
    scan: EventScan | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoredHistory:
    """Scores at ``dates`` as ``vitals replay --as-of`` gives them (see the module).

    ``open_lines`` opens the events again for each pass; ``churns`` maps
    churned accounts to their churn time (their snapshots at or after it are
    not taken) and ``known`` to the time it became known (their score just
    before it is kept); ``scan`` (of the
    same file) says which dates need a replay of their own; ``progress`` is
    called with the number of lines read every :data:`PROGRESS_LINES`.
    """
    by_date: dict[int, list[Snapshot]] = {}
    before_churn: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, int] = {}
    last_bucket: dict[str, str] = {}
    dates_set = set(dates)
    at_instant: dict[int, list[str]] = defaultdict(list)
    for account_id, known_at in known.items():
        at_instant[known_at - 1].append(account_id)

    def take(instant: int, states: Mapping[str, AccountState]) -> list[Snapshot]:
        return [
            _snapshot(evaluate(state, instant, scorecard))
            for account_id, state in states.items()
            if churns.get(account_id, instant + 1) > instant
        ]

    def look(instant: int, states: Mapping[str, AccountState]) -> None:
        if instant in dates_set:
            by_date[instant] = take(instant, states)
        for account_id in at_instant.get(instant, ()):
            state = states.get(account_id)
            if state is not None:
                before_churn[account_id] = _explained(evaluate(state, instant, scorecard))
        for account_id, state in states.items():
            if account_id not in first_seen and state.first_event_at is not None:
                first_seen[account_id] = state.first_event_at
            if state.bucket is not None:
                last_bucket[account_id] = state.bucket

    result = _replay(_counted(open_lines(), progress), scorecard, dates_set | set(at_instant), look)
    history = ScoredHistory(
        scorecard=(scorecard.name, scorecard.version),
        source="replay",
        snapshots=[],
        timelines=_timelines(result, first_seen, last_bucket),
        before_churn=before_churn,
    )
    out_of_order = [date for date in sorted(dates_set) if scan and not scan.in_order_at(date)]
    for date in out_of_order:

        def look_at_date(instant: int, states: Mapping[str, AccountState]) -> None:
            by_date[instant] = take(instant, states)

        _replay(open_lines(), scorecard, [date], look_at_date, as_of=date)
    if out_of_order:
        history.notes.append(
            f"the events are not in event-time order around {len(out_of_order)} snapshot "
            "date(s): each was replayed on its own (exact); lead times and the scores "
            "before churn come from the single pass and may miss events read late"
        )
    history.snapshots = [s for date in sorted(by_date) for s in by_date[date]]
    return history


def _timelines(
    result: ReplayResult, first_seen: Mapping[str, int], last_bucket: Mapping[str, str]
) -> dict[str, list[tuple[int, str]]]:
    changes: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for change in result.changes:
        changes[change.account_id].append(
            (parse_timestamp(change.as_of), change.from_bucket, change.to_bucket)
        )
    final = {score.account_id: score.bucket for score in result.scores}
    timelines: dict[str, list[tuple[int, str]]] = {}
    for account_id, start in first_seen.items():
        moves = changes.get(account_id, [])
        first = moves[0][1] if moves else last_bucket.get(account_id, final.get(account_id))
        if first is None:
            continue
        timelines[account_id] = [(start, first)] + [(at, to) for at, _, to in moves]
    return timelines


# ------------------------------------------------------------------ history


def stored_range(url: str) -> tuple[int, int] | None:
    """The times of the oldest and the newest score stored at ``url`` (``None``: none)."""

    async def read() -> tuple[int, int] | None:
        engine = create_engine(url)
        try:
            return await score_time_range(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def stored_scores(
    url: str, dates: Sequence[int], churns: Mapping[str, int], known: Mapping[str, int]
) -> ScoredHistory:
    """Scores at ``dates`` from the history database at ``url`` (see the module).

    Raises :class:`service.history.db.HistoryDbError` for a bad URL and
    SQLAlchemy errors when the database cannot be read.
    """
    return asyncio.run(_stored_scores(url, dates, churns, known))


async def _stored_scores(
    url: str, dates: Sequence[int], churns: Mapping[str, int], known: Mapping[str, int]
) -> ScoredHistory:
    engine = create_engine(url)
    snapshots: list[Snapshot] = []
    cards: Counter[tuple[str, str]] = Counter()
    try:
        for date in sorted(set(dates)):
            for row in await scores_as_of(engine, date):
                if churns.get(row["account_id"], date + 1) <= date:
                    continue
                cards[(row["scorecard"]["name"], row["scorecard"]["version"])] += 1
                snapshots.append(_stored_snapshot(row["payload"], date))
        timelines: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for point in await score_points(engine):
            timeline = timelines[point["account_id"]]
            if not timeline or timeline[-1][1] != point["bucket"]:
                timeline.append((parse_timestamp(point["as_of"]), point["bucket"]))
        before_churn: dict[str, dict[str, Any]] = {}
        for account_id, known_at in known.items():
            rows = await score_history(
                engine, account_id, until_ms=known_at, limit=1, include_payload=True
            )
            if rows:
                message = dict(rows[0]["payload"])
                message.pop("computed_at", None)
                message["capping_gates"] = []
                before_churn[account_id] = message
    finally:
        await engine.dispose()
    scorecard = cards.most_common(1)[0][0] if cards else ("unknown", "?")
    history = ScoredHistory(
        scorecard=scorecard,
        source="history database",
        snapshots=snapshots,
        timelines=dict(timelines),
        before_churn=before_churn,
    )
    if len(cards) > 1:
        names = ", ".join(f"{name} v{version}" for name, version in sorted(cards))
        history.notes.append(f"the stored scores come from several scorecards: {names}")
    return history


def _stored_snapshot(payload: Mapping[str, Any], date: int) -> Snapshot:
    components = tuple(
        Component(
            c["metric"],
            c["value"],
            None if c["value"] is None else float(c["score"]),
            float(c["weight"]),
        )
        for c in payload["components"]
    )
    return Snapshot(
        account_id=payload["account_id"],
        at=date,
        score=float(payload["score"]),
        bucket=payload["bucket"],
        grade=payload["grade"],
        profile="",
        low_confidence=bool(payload.get("low_confidence", False)),
        components=components,
        values={c.metric: c.value for c in components},
        capping_gates=(),
    )
