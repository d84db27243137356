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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.account_state import HORIZON_DAYS, RETAIN_DAYS, AccountState
from service.windows import DAY_MS, day_of, window_start

__all__ = [
    "CATALOG",
    "Extractor",
    "ParamsError",
    "Source",
    "build_extractor",
    "next_change_at",
]

#: ``(state, as_of_ms) -> value`` or ``None`` when the value is unknown.
Extractor = Callable[[AccountState, int], float | None]

Days = Annotated[int, Field(ge=1, le=HORIZON_DAYS)]
# A trend compares two consecutive periods, both inside the 90-day horizon.
TrendDays = Annotated[int, Field(ge=1, le=HORIZON_DAYS // 2)]
Priority = Literal["low", "normal", "high", "urgent"]
Action = Literal["renewal", "upsell", "downgrade", "churn_notice"]
_PULSE_VALUE: Final = {"green": 1.0, "yellow": 0.5, "red": 0.0}


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
    """One catalogue entry: what it measures, its parameters and its builder."""

    name: str
    description: str
    params: type[_Params]
    build: Callable[[Any], Extractor]


#: Every metric source, by name.
CATALOG: dict[str, Source] = {}


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


def _source(
    name: str, description: str, params: type[_Params] = NoParams
) -> Callable[[Callable[[Any], Extractor]], Callable[[Any], Extractor]]:
    def register(build: Callable[[Any], Extractor]) -> Callable[[Any], Extractor]:
        CATALOG[name] = Source(name, description, params, build)
        return build

    return register


# ------------------------------------------------------------------ helpers


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
    return first is not None and day_of(first) <= window_start(as_of_day, days)


# ---------------------------------------------------------------------- usage


@_source(
    "active_seat_ratio",
    "Distinct users active (login or feature use) in the window / seats; "
    "unknown without a seat count.",
    WindowParams,
)
def _active_seat_ratio(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        seats = _seats(state)
        if seats is None:
            return None
        return state.users.count_since(window_start(day_of(as_of), p.days)) / seats

    return extract


@_source("active_users", "Distinct users active in the window.", WindowParams)
def _active_users(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        return float(state.users.count_since(window_start(day_of(as_of), p.days)))

    return extract


@_source(
    "logins_per_active_user",
    "Logins in the last `days` / distinct users active in the last `base_days` "
    "(0 when nobody was active).",
    LoginParams,
)
def _logins_per_active_user(p: LoginParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        logins = state.logins.result(window_start(day, p.days), day)
        users = state.users.count_since(window_start(day, p.base_days))
        return logins / users if users else 0.0

    return extract


@_source(
    "login_consistency",
    "Share of the window's days with at least one login. The as-of day counts "
    "only once it has a login (it is not over yet), and the window is cut to "
    "the days since the account's first event, so new accounts are not penalised.",
    WindowParams,
)
def _login_consistency(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        if state.first_event_at is None:
            return None
        day = day_of(as_of)
        first = max(window_start(day, p.days), day_of(state.first_event_at))
        active = state.logins.days_with_data(first, day)
        observed = day - first + (1 if day in state.logins.buckets else 0)
        return active / observed if observed > 0 else None

    return extract


@_source(
    "days_since_last_activity",
    "Whole days since the last login or feature use (since the first event when there was none).",
)
def _days_since_last_activity(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        last = state.last_activity_at
        if last is None:
            last = state.first_event_at
        if last is None:
            return None
        return float(max(0, day_of(as_of) - day_of(last)))

    return extract


@_source(
    "silence_ratio",
    "Days since the last activity / the account's usual gap between active days "
    "(days observed / active days over the `days` before the last activity): 1 is "
    "the account's normal rhythm, 3 is three usual gaps without activity. Unknown "
    "without activity in the retained horizon.",
    WindowParams,
)
def _silence_ratio(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        last_at, first_at = state.last_activity_at, state.first_event_at
        if last_at is None or first_at is None:
            return None
        last = day_of(last_at)
        # Only days that compaction keeps for a clock at as_of may be read.
        first = max(window_start(last, p.days), day_of(first_at), _horizon_start(as_of))
        active = state.activity.days_with_data(first, last)
        if last < first or active == 0:
            return None
        usual_gap = (last - first + 1) / active
        return max(0, day_of(as_of) - last) / usual_gap

    return extract


@_source("feature_breadth", "Distinct features used in the window.", WindowParams)
def _feature_breadth(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        return float(state.features.count_since(window_start(day_of(as_of), p.days)))

    return extract


@_source(
    "key_feature_adoption",
    "Share of the users active in the window who used at least one of "
    "`features` in the window (0 when nobody was active).",
    KeyFeatureParams,
)
def _key_feature_adoption(p: KeyFeatureParams) -> Extractor:
    keys = tuple(dict.fromkeys(p.features))

    def extract(state: AccountState, as_of: int) -> float | None:
        first = window_start(day_of(as_of), p.days)
        active = 0
        adopters = 0
        user_features = state.user_features
        for user in state.users.keys_since(first):
            active += 1
            used = user_features.get(user)
            if used and any(used.get(f, -1) >= first for f in keys):
                adopters += 1
        return adopters / active if active else 0.0

    return extract


@_source(
    "usage_trend",
    "Relative change of activity (logins + feature uses) in the last `days` "
    "complete days versus the `days` before (-0.5: halved); unknown with less "
    "history, with fewer than `min_events` in the earlier period, or with no "
    "activity in both.",
    TrendParams,
)
def _usage_trend(p: TrendParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        # Complete days only (the as-of day is not over): a trend must not dip
        # every midnight because today's bucket has just started empty.
        end = day_of(as_of) - 1
        if not _has_history(state, end, 2 * p.days):
            return None
        recent = state.activity.result(window_start(end, p.days), end)
        prior = state.activity.result(window_start(end, 2 * p.days), end - p.days)
        if prior < p.min_events:
            return None
        return _relative_change(recent, prior)

    return extract


# -------------------------------------------------------------------- support


@_source(
    "open_tickets",
    "Support tickets open now with one of `priorities` (all by default); a ticket "
    "with no status event for 91 days is treated as abandoned.",
    TicketParams,
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
)
def _tickets_per_seat(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        seats = _seats(state)
        if seats is None:
            return None
        day = day_of(as_of)
        return state.tickets_opened.result(window_start(day, p.days), day) / seats

    return extract


@_source(
    "resolution_hours",
    "Mean hours from opening to resolution of tickets resolved in the window; "
    "unknown when none was.",
    WindowParams,
)
def _resolution_hours(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        return state.resolution_hours.result(window_start(day, p.days), day)

    return extract


@_source("escalations", "Ticket escalations in the window.", WindowParams)
def _escalations(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        return float(state.escalations.result(window_start(day, p.days), day))

    return extract


@_source(
    "csat",
    "Mean CSAT (1-5) of resolved tickets and CSAT surveys in the window; unknown when none.",
    WindowParams,
)
def _csat(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        return state.csat.result(window_start(day, p.days), day)

    return extract


# --------------------------------------------------------------- relationship


@_source(
    "nps",
    "Net Promoter Score (-100..100: % promoters 9-10 minus % detractors 0-6) of "
    "the answers in the window; unknown when none.",
    WindowParams,
)
def _nps(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        return state.nps.result(window_start(day, p.days), day)

    return extract


@_source("csm_touches", "CSM touches (any channel) in the window.", WindowParams)
def _csm_touches(p: WindowParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        return float(state.csm_touches.result(window_start(day, p.days), day))

    return extract


@_source("days_since_csm_touch", "Whole days since the last CSM touch; unknown if never.")
def _days_since_csm_touch(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        last = state.last_csm_touch_at
        return None if last is None else float(max(0, day_of(as_of) - day_of(last)))

    return extract


@_source(
    "csm_pulse",
    "The newest CSM pulse while it has not expired: green 1, yellow 0.5, red 0; "
    "unknown without a live pulse.",
)
def _csm_pulse(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        pulse = state.pulse
        if pulse is None or as_of >= pulse[3]:
            return None
        return _PULSE_VALUE[pulse[0]]

    return extract


@_source("milestones_reached", "Share of the named milestones reached (0..1).", MilestoneParams)
def _milestones_reached(p: MilestoneParams) -> Extractor:
    names = tuple(dict.fromkeys(p.names))

    def extract(state: AccountState, as_of: int) -> float | None:
        reached = state.milestones
        return sum(1 for name in names if name in reached) / len(names)

    return extract


@_source("tenure_days", "Whole days since the snapshot's customer_since; unknown without it.")
def _tenure_days(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("customer_since")
        return None if entry is None else float(max(0, day_of(as_of) - day_of(entry[0])))

    return extract


@_source(
    "days_to_renewal",
    "Whole days until the snapshot's renewal_at (negative when past); unknown without it.",
)
def _days_to_renewal(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("renewal_at")
        return None if entry is None else float(day_of(entry[0]) - day_of(as_of))

    return extract


@_source("seats", "Seats from the account snapshot; unknown without it.")
def _seats_metric(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        entry = state.snapshot.get("seats")
        return None if entry is None else float(entry[0])

    return extract


@_source("arr", "Annual recurring revenue from the account snapshot; unknown without it.")
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
)
def _kpi_total(p: KpiParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        window = state.kpis.get(p.metric)
        day = day_of(as_of)
        if window is None or not window.days_with_data(_horizon_start(as_of), day):
            return None
        return float(window.result(window_start(day, p.days), day))

    return extract


@_source(
    "kpi_trend",
    "Relative change of the KPI `metric` in the last `days` complete days versus "
    "the `days` before (> 0: increasing); unknown with less account history or no "
    "value in both.",
    KpiTrendParams,
)
def _kpi_trend(p: KpiTrendParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        window = state.kpis.get(p.metric)
        end = day_of(as_of) - 1  # complete days only, as usage_trend
        if window is None or not _has_history(state, end, 2 * p.days):
            return None
        recent = window.result(window_start(end, p.days), end)
        prior = window.result(window_start(end, 2 * p.days), end - p.days)
        return _relative_change(recent, prior)

    return extract


@_source(
    "contract_events",
    "Contract events with one of `actions` in the window.",
    ContractParams,
)
def _contract_events(p: ContractParams) -> Extractor:
    actions = tuple(dict.fromkeys(p.actions))

    def extract(state: AccountState, as_of: int) -> float | None:
        day = day_of(as_of)
        first = window_start(day, p.days)
        total = 0
        for action in actions:
            window = state.contracts.get(action)
            if window is not None:
                total += window.result(first, day)
        return float(total)

    return extract


@_source(
    "invoice_overdue",
    "1 when the newest invoice event says overdue, 0 when paid; unknown without invoices.",
)
def _invoice_overdue(p: NoParams) -> Extractor:
    def extract(state: AccountState, as_of: int) -> float | None:
        invoice = state.invoice
        if invoice is None:
            return None
        return 1.0 if invoice[0] == "overdue" else 0.0

    return extract


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
