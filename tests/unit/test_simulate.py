"""The simulator: determinism, validity, order and the personas' stories in the data."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from schemas.decode import Rejected, decode_event
from service.runtime.settings import INPUT_TOPIC_KINDS, load_settings
from service.tools.simulate import (
    DAY_MS,
    DEFAULT_PERSONAS,
    HOUR_MS,
    KEY_FEATURES,
    PERSONAS,
    TOPIC_KIND_OF_TYPE,
    WEEK_MS,
    AccountPlan,
    ProduceError,
    SimEvent,
    account_plans,
    generate_history,
    generate_live,
    normalise_personas,
    parse_personas,
    persona_of,
    produce,
)

END = 1_717_200_000_000  # 2024-06-01T00:00:00Z
FAR_FUTURE = END + 365 * DAY_MS  # the decoder's clock: nothing counts as a future event


def history(
    accounts: int = 40,
    days: int = 30,
    seed: int = 1,
    personas: dict[str, float] | None = None,
    invalid_rate: float = 0.0,
) -> list[SimEvent]:
    return list(generate_history(accounts, days, END, seed, personas, invalid_rate))


def objects(events: Iterable[SimEvent]) -> list[dict[str, Any]]:
    return [orjson.loads(event.value) for event in events if not event.invalid]


def plans(
    accounts: int, days: int = 30, seed: int = 1, personas: dict[str, float] | None = None
) -> dict[str, AccountPlan]:
    return {plan.account_id: plan for plan in account_plans(accounts, days, END, seed, personas)}


# --- determinism ------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    first = history(seed=5, invalid_rate=0.05)
    second = history(seed=5, invalid_rate=0.05)
    assert first == second
    assert b"".join(e.value for e in first) == b"".join(e.value for e in second)


def test_different_seed_gives_different_stream() -> None:
    assert [e.value for e in history(seed=1)] != [e.value for e in history(seed=2)]


def test_invalid_messages_do_not_change_the_valid_ones() -> None:
    clean = [e.value for e in history(seed=3)]
    mixed = [e.value for e in history(seed=3, invalid_rate=0.2) if not e.invalid]
    assert mixed == clean


def test_history_is_lazy() -> None:
    # 100k accounts over a year would not fit in memory as a list; the first
    # messages still come at once.
    stream = generate_history(2000, 365, END, 1)
    first = list(itertools.islice(stream, 10))
    assert len(first) == 10


# --- validity and order -------------------------------------------------------------


def test_every_event_decodes_on_its_topic_with_its_key() -> None:
    events = history(accounts=80, days=45)
    seen_types: Counter[str] = Counter()
    for event in events:
        decoded = decode_event(
            event.value, topic_kind=event.topic_kind, key=event.key, now_ms=FAR_FUTURE
        )
        assert decoded.account_id == event.account_id
        assert event.key == event.account_id.encode()
        assert decoded.occurred_at == event.occurred_at
        assert TOPIC_KIND_OF_TYPE[decoded.type] == event.topic_kind
        assert END - 45 * DAY_MS <= event.occurred_at < END
        seen_types[decoded.type] += 1
    assert set(seen_types) == set(TOPIC_KIND_OF_TYPE)
    assert {event.topic_kind for event in events} == set(INPUT_TOPIC_KINDS)


def test_values_are_canonical_json() -> None:
    # Logins and feature use are formatted by hand for speed: same bytes as orjson.
    for event in history(accounts=30, days=10):
        assert orjson.dumps(orjson.loads(event.value)) == event.value


def test_history_is_ordered_and_ids_are_unique() -> None:
    events = history(accounts=60, days=30)
    times = [event.occurred_at for event in events]
    assert times == sorted(times)
    ids = [obj["event_id"] for obj in objects(events)]
    assert len(ids) == len(set(ids))


def test_runs_with_other_end_or_seed_never_reuse_ids() -> None:
    ids_a = {obj["event_id"] for obj in objects(history(accounts=5, seed=1))}
    ids_b = {obj["event_id"] for obj in objects(history(accounts=5, seed=2))}
    other_end = generate_history(5, 30, END + DAY_MS, 1)
    ids_c = {obj["event_id"] for obj in objects(other_end)}
    assert not ids_a & ids_b
    assert not ids_a & ids_c


def test_account_snapshot_comes_first() -> None:
    first_type: dict[str, str] = {}
    for obj in objects(history(accounts=50)):
        first_type.setdefault(obj["account_id"], obj["type"])
    assert set(first_type.values()) == {"account"}


def test_volume_is_about_a_hundred_messages_per_account_and_month() -> None:
    # 10k accounts x 30 days is about 1M messages with the default mix.
    events = history(accounts=1000, days=30)
    assert 80_000 <= len(events) <= 125_000


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_invalid_rate_gives_that_share_of_rejected_messages(rate: float) -> None:
    events = history(accounts=100, days=20, invalid_rate=rate)
    reasons: Counter[str] = Counter()
    for event in events:
        try:
            decode_event(event.value, topic_kind=event.topic_kind, key=event.key, now_ms=FAR_FUTURE)
        except Rejected as exc:
            assert event.invalid
            reasons[exc.reason] += 1
        else:
            assert not event.invalid
    share = sum(reasons.values()) / len(events)
    assert rate * 0.85 <= share <= rate * 1.15
    assert set(reasons) == {"not_json", "missing_field", "invalid_field"}


# --- personas -----------------------------------------------------------------------


def test_persona_mix_follows_the_shares() -> None:
    counts = Counter(persona_of(i, 9, None) for i in range(1000))
    for name, share in DEFAULT_PERSONAS.items():
        assert abs(counts[name] / 1000 - share) < 0.02
    assert set(persona_of(i, 9, {"declining": 1}) for i in range(10)) == {"declining"}
    plan = plans(20, seed=9)
    assert all(p.persona == persona_of(p.index, 9, None) for p in plan.values())


def test_parse_personas() -> None:
    assert parse_personas("thriving=1,declining=3") == {"thriving": 0.25, "declining": 0.75}
    assert set(normalise_personas(None)) == set(PERSONAS)
    for bad in ("nobody=1", "thriving", "thriving=x", "thriving=-1", "thriving=0", ""):
        with pytest.raises(ValueError):
            parse_personas(bad)


def active_users(events: Iterable[dict[str, Any]], start: int, end: int) -> dict[str, set[str]]:
    users: dict[str, set[str]] = defaultdict(set)
    for obj in events:
        if obj["type"] == "login" and start <= obj["occurred_at"] < end:
            users[obj["account_id"]].add(obj["user_id"])
    return users


def test_declining_loses_half_of_its_active_users_each_week() -> None:
    mix = {"declining": 1.0}
    days = 42
    events = objects(history(accounts=60, days=days, personas=mix))
    ratios = []
    before_total = first_total = second_total = 0
    for account_id, plan in plans(60, days=days, personas=mix).items():
        pivot = plan.pivot_at
        before = active_users(events, pivot - WEEK_MS, pivot)[account_id]
        first = active_users(events, pivot, pivot + WEEK_MS)[account_id]
        second = active_users(events, pivot + WEEK_MS, pivot + 2 * WEEK_MS)[account_id]
        before_total += len(before)
        first_total += len(first)
        second_total += len(second)
        if first:
            ratios.append(len(second) / len(first))
    assert 0.35 <= second_total / first_total <= 0.65
    assert first_total < before_total
    # The KPI falls too.
    kpi_before = sum(
        o["value"] for o in events if o["type"] == "kpi" and o["occurred_at"] < END - 28 * DAY_MS
    )
    kpi_after = sum(
        o["value"] for o in events if o["type"] == "kpi" and o["occurred_at"] >= END - 14 * DAY_MS
    )
    assert kpi_after < kpi_before / 2


def test_under_licensed_uses_about_a_tenth_of_its_seats() -> None:
    mix = {"under_licensed": 1.0}
    events = objects(history(accounts=60, personas=mix))
    seats = sum(plan.seats for plan in plans(60, personas=mix).values())
    users = sum(len(u) for u in active_users(events, END - 30 * DAY_MS, END).values())
    assert 0.07 <= users / seats <= 0.15


def test_thriving_uses_most_seats_and_key_features() -> None:
    mix = {"thriving": 1.0}
    events = objects(history(accounts=40, personas=mix))
    account_plan = plans(40, personas=mix)
    users = active_users(events, END - 30 * DAY_MS, END)
    utilisation = sum(len(u) for u in users.values()) / sum(p.seats for p in account_plan.values())
    assert utilisation >= 0.7
    keys_used: dict[str, set[str]] = defaultdict(set)
    for obj in events:
        if obj["type"] == "feature_use" and obj["feature"] in KEY_FEATURES:
            keys_used[obj["account_id"]].add(obj["feature"])
    assert sum(len(k) >= 2 for k in keys_used.values()) >= 0.85 * len(account_plan)
    nps = [o["score"] for o in events if o["type"] == "survey" and o["kind"] == "nps"]
    assert nps
    assert min(nps) >= 8


def test_silent_churner_sends_nothing_after_going_silent() -> None:
    mix = {"silent_churner": 1.0}
    events = objects(history(accounts=40, personas=mix))
    account_plan = plans(40, personas=mix)
    last: dict[str, int] = {}
    for obj in events:
        if (
            obj["type"] == "contract"
            and obj["occurred_at"] >= account_plan[obj["account_id"]].pivot_at
        ):
            # Only the contract still comes up while nobody uses the product.
            assert obj["action"] in ("churn_notice", "churned", "renewal")
            continue
        last[obj["account_id"]] = obj["occurred_at"]
    for account_id, plan in account_plan.items():
        assert END - 30 * DAY_MS < plan.pivot_at < END
        assert last[account_id] < plan.pivot_at
    # ...and it was in use until shortly before.
    in_use = sum(
        bool(active_users(events, plan.pivot_at - 10 * DAY_MS, plan.pivot_at)[account_id])
        for account_id, plan in account_plan.items()
    )
    assert in_use >= 0.8 * len(account_plan)


def test_ticket_storm_brings_urgent_escalated_tickets_and_poor_csat() -> None:
    mix = {"ticket_storm": 1.0}
    events = objects(history(accounts=20, personas=mix))
    account_plan = plans(20, personas=mix)
    for account_id, plan in account_plan.items():
        tickets = [
            o
            for o in events
            if o["account_id"] == account_id
            and o["type"] == "support_ticket"
            and plan.pivot_at <= o["occurred_at"] < plan.pivot_at + 3 * DAY_MS
        ]
        opened = [o for o in tickets if o["status"] == "opened"]
        assert len(opened) >= 6
        assert sum(o["priority"] in ("high", "urgent") for o in opened) >= 0.8 * len(opened)
    storm_csat = [
        o["csat"]
        for o in events
        if o["type"] == "support_ticket" and "csat" in o and o["priority"] == "urgent"
    ]
    assert storm_csat
    assert sum(storm_csat) / len(storm_csat) <= 2.0
    assert any(o["type"] == "support_ticket" and o["status"] == "escalated" for o in events)
    assert any(o["type"] == "pulse" and o["rating"] == "red" for o in events)


def test_onboarding_reaches_its_milestones() -> None:
    mix = {"onboarding": 1.0}
    events = objects(history(accounts=20, days=45, personas=mix))
    account_plan = plans(20, days=45, personas=mix)
    milestones: dict[str, list[str]] = defaultdict(list)
    for obj in events:
        if obj["type"] == "milestone":
            milestones[obj["account_id"]].append(obj["name"])
    for account_id, plan in account_plan.items():
        assert plan.lifecycle_stage == "onboarding"
        assert milestones[account_id] == [
            "account_configured",
            "users_invited",
            "first_campaign_sent",
        ]
    snapshots = [o for o in events if o["type"] == "account" and "seats" in o]
    assert len(snapshots) == 20
    assert {o["lifecycle_stage"] for o in snapshots} == {"onboarding"}
    # The admin sets the account up; the others join after the invitations.
    joined = 0
    for account_id in account_plan:
        invited = next(
            o["occurred_at"]
            for o in events
            if o["account_id"] == account_id and o.get("name") == "users_invited"
        )
        assert active_users(events, 0, invited)[account_id] == {"u1"}
        joined += len(active_users(events, invited, END)[account_id] - {"u1"})
    assert joined >= 2 * len(account_plan)


def test_expanding_buys_seats_and_grows() -> None:
    mix = {"expanding": 1.0}
    events = objects(history(accounts=20, personas=mix))
    account_plan = plans(20, personas=mix)
    upsells = {o["account_id"] for o in events if o.get("action") == "upsell"}
    assert upsells == set(account_plan)
    for account_id, plan in account_plan.items():
        seats = [o["seats"] for o in events if o["account_id"] == account_id and "seats" in o]
        assert seats[0] == plan.seats
        assert seats[-1] > plan.seats
    users_before = active_users(events, END - 30 * DAY_MS, END - 18 * DAY_MS)
    users_after = active_users(events, END - 12 * DAY_MS, END)
    assert sum(map(len, users_after.values())) > sum(map(len, users_before.values()))


def contracts_by_account(events: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for obj in events:
        if obj["type"] == "contract":
            out[obj["account_id"]].append((obj["occurred_at"], obj["action"]))
    return out


def test_contracts_end_in_churn_or_renewal() -> None:
    days = 90
    events = objects(history(accounts=400, days=days, seed=4))
    account_plan = plans(400, days=days, seed=4)
    contracts = contracts_by_account(events)
    last_event = {obj["account_id"]: obj["occurred_at"] for obj in events}
    churned = renewed = 0
    start = END - days * DAY_MS
    for account_id, plan in account_plan.items():
        actions = contracts.get(account_id, [])
        outcomes = [(at, a) for at, a in actions if a in ("churn_notice", "churned", "renewal")]
        if plan.renewal_at >= END + 30 * DAY_MS:
            assert outcomes == []  # the contract does not come up in this history
            continue
        if plan.renewal_at < END and plan.renewal_at - 5 * DAY_MS > start:
            # Up in the history and ending in it: churned or renewed, one of the two.
            assert [a for _, a in outcomes] in (["churn_notice", "churned"], ["renewal"])
        if outcomes and outcomes[-1][1] == "churned":
            churned += 1
            notice_at, churned_at = outcomes[0][0], outcomes[-1][0]
            # The notice comes 5-30 days before the contract's end (at the start
            # of the history for a contract ending soon after), then nothing.
            assert churned_at == plan.renewal_at
            assert notice_at == start + HOUR_MS or churned_at - notice_at >= 5 * DAY_MS
            assert churned_at - notice_at <= 30 * DAY_MS
            assert last_event[account_id] == churned_at
        elif outcomes and outcomes[-1][1] == "renewal":
            renewed += 1
            renewed_at = outcomes[-1][0]
            assert renewed_at == start + HOUR_MS or plan.renewal_at - renewed_at >= 5 * DAY_MS
            assert plan.renewal_at - renewed_at <= 30 * DAY_MS
    # About a quarter of yearly contracts come up in 90 days; some of them churn.
    assert 60 <= churned + renewed <= 140
    assert 3 <= churned < renewed


def test_churn_follows_the_story_but_not_strictly() -> None:
    # Fate by persona, over many accounts whose contracts come up after the pivot.
    days = 90
    seeds = range(3)
    fates: dict[tuple[str, bool], Counter[str]] = defaultdict(Counter)
    for seed in seeds:
        account_plan = plans(600, days=days, seed=seed)
        for account_id, actions in contracts_by_account(
            objects(history(accounts=600, days=days, seed=seed))
        ).items():
            plan = account_plan[account_id]
            for at, action in actions:
                if action in ("churn_notice", "renewal"):
                    fates[(plan.persona, at >= plan.pivot_at)][action] += 1

    def churn_share(persona: str, after: bool) -> float:
        counts = fates[(persona, after)]
        return counts["churn_notice"] / max(1, counts["churn_notice"] + counts["renewal"])

    assert churn_share("declining", True) > 0.4
    assert churn_share("silent_churner", True) > 0.6
    assert churn_share("thriving", True) < 0.15 and churn_share("steady", True) < 0.2
    # Noise: some healthy accounts leave, some declining ones stay.
    healthy = fates[("thriving", True)] + fates[("steady", True)] + fates[("steady", False)]
    assert healthy["churn_notice"] >= 1
    assert fates[("declining", True)]["renewal"] >= 1


def test_a_silent_account_still_churns_at_the_end_of_its_contract() -> None:
    mix = {"silent_churner": 1.0}
    days = 90
    events = objects(history(accounts=150, days=days, seed=2, personas=mix))
    account_plan = plans(150, days=days, seed=2, personas=mix)
    silent_churns = [
        (account_id, at)
        for account_id, actions in contracts_by_account(events).items()
        for at, action in actions
        if action == "churned" and at > account_plan[account_id].pivot_at
    ]
    assert silent_churns
    for account_id, at in silent_churns:
        assert at == account_plan[account_id].renewal_at


def test_accounts_have_invoices_kpis_and_csm_touches() -> None:
    events = objects(history(accounts=50, days=45))
    by_type: dict[str, set[str]] = defaultdict(set)
    for obj in events:
        by_type[obj["type"]].add(obj["account_id"])
    assert len(by_type["invoice"]) >= 45
    assert len(by_type["kpi"]) >= 45
    assert len(by_type["csm_touch"]) >= 40
    assert all(o["metric"] == "newsletters_sent" for o in events if o["type"] == "kpi")


def test_bad_arguments_raise_value_error() -> None:
    for kwargs in (
        {"accounts": 0},
        {"days": 0},
        {"invalid_rate": 0.9},
        {"personas": {"nobody": 1.0}},
    ):
        args: dict[str, Any] = {"accounts": 2, "days": 2, "end_ms": END, "seed": 1}
        args.update(kwargs)
        with pytest.raises(ValueError):
            generate_history(**args)


# --- live ---------------------------------------------------------------------------


class FakeClock:
    """Wall clock that moves forward a little on every read."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


async def collect_live(**kwargs: Any) -> list[SimEvent]:
    return [event async for event in generate_live(**kwargs)]


def test_live_warms_up_then_stamps_events_with_now() -> None:
    started = int(time.time() * 1000)
    events = asyncio.run(
        collect_live(accounts=30, seed=1, warmup_days=7, time_scale=200_000.0, duration=1.0)
    )
    ended = int(time.time() * 1000)
    warmup = [e for e in events if e.occurred_at < started]
    live = [e for e in events if e.occurred_at >= started]
    assert warmup
    assert len(live) > 20
    assert min(e.occurred_at for e in warmup) >= started - 7 * DAY_MS - 1000
    # Warm-up first, in order; live stamps never go back and never run ahead.
    assert events[: len(warmup)] == warmup
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    assert max(times) <= ended
    for event in events:
        decode_event(event.value, topic_kind=event.topic_kind, key=event.key, now_ms=ended)
    ids = [obj["event_id"] for obj in objects(events)]
    assert len(ids) == len(set(ids))


def test_live_rate_caps_the_output() -> None:
    started = int(time.time() * 1000)

    async def run() -> int:
        count = 0
        async for event in generate_live(
            accounts=300, seed=1, warmup_days=0, rate=50.0, duration=2.0
        ):
            assert event.occurred_at >= started
            count += 1
        return count

    count = asyncio.run(run())
    assert 60 <= count <= 140


def test_live_stops_when_asked() -> None:
    async def run() -> int:
        stop = asyncio.Event()
        count = 0
        async for _ in generate_live(accounts=5, seed=1, warmup_days=30, stop=stop):
            count += 1
            if count == 10:
                stop.set()
        return count

    assert asyncio.run(run()) < 2000


# --- errors ---------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_produce_fails_quickly_without_a_broker() -> None:
    settings = load_settings(bootstrap_servers=f"127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(ProduceError, match="cannot reach Kafka"):
        asyncio.run(produce(history(accounts=1, days=1), settings, connect_timeout=5))
    assert time.monotonic() - started < 10


def test_cli_errors_are_one_line() -> None:
    from service.cli.simulate import simulate

    runner = CliRunner()
    for args in (
        ["--accounts", "0", "-o", "-"],
        ["--personas", "nobody=1", "-o", "-"],
        ["--invalid-rate", "0.9", "-o", "-"],
        ["--end", "yesterday", "-o", "-"],
        ["--bootstrap", f"127.0.0.1:{closed_port()}", "--connect-timeout", "3"],
    ):
        result = runner.invoke(simulate, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("vitals: error: ")


def test_cli_writes_jsonl_and_a_summary(tmp_path: Path) -> None:
    from service.cli.simulate import simulate

    runner = CliRunner()
    target = tmp_path / "events.jsonl"
    args = ["--accounts", "20", "--days", "7", "--end", "2024-06-01T00:00:00Z", "--seed", "2"]
    result = runner.invoke(simulate, [*args, "--invalid-rate", "0.1", "-o", str(target)])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    expected = list(generate_history(20, 7, END, 2, invalid_rate=0.1))
    assert target.read_bytes() == b"".join(event.value + b"\n" for event in expected)
    assert summary["events"] == len(expected)
    assert summary["invalid"] == sum(event.invalid for event in expected)
    assert summary["accounts"] == 20
    assert set(summary) == {"events", "accounts", "invalid", "seconds", "events_per_s"}

    # To stdout: the messages there, the summary on stderr.
    result = runner.invoke(simulate, [*args, "-o", "-", "--end", "1717200000000"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines == [event.value.decode() for event in generate_history(20, 7, END, 2)]
    assert orjson.loads(result.stderr.strip().splitlines()[-1])["events"] == len(lines)
