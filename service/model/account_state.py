"""Per-account state: everything the scoring model needs, bounded in size.

One :class:`AccountState` per account, built only from the account's events
(:meth:`AccountState.apply`) and the scoring memory that
:func:`service.model.scoring.rescore` keeps in it. No faust or Kafka import: the
stream stores it in a plain table through :meth:`AccountState.to_bytes` /
:meth:`AccountState.from_bytes`, replay keeps it in a dict.

Guarantees (documented in docs/scorecard.md, "State"):

* **Event time.** Every window is keyed by the event's ``occurred_at`` day
  (UTC); events may arrive in any order.
* **Late events.** An event older than :data:`HORIZON_DAYS` (90) days before
  the latest ``occurred_at`` applied to the account is *late*: it is counted
  (``late``) but not applied, because every window it could fall in is already
  closed. The check is against the account's own latest event time, so it
  depends only on the order of the account's events.
* **Duplicates.** An event whose ``event_id`` equals one of the last
  :data:`DEDUP_IDS` (64) ids applied to the account is a *duplicate*: counted
  (``duplicates``), not applied. Ids are kept as 64-bit BLAKE2b digests (a
  false match needs a 64-bit collision among 64 ids). A repeat of an older id
  is applied again unless it is late; Kafka redelivers after a crash only the
  events since the last commit, far fewer than 64 per account in practice.
* **Bounded.** Windows keep :data:`RETAIN_DAYS` days before the account's
  clock (latest event or last rescore time); user, feature, ticket, KPI and
  milestone maps are capped (see the ``MAX_*`` constants). Serialised
  (format 2), the 20-user account of ``python -m service.tools.bench_scoring``
  after 90 days of daily use is about 4.9 KB (200 users: 12 KB); once silent
  for 91 days (empty windows) about 1.9 KB: scalars, the dedup ids (0.7 KB,
  base64: the densest JSON-safe encoding at C speed), 31 days of score
  history and the components at bucket entry.

Apart from the serialised fields the state holds transient data, rebuilt
from them when needed: running totals inside the windows, the key-feature
adoption indexes (:meth:`AccountState.adoption_index`), the serialised form
of unchanged parts, and for scoring the parts changed since it last looked
(``changed``, ``changed_since``, ``removed_before``: see the ``PART_*``
bits) and its cached metric values.
"""

from __future__ import annotations

import base64
import enum
import math
from collections.abc import Callable
from hashlib import blake2b
from typing import Any, Final

import orjson

from schemas.events import (
    AccountEvent,
    ContractEvent,
    CsmTouchEvent,
    Event,
    FeatureUseEvent,
    InvoiceEvent,
    KpiEvent,
    LoginEvent,
    MilestoneEvent,
    PulseEvent,
    SupportTicketEvent,
    SurveyEvent,
)
from service.model.windows import (
    DAY_MS,
    Count,
    DailyWindow,
    DayIndex,
    LastSeen,
    Mean,
    MeanAcc,
    Sum,
    day_of,
)

__all__ = [
    "DEDUP_IDS",
    "HISTORY_DAYS",
    "HORIZON_DAYS",
    "HORIZON_MS",
    "MAX_FEATURES",
    "MAX_FEATURES_PER_USER",
    "MAX_KPIS",
    "MAX_MILESTONES",
    "MAX_TICKETS",
    "MAX_USERS",
    "NOTHING_REMOVED",
    "PARTS",
    "PARTS_OF_TYPE",
    "PART_ACTIVE_DAYS",
    "PART_ACTIVITY",
    "PART_CONTRACTS",
    "PART_CSM",
    "PART_EVENTS",
    "PART_FEATURES",
    "PART_INVOICE",
    "PART_KPIS",
    "PART_LOGINS",
    "PART_LOGIN_DAYS",
    "PART_MILESTONES",
    "PART_PULSE",
    "PART_SNAPSHOT",
    "PART_SURVEYS",
    "PART_TICKETS",
    "PART_USERS",
    "RETAIN_DAYS",
    "STATE_FORMAT",
    "AccountState",
    "ApplyResult",
    "Ticket",
]

#: Longest window any metric reads; events older than this before the
#: account's latest event are late.
HORIZON_DAYS: Final = 90
HORIZON_MS: Final = HORIZON_DAYS * DAY_MS
#: Days of daily buckets kept before the account clock's day (one spare day).
RETAIN_DAYS: Final = HORIZON_DAYS + 1
#: Days of daily score history kept for the 7/30-day trend.
HISTORY_DAYS: Final = 31
#: Event ids remembered for de-duplication.
DEDUP_IDS: Final = 64
#: Distinct users tracked (beyond it the least recently active are evicted).
MAX_USERS: Final = 5000
#: Distinct features tracked per account and per user.
MAX_FEATURES: Final = 200
MAX_FEATURES_PER_USER: Final = 16
#: Support tickets tracked (resolved ones are evicted first).
MAX_TICKETS: Final = 200
#: KPI metrics tracked (the least recently reported is evicted).
MAX_KPIS: Final = 20
#: Milestone names kept (new names beyond it are ignored).
MAX_MILESTONES: Final = 50
#: Version of the serialised form (``to_dict``'s ``"v"``). Version 2 packs
#: the counts, snapshot, score history, baseline and gates more tightly;
#: version 3 keeps 6-byte event-id digests and the Kafka positions; versions
#: 1 and 2 are still read.
STATE_FORMAT: Final = 3
_FORMATS: Final = (1, 2, 3)
#: Bytes kept of each event id's digest (the first bytes of an 8-byte
#: blake2b). 48 bits: a false duplicate among an account's 64 remembered ids
#: has a chance of 64 / 2**48 (about 1 in 4 trillion events); formats 1-2
#: stored 8 bytes, which load truncated to the same value.
ID_DIGEST_BYTES: Final = 6
_DEDUP_BYTES: Final = DEDUP_IDS * ID_DIGEST_BYTES

_PULSE_REASON_MAX: Final = 200
#: Days of use remembered per user and "regular use" feature.
_DAY_BITS: Final = 64
_DAY_BITS_MASK: Final = (1 << _DAY_BITS) - 1

# Parts of the state, as bits: ``apply`` and ``compact`` record in
# ``AccountState.changed`` which parts they changed, and each metric source
# declares the parts it reads (``service.model.metrics_catalog``), so scoring
# recomputes after an event only the metrics that can have moved.
#: ``first_event_at``.
PART_EVENTS: Final = 1 << 0
#: ``users`` and ``user_features``.
PART_USERS: Final = 1 << 1
#: ``logins`` (counts).
PART_LOGINS: Final = 1 << 2
#: ``activity`` (counts).
PART_ACTIVITY: Final = 1 << 3
PART_FEATURES: Final = 1 << 4
#: ``tickets``, ``tickets_opened``, ``escalations``, ``resolution_hours`` and
#: the ticket CSAT in ``csat``.
PART_TICKETS: Final = 1 << 5
#: ``nps`` and the survey CSAT in ``csat``.
PART_SURVEYS: Final = 1 << 6
#: ``csm_touches`` and ``last_csm_touch_at``.
PART_CSM: Final = 1 << 7
PART_PULSE: Final = 1 << 8
PART_MILESTONES: Final = 1 << 9
PART_SNAPSHOT: Final = 1 << 10
PART_KPIS: Final = 1 << 11
PART_CONTRACTS: Final = 1 << 12
PART_INVOICE: Final = 1 << 13
#: The days ``logins`` has a bucket for.
PART_LOGIN_DAYS: Final = 1 << 14
#: The days ``activity`` has a bucket for, and the day of ``last_activity_at``.
PART_ACTIVE_DAYS: Final = 1 << 15
#: Every part.
PARTS: Final = (1 << 16) - 1
#: No lower bound yet (empty).
_NO_DAY: Final = 1 << 62
#: ``AccountState.removed_before`` when compaction removed nothing.
NOTHING_REMOVED: Final = -(1 << 62)
_SUM: Final = Sum()
_COUNT: Final = Count()
_MEAN: Final = Mean()


class ApplyResult(enum.Enum):
    """What :meth:`AccountState.apply` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


def _nps_points(score: int) -> int:
    # Net Promoter: promoters (9-10) +100, passives (7-8) 0, detractors (0-6) -100;
    # the mean of these points over a window is the NPS of that window.
    if score >= 9:
        return 100
    if score <= 6:
        return -100
    return 0


class Ticket:
    """What vitals remembers of one support ticket."""

    __slots__ = ("counted", "is_open", "open_since", "pending_resolved_at", "priority", "status_at")

    def __init__(
        self,
        priority: str,
        is_open: bool = False,
        status_at: int = -1,
        open_since: int | None = None,
        pending_resolved_at: int | None = None,
        counted: bool = False,
    ) -> None:
        #: Priority given by the newest status event.
        self.priority = priority
        #: Open after the newest status event (opened, reopened, escalated).
        self.is_open = is_open
        #: ``occurred_at`` of the newest status event applied (-1: none yet).
        self.status_at = status_at
        #: When the current open period started, while open.
        self.open_since = open_since
        #: A resolution seen before any opening: measured when the opening arrives.
        self.pending_resolved_at = pending_resolved_at
        #: Whether an ``opened`` event was counted in ``tickets_opened``.
        self.counted = counted

    def dump(self) -> list[Any]:
        return [
            self.priority,
            int(self.is_open),
            self.status_at,
            self.open_since,
            self.pending_resolved_at,
            int(self.counted),
        ]

    @classmethod
    def load(cls, data: Any) -> Ticket:
        priority, is_open, status_at, open_since, pending, counted = data
        return cls(priority, bool(is_open), status_at, open_since, pending, bool(counted))


class AccountState:
    """Windowed aggregates, last-seen maps and scoring memory of one account.

    Create with :meth:`new`, feed with :meth:`apply`, score with
    :func:`service.model.scoring.rescore`. Attributes are read by the metric
    extractors in :mod:`service.model.metrics_catalog`; only this class and
    :mod:`service.model.scoring` write them.
    """

    __slots__ = (
        "_adoption",
        "_baseline_dump",
        "_data_low",
        "_memo",
        "_scoring",
        "_tickets_dump",
        "_tickets_low",
        "_trend",
        "_uf_low",
        "_version",
        "account_id",
        "activity",
        "baseline",
        "bucket",
        "changed",
        "changed_since",
        "contracts",
        "counts",
        "csat",
        "csm_touches",
        "dedup",
        "duplicates",
        "escalations",
        "feature_days",
        "features",
        "first_event_at",
        "gates",
        "invoice",
        "kpis",
        "last_activity_at",
        "last_csm_touch_at",
        "last_event_at",
        "late",
        "logins",
        "milestones",
        "nps",
        "playbooks",
        "positions",
        "pruned_day",
        "pulse",
        "removed_before",
        "resolution_hours",
        "score",
        "score_history",
        "scored_at",
        "snapshot",
        "tickets",
        "tickets_opened",
        "user_features",
        "users",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        #: Applied events per event type (only types seen).
        self.counts: dict[str, int] = {}
        self.late = 0
        self.duplicates = 0
        #: Earliest / latest ``occurred_at`` applied.
        self.first_event_at: int | None = None
        self.last_event_at: int | None = None
        #: Latest login or feature use.
        self.last_activity_at: int | None = None
        #: Digests (ID_DIGEST_BYTES each) of the last DEDUP_IDS applied event
        #: ids, oldest first, in one bytes object: 0.4 KB where a dict of
        #: them took 4 KB (a busy account's state was 11% event ids).
        self.dedup: bytes = b""
        #: Kafka positions applied to this state that the worker had not yet
        #: committed when it last stored it ("topic:partition" -> offsets): a
        #: record redelivered after a crash or rebalance is found here, so it
        #: is not applied twice however many events the account had since.
        #: Stored with the state so the two can never disagree; empty in replay.
        self.positions: dict[str, list[int]] = {}
        # usage
        self.logins: DailyWindow[float, float, float] = DailyWindow(_SUM)
        #: Logins plus feature-use events per day (the usage-trend measure).
        self.activity: DailyWindow[float, float, float] = DailyWindow(_SUM)
        self.users = LastSeen(MAX_USERS)
        self.features = LastSeen(MAX_FEATURES)
        #: user -> feature -> last day used.
        self.user_features: dict[str, dict[str, int]] = {}
        #: user -> feature -> [last day used, day bits]: bit k set = used on the
        #: day ``k`` days before the last one (64 days). Kept only for the
        #: features a scorecard asks "regular use" of (``apply``'s ``regular``).
        self.feature_days: dict[str, dict[str, list[int]]] = {}
        # support
        self.tickets: dict[str, Ticket] = {}
        self.tickets_opened: DailyWindow[int, object, int] = DailyWindow(_COUNT)
        self.escalations: DailyWindow[int, object, int] = DailyWindow(_COUNT)
        #: Open-to-resolved hours, on the day of resolution.
        self.resolution_hours: DailyWindow[MeanAcc, float, float | None] = DailyWindow(_MEAN)
        #: CSAT 1-5 from resolved tickets and csat surveys.
        self.csat: DailyWindow[MeanAcc, float, float | None] = DailyWindow(_MEAN)
        # relationship
        #: NPS points (-100 / 0 / +100 per answer); the window mean is the NPS.
        self.nps: DailyWindow[MeanAcc, float, float | None] = DailyWindow(_MEAN)
        self.csm_touches: DailyWindow[int, object, int] = DailyWindow(_COUNT)
        self.last_csm_touch_at: int | None = None
        #: Newest pulse: [rating, reason, occurred_at, expires_at(, author)].
        self.pulse: list[Any] | None = None
        #: milestone name -> earliest occurred_at.
        self.milestones: dict[str, int] = {}
        # outcomes
        #: KPI metric -> daily sum of values.
        self.kpis: dict[str, DailyWindow[float, float, float]] = {}
        #: contract action -> daily count.
        self.contracts: dict[str, DailyWindow[int, object, int]] = {}
        #: Newest invoice: [status, occurred_at].
        self.invoice: list[Any] | None = None
        #: Account snapshot: field -> [value, occurred_at of the snapshot that set it].
        self.snapshot: dict[str, list[Any]] = {}
        # scoring memory, written by service.model.scoring.rescore
        #: as_of of the last rescore (the account's score clock).
        self.scored_at: int | None = None
        self.bucket: str | None = None
        self.score: float | None = None
        #: day -> last score of that day.
        self.score_history: dict[int, float] = {}
        #: metric -> (value, contribution) when the account entered its bucket.
        self.baseline: dict[str, tuple[float | None, float]] = {}
        #: Gates that fired at the last rescore (for gate ``release``).
        self.gates: list[str] = []
        #: Day of the reference time of the last prune.
        self.pruned_day = -1
        #: Memory of the playbook engine (``service.model.playbooks``), opaque here.
        self.playbooks: dict[str, Any] | None = None
        # transient: never serialised
        self._version = 0
        #: Parts (``PART_*`` bits) changed since scoring last cleared them, the
        #: earliest day of those changes (-1: any day), and the day before
        #: which compaction removed data (``NOTHING_REMOVED``: none).
        self.changed = PARTS
        self.changed_since = -1
        self.removed_before = NOTHING_REMOVED
        self._memo: Any = None
        #: Scoring's per-metric cache (``service.model.scoring``).
        self._scoring: Any = None
        #: Scoring's cache of the scores in effect 7 and 30 days before a day.
        self._trend: Any = None
        #: Key features -> users by adoption day (see :meth:`adoption_index`).
        self._adoption: dict[tuple[str, ...], DayIndex] | None = None
        #: Lower bounds of the days in ``user_features`` / the ``status_at`` of
        #: ``tickets``, so compaction skips them when nothing is old enough.
        self._uf_low = _NO_DAY
        self._tickets_low = _NO_DAY
        #: to_dict's form of ``tickets`` (None: rebuild) and of ``baseline``
        #: (with the dict it was made from), kept between calls.
        self._tickets_dump: dict[str, list[Any]] | None = None
        self._baseline_dump: tuple[dict[str, tuple[float | None, float]], Any] | None = None
        #: A day at or before every day held by any part compaction prunes.
        self._data_low = _NO_DAY

    @classmethod
    def new(cls, account_id: str) -> AccountState:
        """An empty state for ``account_id``."""
        return cls(account_id)

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        event: Event,
        newest_read: int | None = None,
        regular: frozenset[str] = frozenset(),
    ) -> ApplyResult:
        """Apply one validated event of this account, at most once.

        Returns DUPLICATE for a recently applied ``event_id``, LATE for an
        event older than 90 days before the latest applied one (neither
        changes the windows), else APPLIED. ``newest_read`` is the newest
        ``occurred_at`` of the account read before this event but not
        necessarily applied yet (a stream that reorders by event time passes
        it, so an event is late by the order it arrived in, as in replay).
        ``regular``: features whose days of use are kept per user
        (:meth:`regular_days`; the scorecard's ``Scorecard.regular_features``).
        """
        digest = blake2b(event.event_id.encode(), digest_size=8).digest()[:ID_DIGEST_BYTES]
        dedup = self.dedup
        if _holds_id(dedup, digest):
            self.duplicates += 1
            return ApplyResult.DUPLICATE
        at = event.occurred_at
        last = self.last_event_at
        newest = last
        if newest_read is not None and (last is None or newest_read > last):
            newest = newest_read
        if newest is not None and at < newest - HORIZON_MS:
            self.late += 1
            return ApplyResult.LATE
        dedup += digest
        if len(dedup) > _DEDUP_BYTES:
            dedup = dedup[ID_DIGEST_BYTES:]
        self.dedup = dedup
        if last is None or at > last:
            self.last_event_at = last = at
        first = self.first_event_at
        if first is None or at < first:
            self.first_event_at = at
            self.changed |= PART_EVENTS
        day = at // DAY_MS
        kind = event.type
        handler, parts = _HANDLERS[kind]
        self.changed |= parts
        if day < self.changed_since:
            self.changed_since = day
        if day < self._data_low:
            self._data_low = day
        handler(self, event, day)
        if regular and kind == "feature_use":
            self._mark_day(event, day, regular)
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        self._version += 1
        if day > self.pruned_day:
            scored = self.scored_at
            self.compact(last if scored is None or scored < last else scored)
        return ApplyResult.APPLIED

    def _touch_user(self, user_id: str, day: int, at: int) -> None:
        users = self.users
        old = users.days.get(user_id)
        if old is None or day > old:
            self.changed |= PART_USERS
            indexed = self._adoption
            for gone in users.touch(user_id, day):
                self.user_features.pop(gone, None)
                self.feature_days.pop(gone, None)
                if indexed:
                    self._reindex(gone)
            if indexed:
                self._reindex(user_id)
        last = self.last_activity_at
        if last is None or at > last:
            self.last_activity_at = at
            if last is None or day > last // DAY_MS:
                self.changed |= PART_ACTIVE_DAYS

    def _on_login(self, event: LoginEvent, day: int) -> None:
        if self.logins.add(day, 1):
            self.changed |= PART_LOGIN_DAYS
        if self.activity.add(day, 1):
            self.changed |= PART_ACTIVE_DAYS
        self._touch_user(event.user_id, day, event.occurred_at)

    def _on_feature_use(self, event: FeatureUseEvent, day: int) -> None:
        # A producer that aggregates per user and day sends one event with its
        # count: activity is the uses, not the messages.
        if self.activity.add(day, event.count):
            self.changed |= PART_ACTIVE_DAYS
        user = event.user_id
        self._touch_user(user, day, event.occurred_at)
        feature = event.feature
        features = self.features
        seen = features.days.get(feature)
        if seen is None or day > seen:
            features.touch(feature, day)
            self.changed |= PART_FEATURES
        if user not in self.users:
            return  # evicted at once: the user is older than every tracked one
        used = self.user_features.get(user)
        if used is None:
            used = self.user_features[user] = {}
        old = used.get(feature)
        if old is None:
            used[feature] = day
            if len(used) > MAX_FEATURES_PER_USER:
                oldest = min(used, key=used.__getitem__)
                del used[oldest]
        elif day > old:
            used[feature] = day
        else:
            return
        self.changed |= PART_USERS
        if day < self._uf_low:
            self._uf_low = day
        if self._adoption:
            self._reindex(user)

    def _mark_day(self, event: Any, day: int, regular: frozenset[str]) -> None:
        user, feature = event.user_id, event.feature
        if feature not in regular or user not in self.users:
            return
        per_user = self.feature_days.get(user)
        if per_user is None:
            per_user = self.feature_days[user] = {}
        entry = per_user.get(feature)
        if entry is None:
            per_user[feature] = [day, 1]
        elif day > entry[0]:
            entry[1] = ((entry[1] << (day - entry[0])) | 1) & _DAY_BITS_MASK
            entry[0] = day
        elif entry[0] - day < _DAY_BITS:
            entry[1] |= 1 << (entry[0] - day)
        else:
            return
        self.changed |= PART_USERS
        if day < self._uf_low:
            self._uf_low = day

    def regular_days(self, user: str, features: tuple[str, ...], first: int, last: int) -> int:
        """Distinct days in ``first .. last`` on which ``user`` used one of
        ``features`` (features tracked through ``apply``'s ``regular``; at most
        64 days back from ``last``)."""
        per_user = self.feature_days.get(user)
        if not per_user or last < first:
            return 0
        combined = 0
        for feature in features:
            entry = per_user.get(feature)
            if entry is None:
                continue
            anchor, bits = entry
            # Align every feature's bits on `last` (bit k = day last - k).
            combined |= bits >> (anchor - last) if anchor > last else bits << (last - anchor)
        span = min(last - first + 1, _DAY_BITS)
        return (combined & ((1 << span) - 1)).bit_count()

    # ------------------------------------------------------ derived indexes

    def adoption_index(self, keys: tuple[str, ...]) -> DayIndex:
        """Users by the last day they were active *and* had used one of
        ``keys`` (``min(last active day, last day of a key feature)``).

        "Users counted by ``count_since(D)``" are exactly the users active on
        or after D who used a key feature on or after D (the
        ``key_feature_adoption`` metric). Built from the state on first use,
        then kept up to date by :meth:`apply` and :meth:`compact`; never
        serialised.
        """
        indexes = self._adoption
        if indexes is None:
            indexes = self._adoption = {}
        index = indexes.get(keys)
        if index is None:
            index = indexes[keys] = DayIndex()
            for user in self.user_features:
                index.set(user, self._adoption_day(user, keys))
        return index

    def _adoption_day(self, user: str, keys: tuple[str, ...]) -> int | None:
        last = self.users.days.get(user)
        used = self.user_features.get(user)
        if last is None or not used:
            return None
        best = -1
        for feature in keys:
            day = used.get(feature, -1)
            if day > best:
                best = day
        if best < 0:
            return None
        return last if last < best else best

    def _reindex(self, user: str) -> None:
        assert self._adoption is not None
        for keys, index in self._adoption.items():
            index.set(user, self._adoption_day(user, keys))

    def _on_support_ticket(self, event: SupportTicketEvent, day: int) -> None:
        self._tickets_dump = None
        at = event.occurred_at
        status = event.status
        ticket = self.tickets.get(event.ticket_id)
        if ticket is None:
            ticket = self.tickets[event.ticket_id] = Ticket(event.priority)
        if status == "escalated":
            self.escalations.add(day, None)
        elif status == "opened" and not ticket.counted:
            self.tickets_opened.add(day, None)
            ticket.counted = True
        if status == "resolved" and event.csat is not None:
            self.csat.add(day, event.csat)
        if at >= ticket.status_at:
            # The newest status event decides the ticket's state and priority.
            ticket.status_at = at
            ticket.priority = event.priority
            if status == "resolved":
                if ticket.is_open and ticket.open_since is not None:
                    self.resolution_hours.add(day, (at - ticket.open_since) / 3_600_000)
                elif not ticket.is_open and ticket.open_since is None:
                    ticket.pending_resolved_at = at
                ticket.is_open = False
                ticket.open_since = None
            elif not ticket.is_open:
                ticket.is_open = True
                ticket.open_since = at
                ticket.pending_resolved_at = None
        elif status in ("opened", "reopened"):
            # An older opening arriving late: it measures a resolution seen
            # before it, or moves the start of the current open period back.
            pending = ticket.pending_resolved_at
            if pending is not None and at <= pending:
                self.resolution_hours.add(day_of(pending), (pending - at) / 3_600_000)
                ticket.pending_resolved_at = None
            elif ticket.is_open and ticket.open_since is not None and at < ticket.open_since:
                ticket.open_since = at
        if ticket.status_at < self._tickets_low:
            self._tickets_low = ticket.status_at
        if len(self.tickets) > MAX_TICKETS:
            self._evict_tickets()

    def _evict_tickets(self) -> None:
        # Resolved tickets go first (oldest status first), then the oldest open ones.
        order = sorted(self.tickets.items(), key=lambda kv: (kv[1].is_open, kv[1].status_at))
        for ticket_id, _ in order[: len(self.tickets) - MAX_TICKETS]:
            del self.tickets[ticket_id]

    def _on_account(self, event: AccountEvent, day: int) -> None:
        at = event.occurred_at
        snapshot = self.snapshot
        for name in (
            "seats",
            "plan",
            "arr",
            "segment",
            "lifecycle_stage",
            "customer_since",
            "renewal_at",
            "csm_owner",
        ):
            value = getattr(event, name)
            if value is None:
                continue
            old = snapshot.get(name)
            if old is None or at >= old[1]:
                snapshot[name] = [value, at]

    def _on_csm_touch(self, event: CsmTouchEvent, day: int) -> None:
        self.csm_touches.add(day, None)
        last = self.last_csm_touch_at
        if last is None or event.occurred_at > last:
            self.last_csm_touch_at = event.occurred_at

    def _on_survey(self, event: SurveyEvent, day: int) -> None:
        if event.kind == "nps":
            self.nps.add(day, _nps_points(event.score))
        else:
            self.csat.add(day, event.score)

    def _on_pulse(self, event: PulseEvent, day: int) -> None:
        pulse = self.pulse
        if pulse is None or event.occurred_at >= pulse[2]:
            self.pulse = [
                event.rating,
                event.reason[:_PULSE_REASON_MAX],
                event.occurred_at,
                event.expires_at,
            ]
            if event.author is not None:
                self.pulse.append(event.author)

    def _on_milestone(self, event: MilestoneEvent, day: int) -> None:
        old = self.milestones.get(event.name)
        if old is None:
            if len(self.milestones) < MAX_MILESTONES:
                self.milestones[event.name] = event.occurred_at
        elif event.occurred_at < old:
            self.milestones[event.name] = event.occurred_at

    def _on_kpi(self, event: KpiEvent, day: int) -> None:
        window = self.kpis.get(event.metric)
        if window is None:
            if len(self.kpis) >= MAX_KPIS:
                stale = min(self.kpis, key=lambda name: self.kpis[name].last_day() or -1)
                del self.kpis[stale]
                self.changed_since = -1  # every day of that KPI changed
            window = self.kpis[event.metric] = DailyWindow(_SUM)
        window.add(day, event.value)

    def _on_contract(self, event: ContractEvent, day: int) -> None:
        window = self.contracts.get(event.action)
        if window is None:
            window = self.contracts[event.action] = DailyWindow(_COUNT)
        window.add(day, None)

    def _on_invoice(self, event: InvoiceEvent, day: int) -> None:
        invoice = self.invoice
        if invoice is None or event.occurred_at >= invoice[1]:
            self.invoice = [event.status, event.occurred_at]

    # ------------------------------------------------------------ housekeeping

    @property
    def clock(self) -> int | None:
        """The account's event-time clock: latest event or rescore time."""
        last, scored = self.last_event_at, self.scored_at
        if last is None:
            return scored
        if scored is None:
            return last
        return max(last, scored)

    def compact(self, ref_ms: int) -> None:
        """Drop what no window ending at or after ``ref_ms`` can read.

        Only storage changes: every metric evaluated at an as-of time not
        earlier than ``ref_ms`` gives the same answer before and after. Each
        part keeps a lower bound of its days, so a part with nothing old
        enough costs nothing.
        """
        ref_day = day_of(ref_ms)
        if ref_day <= self.pruned_day:
            return
        self.pruned_day = ref_day
        min_day = ref_day - RETAIN_DAYS + 1
        if min_day > self._data_low:
            self._prune(min_day)
        history = self.score_history
        cut = ref_day - HISTORY_DAYS
        # Days are in insertion order, which is chronological (rescores never
        # go back in time; from_dict loads them sorted): the old ones lead.
        older = []
        for day in history:
            if day >= cut:
                break
            older.append(day)
        if len(older) > 1:
            # Keep the newest score before the cut: it is the score "in effect"
            # 30 days ago when that exact day has no entry.
            for day in older[:-1]:
                del history[day]

    def _prune(self, min_day: int) -> None:
        # compact() of every part with data before min_day.
        dropped = False
        windows = (
            self.logins,
            self.activity,
            self.tickets_opened,
            self.escalations,
            self.resolution_hours,
            self.csat,
            self.nps,
            self.csm_touches,
        )
        for window in windows:
            if window.prune(min_day):
                dropped = True
        touched: set[str] = set()
        for gone in self.users.prune(min_day):
            self.user_features.pop(gone, None)
            self.feature_days.pop(gone, None)
            touched.add(gone)
        if self.features.prune(min_day):
            dropped = True
        if min_day > self._uf_low:
            low = _NO_DAY
            for user, used in self.user_features.items():
                old = [f for f, d in used.items() if d < min_day]
                if old:
                    touched.add(user)
                    for feature in old:
                        del used[feature]
                if used:
                    least = min(used.values())
                    if least < low:
                        low = least
            for user in list(self.feature_days):
                marked = self.feature_days[user]
                for feature in [f for f, (last, _) in marked.items() if last < min_day]:
                    del marked[feature]
                if not marked:
                    del self.feature_days[user]
                    continue
                least = min(last for last, _ in marked.values())
                if least < low:
                    low = least
            self._uf_low = low
        if touched:
            dropped = True
            if self._adoption:
                for user in touched:
                    self._reindex(user)
        for name in list(self.kpis):
            if self.kpis[name].prune(min_day):
                dropped = True
            if not self.kpis[name]:
                del self.kpis[name]
        for name in list(self.contracts):
            if self.contracts[name].prune(min_day):
                dropped = True
            if not self.contracts[name]:
                del self.contracts[name]
        min_ms = min_day * DAY_MS
        if min_ms > self._tickets_low:
            old_tickets = [t for t, rec in self.tickets.items() if rec.status_at < min_ms]
            for ticket_id in old_tickets:
                del self.tickets[ticket_id]
                self._tickets_dump = None
            self._tickets_low = min(
                (rec.status_at for rec in self.tickets.values()), default=_NO_DAY
            )
            if old_tickets:
                dropped = True
        if dropped and min_day > self.removed_before:
            # Nothing a metric at or after ref_day reads is gone, but one at an
            # earlier day may: scoring checks its cached values against this.
            self.removed_before = min_day
        self._data_low = min(
            min(window.low_bound for window in windows),
            self.users.low_bound,
            self.features.low_bound,
            self._uf_low,
            min((w.low_bound for w in self.kpis.values()), default=_NO_DAY),
            min((w.low_bound for w in self.contracts.values()), default=_NO_DAY),
            self._tickets_low // DAY_MS,
        )

    def summary(self) -> dict[str, Any]:
        """Small JSON-ready view for the HTTP state page and logs."""
        return {
            "account_id": self.account_id,
            "counts": dict(self.counts),
            "late": self.late,
            "duplicates": self.duplicates,
            "first_event_at": self.first_event_at,
            "last_event_at": self.last_event_at,
            "last_activity_at": self.last_activity_at,
            "snapshot": {name: value for name, (value, _) in self.snapshot.items()},
            "scored_at": self.scored_at,
            "bucket": self.bucket,
            "score": self.score,
        }

    # ----------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-compatible form; empty parts are omitted.

        ``AccountState.from_dict(s.to_dict()).to_dict() == s.to_dict()`` and
        the restored state behaves identically (the transient score cache is
        rebuilt on the next rescore with the same result).
        """
        out: dict[str, Any] = {"v": STATE_FORMAT, "id": self.account_id}

        def put(key: str, value: Any) -> None:
            if value:
                out[key] = value

        put("n", _dump_counts(self.counts))
        put("late", self.late)
        put("dup", self.duplicates)
        if self.first_event_at is not None:
            out["fe"] = self.first_event_at
        if self.last_event_at is not None:
            out["le"] = self.last_event_at
        if self.last_activity_at is not None:
            out["la"] = self.last_activity_at
        put("ids", base64.b64encode(self.dedup).decode())
        put("ofs", self.positions)
        for key, window in _WINDOWS:
            put(key, getattr(self, window).dump())
        put("u", self.users.days)
        put("f", self.features.days)
        put("uf", self.user_features)
        put("fd", self.feature_days)
        tickets = self._tickets_dump
        if tickets is None:
            tickets = self._tickets_dump = {tid: t.dump() for tid, t in self.tickets.items()}
        put("tk", tickets)
        if self.last_csm_touch_at is not None:
            out["lct"] = self.last_csm_touch_at
        put("pl", self.pulse)
        put("ms", self.milestones)
        put("kp", {name: w.dump() for name, w in self.kpis.items()})
        put("cn", {name: w.dump() for name, w in self.contracts.items()})
        put("iv", self.invoice)
        put("sn", _dump_snapshot(self.snapshot))
        if self.scored_at is not None:
            out["sa"] = self.scored_at
        put("b", self.bucket)
        if self.score is not None:
            out["s"] = self.score
        put("h", _dump_history(self.score_history))
        baseline = self.baseline
        cached = self._baseline_dump
        if cached is None or cached[0] is not baseline:
            # Scoring replaces the baseline (never edits it) at a bucket change.
            cached = self._baseline_dump = (baseline, _dump_baseline(baseline))
        put("bl", cached[1])
        put("g", _dump_names(self.gates))
        out["pd"] = self.pruned_day
        if self.playbooks is not None:
            out["pb"] = self.playbooks
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountState:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed dict."""
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"malformed account state: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> AccountState:
        version = data.get("v")
        if version not in _FORMATS or isinstance(version, bool):
            raise ValueError(f"unsupported account state format {version!r}")
        state = cls(data["id"])
        state.counts = _load_counts(data.get("n", {}))
        state.late = data.get("late", 0)
        state.duplicates = data.get("dup", 0)
        state.first_event_at = data.get("fe")
        state.last_event_at = data.get("le")
        state.last_activity_at = data.get("la")
        raw = base64.b64decode(data.get("ids", ""))
        width = 8 if version < 3 else ID_DIGEST_BYTES
        if len(raw) % width:
            raise ValueError("malformed dedup ids")
        if width != ID_DIGEST_BYTES:
            raw = b"".join(raw[i : i + ID_DIGEST_BYTES] for i in range(0, len(raw), width))
        state.dedup = raw
        state.positions = {tp: list(offsets) for tp, offsets in data.get("ofs", {}).items()}
        for key, window in _WINDOWS:
            if key in data:
                current = getattr(state, window)
                setattr(state, window, DailyWindow.load(current.agg, data[key]))
        state.users = LastSeen.load(MAX_USERS, data.get("u", {}))
        state.features = LastSeen.load(MAX_FEATURES, data.get("f", {}))
        state.user_features = {u: dict(fs) for u, fs in data.get("uf", {}).items()}
        state.feature_days = {
            u: {f: [int(day), int(bits)] for f, (day, bits) in fs.items()}
            for u, fs in data.get("fd", {}).items()
        }
        state.tickets = {tid: Ticket.load(t) for tid, t in data.get("tk", {}).items()}
        state.last_csm_touch_at = data.get("lct")
        state.pulse = data.get("pl")
        state.milestones = dict(data.get("ms", {}))
        state.kpis = {name: DailyWindow.load(_SUM, w) for name, w in data.get("kp", {}).items()}
        state.contracts = {
            name: DailyWindow.load(_COUNT, w) for name, w in data.get("cn", {}).items()
        }
        state.invoice = data.get("iv")
        state.snapshot = _load_snapshot(data.get("sn", {}))
        state.scored_at = data.get("sa")
        state.bucket = data.get("b")
        state.score = data.get("s")
        state.score_history = _load_history(data.get("h", []), tenths=version >= 2)
        state.baseline = _load_baseline(data.get("bl", {}))
        state.gates = _load_names(data.get("g", []))
        state.pruned_day = data.get("pd", -1)
        playbooks = data.get("pb")
        if playbooks is not None and not isinstance(playbooks, dict):
            raise ValueError("playbook memory must be an object")
        state.playbooks = playbooks
        # Unknown lower bounds: the next compaction scans once.
        state._uf_low = -1
        state._tickets_low = -1
        state._data_low = -1
        return state

    def to_bytes(self) -> bytes:
        """orjson bytes of :meth:`to_dict` (the changelog value)."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> AccountState:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on bad input."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"account state is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("account state must be a JSON object")
        return cls.from_dict(obj)

    def __repr__(self) -> str:
        return (
            f"AccountState({self.account_id!r}, events={sum(self.counts.values())}, "
            f"last_event_at={self.last_event_at}, bucket={self.bucket})"
        )


def _holds_id(ids: bytes, digest: bytes) -> bool:
    """Whether ``ids`` (digests of ID_DIGEST_BYTES each, back to back) holds
    ``digest`` as one of them (a match across two digests does not count)."""
    at = ids.find(digest)
    while at >= 0:
        if at % ID_DIGEST_BYTES == 0:
            return True
        at = ids.find(digest, at + 1)
    return False


def _dump_counts(counts: dict[str, int]) -> Any:
    # Counts per event type in _EVENT_TYPES order, zeros for types not seen
    # (a seen type has a count >= 1), trailing zeros dropped.
    if not counts.keys() <= _EVENT_INDEX.keys():
        return counts
    dense = [0] * len(_EVENT_TYPES)
    for kind, n in counts.items():
        dense[_EVENT_INDEX[kind]] = n
    while dense and not dense[-1]:
        dense.pop()
    return dense


def _load_counts(data: Any) -> dict[str, int]:
    if isinstance(data, dict):  # format 1 (or an unknown type)
        return dict(data)
    if not isinstance(data, list) or len(data) > len(_EVENT_TYPES):
        raise ValueError("malformed event counts")
    return {_EVENT_TYPES[i]: n for i, n in enumerate(data) if n}


def _dump_snapshot(snapshot: dict[str, list[Any]]) -> Any:
    # [{field: value}, at] when every field came from one snapshot (the
    # usual case), else [{field: value}, [at, ...]] in field order.
    if not snapshot:
        return None
    values = {name: pair[0] for name, pair in snapshot.items()}
    times = [pair[1] for pair in snapshot.values()]
    first = times[0]
    return [values, first if all(at == first for at in times) else times]


def _load_snapshot(data: Any) -> dict[str, list[Any]]:
    if isinstance(data, dict):  # format 1: {field: [value, at]}
        return {name: list(pair) for name, pair in data.items()}
    values, times = data
    if not isinstance(values, dict):
        raise ValueError("malformed account snapshot")
    if not isinstance(times, list):
        times = [times] * len(values)
    if len(times) != len(values):
        raise ValueError("malformed account snapshot")
    return {name: [value, at] for (name, value), at in zip(values.items(), times, strict=True)}


def _dump_history(history: dict[int, float]) -> list[Any]:
    # Dense from the first day: [first_day, score_or_null, ...]; days are
    # nearly always consecutive (one rescore a day at least while scored).
    # A score is a multiple of 0.1 and is written as its tenths (an int: one
    # character less than "49.6"); anything else is written as a float.
    if not history:
        return []
    days = sorted(history)
    first = days[0]
    dense: list[Any] = [None] * (days[-1] - first + 1)
    encoded = _TENTHS
    for day in days:
        score = history[day]
        code = encoded.get(score)
        if code is None or (not score and math.copysign(1.0, score) < 0):
            code = _tenths(score)
        dense[day - first] = code
    return [first, *dense]


#: score -> its form in the history (scores repeat: 0.0 .. 100.0 by 0.1).
_TENTHS: dict[float, Any] = {}


def _tenths(score: float) -> Any:
    tenths = round(score * 10)
    if tenths / 10 == score and (score or math.copysign(1.0, score) > 0):
        code: Any = tenths
    else:
        code = float(score)
    if type(score) is float and len(_TENTHS) < 4096:
        _TENTHS[score] = code
    return code


def _load_history(data: Any, *, tenths: bool) -> dict[int, float]:
    if not isinstance(data, list):
        raise ValueError("score history must be a list")
    if not data:
        return {}
    first = data[0]
    if not tenths:  # format 1: the scores themselves
        return {first + i: score for i, score in enumerate(data[1:]) if score is not None}
    return {
        first + i: score / 10 if type(score) is int else score
        for i, score in enumerate(data[1:])
        if score is not None
    }


def _dump_baseline(baseline: dict[str, tuple[float | None, float]]) -> Any:
    # ["metric metric ...", [value, contribution, value, contribution, ...]];
    # (None, 0.0) is the default of a metric absent from the baseline.
    kept = [(m, v, c) for m, (v, c) in baseline.items() if v is not None or c]
    if not kept:
        return None
    if not all(m and " " not in m for m, _, _ in kept):
        return {m: [v, c] for m, v, c in kept}
    numbers: list[Any] = []
    for _, v, c in kept:
        numbers.append(v)
        numbers.append(c)
    return [" ".join(m for m, _, _ in kept), numbers]


def _load_baseline(data: Any) -> dict[str, tuple[float | None, float]]:
    if isinstance(data, dict):  # format 1
        return {m: (v, c) for m, (v, c) in data.items()}
    names, numbers = data
    metrics = names.split(" ")
    if len(numbers) != 2 * len(metrics):
        raise ValueError("malformed baseline")
    return {m: (numbers[2 * i], numbers[2 * i + 1]) for i, m in enumerate(metrics)}


def _dump_names(names: list[str]) -> Any:
    # Gate names joined by spaces (they are lower_snake_case).
    if all(name and " " not in name for name in names):
        return " ".join(names)
    return names


def _load_names(data: Any) -> list[str]:
    if isinstance(data, str):
        return data.split(" ") if data else []
    return list(data)


#: Serialised key -> attribute of the plain daily windows.
_WINDOWS: Final = (
    ("lg", "logins"),
    ("ac", "activity"),
    ("to", "tickets_opened"),
    ("es", "escalations"),
    ("rh", "resolution_hours"),
    ("cs", "csat"),
    ("np", "nps"),
    ("ct", "csm_touches"),
)

#: Event types in the order of the serialised counts (append only).
_EVENT_TYPES: Final = (
    "login",
    "feature_use",
    "support_ticket",
    "account",
    "csm_touch",
    "survey",
    "pulse",
    "milestone",
    "kpi",
    "contract",
    "invoice",
)
_EVENT_INDEX: Final = {kind: i for i, kind in enumerate(_EVENT_TYPES)}

#: Event type -> (handler, the parts it always changes); the usage handlers
#: add PART_USERS / PART_FEATURES themselves when those actually change.
_HANDLERS: Final[dict[str, tuple[Callable[[AccountState, Any, int], None], int]]] = {
    "login": (AccountState._on_login, PART_LOGINS | PART_ACTIVITY),
    "feature_use": (AccountState._on_feature_use, PART_ACTIVITY),
    "support_ticket": (AccountState._on_support_ticket, PART_TICKETS),
    "account": (AccountState._on_account, PART_SNAPSHOT),
    "csm_touch": (AccountState._on_csm_touch, PART_CSM),
    "survey": (AccountState._on_survey, PART_SURVEYS),
    "pulse": (AccountState._on_pulse, PART_PULSE),
    "milestone": (AccountState._on_milestone, PART_MILESTONES),
    "kpi": (AccountState._on_kpi, PART_KPIS),
    "contract": (AccountState._on_contract, PART_CONTRACTS),
    "invoice": (AccountState._on_invoice, PART_INVOICE),
}
#: Event type -> the parts (``PART_*``) applying one changes.
PARTS_OF_TYPE: Final[dict[str, int]] = {kind: parts for kind, (_, parts) in _HANDLERS.items()}
