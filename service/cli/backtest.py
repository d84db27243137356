"""``vitals backtest``: does the health score predict churn, how early, and which
weights would do better (docs/backtest.md)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from service.cli.main import CliError

__all__ = ["backtest", "parse_duration", "parse_time"]

DAY_MS = 86_400_000
_UNITS = {"h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([hdw])")


def _fail(message: str) -> NoReturn:
    raise CliError(message) from None


def parse_duration(text: str, option: str) -> int:
    """``90d``, ``12h``, ``2w`` (``1.5d`` too) in milliseconds; more than zero."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        _fail(f"{option}: expected a duration such as 90d, 12h or 2w, got {text!r}")
    ms = int(float(match.group(1)) * _UNITS[match.group(2)])
    if ms <= 0:
        _fail(f"{option}: must be more than zero")
    return ms


def parse_time(text: str, option: str) -> int:
    """A time option: RFC 3339 with an offset, or integer epoch milliseconds."""
    from pydantic_core import PydanticCustomError

    from schemas.events import parse_timestamp

    value = text.strip()
    try:
        return parse_timestamp(int(value) if re.fullmatch(r"-?[0-9]+", value) else value)
    except PydanticCustomError as exc:
        _fail(f"{option}: {exc.message()}")


class _Progress:
    """Progress lines on stderr, at most one every 2 s."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0

    def say(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= 2.0:
            self.last = now
            click.echo(f"vitals backtest: {text} ({now - self.started:.0f} s)", err=True)


def _opener(path: str) -> Callable[[], Iterable[bytes]]:
    """Opens the events again for each pass ('-': stdin, read once into memory)."""
    if path == "-":
        lines = sys.stdin.buffer.readlines()
        return lambda: lines

    def read() -> Iterator[bytes]:
        try:
            with open(path, "rb") as handle:
                yield from handle
        except OSError as exc:
            _fail(f"cannot read {path}: {exc.strerror}")

    return read


def _snapshot_dates(
    first: int, last: int, every: int, warmup: int, start: int | None, end: int | None
) -> list[int]:
    # Dates fall on UTC midnights (with --every in whole days), from the first
    # midnight at least --warmup after the first event.
    begin = start if start is not None else -(-(first + warmup) // DAY_MS) * DAY_MS
    stop = end if end is not None else last
    dates = []
    date = begin
    while date <= stop:
        dates.append(date)
        date += every
    return dates


@click.command("backtest")
@click.argument("events", required=False, metavar="[EVENTS]")
@click.option(
    "--outcomes",
    "outcomes_path",
    metavar="FILE",
    help='Outcomes as JSON lines {"account_id", "outcome": "churned"|"renewed", "date"}, '
    "added to the churned/renewal contract events of EVENTS.",
)
@click.option(
    "--scorecard",
    "scorecard_path",
    metavar="FILE",
    help="Scorecard YAML, or a shipped one by name (default, demo, adoption-rule); "
    "default: the shipped default.",
)
@click.option(
    "--against",
    "against_path",
    metavar="FILE",
    help="A second scorecard (file or shipped name), judged side by side.",
)
@click.option(
    "--horizon", default="90d", show_default=True, help="Churn within this after a snapshot."
)
@click.option("--every", default="7d", show_default=True, help="Time between snapshot dates.")
@click.option(
    "--warmup",
    default="30d",
    show_default=True,
    help="No snapshot before the first event + this (the 30-day windows fill up).",
)
@click.option(
    "--start", "start_text", metavar="TIME", help="First snapshot date (default: see --warmup)."
)
@click.option(
    "--end", "end_text", metavar="TIME", help="No snapshot after TIME (default: last event)."
)
@click.option(
    "--observed-until",
    "observed_text",
    metavar="TIME",
    help="Outcomes are known up to TIME (default: the last event or outcome).",
)
@click.option(
    "--capacity",
    "-k",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Accounts a CSM team can work at a time (precision among the k lowest scores).",
)
@click.option(
    "--fit-share",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the dates (the earliest) the suggested weights are fitted on.",
)
@click.option(
    "--bootstrap",
    "reps",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Resamples of accounts for the confidence intervals (0: none).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--from-db",
    "db_url",
    metavar="URL",
    help="Take the scores the history sink stored (e.g. sqlite+aiosqlite:///var/vitals.db) "
    "instead of replaying EVENTS.",
)
@click.option(
    "--json",
    "json_path",
    default="-",
    show_default=True,
    metavar="FILE",
    help="Write the JSON report here ('-': stdout).",
)
@click.option("--html", "html_path", metavar="FILE", help="Also write the HTML report here.")
def backtest(
    events: str | None,
    outcomes_path: str | None,
    scorecard_path: str | None,
    against_path: str | None,
    horizon: str,
    every: str,
    warmup: str,
    start_text: str | None,
    end_text: str | None,
    observed_text: str | None,
    capacity: int,
    fit_share: float,
    reps: int,
    seed: int,
    db_url: str | None,
    json_path: str,
    html_path: str | None,
) -> None:
    """Back-test the health score against what became of the accounts.

    At each snapshot date (every --every, from the first event + --warmup)
    every account's score is taken exactly as `vitals replay EVENTS --as-of
    DATE` gives it (or, with --from-db, as the history stored it) and
    labelled by whether the account churned within --horizon. The report
    (JSON on stdout, and an HTML page with --html) gives ROC and PR AUC,
    churn rate per bucket and grade, lift per score decile, precision among
    the --capacity lowest scores, lead times from first red and first yellow
    to churn, the accounts that churned while green, each metric's own AUC
    and direction, and weights fitted on the earlier dates and judged on the
    later ones. Intervals come from resampling accounts.

    \b
    vitals simulate --accounts 1000 --days 90 -o events.jsonl
    vitals backtest events.jsonl --html backtest.html > backtest.json
    vitals backtest events.jsonl --against my-scorecard.yaml --horizon 60d
    vitals backtest --from-db sqlite+aiosqlite:///var/vitals.db --outcomes crm.jsonl
    """
    from service.backtest.lab import BacktestOptions, build_report
    from service.backtest.outcomes import OutcomeFileError, Outcomes, read_outcomes
    from service.backtest.report import html_report
    from service.backtest.snapshots import (
        EventScan,
        ScoredHistory,
        replay_scores,
        scan_events,
        stored_range,
        stored_scores,
    )
    from service.model.scorecard import ScorecardError, default_scorecard, load_scorecard

    progress = _Progress()
    horizon_ms = parse_duration(horizon, "--horizon")
    every_ms = parse_duration(every, "--every")
    warmup_ms = 0 if warmup.strip() in ("0", "0d") else parse_duration(warmup, "--warmup")
    start = parse_time(start_text, "--start") if start_text else None
    end = parse_time(end_text, "--end") if end_text else None
    observed = parse_time(observed_text, "--observed-until") if observed_text else None
    if events is None and db_url is None:
        _fail("give EVENTS to replay, or --from-db URL")
    if db_url is not None and against_path is not None:
        _fail("--against needs EVENTS to replay: the history database holds one scorecard's scores")
    try:
        card = load_scorecard(scorecard_path) if scorecard_path else default_scorecard()
        other = load_scorecard(against_path) if against_path else None
    except ScorecardError as exc:
        _fail(str(exc))

    outcomes = Outcomes()
    scan: EventScan | None = None
    open_lines = _opener(events) if events is not None else None
    if open_lines is not None:
        progress.say(f"reading {events}", force=True)
        scan = scan_events(open_lines())
        outcomes.merge(scan.outcomes)
    if outcomes_path is not None:
        try:
            with open(outcomes_path, "rb") as handle:
                for outcome in read_outcomes(handle, outcomes_path):
                    outcomes.add(outcome)
        except OSError as exc:
            _fail(f"cannot read {outcomes_path}: {exc.strerror}")
        except OutcomeFileError as exc:
            _fail(str(exc))
    if not outcomes.churned_accounts():
        _fail(
            "no churn to judge the score by: give --outcomes FILE or events with "
            'contract action "churned"'
        )

    if db_url is not None:
        span = _db(lambda: stored_range(db_url))
    elif scan is not None and scan.first_at is not None and scan.last_at is not None:
        span = (scan.first_at, scan.last_at)
    else:
        span = None
    if span is None:
        _fail("no events to score" if db_url is None else "the history database holds no scores")
    dates = _snapshot_dates(span[0], span[1], every_ms, warmup_ms, start, end)
    if not dates:
        _fail("no snapshot date: the history is shorter than --warmup (or --start is after --end)")
    latest_outcome = outcomes.latest
    observed_until = observed if observed is not None else max(span[1], latest_outcome or span[1])
    options = BacktestOptions(
        horizon_ms=horizon_ms,
        every_ms=every_ms,
        dates=tuple(dates),
        observed_until=observed_until,
        capacity=capacity,
        fit_share=fit_share,
        bootstrap=reps,
        seed=seed,
    )
    churns = outcomes.churned_accounts()
    known = outcomes.churn_known(horizon_ms)
    histories: list[tuple[ScoredHistory, Any, str]] = []
    if db_url is not None:
        progress.say(f"reading the stored scores at {len(dates)} dates", force=True)
        history = _db(lambda: stored_scores(db_url, dates, churns, known))
        histories.append((history, card, scorecard_path or "(default)"))
    else:
        assert open_lines is not None and scan is not None
        total = scan.lines
        for scorecard, file in ((card, scorecard_path), (other, against_path)):
            if scorecard is None:
                continue
            name = f"{scorecard.name} v{scorecard.version}"

            def show(lines: int, name: str = name) -> None:
                share = lines / total if total else 1.0
                progress.say(f"{name}: replayed {lines:,} of {total:,} lines ({share:.0%})")

            progress.say(f"{name}: replaying {total:,} lines, {len(dates)} dates", force=True)
            history = replay_scores(
                open_lines, scorecard, dates, churns, known, scan=scan, progress=show
            )
            histories.append((history, scorecard, file or "(default)"))

    source: dict[str, Any] = {"events": events, "outcomes": outcomes_path}
    if db_url is not None:
        from service.history.db import redact_url

        source["from_db"] = redact_url(db_url)
    report = build_report(
        histories, outcomes, options, source, progress=lambda text: progress.say(text, force=True)
    )
    _write(json_path, orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if html_path is not None:
        _write(html_path, html_report(report).encode())
    for figures in report["scorecards"]:
        for note in figures["notes"]:
            click.echo(f"vitals backtest: note: {note}", err=True)
        click.echo(f"vitals backtest: {_summary(figures)}", err=True)


def _db(call: Callable[[], Any]) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from service.history.db import HistoryDbError

    try:
        return call()
    except HistoryDbError as exc:
        _fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        detail = " ".join(str(exc).split("\n")[0].split())
        _fail(f"cannot read the history database: {detail}")


def _write(path: str, data: bytes) -> None:
    if path == "-":
        out = click.get_binary_stream("stdout")
        out.write(data)
        out.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}")


def _summary(figures: dict[str, Any]) -> str:
    card = figures["scorecard"]
    sample = figures["sample"]
    roc = figures["roc_auc"]
    pr = figures["pr_auc"]

    def value(figure: dict[str, Any]) -> str:
        if figure["value"] is None:
            return "n/a"
        ci = figure["ci"]
        return f"{figure['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    return (
        f"{card['name']} v{card['version']}: ROC AUC {value(roc)}, PR AUC {value(pr)} "
        f"(churn rate {pr['baseline']}), {sample['snapshots']} snapshots of "
        f"{sample['accounts']} accounts, {sample['churned_accounts']} churned"
    )
