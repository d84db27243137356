"""The metric extractors: catalogue *source* name -> ``f(state, as_of) -> float | None``.

A scorecard metric names a source and its parameters (``source:
active_seat_ratio, params: {days: 30}``); :func:`build_extractor` validates
the parameters and returns a closure ``(AccountState, as_of_ms) -> float |
None``. ``None`` means *unknown* (e.g. seats never reported, no survey in the
window): the scorecard's missing-data policy then redistributes the metric's
weight. Zero is never "unknown": an account that stops using the product gets
zero logins, not a missing metric, so silence lowers the score.

Every window is relative to the as-of time, not to the latest event: "the
last N days" are the event-time days ``D-N+1 .. D`` where ``D`` is the UTC day
of ``as_of``. Metrics change only when ``D`` changes or an event is applied,
except ``csm_pulse``, which also changes when the pulse expires (see
:func:`next_change_at`). Results are exact for ``as_of`` at or after the
account's clock (``AccountState.clock``), which is how scoring calls them.

Each source declares the parts of the state it reads (``Source.reads``, the
``PART_*`` bits of :mod:`service.model.account_state`, plus :data:`EXACT_TIME`
when the value depends on the as-of time within its day; ``reads_past``:
parts read only for days before the as-of day): scoring keeps a metric's
value while its day and the parts it reads are unchanged. Most sources also
say how long their value lasts when nothing is applied (``Source.stable``:
the last day through which the value at ``as_of`` holds, e.g. until the
oldest bucket leaves a window), so a timer tick of an idle account
recomputes only what moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.model.account_state import (
    HORIZON_DAYS,
    PART_ACTIVE_DAYS,
    PART_ACTIVITY,
    PART_CONTRACTS,
    PART_CSM,
    PART_EVENTS,
    PART_FEATURES,
    PART_INVOICE,
    PART_KPIS,
    PART_LOGIN_DAYS,
    PART_LOGINS,
    PART_MILESTONES,
    PART_PULSE,
    PART_SNAPSHOT,
    PART_SURVEYS,
    PART_TICKETS,
    PART_USERS,
    PARTS,
    RETAIN_DAYS,
    AccountState,
)
from service.model.windows import DAY_MS, DailyWindow, DayIndex, LastSeen, day_of, window_start

__all__ = [
    "CATALOG",
    "EXACT_TIME",
    "FEEDS",
    "FOREVER",
    "PAST_SHIFT",
    "Extractor",
    "ParamsError",
    "Source",
    "Stability",
    "build_extractor",
    "build_stability",
    "next_change_at",
]

#: ``(state, as_of_ms) -> value`` or ``None`` when the value is unknown.
Extractor = Callable[[AccountState, int], float | None]
#: ``(state, as_of_ms, value at as_of) -> the last day (inclusive) through
#: which the value stays the same if nothing is applied to the state``.
Stability = Callable[[AccountState, int, float | None], int]

Days = Annotated[int, Field(ge=1, le=HORIZON_DAYS)]
# A trend compares two consecutive periods, both inside the 90-day horizon.
TrendDays = Annotated[int, Field(ge=1, le=HORIZON_DAYS // 2)]
Priority = Literal["low", "normal", "high", "urgent"]
Action = Literal["renewal", "upsell", "downgrade", "churn_notice"]
_PULSE_VALUE: Final = {"green": 1.0, "yellow": 0.5, "red": 0.0}
#: ``Source.reads`` bit of a source whose value depends on the as-of time
#: itself, not only on its day (recomputed at every evaluation).
EXACT_TIME: Final = 1 << 30
#: ``Source.dependencies`` holds ``reads_past`` shifted left by this much.
PAST_SHIFT: Final = 32
#: A day after every other day: "the value never changes by itself".
FOREVER: Final = 1 << 62


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(_Params):
    """The source takes no parameters."""


class WindowParams(_Params):
    days: Days = 30


class LoginParams(_Params):
    #: Window of the logins counted.
    days: Days = 7
    #: Window of the active users they are divided by.
    base_days: Days = 30


class TrendParams(_Params):
    days: TrendDays = 14
    #: Fewer events than this in the earlier period: too few to trend (unknown).
    min_events: Annotated[int, Field(ge=0)] = 0


class KeyFeatureParams(_Params):
    features: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    days: Days = 30
    #: Share of the users active in the window, or of the paid seats.
    per: Literal["active_users", "seats"] = "active_users"
    #: "Regular use": a user adopts only after using a key feature on at least
    #: this many distinct days of the window (1: once is enough).
    min_days: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _fits(self) -> KeyFeatureParams:
        if self.min_days > self.days:
            raise ValueError(f"min_days ({self.min_days}) is longer than days ({self.days})")
        return self


class TicketParams(_Params):
    priorities: Annotated[list[Priority], Field(min_length=1)] = [
        "low",
        "normal",
        "high",
        "urgent",
    ]


class MilestoneParams(_Params):
    names: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class KpiParams(_Params):
    metric: Annotated[str, Field(min_length=1)]
    days: Days = 30


class KpiTrendParams(_Params):
    metric: Annotated[str, Field(min_length=1)]
    days: TrendDays = 14


class ContractParams(_Params):
    actions: Annotated[list[Action], Field(min_length=1)]
    days: Days = 90


@dataclass(frozen=True)
class Source:
    """One catalogue entry: what it measures, its parameters, its builder and
    the parts of the state it reads (``PART_*`` bits, :data:`EXACT_TIME`)."""

    name: str
    description: str
    params: type[_Params]
    build: Callable[[Any], Extractor]
    reads: int = PARTS | EXACT_TIME
    #: Parts read only for days before the as-of day (changes on that day or
    #: later cannot move the value).
    reads_past: int = 0
    #: Builds the source's Stability from its params; ``None``: the value may
    #: change every day.
    stable: Callable[[Any], Stability] | None = None
    #: Event types (feeds) it is made of: unknown for an account that never sent
    #: one, unless the scorecard declares the feed connected (empty: no such rule).
    feeds: tuple[str, ...] = ()

    @property
    def dependencies(self) -> int:
        """``reads | reads_past << PAST_SHIFT`` (what scoring tests against)."""
        return self.reads | self.reads_past << PAST_SHIFT


#: Every metric source, by name.
CATALOG: dict[str, Source] = {}
#: The feeds a scorecard can declare connected: the event types of the contract.
FEEDS: Final = (
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
_SUPPORT: Final = ("support_ticket",)


class ParamsError(ValueError):
    """Invalid parameters for a source: ``field`` is the dotted path inside ``params``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def build_extractor(source: str, params: Mapping[str, Any] | None = None) -> Extractor:
    """The extractor of ``source`` with validated ``params``.

    Raises ``KeyError`` for an unknown source and :class:`ParamsError` for bad
    parameters.
    """
    entry = CATALOG[source]
    try:
        parsed = entry.params.model_validate(dict(params or {}))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ParamsError(".".join(str(p) for p in err["loc"]), err["msg"]) from None
    return entry.build(parsed)


def build_stability(source: str, params: Mapping[str, Any] | None = None) -> Stability:
    """How long the value of ``source`` with ``params`` lasts without events
    (the as-of day itself for sources that do not say)."""
    entry = CATALOG[source]
    parsed = entry.params.model_validate(dict(params or {}))
    if entry.stable is None:
        return _daily
    return entry.stable(parsed)


def _daily(state: AccountState, as_of: int, value: float | None) -> int:
    return as_of // DAY_MS


def _stable(name: str) -> Callable[[Callable[[Any], Stability]], Callable[[Any], Stability]]:
    # Attach a Stability builder to the source registered as `name`.
    def register(build: Callable[[Any], Stability]) -> Callable[[Any], Stability]:
        CATALOG[name] = replace(CATALOG[name], stable=build)
        return build

    return register


def _forever(p: Any) -> Stability:
    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return FOREVER

    return stable


def _daily_unless_unknown(p: Any) -> Stability:
    # Day counters: a new value every day, except "unknown", which lasts.
    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return FOREVER if value is None else as_of // DAY_MS

    return stable


def _window_until(window: DailyWindow[Any, Any, Any] | None, day: int, back: int) -> int:
    """Last day D' >= day at which the days ``D'-back .. D'`` of ``window``
    still hold the same buckets as ``day-back .. day`` (no new events)."""
    if window is None:
        return FOREVER
    first = window.next_day_with_data(day - back)
    if first is None:
        return FOREVER
    if first > day:
        return first - 1  # a later bucket enters the window that day
    until = first + back  # the oldest bucket leaves the day after
    entering = window.next_day_with_data(day + 1)
    return until if entering is None or entering - 1 > until else entering - 1


def _seen_until(seen: LastSeen | DayIndex, day: int, back: int) -> int:
    """Last day D' >= day at which ``count_since(D' - back)`` still counts the
    same keys as ``count_since(day - back)`` (keys only leave)."""
    first = seen.next_day(day - back)
    return FOREVER if first is None else first + back


def _trend_until(
    state: AccountState, window: DailyWindow[Any, Any, Any] | None, day: int, days: int
) -> int:
    """Last day the trend over the complete days ``day-2*days .. day-1`` of
    ``window`` keeps its value (see usage_trend and kpi_trend)."""
    first_at = state.first_event_at
    if window is None or first_at is None:
        return FOREVER
    # _has_history holds from the day the history covers both periods.
    history_from = first_at // DAY_MS + 2 * days
    if day < history_from:
        return history_from - 1
    first = window.next_day_with_data(day - 2 * days)
    if first is None:
        return FOREVER
    if first >= day:
        return first  # enters the recent period the day after it
    return day  # buckets move between the periods: recompute daily


def _source(
    name: str,
    description: str,
    params: type[_Params] = NoParams,
    *,
    reads: int,
    reads_past: int = 0,
    feeds: tuple[str, ...] = (),
) -> Callable[[Callable[[Any], Extractor]], Callable[[Any], Extractor]]:
    def register(build: Callable[[Any], Extractor]) -> Callable[[Any], Extractor]:
        CATALOG[name] = Source(name, description, params, build, reads, reads_past, feeds=feeds)
        return build

    return register


# ------------------------------------------------------------------ helpers
#
# Extractors run for every metric at every evaluation, so they inline
# ``day_of`` (``as_of // DAY_MS``) and ``window_start`` (``day - days + 1``).


def _seats(state: AccountState) -> int | None:
    entry = state.snapshot.get("seats")
    return entry[0] if entry is not None and entry[0] > 0 else None


def _relative_change(recent: float, prior: float) -> float | None:
    # Both periods empty: nothing to trend (silence is measured elsewhere).
    if prior == 0:
        return None if recent == 0 else 1.0
    return (recent - prior) / prior


def _horizon_start(as_of: int) -> int:
    # First day still retained by AccountState.compact for a clock at as_of.
    return window_start(day_of(as_of), RETAIN_DAYS)


def _has_history(state: AccountState, as_of_day: int, days: int) -> bool:
    first = state.first_event_at
    return first is not None and first // DAY_MS <= as_of_day - days + 1


# ---------------------------------------------------------------------- usage


@_source(
    "active_seat_ratio",
    "Distinct users active (login or feature use) in the window / seats; "
    "unknown without a seat count.",
    WindowParams,
    reads=PART_SNAPSHOT | PART_USERS,
)
def _active_seat_ratio(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        seats = _seats(state)
        if seats is None:
            return None
        return state.users.count_since(as_of // DAY_MS - back) / seats

    return extract


@_source("active_users", "Distinct users active in the window.", WindowParams, reads=PART_USERS)
def _active_users(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        return float(state.users.count_since(as_of // DAY_MS - back))

    return extract


@_source(
    "logins_per_active_user",
    "Logins in the last `days` / distinct users active in the last `base_days` "
    "(0 when nobody was active).",
    LoginParams,
    reads=PART_LOGINS | PART_USERS,
)
def _logins_per_active_user(p: LoginParams) -> Extractor:
    back, base_back = p.days - 1, p.base_days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        users = state.users.count_since(day - base_back)
        if not users:
            return 0.0
        return state.logins.result(day - back, day) / users

    return extract


@_source(
    "login_consistency",
    "Share of the window's days with at least one login. The as-of day counts "
    "only once it has a login (it is not over yet), and the window is cut to "
    "the days since the account's first event, so new accounts are not penalised.",
    WindowParams,
    reads=PART_EVENTS | PART_LOGIN_DAYS,
)
def _login_consistency(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        first_at = state.first_event_at
        if first_at is None:
            return None
        day = as_of // DAY_MS
        first = max(day - back, first_at // DAY_MS)
        logins = state.logins
        active = logins.days_with_data(first, day)
        observed = day - first + (1 if day in logins.buckets else 0)
        return active / observed if observed > 0 else None

    return extract


@_source(
    "days_since_last_activity",
    "Whole days since the last login or feature use (since the first event when there was none).",
    reads=PART_ACTIVE_DAYS | PART_EVENTS,
)
def _days_since_last_activity(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        last = state.last_activity_at
        if last is None:
            last = state.first_event_at
        if last is None:
            return None
        return float(max(0, as_of // DAY_MS - last // DAY_MS))

    return extract


@_source(
    "silence_ratio",
    "Days since the last activity / the account's usual gap between active days "
    "(days observed / active days over the `days` before the last activity): 1 is "
    "the account's normal rhythm, 3 is three usual gaps without activity. Unknown "
    "without activity in the retained horizon.",
    WindowParams,
    reads=PART_ACTIVE_DAYS | PART_EVENTS,
)
def _silence_ratio(p: WindowParams) -> Extractor:
    back = p.days - 1
    retained = RETAIN_DAYS - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        last_at, first_at = state.last_activity_at, state.first_event_at
        if last_at is None or first_at is None:
            return None
        last = last_at // DAY_MS
        day = as_of // DAY_MS
        # Only days that compaction keeps for a clock at as_of may be read.
        first = max(last - back, first_at // DAY_MS, day - retained)
        active = state.activity.days_with_data(first, last)
        if last < first or active == 0:
            return None
        usual_gap = (last - first + 1) / active
        return max(0, day - last) / usual_gap

    return extract


@_source(
    "feature_breadth",
    "Distinct features used in the window.",
    WindowParams,
    reads=PART_FEATURES,
)
def _feature_breadth(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        return float(state.features.count_since(as_of // DAY_MS - back))

    return extract


@_source(
    "key_feature_adoption",
    "Share of the users active in the window (or, with `per: seats`, of the paid "
    "seats) who used at least one of `features` in the window, on at least "
    "`min_days` distinct days (0 when nobody was active; unknown per seats "
    "without a seat count).",
    KeyFeatureParams,
    reads=PART_USERS | PART_SNAPSHOT,
)
def _key_feature_adoption(p: KeyFeatureParams) -> Extractor:
    keys = tuple(dict.fromkeys(p.features))
    back = p.days - 1
    per_seat = p.per == "seats"
    min_days = p.min_days

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        first = day - back
        seats = 0
        if per_seat:
            known = _seats(state)
            if known is None:
                return None
            seats = known
        if min_days > 1:
            adopters = sum(
                1
                for user in state.users.keys_since(first)
                if state.regular_days(user, keys, first, day) >= min_days
            )
            if per_seat:
                return adopters / seats
            active = state.users.count_since(first)
            return adopters / active if active else 0.0
        if first < 0:
            # Before 1970-01-01 + days: "used no key feature" (day -1 in the
            # loop below) still counts as adoption; not worth an index.
            share = _adoption_by_scan(state, keys, first)
            if per_seat:
                return share * state.users.count_since(first) / seats
            return share
        # Adopters: active since `first` and a key feature used since `first`.
        adopters = state.adoption_index(keys).count_since(first)
        if per_seat:
            return adopters / seats
        active = state.users.count_since(first)
        return adopters / active if active else 0.0

    return extract


def _adoption_by_scan(state: AccountState, keys: tuple[str, ...], first: int) -> float:
    active = 0
    adopters = 0
    user_features = state.user_features
    for user in state.users.keys_since(first):
        active += 1
        used = user_features.get(user)
        if used and any(used.get(f, -1) >= first for f in keys):
            adopters += 1
    return adopters / active if active else 0.0


@_source(
    "usage_trend",
    "Relative change of activity (logins + feature uses) in the last `days` "
    "complete days versus the `days` before (-0.5: halved); unknown with less "
    "history, with fewer than `min_events` in the earlier period, or with no "
    "activity in both.",
    TrendParams,
    reads=PART_EVENTS,
    reads_past=PART_ACTIVITY,
)
def _usage_trend(p: TrendParams) -> Extractor:
    days, min_events = p.days, p.min_events

    def extract(state: AccountState, as_of: int) -> float | None:
        # Complete days only (the as-of day is not over): a trend must not dip
        # every midnight because today's bucket has just started empty.
        end = as_of // DAY_MS - 1
        if not _has_history(state, end, 2 * days):
            return None
        activity = state.activity
        recent = activity.result(end - days + 1, end)
        prior = activity.result(end - 2 * days + 1, end - days)
        if prior < min_events:
            return None
        return _relative_change(recent, prior)

    return extract


# -------------------------------------------------------------------- support


@_source(
    "open_tickets",
    "Support tickets open now with one of `priorities` (all by default); a ticket "
    "with no status event for 91 days is treated as abandoned.",
    TicketParams,
    reads=PART_TICKETS,
    feeds=_SUPPORT,
)
def _open_tickets(p: TicketParams) -> Extractor:
    wanted = frozenset(p.priorities)

    def extract(state: AccountState, as_of: int) -> float | None:
        # A ticket without any status event in the retained horizon is
        # treated as abandoned (compaction forgets it at the same boundary).
        since = _horizon_start(as_of) * DAY_MS
        return float(
            sum(
                1
                for t in state.tickets.values()
                if t.is_open and t.priority in wanted and t.status_at >= since
            )
        )

    return extract


@_source(
    "tickets_per_seat",
    "Tickets opened in the window / seats; unknown without a seat count.",
    WindowParams,
    reads=PART_SNAPSHOT | PART_TICKETS,
    feeds=_SUPPORT,
)
def _tickets_per_seat(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        seats = _seats(state)
        if seats is None:
            return None
        day = as_of // DAY_MS
        return state.tickets_opened.result(day - back, day) / seats

    return extract


@_source(
    "resolution_hours",
    "Mean hours from opening to resolution of tickets resolved in the window; "
    "unknown when none was.",
    WindowParams,
    reads=PART_TICKETS,
    feeds=_SUPPORT,
)
def _resolution_hours(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        return state.resolution_hours.result(day - back, day)

    return extract


@_source(
    "escalations",
    "Ticket escalations in the window.",
    WindowParams,
    reads=PART_TICKETS,
    feeds=_SUPPORT,
)
def _escalations(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        return float(state.escalations.result(day - back, day))

    return extract


@_source(
    "csat",
    "Mean CSAT (1-5) of resolved tickets and CSAT surveys in the window; unknown when none.",
    WindowParams,
    reads=PART_TICKETS | PART_SURVEYS,
    feeds=("support_ticket", "survey"),
)
def _csat(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        return state.csat.result(day - back, day)

    return extract


# --------------------------------------------------------------- relationship


@_source(
    "nps",
    "Net Promoter Score (-100..100: % promoters 9-10 minus % detractors 0-6) of "
    "the answers in the window; unknown when none.",
    WindowParams,
    reads=PART_SURVEYS,
    feeds=("survey",),
)
def _nps(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        return state.nps.result(day - back, day)

    return extract


@_source(
    "csm_touches",
    "CSM touches (any channel) in the window.",
    WindowParams,
    reads=PART_CSM,
    feeds=("csm_touch",),
)
def _csm_touches(p: WindowParams) -> Extractor:
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        return float(state.csm_touches.result(day - back, day))

    return extract


@_source(
    "days_since_csm_touch",
    "Whole days since the last CSM touch; since the account's first event when it "
    "was never touched (never touched is not better than touched long ago). Its feed "
    "is the CSM team's engagement: unknown for an account without any csm_touch, "
    "pulse, survey or milestone event, unless a scorecard declares one connected.",
    reads=PART_CSM | PART_EVENTS,
    feeds=("csm_touch", "pulse", "survey", "milestone"),
)
def _days_since_csm_touch(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        last = state.last_csm_touch_at
        if last is None:
            last = state.first_event_at
        return None if last is None else float(max(0, as_of // DAY_MS - last // DAY_MS))

    return extract


@_source(
    "csm_pulse",
    "The newest CSM pulse while it has not expired: green 1, yellow 0.5, red 0; "
    "unknown without a live pulse.",
    reads=PART_PULSE | EXACT_TIME,
)
def _csm_pulse(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        pulse = state.pulse
        if pulse is None or as_of >= pulse[3]:
            return None
        return _PULSE_VALUE[pulse[0]]

    return extract


@_source(
    "milestones_reached",
    "Share of the named milestones reached (0..1).",
    MilestoneParams,
    reads=PART_MILESTONES,
    feeds=("milestone",),
)
def _milestones_reached(p: MilestoneParams) -> Extractor:
    names = tuple(dict.fromkeys(p.names))

    def extract(state: AccountState, as_of: int) -> float | None:
        reached = state.milestones
        return sum(1 for name in names if name in reached) / len(names)

    return extract


@_source(
    "tenure_days",
    "Whole days since the snapshot's customer_since; unknown without it.",
    reads=PART_SNAPSHOT,
)
def _tenure_days(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("customer_since")
        return None if entry is None else float(max(0, as_of // DAY_MS - entry[0] // DAY_MS))

    return extract


@_source(
    "days_to_renewal",
    "Whole days until the snapshot's renewal_at (negative when past); unknown without it.",
    reads=PART_SNAPSHOT,
)
def _days_to_renewal(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("renewal_at")
        return None if entry is None else float(entry[0] // DAY_MS - as_of // DAY_MS)

    return extract


@_source("seats", "Seats from the account snapshot; unknown without it.", reads=PART_SNAPSHOT)
def _seats_metric(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("seats")
        return None if entry is None else float(entry[0])

    return extract


@_source(
    "arr",
    "Annual recurring revenue from the account snapshot; unknown without it.",
    reads=PART_SNAPSHOT,
)
def _arr(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("arr")
        return None if entry is None else float(entry[0])

    return extract


# ------------------------------------------------------------------- outcomes


@_source(
    "kpi_total",
    "Sum of the KPI `metric` over the window; unknown if the KPI was not reported "
    "in the last 91 days (the retained horizon).",
    KpiParams,
    reads=PART_KPIS,
    feeds=("kpi",),
)
def _kpi_total(p: KpiParams) -> Extractor:
    back = p.days - 1
    metric = p.metric

    def extract(state: AccountState, as_of: int) -> float | None:
        window = state.kpis.get(metric)
        day = as_of // DAY_MS
        if window is None or not window.days_with_data(_horizon_start(as_of), day):
            return None
        return float(window.result(day - back, day))

    return extract


@_source(
    "kpi_trend",
    "Relative change of the KPI `metric` in the last `days` complete days versus "
    "the `days` before (> 0: increasing); unknown with less account history or no "
    "value in both.",
    KpiTrendParams,
    reads=PART_EVENTS,
    feeds=("kpi",),
    reads_past=PART_KPIS,
)
def _kpi_trend(p: KpiTrendParams) -> Extractor:
    days = p.days
    metric = p.metric

    def extract(state: AccountState, as_of: int) -> float | None:
        window = state.kpis.get(metric)
        end = as_of // DAY_MS - 1  # complete days only, as usage_trend
        if window is None or not _has_history(state, end, 2 * days):
            return None
        recent = window.result(end - days + 1, end)
        prior = window.result(end - 2 * days + 1, end - days)
        return _relative_change(recent, prior)

    return extract


@_source(
    "contract_events",
    "Contract events with one of `actions` in the window.",
    ContractParams,
    reads=PART_CONTRACTS,
    feeds=("contract",),
)
def _contract_events(p: ContractParams) -> Extractor:
    actions = tuple(dict.fromkeys(p.actions))
    back = p.days - 1

    def extract(state: AccountState, as_of: int) -> float | None:
        day = as_of // DAY_MS
        first = day - back
        total = 0
        contracts = state.contracts
        for action in actions:
            window = contracts.get(action)
            if window is not None:
                total += window.result(first, day)
        return float(total)

    return extract


@_source(
    "invoice_overdue",
    "1 when the newest invoice event says overdue, 0 when paid; unknown without invoices.",
    reads=PART_INVOICE,
    feeds=("invoice",),
)
def _invoice_overdue(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        invoice = state.invoice
        if invoice is None:
            return None
        return 1.0 if invoice[0] == "overdue" else 0.0

    return extract


# ------------------------------------------------------------------ stability
#
# How long each value lasts without events (Source.stable). Conservative is
# always right (an earlier day only costs a recomputation); a later day than
# the truth would be a wrong score, so each rule names what moves the value.

for _name in ("milestones_reached", "seats", "arr", "invoice_overdue"):
    _stable(_name)(_forever)  # no day in the definition
for _name in ("days_since_csm_touch", "tenure_days", "days_to_renewal"):
    _stable(_name)(_daily_unless_unknown)  # day counters; unknown until an event


@_stable("login_consistency")
def _login_consistency_stable(p: WindowParams) -> Stability:
    # Days observed grow daily; unknown lasts only without any event (a first
    # day without a login is unknown too, but not the day after).
    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return FOREVER if state.first_event_at is None else as_of // DAY_MS

    return stable


@_stable("days_since_last_activity")
def _days_since_last_activity_stable(p: NoParams) -> Stability:
    return _daily_unless_unknown(p)


@_stable("silence_ratio")
def _silence_ratio_stable(p: WindowParams) -> Stability:
    # Unknown lasts: the start of the rhythm window only moves forward, so
    # the active days in it only decrease. Known: the silence grows daily.
    return _daily_unless_unknown(p)


@_stable("active_seat_ratio")
def _active_seat_ratio_stable(p: WindowParams) -> Stability:
    back = p.days - 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return _seen_until(state.users, as_of // DAY_MS, back)

    return stable


_stable("active_users")(_active_seat_ratio_stable)


@_stable("logins_per_active_user")
def _logins_per_active_user_stable(p: LoginParams) -> Stability:
    back, base_back = p.days - 1, p.base_days - 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        day = as_of // DAY_MS
        return min(_seen_until(state.users, day, base_back), _window_until(state.logins, day, back))

    return stable


@_stable("feature_breadth")
def _feature_breadth_stable(p: WindowParams) -> Stability:
    back = p.days - 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return _seen_until(state.features, as_of // DAY_MS, back)

    return stable


@_stable("key_feature_adoption")
def _key_feature_adoption_stable(p: KeyFeatureParams) -> Stability:
    keys = tuple(dict.fromkeys(p.features))
    back = p.days - 1
    regular = p.min_days > 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        day = as_of // DAY_MS
        if day - back < 0 or regular:
            return day  # days of regular use leave the window one by one
        return min(
            _seen_until(state.users, day, back),
            _seen_until(state.adoption_index(keys), day, back),
        )

    return stable


@_stable("usage_trend")
def _usage_trend_stable(p: TrendParams) -> Stability:
    days = p.days

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return _trend_until(state, state.activity, as_of // DAY_MS, days)

    return stable


@_stable("open_tickets")
def _open_tickets_stable(p: TicketParams) -> Stability:
    wanted = frozenset(p.priorities)
    horizon = RETAIN_DAYS - 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        # A counted ticket stops counting once its last status leaves the
        # horizon; an uncounted one never starts without an event.
        since = _horizon_start(as_of) * DAY_MS
        until = FOREVER
        for t in state.tickets.values():
            if t.is_open and t.priority in wanted and t.status_at >= since:
                until = min(until, t.status_at // DAY_MS + horizon)
        return until

    return stable


def _window_stable(
    window_of: Callable[[AccountState], DailyWindow[Any, Any, Any]],
) -> Callable[[WindowParams], Stability]:
    def build(p: WindowParams) -> Stability:
        back = p.days - 1

        def stable(state: AccountState, as_of: int, value: float | None) -> int:
            return _window_until(window_of(state), as_of // DAY_MS, back)

        return stable

    return build


_stable("tickets_per_seat")(_window_stable(lambda state: state.tickets_opened))
_stable("resolution_hours")(_window_stable(lambda state: state.resolution_hours))
_stable("escalations")(_window_stable(lambda state: state.escalations))
_stable("csat")(_window_stable(lambda state: state.csat))
_stable("nps")(_window_stable(lambda state: state.nps))
_stable("csm_touches")(_window_stable(lambda state: state.csm_touches))


@_stable("kpi_total")
def _kpi_total_stable(p: KpiParams) -> Stability:
    back = p.days - 1
    horizon = RETAIN_DAYS - 1
    metric = p.metric

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        window = state.kpis.get(metric)
        day = as_of // DAY_MS
        # The sum's window, and the horizon that decides "unknown".
        return min(_window_until(window, day, back), _window_until(window, day, horizon))

    return stable


@_stable("kpi_trend")
def _kpi_trend_stable(p: KpiTrendParams) -> Stability:
    days = p.days
    metric = p.metric

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        return _trend_until(state, state.kpis.get(metric), as_of // DAY_MS, days)

    return stable


@_stable("contract_events")
def _contract_events_stable(p: ContractParams) -> Stability:
    actions = tuple(dict.fromkeys(p.actions))
    back = p.days - 1

    def stable(state: AccountState, as_of: int, value: float | None) -> int:
        day = as_of // DAY_MS
        return min(
            (_window_until(state.contracts.get(a), day, back) for a in actions), default=FOREVER
        )

    return stable


def next_change_at(state: AccountState, as_of: int) -> int:
    """Earliest time after ``as_of`` at which any extractor may answer
    differently *without a new event*: the next UTC midnight, or a pulse
    expiry before it. Scoring uses it to skip recomputing identical scores on
    timer ticks; it never affects a result.
    """
    limit = (day_of(as_of) + 1) * DAY_MS
    pulse = state.pulse
    if pulse is not None and as_of < pulse[3] < limit:
        limit = pulse[3]
    return int(limit)
