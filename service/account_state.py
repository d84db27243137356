"""Per-account state: everything the scoring model needs, bounded in size.

One :class:`AccountState` per account, built only from the account's events
(:meth:`AccountState.apply`) and the scoring memory that
:func:`service.scoring.rescore` keeps in it. No faust or Kafka import: the
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
  milestone maps are capped (see the ``MAX_*`` constants). Serialised, a
  20-user account after 90 days of daily use is about 4.3 KB; once silent for
  90 days (empty windows) about 2.1 KB: scalars, the dedup ids, 31 days of
  score history and the components at bucket entry.
"""

from __future__ import annotations

import base64
import enum
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
from service.windows import DAY_MS, Count, DailyWindow, LastSeen, Mean, MeanAcc, Sum, day_of

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
#: Version of the serialised form (``to_dict``'s ``"v"``).
STATE_FORMAT: Final = 1

_PULSE_REASON_MAX: Final = 200
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
    :func:`service.scoring.rescore`. Attributes are read by the metric
    extractors in :mod:`service.metrics_catalog`; only this class and
    :mod:`service.scoring` write them.
    """

    __slots__ = (
        "_memo",
        "_version",
        "account_id",
        "activity",
        "baseline",
        "bucket",
        "contracts",
        "counts",
        "csat",
        "csm_touches",
        "dedup",
        "duplicates",
        "escalations",
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
        "pruned_day",
        "pulse",
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
        #: Digests of the last DEDUP_IDS applied event ids, oldest first.
        self.dedup: dict[bytes, None] = {}
        # usage
        self.logins: DailyWindow[float, float, float] = DailyWindow(_SUM)
        #: Logins plus feature-use events per day (the usage-trend measure).
        self.activity: DailyWindow[float, float, float] = DailyWindow(_SUM)
        self.users = LastSeen(MAX_USERS)
        self.features = LastSeen(MAX_FEATURES)
        #: user -> feature -> last day used.
        self.user_features: dict[str, dict[str, int]] = {}
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
        #: Newest pulse: [rating, reason, occurred_at, expires_at].
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
        # scoring memory, written by service.scoring.rescore
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
        # transient: never serialised
        self._version = 0
        self._memo: Any = None

    @classmethod
    def new(cls, account_id: str) -> AccountState:
        """An empty state for ``account_id``."""
        return cls(account_id)

    # ------------------------------------------------------------------ apply

    def apply(self, event: Event) -> ApplyResult:
        """Apply one validated event of this account, at most once.

        Returns DUPLICATE for a recently applied ``event_id``, LATE for an
        event older than 90 days before the latest applied one (neither
        changes the windows), else APPLIED.
        """
        digest = blake2b(event.event_id.encode(), digest_size=8).digest()
        dedup = self.dedup
        if digest in dedup:
            self.duplicates += 1
            return ApplyResult.DUPLICATE
        at = event.occurred_at
        last = self.last_event_at
        if last is not None and at < last - HORIZON_MS:
            self.late += 1
            return ApplyResult.LATE
        dedup[digest] = None
        if len(dedup) > DEDUP_IDS:
            del dedup[next(iter(dedup))]
        if last is None or at > last:
            self.last_event_at = last = at
        first = self.first_event_at
        if first is None or at < first:
            self.first_event_at = at
        day = at // DAY_MS
        kind = event.type
        _HANDLERS[kind](self, event, day)
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        self._version += 1
        if day > self.pruned_day:
            scored = self.scored_at
            self.compact(last if scored is None or scored < last else scored)
        return ApplyResult.APPLIED

    def _touch_user(self, user_id: str, day: int, at: int) -> None:
        for gone in self.users.touch(user_id, day):
            self.user_features.pop(gone, None)
        last = self.last_activity_at
        if last is None or at > last:
            self.last_activity_at = at

    def _on_login(self, event: LoginEvent, day: int) -> None:
        self.logins.add(day, 1)
        self.activity.add(day, 1)
        self._touch_user(event.user_id, day, event.occurred_at)

    def _on_feature_use(self, event: FeatureUseEvent, day: int) -> None:
        self.activity.add(day, 1)
        self._touch_user(event.user_id, day, event.occurred_at)
        feature = event.feature
        self.features.touch(feature, day)
        if event.user_id not in self.users:
            return  # evicted at once: the user is older than every tracked one
        used = self.user_features.get(event.user_id)
        if used is None:
            used = self.user_features[event.user_id] = {}
        old = used.get(feature)
        if old is None:
            used[feature] = day
            if len(used) > MAX_FEATURES_PER_USER:
                oldest = min(used, key=used.__getitem__)
                del used[oldest]
        elif day > old:
            used[feature] = day

    def _on_support_ticket(self, event: SupportTicketEvent, day: int) -> None:
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
        earlier than ``ref_ms`` gives the same answer before and after.
        """
        ref_day = day_of(ref_ms)
        if ref_day <= self.pruned_day:
            return
        self.pruned_day = ref_day
        min_day = ref_day - RETAIN_DAYS + 1
        for window in (
            self.logins,
            self.activity,
            self.tickets_opened,
            self.escalations,
            self.resolution_hours,
            self.csat,
            self.nps,
            self.csm_touches,
        ):
            window.prune(min_day)
        for gone in self.users.prune(min_day):
            self.user_features.pop(gone, None)
        self.features.prune(min_day)
        for used in self.user_features.values():
            for feature in [f for f, d in used.items() if d < min_day]:
                del used[feature]
        for name in list(self.kpis):
            self.kpis[name].prune(min_day)
            if not self.kpis[name]:
                del self.kpis[name]
        for name in list(self.contracts):
            self.contracts[name].prune(min_day)
            if not self.contracts[name]:
                del self.contracts[name]
        min_ms = min_day * DAY_MS
        for ticket_id in [t for t, rec in self.tickets.items() if rec.status_at < min_ms]:
            del self.tickets[ticket_id]
        history = self.score_history
        cut = ref_day - HISTORY_DAYS
        older = [day for day in history if day < cut]
        if older:
            # Keep the newest score before the cut: it is the score "in effect"
            # 30 days ago when that exact day has no entry.
            keep = max(older)
            for day in older:
                if day != keep:
                    del history[day]

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

        put("n", self.counts)
        put("late", self.late)
        put("dup", self.duplicates)
        if self.first_event_at is not None:
            out["fe"] = self.first_event_at
        if self.last_event_at is not None:
            out["le"] = self.last_event_at
        if self.last_activity_at is not None:
            out["la"] = self.last_activity_at
        put("ids", base64.b64encode(b"".join(self.dedup)).decode())
        for key, window in _WINDOWS:
            put(key, getattr(self, window).dump())
        put("u", self.users.dump())
        put("f", self.features.dump())
        put("uf", self.user_features)
        put("tk", {tid: t.dump() for tid, t in self.tickets.items()})
        if self.last_csm_touch_at is not None:
            out["lct"] = self.last_csm_touch_at
        put("pl", self.pulse)
        put("ms", self.milestones)
        put("kp", {name: w.dump() for name, w in self.kpis.items()})
        put("cn", {name: w.dump() for name, w in self.contracts.items()})
        put("iv", self.invoice)
        put("sn", self.snapshot)
        if self.scored_at is not None:
            out["sa"] = self.scored_at
        put("b", self.bucket)
        if self.score is not None:
            out["s"] = self.score
        put("h", _dump_history(self.score_history))
        # (None, 0.0) is the default of a metric absent from the baseline.
        put("bl", {m: [v, c] for m, (v, c) in self.baseline.items() if v is not None or c})
        put("g", self.gates)
        out["pd"] = self.pruned_day
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
        if data.get("v") != STATE_FORMAT:
            raise ValueError(f"unsupported account state format {data.get('v')!r}")
        state = cls(data["id"])
        state.counts = dict(data.get("n", {}))
        state.late = data.get("late", 0)
        state.duplicates = data.get("dup", 0)
        state.first_event_at = data.get("fe")
        state.last_event_at = data.get("le")
        state.last_activity_at = data.get("la")
        raw = base64.b64decode(data.get("ids", ""))
        if len(raw) % 8:
            raise ValueError("malformed dedup ids")
        state.dedup = {raw[i : i + 8]: None for i in range(0, len(raw), 8)}
        for key, window in _WINDOWS:
            if key in data:
                current = getattr(state, window)
                setattr(state, window, DailyWindow.load(current.agg, data[key]))
        state.users = LastSeen.load(MAX_USERS, data.get("u", {}))
        state.features = LastSeen.load(MAX_FEATURES, data.get("f", {}))
        state.user_features = {u: dict(fs) for u, fs in data.get("uf", {}).items()}
        state.tickets = {tid: Ticket.load(t) for tid, t in data.get("tk", {}).items()}
        state.last_csm_touch_at = data.get("lct")
        state.pulse = data.get("pl")
        state.milestones = dict(data.get("ms", {}))
        state.kpis = {name: DailyWindow.load(_SUM, w) for name, w in data.get("kp", {}).items()}
        state.contracts = {
            name: DailyWindow.load(_COUNT, w) for name, w in data.get("cn", {}).items()
        }
        state.invoice = data.get("iv")
        state.snapshot = {name: list(pair) for name, pair in data.get("sn", {}).items()}
        state.scored_at = data.get("sa")
        state.bucket = data.get("b")
        state.score = data.get("s")
        state.score_history = _load_history(data.get("h", []))
        state.baseline = {m: (v, c) for m, (v, c) in data.get("bl", {}).items()}
        state.gates = list(data.get("g", []))
        state.pruned_day = data.get("pd", -1)
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


def _dump_history(history: dict[int, float]) -> list[Any]:
    # Dense from the first day: [first_day, score_or_null, ...]; days are
    # nearly always consecutive (one rescore a day at least while scored).
    if not history:
        return []
    days = sorted(history)
    first = days[0]
    dense: list[Any] = [None] * (days[-1] - first + 1)
    for day in days:
        dense[day - first] = history[day]
    return [first, *dense]


def _load_history(data: Any) -> dict[int, float]:
    if not isinstance(data, list):
        raise ValueError("score history must be a list")
    if not data:
        return {}
    first = data[0]
    return {first + i: score for i, score in enumerate(data[1:]) if score is not None}


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

_HANDLERS: Final[dict[str, Callable[[AccountState, Any, int], None]]] = {
    "login": AccountState._on_login,
    "feature_use": AccountState._on_feature_use,
    "support_ticket": AccountState._on_support_ticket,
    "account": AccountState._on_account,
    "csm_touch": AccountState._on_csm_touch,
    "survey": AccountState._on_survey,
    "pulse": AccountState._on_pulse,
    "milestone": AccountState._on_milestone,
    "kpi": AccountState._on_kpi,
    "contract": AccountState._on_contract,
    "invoice": AccountState._on_invoice,
}
