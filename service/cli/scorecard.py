"""``vitals scorecard``: tools for scorecard files."""

from __future__ import annotations

from typing import NoReturn

import click
import orjson

from service.model.scorecard import ScorecardError, load_scorecard

__all__ = ["scorecard"]


def _fail(message: str) -> NoReturn:
    # service.cli.main imports this module to register it: import it lazily.
    from service.cli.main import CliError

    raise CliError(message)


@click.group("scorecard")
def scorecard() -> None:
    """Validate and inspect scorecards (docs/scorecard.md)."""


@scorecard.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Validate FILE: a JSON summary line on success; on failure one line
    'FILE: path.to.field: reason' and exit status 1."""
    try:
        card = load_scorecard(file)
    except ScorecardError as exc:
        _fail(str(exc))
    click.echo(orjson.dumps(card.summary(file)).decode())
