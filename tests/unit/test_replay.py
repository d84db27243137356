"""``vitals replay``: the model over a JSON-lines file, with invalid lines."""

from __future__ import annotations

import hashlib
import random
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from schemas.events import Event, event_to_json
from schemas.outputs import BucketChange, HealthScore, PlaybookTrigger
from service.cli.replay import replay as replay_cli
from service.model.account_state import AccountState
from service.model.cadence import Cadence
from service.model.playbooks import default_playbooks
from service.model.scorecard import (
    Scorecard,
    default_scorecard,
    parse_scorecard,
    shipped_scorecard,
)
from service.model.scoring import on_event, on_timer, score_at
from service.processing.replay import InvalidLine, decode_lines, replay
from tests.unit.test_scoring import SEATS_CARD, T0, at, event

SCORECARDS = Path(__file__).resolve().parents[2] / "service" / "model" / "scorecards"


def _line(e: Event) -> bytes:
    return orjson.dumps(event_to_json(e))


def _events() -> list[Event]:
    # Two accounts, "zeta" first in the file; zeta's seats fall from 90 to 30.
    return [
        event("account", at(0), "zeta", seats=90),
        event("account", at(0, 10), "alpha", seats=80, lifecycle_stage="onboarding"),
        event("login", at(1), "alpha", user_id="u1"),
        event("account", at(2), "zeta", seats=30),
        event("login", at(3), "zeta", user_id="u9", event_id="dup-1"),
    ]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    e = _events()
    lines = [
        _line(e[0]),
        _line(e[1]),
        b"{not json",  # line 3
        _line(e[2]),
        b"",  # blank: ignored
        b'{"event_id": "x", "type": "login", "occurred_at": 0}',  # line 6: no account_id
        _line(e[3]),
        b'{"event_id": "y", "account_id": "zeta", "type": "logout", "occurred_at": 0}',  # line 8
        b'{"event_id": "z", "account_id": "zeta", "type": "account", "occurred_at": 0, '
        b'"seats": -1}',  # line 9
        _line(e[4]),
        _line(e[4]),  # line 11: a duplicate
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def seats_card(tmp_path: Path) -> Path:
    path = tmp_path / "seats.yaml"
    path.write_text(textwrap.dedent(SEATS_CARD))
    return path


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(replay_cli, list(args), input=stdin)


def _scores(result: Result) -> list[HealthScore]:
    return [HealthScore.model_validate_json(line) for line in result.stdout.splitlines()]


def _without_computed_at(result: Result) -> list[HealthScore]:
    return [s.model_copy(update={"computed_at": "-"}) for s in _scores(result)]


def _summary(result: Result) -> dict[str, Any]:
    last = result.stderr.strip().splitlines()[-1]
    summary: dict[str, Any] = orjson.loads(last)["summary"]
    return summary


def test_replay_prints_one_score_per_account_and_reports_invalid_lines(
    events_file: Path, seats_card: Path, tmp_path: Path
) -> None:
    changes = tmp_path / "changes.jsonl"
    result = run(str(events_file), "--scorecard", str(seats_card), "--changes", str(changes))
    assert result.exit_code == 0, result.output
    scores = _scores(result)
    assert [s.account_id for s in scores] == ["alpha", "zeta"]
    alpha, zeta = scores
    assert (alpha.score, alpha.bucket, alpha.stage) == (80.0, "green", "onboarding")
    assert (zeta.score, zeta.bucket, zeta.stage) == (30.0, "red", "unknown")
    assert alpha.as_of == zeta.as_of == "2024-03-07T09:00:00Z"  # default: latest event
    assert alpha.scorecard.name == "seats"

    errors = result.stderr.strip().splitlines()[:-1]
    assert [line.split(": ")[1:3] for line in errors] == [
        ["line 3", "not_json"],
        ["line 6", "missing_field"],
        ["line 8", "unknown_type"],
        ["line 9", "invalid_field"],
    ]
    assert "seats" in errors[3]
    assert _summary(result) == {
        "lines": 11,
        "events": 6,
        "invalid": 4,
        "applied": 5,
        "triggers": 0,  # the 'seats' scorecard lacks the shipped playbooks' metrics
        "duplicates": 1,
        "late": 0,
        "after_as_of": 0,
        "accounts": 2,
        "changes": 1,
        "as_of": "2024-03-07T09:00:00Z",
    }
    (change,) = [BucketChange.model_validate_json(x) for x in changes.read_bytes().splitlines()]
    assert (change.account_id, change.from_bucket, change.to_bucket) == ("zeta", "green", "red")
    assert (change.previous_score, change.score) == (90.0, 30.0)
    assert change.as_of == "2024-03-06T09:00:00Z"
    assert [d.metric for d in change.drivers] == ["seats"]


def test_as_of_takes_rfc3339_or_epoch_ms_and_skips_later_events(
    events_file: Path, seats_card: Path
) -> None:
    by_text = run(
        str(events_file), "--scorecard", str(seats_card), "--as-of", "2024-03-05T12:00:00+02:00"
    )
    by_ms = run(str(events_file), "--scorecard", str(seats_card), "--as-of", str(at(1, 10)))
    assert by_text.exit_code == by_ms.exit_code == 0
    assert _without_computed_at(by_text) == _without_computed_at(by_ms)
    zeta = _without_computed_at(by_ms)[1]
    assert (zeta.score, zeta.as_of) == (90.0, "2024-03-05T10:00:00Z")  # before the drop
    assert _summary(by_ms)["after_as_of"] == 3


def test_triggers_file_holds_the_playbook_triggers(tmp_path: Path) -> None:
    events = tmp_path / "golden.jsonl"
    events.write_bytes(b"\n".join(golden_lines(accounts=12, days=30)))
    triggers = tmp_path / "triggers.jsonl"
    result = run(str(events), "--triggers", str(triggers))
    assert result.exit_code == 0, result.stderr
    written = [orjson.loads(line) for line in triggers.read_bytes().splitlines()]
    assert written and _summary(result)["triggers"] == len(written)
    assert {t["playbook"] for t in written} <= {p.name for p in default_playbooks().playbooks}
    in_process = replay(
        golden_lines(accounts=12, days=30), default_scorecard(), playbooks=default_playbooks()
    )
    assert written == in_process.triggers
    assert all(PlaybookTrigger.model_validate(t).model_dump(mode="json") == t for t in written)


def test_playbooks_at_every_rescore_point_make_eager_and_lazy_ticks_agree() -> None:
    """The stream runs an account's ticks eagerly (a timer tick reaches every
    account of a partition); replay lazily (at the account's next event, and at
    the end). Scores, bucket changes and triggers must be the same."""
    card, book = default_scorecard(), default_playbooks()
    cadence = Cadence(card, book)
    events: list[Event] = [
        e
        for _, e in decode_lines(golden_lines(accounts=10, days=40))
        if not isinstance(e, InvalidLine)
    ]
    lazy = replay(golden_lines(accounts=10, days=40), card, playbooks=book)
    assert lazy.as_of is not None
    states: dict[str, AccountState] = {}
    changes: list[Any] = []
    triggers: list[dict[str, Any]] = []
    tick = card.rescore_interval_ms
    next_tick = (events[0].occurred_at // tick + 1) * tick
    for item in events:  # the golden file is in event-time order
        while next_tick <= item.occurred_at:
            for state in states.values():  # a timer tick: every account at once
                outcome = cadence.timer(state, next_tick)
                changes.extend(outcome.step.changes)
                triggers.extend(outcome.triggers)
            next_tick += tick
        state = states.setdefault(item.account_id, AccountState.new(item.account_id))
        outcome = cadence.event(state, item)
        changes.extend(outcome.step.changes)
        triggers.extend(outcome.triggers)
    for state in states.values():
        outcome = cadence.timer(state, lazy.as_of)
        changes.extend(outcome.step.changes)
        triggers.extend(outcome.triggers)
    assert sorted(c.change_id for c in changes) == sorted(c.change_id for c in lazy.changes)
    assert sorted(t["trigger_id"] for t in triggers) == sorted(
        t["trigger_id"] for t in lazy.triggers
    )
    assert len(lazy.triggers) > 10
    eager = {
        a: score_at(s, lazy.as_of, card, now_ms=0).model_dump() for a, s in sorted(states.items())
    }
    assert eager == {
        s.account_id: s.model_copy(
            update={"computed_at": eager[s.account_id]["computed_at"]}
        ).model_dump()
        for s in lazy.scores
    }


def test_default_scorecard_and_stdin(events_file: Path) -> None:
    result = run("-", stdin=events_file.read_bytes())
    assert result.exit_code == 0, result.output
    scores = _scores(result)
    assert [s.scorecard.name for s in scores] == ["default", "default"]
    assert scores[0].stage == "onboarding"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "yesterday"], "--as-of: timestamp string must be RFC 3339"),
        (["--as-of", "2024-03-05T12:00:00"], "--as-of: timestamp string must be RFC 3339"),
        (["--as-of", "-5"], "--as-of: -5 is outside the supported time range"),
    ],
)
def test_bad_as_of_is_one_error_line(events_file: Path, args: list[str], message: str) -> None:
    result = run(str(events_file), *args)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vitals: error: {message}")


def test_a_bad_scorecard_stops_the_replay_with_its_path(events_file: Path, tmp_path: Path) -> None:
    card = tmp_path / "bad.yaml"
    card.write_text("name: x\nversion: 1\nmetrics: {}\n")
    result = run(str(events_file), "--scorecard", str(card))
    assert result.exit_code == 1
    reason = "Dictionary should have at least 1 item after validation, not 0"
    assert result.stderr.strip() == f"vitals: error: {card}: metrics: {reason}"


def test_an_empty_file_scores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\nnot json\n")
    result = run(str(path))
    assert result.exit_code == 0 and result.stdout == ""
    assert "no valid events" in result.stderr
    assert _summary(result)["invalid"] == 1 and _summary(result)["as_of"] is None


def test_replay_counts_late_events_and_ticks_silent_accounts_to_as_of() -> None:
    card = default_scorecard()
    lines = [
        _line(event("login", at(100), "a", user_id="u")),
        _line(event("login", at(5), "a", user_id="old")),  # 95 days older: late
    ]
    result = replay(lines, card, as_of=at(130))
    assert (result.stats.applied, result.stats.late) == (1, 1)
    (score,) = result.scores
    assert score.as_of == "2024-07-12T09:00:00Z"
    assert score.bucket == "red"  # a month of silence
    assert [c.to_bucket for c in result.changes][-1] == "red"


# ------------------------------------------------------------ pinned output

DAY = 86_400_000
KEY_FEATURES = ("automation", "integrations", "reports")
OTHER_FEATURES = ("campaigns", "templates", "newsletters", "segments")


def golden_lines(accounts: int = 20, days: int = 30, seed: int = 20240301) -> list[bytes]:
    """A varied, deterministic history as JSON lines: busy, declining, silent,
    ticket-storm and onboarding accounts, with surveys, pulses, KPIs (whole
    and fractional), contracts, invoices, milestones, some events out of
    order and a redelivered one. Its own generator (not the simulator), so
    that only a change of the scoring model can move the pin below."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for a in range(accounts):
        out.extend(_golden_account(rng, a, days))
    out.sort(key=lambda e: e["occurred_at"])
    for _ in range(len(out) // 50):  # some arrive a little out of order
        i = rng.randrange(len(out) - 5)
        j = i + rng.randrange(1, 5)
        out[i], out[j] = out[j], out[i]
    out.insert(len(out) // 2, out[len(out) // 3])  # a redelivery
    return [orjson.dumps(e) for e in out]


def _golden_account(rng: random.Random, a: int, days: int) -> list[dict[str, Any]]:
    account = f"acct-{a:02d}"
    persona = a % 5
    seats = 5 + rng.randrange(40)
    users = [f"{account}-u{i}" for i in range(max(1, seats * rng.randrange(3, 11) // 10))]
    out: list[dict[str, Any]] = []

    def add(day: float, type_: str, **fields: Any) -> None:
        when = T0 + int(day * DAY) + rng.randrange(3_600_000)
        out.append(
            {
                "event_id": f"{account}-{len(out)}",
                "account_id": account,
                "type": type_,
                "occurred_at": when,
                **fields,
            }
        )

    stages = ["adoption", "maturity", "renewal"]
    add(
        0,
        "account",
        seats=seats,
        plan="pro",
        arr=1200.0 * seats,
        lifecycle_stage="onboarding" if persona == 4 else rng.choice(stages),
        segment="smb" if persona == 4 or a % 7 == 3 else "mid_market",
        customer_since=T0 - rng.randrange(30, 900) * DAY,
        renewal_at=T0 + rng.randrange(10, 300) * DAY,
    )
    add(0.1, "invoice", status="paid", amount=99.5)
    for d in range(days):
        if persona == 2 and d >= 12:
            break  # silent from day 12
        active = len(users)
        if persona == 1 and d >= 10:
            active = max(1, len(users) * (30 - d) // 20)  # declining
        weekday = d % 7 < 5
        for user in users[:active]:
            if not weekday and rng.random() < 0.8:
                continue
            if rng.random() < 0.85:
                add(d + 0.35, "login", user_id=user)
            if rng.random() < 0.7:
                feature = rng.choice(KEY_FEATURES if rng.random() < 0.4 else OTHER_FEATURES)
                add(d + 0.45, "feature_use", user_id=user, feature=feature, count=1 + d % 3)
        value = rng.choice([float(rng.randrange(100, 2000)), rng.randrange(100, 2000) + 0.25])
        add(d + 0.8, "kpi", metric="newsletters_sent", value=value)
        if d % 7 == 2:
            add(d + 0.6, "csm_touch", channel=rng.choice(["call", "meeting", "email"]))
        if rng.random() < 0.08:
            add(d + 0.65, "survey", kind="nps", score=rng.randrange(11))
        if rng.random() < 0.05:
            add(d + 0.66, "survey", kind="csat", score=1 + rng.randrange(5))
        if d % 10 == 1:
            rating = "red" if persona == 1 and d > 15 else rng.choice(["green", "yellow"])
            expires = T0 + (d + rng.randrange(3, 20)) * DAY
            add(d + 0.7, "pulse", rating=rating, reason="weekly read", expires_at=expires)
        storm = persona == 3 and 8 <= d < 16
        if storm or rng.random() < 0.06:
            ticket = f"t{d}-{rng.randrange(3)}"
            priority = "urgent" if storm else rng.choice(["low", "normal", "high"])
            opened = {"ticket_id": ticket, "priority": priority}
            add(d + 0.5, "support_ticket", status="opened", **opened)
            if storm and d % 3 == 0:
                add(d + 0.55, "support_ticket", status="escalated", **opened)
            if not storm or d % 2 == 0:
                csat = 1 + rng.randrange(5)
                add(
                    d + 0.5 + rng.random() * 2,
                    "support_ticket",
                    status="resolved",
                    csat=csat,
                    **opened,
                )
        if persona == 4 and d in (2, 6, 15):
            names = {2: "account_configured", 6: "users_invited", 15: "first_campaign_sent"}
            add(d + 0.3, "milestone", name=names[d])
        if persona == 1 and d == 20:
            add(d + 0.75, "contract", action="downgrade", amount=500)
        if persona == 2 and d == 11:
            add(d + 0.76, "contract", action="churn_notice")
        if d == 17 and a % 4 == 1:
            add(d + 0.2, "invoice", status="overdue", amount=99.5)
    return out


def golden_digest(lines: list[bytes], card: Scorecard) -> str:
    """sha256 of everything the model emits for ``lines``: the replay's scores
    and bucket changes, and every score and change of the stream cadence
    (with a daily timer and a changelog round trip now and then)."""
    digest = hashlib.sha256()
    result = replay(lines, card, now_ms=0)
    for score in result.scores:
        digest.update(score.model_dump_json().encode())
    for change in result.changes:
        digest.update(change.model_dump_json().encode())
    states: dict[str, AccountState] = {}
    watermark: int | None = None
    for count, (_, item) in enumerate(decode_lines(lines), start=1):
        assert not isinstance(item, InvalidLine)
        state = states.setdefault(item.account_id, AccountState.new(item.account_id))
        step = on_event(state, item, card, watermark=watermark, now_ms=0)
        if step.score is not None:
            digest.update(step.score.model_dump_json().encode())
        for change in step.changes:
            digest.update(change.model_dump_json().encode())
        watermark = item.occurred_at if watermark is None else max(watermark, item.occurred_at)
        if count % 97 == 0:
            states[item.account_id] = AccountState.from_bytes(state.to_bytes())
    assert watermark is not None
    for k in range(1, 100, 3):  # silence to the end of the retained horizon
        for account_id in sorted(states):
            step = on_timer(states[account_id], watermark + k * DAY, card, now_ms=0)
            if step.score is not None:
                digest.update(step.score.model_dump_json().encode())
            for change in step.changes:
                digest.update(change.model_dump_json().encode())
    return digest.hexdigest()


#: golden_digest(golden_lines(), card) of the scoring model: the default
#: scorecard with daily and hourly ticks, and the shipped demo (product facts
#: given: key features, outcome KPI) and adoption-rule (regular use over seats,
#: tenure profile, lift gate) scorecards. Any change of a score, bucket, grade,
#: component, label, gate, driver, change id or trend moves them; change them
#: only with a deliberate change of the model (last: issue 14, the CSM-readable
#: score and the revised default scorecard).
GOLDEN_DAILY = "63af064f85a45fa137aae7df94ddc547997c1205538bdeb582decf9f93f72121"
GOLDEN_HOURLY = "17507ad9dcd31a7290e766470fd01ffe75020b6a0b5a2bd21085742acfea6c9f"
GOLDEN_DEMO = "26159669b72f36e5bda0958f9497ac9b43462b1ec9c1165a2af9900305ef8f17"
GOLDEN_ADOPTION_RULE = "50ee0201b025f09d95c1ed374bc29e4d0731a69b95381310b8c5bc7afa9ca48c"


def _hourly(card: Scorecard) -> Scorecard:
    text = (
        Path(__file__).parents[2] / "service" / "model" / "scorecards" / "default.yaml"
    ).read_text()
    return parse_scorecard(
        text.replace("rescore_interval_minutes: 1440", "rescore_interval_minutes: 60"), "hourly"
    )


def test_the_model_output_is_pinned() -> None:
    lines = golden_lines()
    card = default_scorecard()
    assert golden_digest(lines, card) == GOLDEN_DAILY
    assert golden_digest(lines, _hourly(card)) == GOLDEN_HOURLY
    assert golden_digest(lines, shipped_scorecard("demo")) == GOLDEN_DEMO
    assert golden_digest(lines, shipped_scorecard("adoption-rule")) == GOLDEN_ADOPTION_RULE


def test_a_score_reevaluated_after_its_rescore_says_the_same() -> None:
    # The stream publishes the rescore's score; replay and /health evaluate the
    # stored state again at the same instant. Every field must agree (the
    # bucket by idempotent hysteresis, the gates' `decided` by plain thresholds).
    card = default_scorecard()
    states: dict[str, AccountState] = {}
    checked = 0
    for item in decode_lines(golden_lines(accounts=8, days=30)):
        event = item[1]
        if isinstance(event, InvalidLine):
            continue
        state = states.setdefault(event.account_id, AccountState.new(event.account_id))
        step = on_event(state, event, card, now_ms=0)
        if step.score is None or state.scored_at is None:
            continue
        again = score_at(state, state.scored_at, card, now_ms=0)
        assert again == step.score, (event.account_id, event.occurred_at)
        checked += 1
    assert checked > 1000
