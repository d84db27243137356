"""``vitals history-sink``: store scores, bucket changes, triggers and pulses in SQL."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click
import orjson

from service.cli.db import resolve_database_url
from service.cli.main import CliError, settings_from_options

__all__ = ["history_sink"]


@click.command("history-sink")
@click.option("--url", "url", metavar="URL", help="History database (VITALS_DATABASE_URL).")
@click.option(
    "--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers (VITALS_BOOTSTRAP_SERVERS)."
)
@click.option("--app-id", help="The sink's group is <app-id>-history (VITALS_APP_ID).")
@click.option("--topic-prefix", help="Prefix of every vitals topic (VITALS_TOPIC_PREFIX).")
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Upgrade the database schema before consuming.",
)
def history_sink(
    url: str | None,
    bootstrap_servers: str | None,
    app_id: str | None,
    topic_prefix: str | None,
    migrate: bool,
) -> None:
    """Consume the output topics into the history database until stopped.

    Scores are stored on change and at least daily per account; bucket
    changes, playbook triggers and CSM pulses all. Replays add no duplicates.
    Stops cleanly on Ctrl-C or SIGTERM and prints a JSON summary line.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from service.history.db import HistoryDbError, redact_url
    from service.history.db import migrate as run_migrations
    from service.history.sink import SinkStats, run_history_sink

    settings = settings_from_options(
        bootstrap_servers=bootstrap_servers, app_id=app_id, topic_prefix=topic_prefix
    )
    database_url = resolve_database_url(url or settings.database_url)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    stats = SinkStats()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            if migrate:
                await run_migrations(database_url)
            if not stop.is_set():
                await run_history_sink(settings, database_url, stop, stats=stats)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    from aiokafka.errors import KafkaError

    try:
        asyncio.run(main())
    except HistoryDbError as exc:
        raise CliError(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())[:500]
        raise CliError(f"database {redact_url(database_url)}: {detail}") from exc
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.bootstrap_servers}: {exc}") from exc
    click.echo(orjson.dumps({"history_sink": stats.as_dict()}).decode())
