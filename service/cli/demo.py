"""``vitals demo``: the main job, everything on local defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from service.cli.main import CliError, settings_from_options


@click.command()
@click.option("--accounts", type=int, default=200, show_default=True, help="Simulated accounts.")
@click.option(
    "--rate",
    type=float,
    default=100.0,
    show_default=True,
    help="Live messages/s the simulator sends (simulated time runs as fast as that needs).",
)
@click.option(
    "--time-scale",
    type=float,
    help="Simulated seconds per wall second instead (3600: an hour a second); --rate then "
    "only caps the messages/s.",
)
@click.option(
    "--invalid-rate",
    type=click.FloatRange(0.0, 0.5),
    default=0.005,
    show_default=True,
    help="Share of deliberately invalid messages, to show the dead-letter topic at work.",
)
@click.option("--warmup-days", type=int, default=30, show_default=True, help="History first.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--refresh", type=float, default=2.0, show_default=True, help="Redraw interval.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/demo"),
    show_default=True,
    help="Logs, the local broker's data and the SQLite history.",
)
@click.option("--kafka-port", type=int, default=9092, show_default=True)
@click.option("--web-port", type=int, help="Worker HTTP port (VITALS_WEB_PORT, 6066).")
@click.option("--bootstrap", help="Use this Kafka instead of a local one.")
@click.option(
    "--app-id",
    default="vitals-demo",
    show_default=True,
    help="Consumer group / internal topic prefix; the demo's own, not VITALS_APP_ID.",
)
@click.option(
    "--topic-prefix",
    default="vitals-demo.",
    show_default=True,
    help="Prefix of every topic; the demo's own, not VITALS_TOPIC_PREFIX.",
)
def demo(
    accounts: int,
    rate: float,
    time_scale: float | None,
    invalid_rate: float,
    warmup_days: int,
    duration: float | None,
    refresh: float,
    data_dir: Path,
    kafka_port: int,
    web_port: int | None,
    bootstrap: str | None,
    app_id: str,
    topic_prefix: str,
) -> None:
    """Run vitals end to end on local defaults and watch the portfolio live.

    Starts a local Kafka broker (unless one answers at the bootstrap address),
    a worker, the SQL history sink (SQLite under --data-dir) and the simulator
    in live mode, then redraws accounts per bucket, the latest bucket changes
    with their drivers, playbook triggers and events/s. The HTTP API stays up
    meanwhile. Ctrl-C stops everything; a JSON summary line goes to stdout.

    The demo is a deployment of its own (--app-id, --topic-prefix), so it
    never shares a consumer group with another vitals on the same broker; it
    stops at once if its HTTP port (or, when it starts a broker, the Kafka
    port) is taken. About 0.5% of the simulated messages are invalid on
    purpose (--invalid-rate): the "dead-lettered" count shows them rejected.
    """
    from service.tools.demo import DemoOptions, run_demo

    if accounts < 1 or rate <= 0 or (time_scale is not None and time_scale <= 0) or refresh <= 0:
        raise CliError("--accounts, --rate, --time-scale and --refresh must be positive")
    settings = settings_from_options(
        database_url=f"sqlite+aiosqlite:///{(data_dir / 'vitals.db').resolve()}",
        bootstrap_servers=bootstrap,
        web_port=web_port,
        app_id=app_id,
        topic_prefix=topic_prefix,
    )
    if bootstrap is None and "VITALS_BOOTSTRAP_SERVERS" not in __import__("os").environ:
        settings = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{kafka_port}"})
    options = DemoOptions(
        accounts=accounts,
        rate=rate,
        time_scale=time_scale,
        invalid_rate=invalid_rate,
        warmup_days=warmup_days,
        duration=duration,
        refresh=refresh,
        data_dir=data_dir,
        kafka_port=kafka_port,
    )
    try:
        summary = run_demo(settings, options)
    except (RuntimeError, OSError) as exc:
        raise CliError(str(exc)) from exc
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
