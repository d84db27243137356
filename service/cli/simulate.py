"""``vitals simulate``: simulated customers, as history or as a live stream.

Messages go to the input topics on Kafka (default) or, with ``--output``, to a
JSONL file (``-``: stdout) holding one message value per line, for
``vitals replay``. The run ends with one JSON summary line
``{"events", "accounts", "invalid", "seconds", "events_per_s"}`` on stdout, or
on stderr when stdout carries the messages. Progress goes to stderr every ~2 s.
Ctrl-C and SIGTERM stop cleanly: what was produced is flushed and summarised.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO, TYPE_CHECKING, NoReturn

import click
import orjson

from service.cli.main import CliError, settings_from_options

if TYPE_CHECKING:
    from service.runtime.settings import Settings
    from service.tools.simulate import SimEvent

__all__ = ["simulate"]


def _fail(message: str) -> NoReturn:
    """Exit with one error line on stderr (status 1)."""
    raise CliError(message) from None


_PROGRESS_EVERY_S = 2.0
_HOUR_MS = 3_600_000


class _Run:
    """Counts what a run produced, prints progress and the summary."""

    def __init__(self, accounts: int) -> None:
        self.accounts = accounts
        self.events = 0
        self.invalid = 0
        self.started = time.monotonic()
        self.stopping = False
        self._next_report = self.started + _PROGRESS_EVERY_S

    def stop(self) -> None:
        self.stopping = True

    def progress(self) -> None:
        """Print progress if the last line is ~2 s old."""
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + _PROGRESS_EVERY_S
            self.report(self.events, now - self.started)

    def report(self, events: int, seconds: float) -> None:
        rate = events / max(seconds, 1e-9)
        click.echo(f"vitals: simulate: {events:,} events, {rate:,.0f} events/s", err=True)

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return orjson.dumps(
            {
                "events": self.events,
                "accounts": self.accounts,
                "invalid": self.invalid,
                "seconds": round(seconds, 3),
                "events_per_s": round(self.events / seconds, 1),
            }
        ).decode()


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["history", "live"]),
    default="history",
    show_default=True,
    help="history: DAYS of events, as fast as possible; live: a warm-up, then events as of now.",
)
@click.option("--accounts", type=int, default=100, show_default=True, help="How many accounts.")
@click.option(
    "--personas",
    "personas_text",
    metavar="MIX",
    help="Persona shares, e.g. thriving=0.3,steady=0.3,declining=0.4 (default: all eight).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same events.")
@click.option("--days", type=int, default=30, show_default=True, help="History: how many days.")
@click.option(
    "--end",
    metavar="TIME",
    help="History: end (exclusive), RFC 3339 or epoch ms [default: now, down to the hour].",
)
@click.option(
    "--invalid-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Share (0-0.5) of deliberately invalid messages, to demo the dead-letter topic.",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Write JSONL (one message value per line) to FILE, '-' for stdout, not to Kafka.",
)
@click.option(
    "--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers (VITALS_BOOTSTRAP_SERVERS)."
)
@click.option("--topic-prefix", help="Prefix of every vitals topic (VITALS_TOPIC_PREFIX).")
@click.option("--create-topics", is_flag=True, help="Create missing input topics.")
@click.option(
    "--connect-timeout",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds to wait for Kafka before giving up.",
)
@click.option(
    "--rate",
    type=float,
    help="Live: messages per second [default: 500]; history to Kafka: an upper bound.",
)
@click.option(
    "--time-scale",
    type=float,
    help="Live: simulated seconds per wall second [default: what gives --rate].",
)
@click.option(
    "--warmup-days",
    type=int,
    default=30,
    show_default=True,
    help="Live: days of history sent first, as fast as possible.",
)
@click.option(
    "--duration",
    type=float,
    help="Live: seconds to run after the warm-up [default: until stopped].",
)
def simulate(
    mode: str,
    accounts: int,
    personas_text: str | None,
    seed: int,
    days: int,
    end: str | None,
    invalid_rate: float,
    output: str | None,
    bootstrap_servers: str | None,
    topic_prefix: str | None,
    create_topics: bool,
    connect_timeout: float,
    rate: float | None,
    time_scale: float | None,
    warmup_days: int,
    duration: float | None,
) -> None:
    """Simulate customers: thriving, steady, declining, silent churners, ticket
    storms, under-licensed, onboarding and expanding accounts. An account
    whose contract comes up churns (churn_notice, then churned at the end of
    the contract) or renews, with a chance that depends on its story.

    \b
    vitals simulate --accounts 1000 --days 90 --create-topics
    vitals simulate --accounts 10000 --end 2024-06-01T00:00:00Z -o events.jsonl
    vitals simulate --mode live --accounts 500 --rate 200 --invalid-rate 0.01

    History with the same options and --end is byte-identical on every run.
    """
    import logging

    from service.tools import simulate as sim

    # aiokafka logs each failed connection attempt; the command reports the
    # failure itself, in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    personas = None
    if personas_text is not None:
        try:
            personas = sim.parse_personas(personas_text)
        except ValueError as exc:
            _fail(f"--personas: {exc}")
    for ok, message in (
        (accounts >= 1, "--accounts must be at least 1"),
        (days >= 1, "--days must be at least 1"),
        (0.0 <= invalid_rate <= 0.5, "--invalid-rate must be between 0 and 0.5"),
        (warmup_days >= 0, "--warmup-days must be >= 0"),
        (connect_timeout > 0, "--connect-timeout must be > 0"),
        (rate is None or rate > 0, "--rate must be > 0"),
        (time_scale is None or time_scale > 0, "--time-scale must be > 0"),
        (duration is None or duration >= 0, "--duration must be >= 0"),
        (mode == "history" or end is None, "--end applies to --mode history only"),
    ):
        if not ok:
            _fail(message)

    run = _Run(accounts)

    def live(stop: asyncio.Event | None) -> AsyncIterator[SimEvent]:
        return sim.generate_live(
            accounts,
            seed,
            personas,
            rate=rate,
            time_scale=time_scale,
            warmup_days=warmup_days,
            invalid_rate=invalid_rate,
            duration=duration,
            stop=stop,
        )

    if output is not None:
        with _open(output) as out:
            if mode == "history":
                chunks = sim.history_jsonl(
                    accounts, days, _parse_end(end), seed, personas, invalid_rate
                )
                with _quiet_gc(), _signals_call(run.stop):
                    for lines, count, invalid in chunks:
                        out.write(lines)
                        run.events += count
                        run.invalid += invalid
                        run.progress()
                        if run.stopping:
                            break
            else:
                asyncio.run(_live_to_file(live, out, run))
        click.echo(run.summary(), err=output == "-")
        return

    settings = _settings(bootstrap_servers, topic_prefix)
    end_ms = _parse_end(end)

    def history(stop: asyncio.Event | None) -> Iterator[SimEvent]:
        return sim.generate_history(accounts, days, end_ms, seed, personas, invalid_rate)

    source: Callable[[asyncio.Event | None], Iterator[SimEvent] | AsyncIterator[SimEvent]]
    source, limit = live, None
    if mode == "history":
        if end_ms > time.time() * 1000 + 60_000:
            _fail("--end is in the future: the service would dead-letter those events")
        source, limit = history, rate
    try:
        asyncio.run(_to_kafka(source, settings, run, limit, create_topics, connect_timeout))
    except sim.ProduceError as exc:
        _fail(str(exc))
    click.echo(run.summary())


def _parse_end(text: str | None) -> int:
    from schemas.events import parse_timestamp

    if text is None:
        now_ms = int(time.time() * 1000)
        return now_ms - now_ms % _HOUR_MS
    text = text.strip()
    value: object = int(text) if text.isdigit() else text
    try:
        return parse_timestamp(value)
    except ValueError as exc:  # PydanticCustomError is a ValueError
        _fail(f"--end: {exc}")


def _settings(bootstrap_servers: str | None, topic_prefix: str | None) -> Settings:
    return settings_from_options(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)


@contextmanager
def _open(output: str) -> Iterator[IO[bytes]]:
    if output == "-":
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's
            # final flush of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        handle = open(output, "wb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")
    with handle:
        yield handle


@contextmanager
def _signals_call(on_stop: Callable[[], None]) -> Iterator[None]:
    """While active, SIGINT and SIGTERM call ``on_stop`` instead of ending the process."""

    def handler(signum: int, frame: FrameType | None) -> None:
        on_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _quiet_gc() -> Iterator[None]:
    # History allocates a day of messages at a time next to thousands of
    # long-lived account objects; freezing those keeps collections cheap.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _live_to_file(
    live: Callable[[asyncio.Event | None], AsyncIterator[SimEvent]], out: IO[bytes], run: _Run
) -> None:
    stop = _stop_event()
    async for event in live(stop):
        out.write(event.value + b"\n")
        run.events += 1
        run.invalid += event.invalid
        if run.events % 128 == 0 or event.occurred_at > time.time() * 1000 - 1000:
            # Live lines are flushed promptly so that a pipe reader sees them.
            out.flush()
            run.progress()
    out.flush()


async def _to_kafka(
    source: Callable[[asyncio.Event | None], Iterator[SimEvent] | AsyncIterator[SimEvent]],
    settings: Settings,
    run: _Run,
    rate: float | None,
    create_topics: bool,
    connect_timeout: float,
) -> None:
    from service.tools.simulate import produce

    stop = _stop_event()
    events = source(stop)

    async def counted() -> AsyncIterator[SimEvent]:
        if isinstance(events, Iterator):
            for event in events:
                run.invalid += event.invalid
                yield event
        else:
            async for event in events:
                run.invalid += event.invalid
                yield event

    run.events = await produce(
        counted(),
        settings,
        rate=rate,
        progress=run.report,
        stop=stop,
        create_topics=create_topics,
        connect_timeout=connect_timeout,
    )
