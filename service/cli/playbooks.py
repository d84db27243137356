"""``vitals playbooks``: tools for playbook files."""

from __future__ import annotations

import click
import orjson

from service.cli.main import CliError
from service.model.playbooks import PlaybookError, load_playbooks
from service.model.scorecard import ScorecardError, default_scorecard, load_scorecard

__all__ = ["playbooks"]


@click.group("playbooks")
def playbooks() -> None:
    """Validate and inspect playbooks (docs/playbooks.md)."""


@playbooks.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--scorecard",
    "scorecard_file",
    type=click.Path(dir_okay=False),
    envvar="VITALS_SCORECARD_FILE",
    default=None,
    help="Scorecard whose metrics the conditions may read "
    "[default: $VITALS_SCORECARD_FILE, else the built-in scorecard].",
)
def check(file: str, scorecard_file: str | None) -> None:
    """Validate FILE: a JSON summary line on success; on failure one line
    'FILE: path.to.field: reason' and exit status 1."""
    try:
        book = load_playbooks(file)
    except PlaybookError as exc:
        raise CliError(str(exc)) from None
    try:
        card = load_scorecard(scorecard_file) if scorecard_file else default_scorecard()
    except ScorecardError as exc:
        raise CliError(str(exc)) from None
    try:
        book.check_metrics(card, source=file)
    except PlaybookError as exc:
        raise CliError(str(exc)) from None
    summary = book.summary(file)
    summary["scorecard"] = {"name": card.name, "version": card.version}
    click.echo(orjson.dumps(summary).decode())
