"""Outcomes (churned, renewed) and the label of a snapshot.

Outcomes come from ``contract`` events (``action``: ``churned`` or
``renewal``; ``churn_notice`` is kept apart, for the leakage figure) or from
an outcomes file, one JSON object per line::

    {"account_id": "acme-corp", "outcome": "churned", "date": "2024-05-31"}

``outcome`` is ``churned`` or ``renewed``; ``date`` is an RFC 3339 time with
an offset, a calendar date (``YYYY-MM-DD``, read as UTC midnight) or epoch
milliseconds. Other fields are ignored; blank lines are skipped. A bad line
stops the reading with one error naming the file and the line.

A snapshot of account A at time T, with horizon H, is labelled by
:meth:`Outcomes.label`:

* ``after_churn`` (dropped): A churned at or before T;
* ``churned`` (positive): A churned in (T, T + H];
* ``retained`` (negative): A churned only after T + H, or renewed after T,
  or the data is observed through T + H (``observed_until``) without a churn;
* ``unknown`` (dropped, censored): none of these, i.e. the horizon runs past
  the end of what is known and A neither renewed nor churned since T.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Final, Literal

import orjson
from pydantic_core import PydanticCustomError

from schemas.events import ContractEvent, Event, parse_timestamp

__all__ = [
    "OUTCOME_KINDS",
    "Label",
    "Outcome",
    "OutcomeFileError",
    "Outcomes",
    "outcome_of_event",
    "read_outcomes",
]

OutcomeKind = Literal["churned", "renewed"]
OUTCOME_KINDS: Final[tuple[OutcomeKind, ...]] = ("churned", "renewed")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_ID: Final = 128


class Label(Enum):
    """What became of an account within the horizon after a snapshot."""

    CHURNED = "churned"
    RETAINED = "retained"
    AFTER_CHURN = "after_churn"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Outcome:
    """An account churned or renewed at ``at`` (epoch ms)."""

    account_id: str
    outcome: OutcomeKind
    at: int


class OutcomeFileError(ValueError):
    """A bad line in an outcomes file; the message is one line naming it."""


def outcome_of_event(event: Event) -> Outcome | Literal["notice"] | None:
    """The outcome a ``contract`` event says (``"notice"`` for a churn notice)."""
    if not isinstance(event, ContractEvent):
        return None
    if event.action == "churned":
        return Outcome(event.account_id, "churned", event.occurred_at)
    if event.action == "renewal":
        return Outcome(event.account_id, "renewed", event.occurred_at)
    if event.action == "churn_notice":
        return "notice"
    return None


def _date(value: object) -> int:
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"date {value!r} is not a calendar date") from None
        return int(day.timestamp()) * 1000
    try:
        return parse_timestamp(value)
    except PydanticCustomError as exc:
        raise ValueError(f"date: {exc.message()}") from None


def read_outcomes(lines: Iterable[bytes], source: str) -> list[Outcome]:
    """Parse an outcomes file (see the module); raises :class:`OutcomeFileError`."""
    outcomes: list[Outcome] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            outcomes.append(_outcome_line(text))
        except ValueError as exc:
            raise OutcomeFileError(f"{source} line {number}: {exc}") from None
    return outcomes


def _outcome_line(text: bytes) -> Outcome:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    for name in ("account_id", "outcome", "date"):
        if name not in obj:
            raise ValueError(f"missing {name}")
    account_id = obj["account_id"]
    if not isinstance(account_id, str) or not 1 <= len(account_id) <= _MAX_ID:
        raise ValueError(f"account_id must be a string of 1-{_MAX_ID} characters")
    outcome = obj["outcome"]
    if outcome not in OUTCOME_KINDS:
        raise ValueError(f'outcome must be "churned" or "renewed", got {orjson.dumps(outcome)!r}')
    return Outcome(account_id, outcome, _date(obj["date"]))


@dataclass
class Outcomes:
    """Every account's churns, renewals and churn notices (sorted epoch ms)."""

    churns: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    renewals: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    notices: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, outcome: Outcome) -> None:
        target = self.churns if outcome.outcome == "churned" else self.renewals
        _insert(target[outcome.account_id], outcome.at)

    def add_notice(self, account_id: str, at: int) -> None:
        _insert(self.notices[account_id], at)

    def merge(self, other: Outcomes) -> None:
        for mine, theirs in (
            (self.churns, other.churns),
            (self.renewals, other.renewals),
            (self.notices, other.notices),
        ):
            for account_id, times in theirs.items():
                for at in times:
                    _insert(mine[account_id], at)

    @property
    def latest(self) -> int | None:
        """The latest outcome or notice time known."""
        tables = (self.churns, self.renewals, self.notices)
        return max(
            (times[-1] for table in tables for times in table.values() if times), default=None
        )

    def churned_accounts(self) -> dict[str, int]:
        """Each churned account's first churn time."""
        return {account: times[0] for account, times in self.churns.items() if times}

    def churn_known(self, horizon: int) -> dict[str, int]:
        """When each churned account's churn became known: its last churn notice
        within ``horizon`` before its first churn, else the churn itself. Red
        the score shows after that may be the notice's doing (a gate reads it)."""
        known: dict[str, int] = {}
        for account_id, churned_at in self.churned_accounts().items():
            notices = [t for t in self.notices.get(account_id) or [] if t <= churned_at]
            known[account_id] = (
                notices[-1] if notices and notices[-1] >= churned_at - horizon else churned_at
            )
        return known

    def label(self, account_id: str, at: int, horizon: int, observed_until: int) -> Label:
        """The label of the snapshot of ``account_id`` at ``at`` (see the module)."""
        churns = self.churns.get(account_id) or []
        if churns and churns[0] <= at:
            return Label.AFTER_CHURN
        if churns and churns[0] <= at + horizon:
            return Label.CHURNED
        if churns:  # its first churn comes after the horizon
            return Label.RETAINED
        renewals = self.renewals.get(account_id) or []
        if renewals and renewals[-1] > at:
            return Label.RETAINED
        if at + horizon <= observed_until:
            return Label.RETAINED
        return Label.UNKNOWN

    def noticed_by(self, account_id: str, at: int) -> bool:
        """Whether the account gave a churn notice at or before ``at``."""
        notices = self.notices.get(account_id) or []
        return bool(notices) and notices[0] <= at


def _insert(times: list[int], at: int) -> None:
    position = bisect_right(times, at)
    if position and times[position - 1] == at:
        return  # the same outcome twice (a redelivered event): once
    times.insert(position, at)
