"""Simulated customers: deterministic streams of input events for demos, tests and benchmarks.

Every account follows a *persona* (:data:`PERSONAS`), a story told in events over
event time: a ``declining`` account loses half of its active users every week
after its *pivot*, a ``silent_churner`` sends nothing at all from its pivot on, a
``ticket_storm`` opens a burst of urgent tickets at its pivot, and so on. Each
account gets an initial ``account`` snapshot, users ``u1..uN``, logins and
feature use, support tickets (opened, escalated, resolved with CSAT, reopened),
CSM touches and pulses, NPS surveys, onboarding milestones, a
``newsletters_sent`` KPI, contract changes and monthly invoices.

Contracts:

* **Deterministic.** Generation never reads the wall clock or the global RNG:
  account ``i`` draws from ``random.Random`` seeded with a hash of
  ``(seed, i)``, so the same arguments give byte-identical messages. Invalid
  messages come from a second RNG per account, so the valid messages are the
  same whatever ``invalid_rate`` is.
* **Valid.** Every message not flagged ``invalid`` passes
  :func:`schemas.decode.decode_event` on its topic kind with the account id as
  key (as long as its ``occurred_at`` is not in the future of the decoder's
  clock). Flagged messages are rejected (``not_json``, ``missing_field`` or
  ``invalid_field``).
* **Ordered and streaming.** History comes out in non-decreasing
  ``occurred_at`` order while holding at most one simulated day of events in
  memory: each account generates a day at a time (with a small heap of its own
  scheduled events, e.g. a ticket's later resolution) and the day's events of
  all accounts are merged by one sort. Per account, live events are stamped in
  order too.
* **Outcomes.** When an account's contract comes up for renewal (5-30 days
  before its ``renewal_at``) the account either churns -- a ``churn_notice``
  contract event then, a ``churned`` one when the contract ends, and nothing
  at all after that -- or renews (``renewal``, followed by a ``downgrade`` for
  an account that shrinks). The chance of churning depends on the persona and
  on whether its story has turned (:data:`CHURN_CHANCE`) and is drawn from a
  third RNG per account, so fate follows usage only loosely: a few thriving
  accounts leave, most declining ones do but not all. Contract events come
  even from an account that went silent (billing still knows it).
* **Unique ids.** ``event_id`` is ``{account_id}-{run tag}-{n}``; the run tag
  hashes the seed, the mode and the end of the history (or, live, the start),
  so re-producing the same history gives the same ids (the service drops the
  repeats) while a different run never collides with an earlier one.

This module imports no Kafka client at import time; :func:`produce` imports
aiokafka when it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from random import Random
from typing import TYPE_CHECKING, Any, Final

import orjson

from service.runtime.settings import INPUT_TOPIC_KINDS

if TYPE_CHECKING:
    from service.runtime.settings import Settings

__all__ = [
    "CHURN_CHANCE",
    "DAY_MS",
    "DEFAULT_PERSONAS",
    "EVERYDAY_FEATURES",
    "HOUR_MS",
    "KEY_FEATURES",
    "PERSONAS",
    "TOPIC_KIND_OF_TYPE",
    "WEEK_MS",
    "AccountPlan",
    "ProduceError",
    "SimEvent",
    "account_id_of",
    "account_plans",
    "generate_history",
    "generate_live",
    "history_jsonl",
    "normalise_personas",
    "parse_personas",
    "persona_of",
    "produce",
]

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
YEAR_MS: Final = 365 * DAY_MS
_MINUTE_MS: Final = 60_000
# Sessions start in an 11-hour working day (shifted by the account's time zone).
_WORKDAY_MS: Final = 11 * HOUR_MS
_NEVER: Final = 1 << 62
_PAST: Final = -(1 << 62)

#: The personas and what each one's data shows.
PERSONAS: Final[dict[str, str]] = {
    "thriving": "high steady usage, most seats active, broad features, good NPS, KPI rising",
    "steady": "moderate usage and adoption, no trend",
    "declining": "from its pivot, active users halve every week; KPI falls, NPS drops",
    "silent_churner": "normal, then completely silent from its pivot",
    "ticket_storm": "a burst of urgent, escalated tickets with poor CSAT at its pivot",
    "under_licensed": "only ~10% of seats active",
    "onboarding": "new customer: milestones arrive over weeks, users join after invites",
    "expanding": "upsell at its pivot: more seats, new users, rising usage and KPI",
}
#: The default mix of personas (shares sum to 1).
DEFAULT_PERSONAS: Final[dict[str, float]] = {
    "thriving": 0.20,
    "steady": 0.30,
    "declining": 0.10,
    "silent_churner": 0.07,
    "ticket_storm": 0.08,
    "under_licensed": 0.08,
    "onboarding": 0.07,
    "expanding": 0.10,
}
#: Chance that an account churns when its contract comes up: (before its pivot,
#: after it). Not 0 or 1 anywhere: usage predicts churn, it does not decide it.
CHURN_CHANCE: Final[dict[str, tuple[float, float]]] = {
    "thriving": (0.03, 0.03),
    "steady": (0.08, 0.08),
    "declining": (0.10, 0.70),
    "silent_churner": (0.10, 0.90),
    "ticket_storm": (0.08, 0.40),
    "under_licensed": (0.30, 0.30),
    "onboarding": (0.10, 0.10),
    "expanding": (0.02, 0.02),
}
#: Everyday product features and how often each is picked (relative weight).
EVERYDAY_FEATURES: Final[dict[str, int]] = {
    "campaigns": 3,
    "newsletters": 3,
    "templates": 2,
    "segments": 1,
    "forms": 1,
    "ab_testing": 1,
}
#: Features whose adoption predicts retention.
KEY_FEATURES: Final[tuple[str, ...]] = ("automation", "integrations", "reports")

#: Event ``type`` -> topic kind (DESIGN.md "Input topics").
TOPIC_KIND_OF_TYPE: Final[dict[str, str]] = {
    "login": "login",
    "feature_use": "feature-use",
    "support_ticket": "support-ticket",
    "account": "account",
    "csm_touch": "engagement",
    "survey": "engagement",
    "pulse": "engagement",
    "milestone": "engagement",
    "kpi": "outcome",
    "contract": "outcome",
    "invoice": "outcome",
}

_SEGMENTS: Final = ("smb", "mid_market", "enterprise")
#: The CSM team: account ``i`` is owned by ``_CSM_OWNERS[i % 6]`` (by index, so
#: that drawing an owner does not move any other random choice of the account).
_CSM_OWNERS: Final = ("csm-ana", "csm-ben", "csm-chloe", "csm-dev", "csm-emma", "csm-farid")
_SEATS: Final[dict[str, tuple[int, int]]] = {
    "smb": (2, 12),
    "mid_market": (12, 40),
    "enterprise": (40, 150),
}
_PLANS: Final[dict[str, tuple[str, ...]]] = {
    "smb": ("starter", "growth"),
    "mid_market": ("growth", "pro"),
    "enterprise": ("enterprise",),
}
_UPGRADE: Final[dict[str, str]] = {
    "starter": "growth",
    "growth": "pro",
    "pro": "enterprise",
    "enterprise": "enterprise",
}
#: ARR per seat and year, by plan.
_PRICE: Final[dict[str, float]] = {
    "starter": 240.0,
    "growth": 420.0,
    "pro": 720.0,
    "enterprise": 1080.0,
}
_CHANNELS: Final = ("email", "email", "email", "call", "call", "meeting", "meeting", "qbr", "other")
_REASONS: Final[dict[str, tuple[str, ...]]] = {
    "green": ("champion engaged", "strong adoption across teams", "exec sponsor happy"),
    "yellow": ("usage dipping in one team", "champion on leave", "budget review coming"),
    "red": ("escalations piling up", "champion left the company", "evaluating competitors"),
}
# Fields a "missing field" invalid message drops, per type.
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "login": ("user_id", "occurred_at", "account_id"),
    "feature_use": ("user_id", "feature", "occurred_at"),
    "support_ticket": ("ticket_id", "status", "occurred_at"),
    "account": ("occurred_at", "account_id"),
    "csm_touch": ("channel", "occurred_at"),
    "survey": ("kind", "score"),
    "pulse": ("rating", "reason"),
    "milestone": ("name", "occurred_at"),
    "kpi": ("metric", "value"),
    "contract": ("action", "occurred_at"),
    "invoice": ("status", "occurred_at"),
}
_PRIORITIES: Final = ("low",) * 5 + ("normal",) * 10 + ("high",) * 4 + ("urgent",)
_dumps: Final = orjson.dumps


def _line(obj: dict[str, object]) -> bytes:
    return _dumps(obj) + b"\n"


_VALID: Final = 0
_NOT_JSON: Final = 1
_BROKEN: Final = 2  # missing field or wrong type: valid JSON, invalid event

# (occurred_at, account index, topic kind, message value + b"\n", flaw). Values are
# serialised at once (short-lived dicts keep the garbage collector quiet) and
# copied by the newline concatenation: orjson's own result holds an over-sized
# buffer, which made keeping a day of them cost a page fault each.
_Entry = tuple[int, int, str, bytes, int]
_TS: Final = itemgetter(0)
# 1/phi: consecutive accounts get well-spread points in [0, 1) for the persona mix.
_GOLDEN: Final = 0.6180339887498949


@dataclass(frozen=True, slots=True)
class _Persona:
    """Static parameters of a persona; time-dependent behaviour lives in _Account."""

    active: tuple[float, float]  # share of seats with an active user
    sessions: float  # chance that an active user has a session on a weekday
    extra_feature: float  # chance that a session uses a second feature
    breadth: tuple[int, int]  # how many everyday features the account uses
    key: tuple[int, int]  # how many key features it uses
    count_max: int  # feature_use count is 1..count_max
    nps: tuple[int, int]  # NPS answers (before the pivot for personas that change)
    csat: tuple[int, int]  # CSAT on resolved tickets
    tickets: float  # multiplier of the base ticket rate
    kpi_growth: float  # weekly growth of newsletters_sent
    overdue: float  # chance that an invoice is overdue
    touch_days: tuple[int, int]  # days between CSM touches
    pulse: tuple[str, ...]  # ratings a CSM gives (before the pivot)
    segments: tuple[float, float, float]  # chance of smb, mid_market, enterprise


_SPECS: Final[dict[str, _Persona]] = {
    "thriving": _Persona(
        active=(0.80, 0.95),
        sessions=0.19,
        extra_feature=0.40,
        breadth=(4, 6),
        key=(2, 3),
        count_max=8,
        nps=(8, 10),
        csat=(4, 5),
        tickets=0.6,
        kpi_growth=1.03,
        overdue=0.0,
        touch_days=(10, 21),
        pulse=("green",),
        segments=(0.6, 0.3, 0.1),
    ),
    "steady": _Persona(
        active=(0.55, 0.75),
        sessions=0.095,
        extra_feature=0.25,
        breadth=(3, 4),
        key=(1, 2),
        count_max=5,
        nps=(7, 9),
        csat=(3, 5),
        tickets=1.0,
        kpi_growth=1.0,
        overdue=0.05,
        touch_days=(14, 35),
        pulse=("green", "green", "yellow"),
        segments=(0.7, 0.25, 0.05),
    ),
    "declining": _Persona(
        active=(0.60, 0.80),
        sessions=0.11,
        extra_feature=0.25,
        breadth=(2, 4),
        key=(1, 2),
        count_max=5,
        nps=(6, 8),
        csat=(2, 4),
        tickets=1.3,
        kpi_growth=1.0,
        overdue=0.05,
        touch_days=(14, 35),
        pulse=("green", "yellow"),
        segments=(0.65, 0.28, 0.07),
    ),
    "silent_churner": _Persona(
        active=(0.50, 0.70),
        sessions=0.11,
        extra_feature=0.20,
        breadth=(2, 3),
        key=(0, 1),
        count_max=4,
        nps=(6, 8),
        csat=(3, 5),
        tickets=0.8,
        kpi_growth=1.0,
        overdue=0.05,
        touch_days=(25, 45),
        pulse=("green", "yellow"),
        segments=(0.8, 0.18, 0.02),
    ),
    "ticket_storm": _Persona(
        active=(0.55, 0.75),
        sessions=0.095,
        extra_feature=0.25,
        breadth=(2, 4),
        key=(1, 2),
        count_max=5,
        nps=(6, 8),
        csat=(3, 4),
        tickets=1.5,
        kpi_growth=1.0,
        overdue=0.1,
        touch_days=(14, 30),
        pulse=("green", "yellow"),
        segments=(0.5, 0.35, 0.15),
    ),
    "under_licensed": _Persona(
        active=(0.08, 0.12),
        sessions=0.3,
        extra_feature=0.20,
        breadth=(1, 3),
        key=(0, 1),
        count_max=4,
        nps=(5, 8),
        csat=(3, 5),
        tickets=0.7,
        kpi_growth=1.0,
        overdue=0.05,
        touch_days=(21, 40),
        pulse=("yellow",),
        segments=(0.3, 0.5, 0.2),
    ),
    "onboarding": _Persona(
        active=(0.50, 0.70),
        sessions=0.12,
        extra_feature=0.25,
        breadth=(2, 3),
        key=(0, 1),
        count_max=4,
        nps=(7, 9),
        csat=(3, 5),
        tickets=1.2,
        kpi_growth=1.0,
        overdue=0.02,
        touch_days=(4, 9),
        pulse=("green", "yellow"),
        segments=(0.7, 0.25, 0.05),
    ),
    "expanding": _Persona(
        active=(0.80, 0.95),
        sessions=0.15,
        extra_feature=0.35,
        breadth=(4, 6),
        key=(2, 3),
        count_max=8,
        nps=(8, 10),
        csat=(4, 5),
        tickets=0.7,
        kpi_growth=1.0,
        overdue=0.0,
        touch_days=(10, 21),
        pulse=("green",),
        segments=(0.5, 0.35, 0.15),
    ),
}


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One simulated Kafka message.

    ``value`` is the exact message value (UTF-8 JSON, or deliberately broken
    bytes when ``invalid``); ``key`` is the account id in UTF-8; ``topic_kind``
    is the input topic kind (``Settings.input_topic(topic_kind)`` names it).
    """

    topic_kind: str
    key: bytes
    value: bytes
    occurred_at: int
    account_id: str
    persona: str
    invalid: bool = False


@dataclass(frozen=True, slots=True)
class AccountPlan:
    """What a simulated account is, as of the start of its simulation.

    ``pivot_at`` (epoch ms) is when the persona's story turns: a ``declining``
    account starts losing users, a ``silent_churner`` goes silent (no event at
    or after it), a ``ticket_storm`` starts its storm, an ``expanding`` account
    buys seats; ``onboarding`` accounts became customers a few days before it.
    """

    index: int
    account_id: str
    persona: str
    segment: str
    plan: str
    seats: int
    arr: float
    lifecycle_stage: str
    customer_since: int
    renewal_at: int
    active_users: int
    pivot_at: int


class ProduceError(RuntimeError):
    """Kafka is unreachable, a topic is missing or a message could not be delivered."""


# --- persona mix -------------------------------------------------------------


def normalise_personas(personas: Mapping[str, float] | None) -> dict[str, float]:
    """Validate a persona mix and scale its shares to sum to 1.

    ``None`` gives :data:`DEFAULT_PERSONAS`. Raises ``ValueError`` for an
    unknown persona, a negative or non-finite share, or shares summing to 0.
    """
    if personas is None:
        return dict(DEFAULT_PERSONAS)
    total = 0.0
    for name, share in personas.items():
        if name not in PERSONAS:
            raise ValueError(f"unknown persona {name!r} (known: {', '.join(PERSONAS)})")
        if not math.isfinite(share) or share < 0:
            raise ValueError(f"share of persona {name!r} must be a finite number >= 0")
        total += share
    if total <= 0:
        raise ValueError("persona shares must sum to more than 0")
    return {name: personas[name] / total for name in PERSONAS if personas.get(name, 0) > 0}


def parse_personas(text: str) -> dict[str, float]:
    """Parse ``thriving=0.3,steady=0.3,declining=0.4`` (shares are normalised).

    Raises ``ValueError`` with a one-line message.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, share = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"expected NAME=SHARE, got {part!r}")
        try:
            mix[name] = float(share)
        except ValueError:
            raise ValueError(f"share of persona {name!r} is not a number: {share!r}") from None
    if not mix:
        raise ValueError("no personas given")
    return normalise_personas(mix)


def _derive(seed: int, *parts: object) -> int:
    # A stable 64-bit seed (hash() of str is salted per process; this is not).
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _cumulative(mix: Mapping[str, float]) -> list[tuple[float, str]]:
    bounds: list[tuple[float, str]] = []
    acc = 0.0
    for name, share in mix.items():
        acc += share
        bounds.append((acc, name))
    return bounds


def _pick_persona(index: int, offset: float, bounds: list[tuple[float, str]]) -> str:
    # Low-discrepancy (golden ratio) sequence: any run of consecutive accounts
    # follows the mix closely, even a small one.
    u = (offset + index * _GOLDEN) % 1.0
    for bound, name in bounds:
        if u < bound:
            return name
    return bounds[-1][1]


def _persona_offset(seed: int) -> float:
    return _derive(seed, "persona") / float(1 << 64)


def persona_of(account_index: int, seed: int, personas: Mapping[str, float] | None = None) -> str:
    """The persona of account ``account_index`` (0-based) for a seed and a mix."""
    bounds = _cumulative(normalise_personas(personas))
    return _pick_persona(account_index, _persona_offset(seed), bounds)


def account_id_of(index: int) -> str:
    """``acct-00042`` for index 42."""
    return f"acct-{index:05d}"


def _run_tag(mode: str, seed: int, anchor_ms: int) -> str:
    text = f"{mode}:{seed}:{anchor_ms}".encode()
    return hashlib.blake2b(text, digest_size=3).hexdigest()


# --- one account ---------------------------------------------------------------


class _Account:
    """Generates one account's events, a simulated day at a time."""

    def __init__(
        self,
        index: int,
        persona: str,
        seed: int,
        start_ms: int,
        pivot_window: tuple[int, int],
        tag: str,
        invalid_rate: float,
    ) -> None:
        rng = Random(_derive(seed, index, "account"))
        spec = _SPECS[persona]
        self.rng = rng
        self.bad_rng = Random(_derive(seed, index, "invalid"))
        # Fate at contract end has its own RNG, so deciding it moves no other draw.
        self.fate_rng = Random(_derive(seed, index, "fate"))
        # Each valid event is followed by a broken one with chance p, so broken
        # messages make up p / (1 + p) = invalid_rate of all messages.
        self.bad_p = invalid_rate / (1.0 - invalid_rate) if invalid_rate > 0 else 0.0
        self.index = index
        self.persona = persona
        self.spec = spec
        self.account_id = account_id_of(index)
        self.key = self.account_id.encode()
        self.prefix = f"{self.account_id}-{tag}-"
        self.seq = 0
        self.tickets_opened = 0
        self.invoices = 0
        self.pending: list[tuple[int, int, str, dict[str, object]]] = []
        #: Contract events still to send; sent even after ``silent_at``.
        self.outcomes: list[tuple[int, int, dict[str, object]]] = []
        self.silent_at = _NEVER

        lo, hi = pivot_window
        self.pivot = lo + int(rng.random() * max(hi - lo, 0))
        pivot = self.pivot

        segment = _SEGMENTS[_weighted(rng, spec.segments)]
        seat_lo, seat_hi = _SEATS[segment]
        if persona == "under_licensed":
            seat_lo = max(seat_lo, 10)
            seat_hi = max(seat_hi, 2 * seat_lo)
        seats = round(math.exp(_uniform(rng, math.log(seat_lo), math.log(seat_hi))))
        plan = rng.choice(_PLANS[segment])
        arr = round(seats * _PRICE[plan] * _uniform(rng, 0.85, 1.1), 2)
        if persona == "onboarding":
            customer_since = pivot - _days(rng, 3, 8)
        elif persona == "expanding":
            customer_since = start_ms - _days(rng, 150, 1500)
        else:
            customer_since = start_ms - _days(rng, 60, 2200)
        customer_since -= customer_since % _MINUTE_MS
        renewal_at = customer_since + YEAR_MS
        while renewal_at <= start_ms + DAY_MS:
            renewal_at += YEAR_MS
        if persona == "onboarding":
            stage = "onboarding"
        elif renewal_at - start_ms <= 90 * DAY_MS:
            stage = "renewal"
        elif start_ms - customer_since < YEAR_MS:
            stage = "adoption"
        else:
            stage = "maturity"
        self.segment = segment
        self.seats = seats
        self.plan = plan
        self.arr = arr
        self.customer_since = customer_since
        self.renewal_at = renewal_at
        self.stage = stage
        self.born = max(start_ms, customer_since)
        # Working hours start at 07:00 local in a time zone between UTC-8 and UTC+3.
        self.work_start = ((7 - rng.randint(-8, 3)) * HOUR_MS) % DAY_MS

        # Users: parallel lists, read in the hot loop.
        self.uids: list[str] = []
        self.probs: list[float] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        if persona == "under_licensed":
            active = max(1, round(seats * _uniform(rng, *spec.active)))
        else:
            active = max(2, round(seats * _uniform(rng, *spec.active)))
        self.active_at_start = active

        # Features: a weighted pick list (a feature appears once per unit of weight).
        everyday = list(EVERYDAY_FEATURES)
        rng.shuffle(everyday)
        keys = list(KEY_FEATURES)
        rng.shuffle(keys)
        chosen_everyday = everyday[: rng.randint(*spec.breadth)]
        chosen_keys = keys[: rng.randint(*spec.key)]
        self.features = _pick_list(chosen_everyday, chosen_keys)
        self.feature_phases: list[tuple[int, tuple[str, ...]]] = []

        self.ticket_rate = (0.3 + 0.02 * seats) / 30.0 * spec.tickets
        self.audience = seats * _uniform(rng, 200.0, 1200.0)
        if persona == "under_licensed":
            self.audience *= 0.2
        # Scheduled (at, seats, arr) changes, applied when simulated time reaches them.
        self.changes: list[tuple[int, int, float]] = []
        self.first_campaign_at = _PAST
        self.next_touch = self.born + int(rng.random() * spec.touch_days[1] * DAY_MS)
        self.next_nps = self.born + _days(rng, 0, 50)
        cycles = max(0, -(-(self.born - customer_since) // (30 * DAY_MS)))
        self.next_invoice = customer_since + cycles * 30 * DAY_MS + 2 * HOUR_MS
        self.renew_action_at = max(start_ms + HOUR_MS, renewal_at - _days(rng, 5, 30))
        self.renewal_stage_at = renewal_at - 90 * DAY_MS if stage != "renewal" else _NEVER
        if persona == "onboarding":
            self.renewal_stage_at = _NEVER

        self._snapshot(
            self.born,
            seats=seats,
            plan=plan,
            arr=arr,
            segment=segment,
            lifecycle_stage=stage,
            customer_since=customer_since,
            renewal_at=renewal_at,
            csm_owner=_CSM_OWNERS[index % len(_CSM_OWNERS)],
        )
        self._setup_persona(active)
        # Most accounts keep the same users throughout: a faster loop for them.
        self.users_fixed = all(
            start == _PAST and end == _NEVER
            for start, end in zip(self.starts, self.ends, strict=True)
        )
        self.users = list(zip(self.uids, self.probs, strict=True))
        self.json_head = f'{{"event_id":"{self.prefix}'
        self.json_login = f'","account_id":"{self.account_id}","type":"login","occurred_at":'
        self.json_feature_use = (
            f'","account_id":"{self.account_id}","type":"feature_use","occurred_at":'
        )
        self._update_due()

    # -- set-up --------------------------------------------------------------

    def _add_user(self, start: int, end: int = _NEVER) -> None:
        rng = self.rng
        r = rng.random()
        weight = 0.5 if r < 0.3 else (1.0 if r < 0.8 else 1.7)
        self.uids.append(f"u{len(self.uids) + 1}")
        self.probs.append(min(0.95, self.spec.sessions * weight))
        self.starts.append(start)
        self.ends.append(end)

    def _setup_persona(self, active: int) -> None:
        rng = self.rng
        persona = self.persona
        pivot = self.pivot
        if persona == "declining":
            for _ in range(active):
                # Exponential drop-out with a half-life of one week after the pivot.
                dropout = pivot + int(-math.log2(1.0 - rng.random()) * WEEK_MS)
                self._add_user(_PAST, dropout)
            if rng.random() < 0.35:
                self._resize(pivot + _days(rng, 14, 28), 0.7, "downgrade")
        elif persona == "onboarding":
            cs = self.customer_since
            configured = cs + _days(rng, 1, 3)
            invited = cs + _days(rng, 4, 9)
            first_campaign = cs + _days(rng, 10, 20)
            self.first_campaign_at = first_campaign
            for name, at in (
                ("account_configured", configured),
                ("users_invited", invited),
                ("first_campaign_sent", first_campaign),
            ):
                event = self._new(at, "milestone")
                event["name"] = name
                self._schedule(at, "engagement", event)
            self._add_user(cs)
            self.probs[0] = 0.7  # the admin setting the account up
            for _ in range(active - 1):
                self._add_user(invited + _days(rng, 0, 10))
            self.features = _pick_list(["templates", "campaigns"], [])
            self.feature_phases = [
                (first_campaign, _pick_list(["templates", "campaigns", "newsletters"], [])),
                (
                    first_campaign + 7 * DAY_MS,
                    _pick_list(["templates", "campaigns", "newsletters", "segments"], ["reports"]),
                ),
            ]
            graduated = first_campaign + _days(rng, 14, 21)
            self._snapshot(graduated, lifecycle_stage="adoption")
            self.next_nps = cs + _days(rng, 30, 45)
        elif persona == "expanding":
            for _ in range(active):
                self._add_user(_PAST)
            share = active / self.seats
            new_seats = self._resize(pivot, _uniform(rng, 1.3, 1.8), "upsell")
            for _ in range(max(1, round(new_seats * share) - active)):
                self._add_user(pivot + _days(rng, 0, 14))
        elif persona == "ticket_storm":
            for _ in range(active):
                self._add_user(_PAST)
            for _ in range(rng.randint(6, 12)):
                self._ticket(
                    pivot + _days(rng, 0, 3),
                    rng.choice(("high", "urgent", "urgent")),
                    escalate=0.5,
                    resolve=(2 * DAY_MS, 8 * DAY_MS),
                    csat=(1, 2),
                    reopen=0.3,
                )
            at = pivot + _days(rng, 1, 3)
            self._pulse(at, "red")
            survey = self._new(at + DAY_MS, "survey")
            survey["kind"] = "csat"
            survey["score"] = rng.randint(1, 2)
            self._schedule(at + DAY_MS, "engagement", survey)
        else:
            if persona == "silent_churner":
                self.silent_at = pivot
            for _ in range(active):
                self._add_user(_PAST)

    def _resize(self, at: int, factor: float, action: str) -> int:
        """Schedule a seat change (contract + snapshot); returns the new seat count."""
        rng = self.rng
        seats = max(1, round(self.seats * factor))
        plan = _UPGRADE[self.plan] if action == "upsell" and rng.random() < 0.3 else self.plan
        arr = round(self.arr * seats / self.seats * _PRICE[plan] / _PRICE[self.plan], 2)
        contract = self._new(at, "contract")
        contract["action"] = action
        contract["amount"] = round(abs(arr - self.arr), 2)
        self._schedule(at, "outcome", contract)
        self._snapshot(at + _MINUTE_MS, seats=seats, plan=plan, arr=arr)
        self.changes.append((at, seats, arr))
        return seats

    # -- event construction ---------------------------------------------------

    def _new(self, ts: int, event_type: str) -> dict[str, object]:
        self.seq += 1
        return {
            "event_id": f"{self.prefix}{self.seq}",
            "account_id": self.account_id,
            "type": event_type,
            "occurred_at": ts,
        }

    def _schedule(self, ts: int, kind: str, event: dict[str, object]) -> None:
        heapq.heappush(self.pending, (ts, self.seq, kind, event))

    def _snapshot(self, ts: int, **fields: object) -> None:
        event = self._new(ts, "account")
        event.update(fields)
        self._schedule(ts, "account", event)

    def _pulse(self, ts: int, rating: str) -> None:
        rng = self.rng
        event = self._new(ts, "pulse")
        event["rating"] = rating
        event["reason"] = rng.choice(_REASONS[rating])
        if rng.random() < 0.5:
            event["expires_at"] = ts + _days(rng, 14, 45)
        self._schedule(ts, "engagement", event)

    def _ticket(
        self,
        ts: int,
        priority: str,
        *,
        escalate: float,
        resolve: tuple[int, int],
        csat: tuple[int, int],
        reopen: float,
    ) -> None:
        rng = self.rng
        self.tickets_opened += 1
        ticket_id = f"{self.account_id}-t{self.tickets_opened}"

        def state(at: int, status: str, score: int | None = None) -> None:
            event = self._new(at, "support_ticket")
            event["ticket_id"] = ticket_id
            event["status"] = status
            event["priority"] = priority
            if score is not None:
                event["csat"] = score
            self._schedule(at, "support-ticket", event)

        state(ts, "opened")
        if rng.random() < escalate:
            state(ts + HOUR_MS + int(rng.random() * 23 * HOUR_MS), "escalated")
        resolved = ts + resolve[0] + int(rng.random() * (resolve[1] - resolve[0]))
        state(resolved, "resolved", rng.randint(*csat) if rng.random() < 0.7 else None)
        if rng.random() < reopen:
            reopened = resolved + 2 * HOUR_MS + int(rng.random() * 2 * DAY_MS)
            state(reopened, "reopened")
            again = reopened + DAY_MS + int(rng.random() * 2 * DAY_MS)
            state(again, "resolved", csat[0] if rng.random() < 0.7 else None)

    def _emit(self, out: list[_Entry], ts: int, kind: str, event: dict[str, object]) -> None:
        if ts >= self.silent_at:
            return
        self._put(out, ts, kind, event)

    def _put(self, out: list[_Entry], ts: int, kind: str, event: dict[str, object]) -> None:
        out.append((ts, self.index, kind, _dumps(event) + b"\n", _VALID))
        if self.bad_p and self.bad_rng.random() < self.bad_p:
            out.append(self._flawed(ts, kind, event))

    def _contract(self, ts: int, action: str, amount: float) -> None:
        """Schedule a contract outcome (sent even if the account is silent by then)."""
        event = self._new(ts, "contract")
        event["action"] = action
        event["amount"] = amount
        heapq.heappush(self.outcomes, (ts, self.seq, event))

    def _send_outcomes(self, de: int, out: list[_Entry]) -> None:
        outcomes = self.outcomes
        while outcomes and outcomes[0][0] < de:
            ts, _, event = heapq.heappop(outcomes)
            self._put(out, ts, "outcome", event)

    def finished(self, ds: int) -> bool:
        """Whether the account will send nothing from ``ds`` on: silent, and no
        contract still to come up or to send."""
        return ds >= self.silent_at and self.renew_action_at == _NEVER and not self.outcomes

    def _flawed(self, ts: int, kind: str, event: dict[str, object]) -> _Entry:
        """A broken copy of an event: not JSON, a missing field or a wrong type."""
        rng = self.bad_rng
        bad = dict(event)
        bad["event_id"] = f"{event['event_id']}-bad"
        roll = rng.random()
        if roll < 1 / 3:
            text = _dumps(bad)
            return (ts, self.index, kind, text[: len(text) // 2] + b"\n", _NOT_JSON)
        event_type = str(event["type"])
        if roll < 2 / 3:
            if event_type == "account":
                # A snapshot needs at least one field: drop them all.
                for name in ("seats", "plan", "arr", "segment", "lifecycle_stage"):
                    bad.pop(name, None)
                for name in ("customer_since", "renewal_at", "csm_owner"):
                    bad.pop(name, None)
            else:
                bad.pop(rng.choice(_REQUIRED[event_type]), None)
        else:
            wrong: tuple[tuple[str, object], ...] = (
                ("occurred_at", "yesterday"),
                ("account_id", 42),
                (_REQUIRED[event_type][0], [1, 2]),
            )
            name, value = rng.choice(wrong)
            if event_type == "account" and name == "occurred_at":
                name, value = "seats", "many"
            bad[name] = value
        return (ts, self.index, kind, _line(bad), _BROKEN)

    # -- one simulated day ------------------------------------------------------

    def _level(self, ts: int) -> float:
        """Usage multiplier over time (drop-outs and new users are separate)."""
        if ts < self.pivot:
            return 1.0
        if self.persona == "expanding":
            return min(1.5, math.pow(1.04, (ts - self.pivot) / WEEK_MS))
        if self.persona == "ticket_storm":
            return 0.75
        return 1.0

    def _kpi_level(self, ts: int) -> float:
        persona = self.persona
        weeks = (ts - self.pivot) / WEEK_MS
        if persona == "thriving":
            return min(3.0, math.pow(self.spec.kpi_growth, weeks))
        if persona == "onboarding":
            if ts < self.first_campaign_at:
                return 0.0
            return min(1.0, 0.2 + (ts - self.first_campaign_at) / (21 * DAY_MS))
        if ts < self.pivot:
            return 1.0
        if persona == "declining":
            return math.pow(0.5, weeks)
        if persona == "expanding":
            return min(2.0, math.pow(1.06, weeks))
        if persona == "ticket_storm":
            return 0.8
        return 1.0

    def _rating(self, ts: int) -> str:
        rng = self.rng
        after = ts >= self.pivot
        if self.persona == "declining" and ts >= self.pivot + 3 * DAY_MS:
            return rng.choice(("yellow", "red"))
        if self.persona == "ticket_storm" and after:
            return "red" if ts < self.pivot + 20 * DAY_MS else "yellow"
        return rng.choice(self.spec.pulse)

    def _nps(self, ts: int) -> int:
        rng = self.rng
        if ts >= self.pivot and self.persona == "declining":
            return rng.randint(2, 6)
        if ts >= self.pivot and self.persona == "ticket_storm":
            return rng.randint(2, 5)
        lo, hi = self.spec.nps
        return rng.randint(lo, hi)

    def day(self, ds: int, weekday: int, out: list[_Entry]) -> None:
        """Append this account's events of the day starting at ``ds`` (UTC midnight).

        ``weekday`` is that day's (Monday 0). Called for 10k accounts x days, so
        it is written for speed: locals, and rare work behind one comparison.
        """
        de = ds + DAY_MS
        if ds >= self.silent_at:
            self.pending.clear()
            # Nobody uses the product any more, but the contract still ends.
            if self.renew_action_at < de:
                self._renew(self.renew_action_at)
            if self.outcomes and self.outcomes[0][0] < de:
                self._send_outcomes(de, out)
            return
        if de <= self.born:
            return
        if self.next_due < de:
            self._scheduled(de, out)
        rnd = self.rng.random
        spec = self.spec

        # Usage. Logins and feature use are most of the volume, so their JSON is
        # written directly; every part is an identifier, a number or a feature
        # name, none needs escaping (a test checks the bytes against orjson).
        factor = 0.25 if weekday >= 5 else 1.0
        if ds >= self.pivot:
            factor *= self._level(ds)
        features = self.features
        n_features = len(features)
        work_start = self.work_start
        extra = spec.extra_feature
        count_max = spec.count_max
        head = self.json_head
        login = self.json_login
        feature_use = self.json_feature_use
        silent_at = self.silent_at
        index = self.index
        bad_p = self.bad_p
        seq = self.seq
        if self.users_fixed:
            active: Iterable[tuple[str, float]] = self.users
        else:
            active = [
                (uid, prob)
                for uid, prob, start, end in zip(
                    self.uids, self.probs, self.starts, self.ends, strict=True
                )
                if start <= ds < end
            ]
        for uid, prob in active:
            if rnd() >= prob * factor:
                continue
            ts = ds + (work_start + int(rnd() * _WORKDAY_MS)) % DAY_MS
            if ts >= silent_at:
                continue
            seq += 1
            value = f'{head}{seq}{login}{ts},"user_id":"{uid}"}}\n'.encode()
            out.append((ts, index, "login", value, _VALID))
            if bad_p and self.bad_rng.random() < bad_p:
                out.append(self._flawed(ts, "login", orjson.loads(value)))
            for _ in range(2 if rnd() < extra else 1):
                ts = min(ts + _MINUTE_MS + int(rnd() * 20 * _MINUTE_MS), de - 1)
                if ts >= silent_at:
                    break
                seq += 1
                value = (
                    f'{head}{seq}{feature_use}{ts},"user_id":"{uid}",'
                    f'"feature":"{features[int(rnd() * n_features)]}",'
                    f'"count":{1 + int(rnd() * count_max)}}}\n'
                ).encode()
                out.append((ts, index, "feature-use", value, _VALID))
                if bad_p and self.bad_rng.random() < bad_p:
                    out.append(self._flawed(ts, "feature-use", orjson.loads(value)))
        self.seq = seq

        # Support tickets of everyday life.
        declining = ds >= self.pivot and self.persona == "declining"
        if rnd() < (self.ticket_rate * 2.0 if declining else self.ticket_rate):
            at = ds + (work_start + int(rnd() * _WORKDAY_MS)) % DAY_MS
            priority = _PRIORITIES[int(rnd() * len(_PRIORITIES))]
            urgent = priority == "urgent"
            self._ticket(
                at,
                priority,
                escalate=0.3 if urgent else 0.05,
                resolve=(HOUR_MS, 12 * HOUR_MS) if urgent else (4 * HOUR_MS, 3 * DAY_MS),
                csat=(2, 3) if declining else spec.csat,
                reopen=0.05,
            )

        if weekday == 0 or weekday == 3:
            at = ds + (work_start + HOUR_MS) % DAY_MS
            amount = round(self.audience * self._kpi_level(at) * (0.85 + 0.3 * rnd()))
            if amount > 0:
                event = self._new(at, "kpi")
                event["metric"] = "newsletters_sent"
                event["value"] = amount
                self._emit(out, at, "outcome", event)

        pending = self.pending
        if pending and pending[0][0] < de:
            self._drain(de, out)
        outcomes = self.outcomes
        if outcomes and outcomes[0][0] < de:
            self._send_outcomes(de, out)

    def _scheduled(self, de: int, out: list[_Entry]) -> None:
        """The account's rare, scheduled work due before ``de`` (all in that day)."""
        rng = self.rng
        spec = self.spec
        if self.feature_phases and self.feature_phases[0][0] < de:
            self.features = self.feature_phases.pop(0)[1]
        if self.changes and self.changes[0][0] < de:
            _, self.seats, self.arr = self.changes.pop(0)
        if self.next_touch < de:
            at = self.next_touch
            event = self._new(at, "csm_touch")
            event["channel"] = rng.choice(_CHANNELS)
            self._emit(out, at, "engagement", event)
            if rng.random() < 0.35:
                self._pulse(at + HOUR_MS + int(rng.random() * 5 * HOUR_MS), self._rating(at))
            touch_lo, touch_hi = spec.touch_days
            if self.persona == "onboarding" and at > self.first_campaign_at + 14 * DAY_MS:
                touch_lo, touch_hi = 14, 30
            self.next_touch = at + _days(rng, touch_lo, touch_hi)
        if self.next_nps < de:
            at = self.next_nps
            event = self._new(at, "survey")
            event["kind"] = "nps"
            event["score"] = self._nps(at)
            self._emit(out, at, "engagement", event)
            self.next_nps = at + _days(rng, 30, 75)
        if self.next_invoice < de:
            self._invoice(self.next_invoice)
            self.next_invoice += 30 * DAY_MS
        if self.renewal_stage_at < de:
            self._snapshot(self.renewal_stage_at, lifecycle_stage="renewal")
            self.renewal_stage_at = _NEVER
        if self.renew_action_at < de:
            self._renew(self.renew_action_at)
        self._update_due()

    def _update_due(self) -> None:
        self.next_due = min(
            self.next_touch,
            self.next_nps,
            self.next_invoice,
            self.renewal_stage_at,
            self.renew_action_at,
            self.feature_phases[0][0] if self.feature_phases else _NEVER,
            self.changes[0][0] if self.changes else _NEVER,
        )

    def _drain(self, before: int, out: list[_Entry]) -> None:
        pending = self.pending
        while pending and pending[0][0] < before:
            ts, _, kind, event = heapq.heappop(pending)
            self._emit(out, ts, kind, event)

    def _invoice(self, at: int) -> None:
        rng = self.rng
        overdue = self.spec.overdue
        if self.persona == "declining" and at >= self.pivot + 7 * DAY_MS:
            overdue = 0.5
        elif self.persona == "ticket_storm" and at >= self.pivot:
            overdue = 0.15
        self.invoices += 1
        invoice_id = f"{self.account_id}-i{self.invoices}"
        amount = round(self.arr / 12.0, 2)
        event = self._new(at, "invoice")
        event["invoice_id"] = invoice_id
        if rng.random() < overdue:
            event["status"] = "overdue"
            event["amount"] = amount
            self._schedule(at, "outcome", event)
            if rng.random() < 0.5:
                paid_at = at + _days(rng, 5, 20)
                paid = self._new(paid_at, "invoice")
                paid["invoice_id"] = invoice_id
                paid["status"] = "paid"
                paid["amount"] = amount
                self._schedule(paid_at, "outcome", paid)
        else:
            event["status"] = "paid"
            event["amount"] = amount
            self._schedule(at, "outcome", event)

    def _renew(self, at: int) -> None:
        """The contract comes up for renewal (``at``, 5-30 days before it ends):
        the account churns or renews (see the module's "Outcomes")."""
        rng = self.rng
        persona = self.persona
        after = at >= self.pivot
        before_chance, after_chance = CHURN_CHANCE[persona]
        if self.fate_rng.random() < (after_chance if after else before_chance):
            end = self.renewal_at
            self._contract(at, "churn_notice", self.arr)
            self._contract(end, "churned", self.arr)
            # The customer is gone: nothing after the contract's end.
            self.silent_at = min(self.silent_at, end + 1)
            self.renew_action_at = _NEVER
            self.renewal_stage_at = _NEVER
            return
        downgrade = (persona == "declining" and after) or (
            persona == "ticket_storm" and after and rng.random() < 0.5
        )
        self.renewal_at += YEAR_MS
        if downgrade:
            seats = max(1, round(self.seats * 0.7))
            arr = round(self.arr * 0.7, 2)
            self._contract(at, "renewal", arr)
            self._contract(at, "downgrade", round(self.arr - arr, 2))
            self._snapshot(
                at + _MINUTE_MS,
                seats=seats,
                arr=arr,
                lifecycle_stage="maturity",
                renewal_at=self.renewal_at,
            )
            self.seats = seats
            self.arr = arr
        else:
            self._contract(at, "renewal", self.arr)
            self._snapshot(at + _MINUTE_MS, lifecycle_stage="maturity", renewal_at=self.renewal_at)
        self.renew_action_at = self.renewal_at - _days(rng, 5, 30)
        self.renewal_stage_at = self.renewal_at - 90 * DAY_MS

    def plan_of(self) -> AccountPlan:
        return AccountPlan(
            index=self.index,
            account_id=self.account_id,
            persona=self.persona,
            segment=self.segment,
            plan=self.plan,
            seats=self.seats,
            arr=self.arr,
            lifecycle_stage=self.stage,
            customer_since=self.customer_since,
            renewal_at=self.renewal_at,
            active_users=self.active_at_start,
            pivot_at=self.pivot,
        )


def _uniform(rng: Random, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _days(rng: Random, lo: float, hi: float) -> int:
    """A random duration between ``lo`` and ``hi`` days, in ms."""
    return int((lo + (hi - lo) * rng.random()) * DAY_MS)


def _weighted(rng: Random, weights: tuple[float, ...]) -> int:
    roll = rng.random() * sum(weights)
    for i, weight in enumerate(weights):
        roll -= weight
        if roll < 0:
            return i
    return len(weights) - 1


def _pick_list(everyday: Iterable[str], keys: Iterable[str]) -> tuple[str, ...]:
    picks: list[str] = []
    for name in everyday:
        picks.extend([name] * EVERYDAY_FEATURES[name])
    for name in keys:
        picks.extend([name] * 3)
    return tuple(picks)


# --- many accounts -------------------------------------------------------------


class _World:
    """All accounts, merged into one stream ordered by occurred_at."""

    def __init__(
        self,
        accounts: int,
        seed: int,
        personas: Mapping[str, float] | None,
        start_ms: int,
        pivot_window: tuple[int, int],
        tag: str,
        invalid_rate: float,
    ) -> None:
        bounds = _cumulative(normalise_personas(personas))
        offset = _persona_offset(seed)
        self.start_ms = start_ms
        self.accounts = [
            _Account(
                i,
                _pick_persona(i, offset, bounds),
                seed,
                start_ms,
                pivot_window,
                tag,
                invalid_rate,
            )
            for i in range(accounts)
        ]
        #: Messages in the latest simulated day (a measure of the natural rate).
        self.last_day_size = 0

    def days(self, end_ms: int | None) -> Iterator[list[_Entry]]:
        """Each simulated day's messages, sorted; only those in [start_ms, end_ms)."""
        start = self.start_ms
        ds = start - start % DAY_MS
        accounts = self.accounts
        while end_ms is None or ds < end_ms:
            # Once every account is finished nothing more can come (all() stops
            # at the first account still in business, usually the first).
            if all(account.finished(ds) for account in accounts):
                break
            batch: list[_Entry] = []
            weekday = (ds // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
            for account in accounts:
                account.day(ds, weekday, batch)
            batch.sort(key=_TS)  # stable: ties keep account and generation order
            if batch and batch[0][0] < start:
                del batch[: bisect_left(batch, start, key=_TS)]
            if end_ms is not None and batch and batch[-1][0] >= end_ms:
                del batch[bisect_left(batch, end_ms, key=_TS) :]
            self.last_day_size = len(batch)
            yield batch
            ds += DAY_MS

    def entries(self, end_ms: int | None) -> Iterator[_Entry]:
        for batch in self.days(end_ms):
            yield from batch

    def event(self, entry: _Entry, stamp: int | None = None) -> SimEvent:
        """The message of an entry; ``stamp`` replaces occurred_at (live mode)."""
        ts, index, kind, line, flaw = entry
        account = self.accounts[index]
        value = line[:-1]
        if stamp is not None:
            ts = stamp
            if flaw != _NOT_JSON:
                obj = orjson.loads(value)
                if type(obj.get("occurred_at")) is int:
                    obj["occurred_at"] = stamp
                    # An expiry in simulated time means nothing on the wall
                    # clock: the default (30 days) applies instead.
                    obj.pop("expires_at", None)
                    value = _dumps(obj)
        return SimEvent(
            kind, account.key, value, ts, account.account_id, account.persona, flaw != _VALID
        )


def _check(accounts: int, invalid_rate: float) -> None:
    if accounts < 1:
        raise ValueError("accounts must be at least 1")
    if not 0.0 <= invalid_rate <= 0.5:
        raise ValueError("invalid_rate must be between 0 and 0.5")


def _history_world(
    accounts: int,
    days: int,
    end_ms: int,
    seed: int,
    personas: Mapping[str, float] | None,
    invalid_rate: float,
) -> _World:
    _check(accounts, invalid_rate)
    if days < 1:
        raise ValueError("days must be at least 1")
    span = days * DAY_MS
    start = end_ms - span
    # Pivots fall between 35% and 50% of the history, so that at least two weeks
    # of a 30-day history show each persona's change.
    window = (start + int(span * 0.35), start + int(span * 0.5))
    tag = _run_tag("history", seed, end_ms)
    return _World(accounts, seed, personas, start, window, tag, invalid_rate)


def account_plans(
    accounts: int,
    days: int,
    end_ms: int,
    seed: int,
    personas: Mapping[str, float] | None = None,
) -> list[AccountPlan]:
    """The accounts :func:`generate_history` simulates for the same arguments."""
    world = _history_world(accounts, days, end_ms, seed, personas, 0.0)
    return [account.plan_of() for account in world.accounts]


def generate_history(
    accounts: int,
    days: int,
    end_ms: int,
    seed: int,
    personas: Mapping[str, float] | None = None,
    invalid_rate: float = 0.0,
) -> Iterator[SimEvent]:
    """``days`` days of history ending (exclusively) at ``end_ms``, ordered by occurred_at.

    A lazy stream: memory stays at about one simulated day of messages. About
    3.5 messages per account and day with the default mix (10,000 accounts
    over 30 days give about 1M). ``invalid_rate`` (0-0.5) is the share of
    deliberately broken messages. Raises ``ValueError`` for bad arguments.
    """
    world = _history_world(accounts, days, end_ms, seed, personas, invalid_rate)
    return _stream(world, end_ms)


def history_jsonl(
    accounts: int,
    days: int,
    end_ms: int,
    seed: int,
    personas: Mapping[str, float] | None = None,
    invalid_rate: float = 0.0,
    chunk: int = 8192,
) -> Iterator[tuple[bytes, int, int]]:
    """:func:`generate_history` as JSONL, the fast way to a file.

    Yields ``(lines, messages, invalid)``: up to ``chunk`` newline-terminated
    message values, how many, and how many of them are invalid. The lines are
    exactly the ``value`` of the same :func:`generate_history` messages.
    """
    world = _history_world(accounts, days, end_ms, seed, personas, invalid_rate)
    return _jsonl(world, end_ms, chunk)


def _jsonl(world: _World, end_ms: int, chunk: int) -> Iterator[tuple[bytes, int, int]]:
    for batch in world.days(end_ms):
        for first in range(0, len(batch), chunk):
            part = batch[first : first + chunk]
            invalid = sum(1 for entry in part if entry[4] != _VALID)
            yield b"".join([entry[3] for entry in part]), len(part), invalid


def _stream(world: _World, end_ms: int) -> Iterator[SimEvent]:
    event = world.event
    for batch in world.days(end_ms):
        for entry in batch:
            yield event(entry)


#: Without a time scale, simulated time runs this many times faster than the
#: day holding the live start would need for ``rate`` (weekend days have a
#: quarter of a weekday's sessions); the rate cap keeps the output at ``rate``.
LIVE_HEADROOM = 4.0


def generate_live(
    accounts: int,
    seed: int,
    personas: Mapping[str, float] | None = None,
    *,
    rate: float | None = None,
    time_scale: float | None = None,
    warmup_days: int = 30,
    invalid_rate: float = 0.0,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[SimEvent]:
    """Warm-up history, then live events stamped with the wall clock.

    First ``warmup_days`` of history up to now, as fast as the consumer takes
    them (``occurred_at`` in the past). Then simulated time runs on from now,
    ``time_scale`` simulated seconds per wall second, and each message is
    yielded when its simulated time comes, with ``occurred_at`` = now (never in
    the future). Without ``time_scale`` the output is ``rate`` messages per
    second (default 500), simulated time running as fast as that needs; with
    both, ``rate`` caps the output and simulated time slows down.
    Persona pivots fall between half a day and four simulated days after the
    live start, so the changes show within minutes.

    Ends after ``duration`` live seconds (None: never) or when ``stop`` is set.
    """
    _check(accounts, invalid_rate)
    if warmup_days < 0:
        raise ValueError("warmup_days must be >= 0")
    for name, value in (("rate", rate), ("time_scale", time_scale)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number > 0")
    if duration is not None and not duration >= 0:
        raise ValueError("duration must be >= 0")
    return _live(
        accounts,
        seed,
        personas,
        rate,
        time_scale,
        warmup_days,
        invalid_rate,
        duration,
        stop,
        clock,
    )


async def _live(
    accounts: int,
    seed: int,
    personas: Mapping[str, float] | None,
    rate: float | None,
    time_scale: float | None,
    warmup_days: int,
    invalid_rate: float,
    duration: float | None,
    stop: asyncio.Event | None,
    clock: Callable[[], float],
) -> AsyncIterator[SimEvent]:
    now0 = int(clock() * 1000)
    window = (now0 + DAY_MS // 2, now0 + 4 * DAY_MS)
    world = _World(
        accounts,
        seed,
        personas,
        now0 - warmup_days * DAY_MS,
        window,
        _run_tag("live", seed, now0),
        invalid_rate,
    )
    entries = world.entries(None)
    entry = next(entries, None)
    count = 0
    while entry is not None and entry[0] < now0:
        yield world.event(entry)
        count += 1
        if count % 1000 == 0:
            await asyncio.sleep(0)
            if stop is not None and stop.is_set():
                return
        entry = next(entries, None)
    if entry is None:  # every account went silent
        return

    # The day holding now0 is generated: its size is the natural rate.
    natural = max(world.last_day_size, 1) / 86_400.0  # messages per simulated second
    if time_scale is None:
        # Simulated time runs with room to spare and the rate paces the output:
        # a scale fitted to one day alone gave a quarter of the rate at weekends
        # (and the quiet hours of every day), about 76% of it on average.
        rate = rate or 500.0
        scale = LIVE_HEADROOM * rate / natural
    else:
        scale = time_scale
    wall0 = clock()
    last = wall0
    tokens = 1.0
    burst = max(1.0, (rate or 0.0) * 0.1)
    last_stamp = 0
    while True:
        if stop is not None and stop.is_set():
            return
        now = clock()
        if duration is not None and now - wall0 >= duration:
            return
        if rate is not None:
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
        sim_now = now0 + (now - wall0) * 1000.0 * scale
        sent = 0
        while entry[0] <= sim_now and (rate is None or tokens >= 1.0) and sent < 1000:
            stamp = max(last_stamp, int(clock() * 1000))
            last_stamp = stamp
            yield world.event(entry, stamp)
            tokens -= 1.0
            sent += 1
            entry = next(entries, None)
            if entry is None:
                return
        due = wall0 + (entry[0] - now0) / 1000.0 / scale - clock()
        token_wait = 0.0 if rate is None or tokens >= 1.0 else (1.0 - tokens) / rate
        await asyncio.sleep(min(max(due, token_wait, 0.0), 0.25))


# --- Kafka ---------------------------------------------------------------------


async def _aiter(events: Iterable[SimEvent] | AsyncIterable[SimEvent]) -> AsyncIterator[SimEvent]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def _ensure_topics(settings: Settings, *, create: bool, wait_s: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    names = [settings.input_topic(kind) for kind in INPUT_TOPIC_KINDS]
    admin = AIOKafkaAdminClient(
        **settings.aiokafka_kwargs(),
        request_timeout_ms=max(1000, int(wait_s * 1000)),
    )
    try:
        try:
            await asyncio.wait_for(admin.start(), wait_s)
            existing = set(await asyncio.wait_for(admin.list_topics(), wait_s))
        except (TimeoutError, KafkaError, OSError) as exc:
            raise ProduceError(
                f"cannot reach Kafka at {settings.bootstrap_servers} within {wait_s:g} s: "
                f"{_why(exc)}"
            ) from exc
        missing = [name for name in names if name not in existing]
        if not missing:
            return
        if not create:
            raise ProduceError(
                f"missing input topic(s) {', '.join(missing)}: start a worker first "
                "or pass --create-topics"
            )
        try:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.partitions,
                        replication_factor=settings.replication_factor,
                    )
                    for name in missing
                ]
            )
        except KafkaError as exc:
            raise ProduceError(f"cannot create topics: {_why(exc)}") from exc
        for topic_error in getattr(response, "topic_errors", []):
            name, code = topic_error[0], topic_error[1]
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                raise ProduceError(f"cannot create topic {name}: error code {code}")
    finally:
        await admin.close()


async def produce(
    events: Iterable[SimEvent] | AsyncIterable[SimEvent],
    settings: Settings,
    rate: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    *,
    stop: asyncio.Event | None = None,
    create_topics: bool = False,
    connect_timeout: float = 15.0,
) -> int:
    """Send events to their input topics, keyed by account id; returns how many.

    Every message is acknowledged (acks=all) before this returns. Partitions
    are chosen like Kafka's default partitioner (murmur2 of the key), and one
    account's messages keep their order. ``rate`` caps messages per second;
    ``progress(sent, seconds)`` is called about every 2 s; ``stop`` ends early
    (what was produced is flushed). The input topics must exist unless
    ``create_topics`` (missing ones are then created with
    ``settings.partitions`` / ``replication_factor``). Raises
    :class:`ProduceError` when Kafka is unreachable within ``connect_timeout``
    seconds, a topic is missing or a delivery fails.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    await _ensure_topics(settings, create=create_topics, wait_s=connect_timeout)
    producer = AIOKafkaProducer(
        **settings.aiokafka_kwargs(),
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=max(settings.max_event_bytes * 2, 2 * 1024 * 1024),
    )
    try:
        await asyncio.wait_for(producer.start(), connect_timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        await producer.stop()
        raise ProduceError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {_why(exc)}"
        ) from exc
    try:
        return await _BatchSender(producer, settings).run(events, rate, progress, stop)
    except KafkaError as exc:
        raise ProduceError(f"delivery to Kafka failed: {_why(exc)}") from exc
    finally:
        await producer.stop()


class _BatchSender:
    """Fills one record batch per partition and ships full (or 20 ms old) ones.

    aiokafka's per-message ``send()`` costs tens of microseconds a message; its
    batch API is several times faster. aiokafka takes one batch per partition
    at a time, so each partition has its own queue of closed batches and its
    own shipping task: partitions go in parallel, and each keeps its order
    (batches are closed and queued synchronously, in production order).
    """

    LINGER_S: Final = 0.02
    MAX_QUEUED: Final = 256  # closed batches not yet taken by aiokafka
    MAX_IN_FLIGHT: Final = 32  # unacknowledged batches per partition

    def __init__(self, producer: Any, settings: Settings) -> None:
        self.producer = producer
        self.topics = {kind: settings.input_topic(kind) for kind in INPUT_TOPIC_KINDS}
        self.partitions: dict[str, list[int]] = {}
        self.partition_of: dict[tuple[str, bytes], int] = {}
        self.open: dict[tuple[str, int], Any] = {}
        self.queues: dict[tuple[str, int], asyncio.Queue[Any]] = {}
        self.shippers: list[asyncio.Task[None]] = []
        self.queued = 0
        # Set while few enough batches wait, so the producing loop may go on.
        self.room = asyncio.Event()
        self.room.set()
        # Set when a shipper failed (its exception comes out of the gather at the end).
        self.broken = asyncio.Event()

    def _partition(self, kind: str, key: bytes) -> int:
        from service.processing.partitioning import account_partition

        partitions = self.partitions[kind]
        partition = partitions[account_partition(key, len(partitions))]
        self.partition_of[(kind, key)] = partition
        return partition

    def _close(self, where: tuple[str, int]) -> None:
        batch = self.open.pop(where)
        batch.close()
        queue = self.queues.get(where)
        if queue is None:
            queue = self.queues[where] = asyncio.Queue()
            self.shippers.append(asyncio.create_task(self._ship(where, queue)))
        queue.put_nowait(batch)
        self.queued += 1
        if self.queued > self.MAX_QUEUED:
            self.room.clear()

    def _close_all(self) -> None:
        for where in list(self.open):
            self._close(where)

    async def _ship(self, where: tuple[str, int], queue: asyncio.Queue[Any]) -> None:
        kind, partition = where
        topic = self.topics[kind]
        in_flight: deque[asyncio.Future[Any]] = deque()
        try:
            while (batch := await queue.get()) is not None:
                self.queued -= 1
                if self.queued <= self.MAX_QUEUED // 2:
                    self.room.set()
                in_flight.append(await self.producer.send_batch(batch, topic, partition=partition))
                while len(in_flight) > self.MAX_IN_FLIGHT or (in_flight and in_flight[0].done()):
                    await in_flight.popleft()
            while in_flight:
                await in_flight.popleft()
        except BaseException:
            self.broken.set()
            self.room.set()
            raise

    async def _linger(self) -> None:
        while True:
            await asyncio.sleep(self.LINGER_S)
            self._close_all()

    async def run(
        self,
        events: Iterable[SimEvent] | AsyncIterable[SimEvent],
        rate: float | None,
        progress: Callable[[int, float], None] | None,
        stop: asyncio.Event | None,
    ) -> int:
        for kind, topic in self.topics.items():
            self.partitions[kind] = sorted(await self.producer.partitions_for(topic))
        linger = asyncio.create_task(self._linger())
        sent = 0
        started = time.monotonic()
        next_report = started + 2.0
        partition_of = self.partition_of
        open_batches = self.open
        try:
            async for event in _aiter(events):
                if stop is not None and stop.is_set():
                    break
                kind = event.topic_kind
                partition = partition_of.get((kind, event.key))
                if partition is None:
                    partition = self._partition(kind, event.key)
                where = (kind, partition)
                batch = open_batches.get(where)
                if batch is None:
                    batch = open_batches[where] = self.producer.create_batch()
                if batch.append(key=event.key, value=event.value, timestamp=None) is None:
                    self._close(where)
                    batch = open_batches[where] = self.producer.create_batch()
                    if batch.append(key=event.key, value=event.value, timestamp=None) is None:
                        raise ProduceError(f"message of {len(event.value)} bytes is too large")
                sent += 1
                if sent % 256 == 0:
                    if not self.room.is_set():
                        await self.room.wait()
                    if self.broken.is_set():
                        break  # the shipper's exception is raised below
                    now = time.monotonic()
                    if progress is not None and now >= next_report:
                        progress(sent, now - started)
                        next_report = now + 2.0
                if rate is not None:
                    ahead = started + sent / rate - time.monotonic()
                    if ahead > 0.005:
                        await asyncio.sleep(ahead)
        finally:
            linger.cancel()
            self._close_all()
            for queue in self.queues.values():
                queue.put_nowait(None)
            # On success this waits for every acknowledgement; on failure it
            # raises the first shipper's error.
            results = await asyncio.gather(*self.shippers, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.producer.flush()
        return sent
