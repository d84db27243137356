"""``vitals db``: the score-history database (``upgrade``: run the migrations, ``current``).

Both print one JSON line on stdout; the URL comes from ``--url`` or
``VITALS_DATABASE_URL`` (default ``sqlite+aiosqlite:///var/vitals.db``), and its
password is never printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import orjson

from service.cli.main import CliError, settings_from_options

__all__ = ["db", "resolve_database_url"]

T = TypeVar("T")

url_option = click.option(
    "--url",
    "url",
    metavar="URL",
    help="SQLAlchemy async URL of the history database (default: VITALS_DATABASE_URL).",
)


def resolve_database_url(url: str | None) -> str:
    """``--url``, else the ``database_url`` setting (``VITALS_DATABASE_URL``)."""
    if url:
        return url
    return settings_from_options().database_url


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return text[:500] or type(exc).__name__


async def _upgrade(url: str) -> tuple[str | None, str | None]:
    from service.history.db import create_engine, current_revision, migrate

    async def revision() -> str | None:
        engine = create_engine(url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    before = await revision()
    await migrate(url)
    return before, await revision()


async def _current(url: str) -> str | None:
    from service.history.db import create_engine, current_revision

    engine = create_engine(url)
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; database failures become one-line :class:`CliError`s."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.history.db import HistoryDbError

    try:
        return asyncio.run(coro)
    except HistoryDbError as exc:
        raise CliError(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise CliError(f"database error: {_one_line(exc)}") from exc


@click.group("db")
def db() -> None:
    """The score-history database (SQLite or PostgreSQL)."""


@db.command("upgrade")
@url_option
def upgrade(url: str | None) -> None:
    """Create or upgrade the history tables to the newest schema.

    Prints {"database": URL, "from": REVISION|null, "to": REVISION}.
    """
    from service.history.db import redact_url

    resolved = resolve_database_url(url)
    before, after = _run(_upgrade(resolved))
    click.echo(
        orjson.dumps({"database": redact_url(resolved), "from": before, "to": after}).decode()
    )


@db.command("current")
@url_option
def current(url: str | None) -> None:
    """Print the schema revision: {"database": URL, "revision": REVISION|null, "head": HEAD}."""
    from service.history.db import head_revision, redact_url

    resolved = resolve_database_url(url)
    revision = _run(_current(resolved))
    click.echo(
        orjson.dumps(
            {"database": redact_url(resolved), "revision": revision, "head": head_revision()}
        ).decode()
    )
