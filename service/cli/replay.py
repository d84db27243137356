"""``vitals replay``: the streaming model over a JSON-lines file, in-process."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NoReturn

import click
import orjson
from pydantic_core import PydanticCustomError

from schemas.events import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, parse_timestamp
from service.model.playbooks import (
    PlaybookError,
    PlaybookSet,
    default_playbooks,
    load_playbooks,
)
from service.model.scorecard import (
    Scorecard,
    ScorecardError,
    default_scorecard,
    load_scorecard,
)
from service.processing.replay import InvalidLine
from service.processing.replay import replay as run_replay

__all__ = ["PROGRESS_INTERVAL_S", "parse_as_of", "replay", "with_progress"]

#: Seconds between two progress lines on stderr (a short replay prints none).
PROGRESS_INTERVAL_S = 5.0


def _fail(message: str) -> NoReturn:
    # service.cli.main imports this module to register it: import it lazily.
    from service.cli.main import CliError

    raise CliError(message)


_DIGITS = re.compile(r"-?[0-9]+")


def parse_as_of(text: str) -> int:
    """``--as-of``: RFC 3339 with an offset, or integer epoch milliseconds."""
    value = text.strip()
    if _DIGITS.fullmatch(value):
        ms = int(value)
        if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
            _fail(f"--as-of: {value} is outside the supported time range")
        return ms
    try:
        return parse_timestamp(value)
    except PydanticCustomError as exc:
        _fail(f"--as-of: {exc.message()}")


def with_progress(
    lines: Iterable[bytes],
    total_bytes: int | None,
    report: Callable[[str], None],
    *,
    interval_s: float = PROGRESS_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[bytes]:
    """``lines`` unchanged; every ``interval_s`` seconds ``report`` gets one
    progress line (lines read, share of ``total_bytes`` when known, rate)."""
    started = last = clock()
    done = 0
    for count, line in enumerate(lines, start=1):
        done += len(line)
        if count % 1000 == 0:
            now = clock()
            if now - last >= interval_s:
                last = now
                share = f" ({100 * done / total_bytes:.0f}%)" if total_bytes else ""
                rate = count / max(now - started, 1e-9)
                report(f"vitals replay: {count:,} lines read{share}, {rate:,.0f} lines/s")
        yield line


def _size(stream: IO[bytes]) -> int | None:
    """The size of a regular file behind ``stream`` (None for a pipe or a terminal)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


def _open_outputs(paths: Iterable[Path | None]) -> list[IO[bytes] | None]:
    """Open every output file before the replay: a path that cannot be written
    fails now, in one line, not after the whole run."""
    opened: list[IO[bytes] | None] = []
    try:
        for path in paths:
            opened.append(None if path is None else path.open("wb"))
    except OSError as exc:
        for sink in opened:
            if sink is not None:
                sink.close()
        _fail(f"cannot write {exc.filename}: {exc.strerror}")
    return opened


@click.command("replay")
@click.argument("events", type=click.File("rb"))
@click.option(
    "--as-of",
    "as_of_text",
    metavar="TIME",
    help="Score as of TIME (RFC 3339 with offset, or epoch ms). Default: latest event time.",
)
@click.option(
    "--scorecard",
    "scorecard_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Scorecard YAML, or a shipped one by name: default (the default), demo "
    "(the simulator's product), adoption-rule.",
)
@click.option(
    "--changes",
    "changes_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bucket changes the stream would have emitted here (JSON lines).",
)
@click.option(
    "--triggers",
    "triggers_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the playbook triggers the stream would have emitted here (JSON lines).",
)
@click.option(
    "--playbooks",
    "playbooks_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Playbooks YAML (default: the shipped playbooks, as the worker runs them, when "
    "the scorecard defines the metrics they read; else none).",
)
def replay(
    events: IO[bytes],
    as_of_text: str | None,
    scorecard_path: Path | None,
    changes_path: Path | None,
    triggers_path: Path | None,
    playbooks_path: Path | None,
) -> None:
    """Replay EVENTS (JSON lines, '-' for stdin) through the scoring model.

    Prints one health score per account (the vitals.health.scores shape) to
    stdout, sorted by account_id. Invalid lines are reported on stderr with
    their line number and skipped; a JSON summary line ends stderr.
    """
    as_of = parse_as_of(as_of_text) if as_of_text is not None else None
    try:
        card = load_scorecard(scorecard_path) if scorecard_path else default_scorecard()
        book: PlaybookSet | None
        if playbooks_path is not None:
            book = load_playbooks(playbooks_path)
            book.check_metrics(card)
        else:
            book = _default_playbooks_for(card, say=triggers_path is not None)
    except (ScorecardError, PlaybookError) as exc:
        _fail(str(exc))

    def report(bad: InvalidLine) -> None:
        click.echo(f"vitals replay: {bad}", err=True)

    changes_sink, triggers_sink = _open_outputs([changes_path, triggers_path])

    def progress(line: str) -> None:
        click.echo(line, err=True)

    lines = with_progress(events, _size(events), progress)
    result = run_replay(lines, card, as_of=as_of, on_invalid=report, playbooks=book)
    out = click.get_binary_stream("stdout")
    for score in result.scores:
        out.write(orjson.dumps(score.model_dump(mode="json")) + b"\n")
    out.flush()
    try:
        if changes_sink is not None:
            with changes_sink:
                for change in result.changes:
                    changes_sink.write(orjson.dumps(change.model_dump(mode="json")) + b"\n")
        if triggers_sink is not None:
            with triggers_sink:
                for trigger in result.triggers:
                    triggers_sink.write(orjson.dumps(trigger) + b"\n")
    except OSError as exc:
        _fail(f"cannot write {exc.filename}: {exc.strerror}")
    if result.as_of is None:
        click.echo("vitals replay: no valid events, nothing to score", err=True)
    click.echo(orjson.dumps({"summary": result.stats.as_dict()}).decode(), err=True)


def _default_playbooks_for(card: Scorecard, *, say: bool) -> PlaybookSet | None:
    """The shipped playbooks, if ``card`` defines every metric they read (``say``:
    tell on stderr when it does not)."""
    book = default_playbooks()
    try:
        book.check_metrics(card)
    except PlaybookError as exc:
        if say:
            click.echo(f"vitals replay: no playbooks run ({exc.reason})", err=True)
        return None
    return book
