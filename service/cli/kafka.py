"""``vitals kafka``: a local single-node Kafka broker for development.

``up`` starts it in the background and prints one JSON line for programs
(``{"bootstrap": ..., "pid": ..., "data_dir": ...}``); ``status`` prints one
JSON line and exits 0 if it runs, 3 if not; ``down`` stops it; ``fetch`` only
downloads the jars. Progress goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from service.cli.main import CliError
from service.tools.kafka_local import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_KAFKA_VERSION,
    DEFAULT_PORT,
    KafkaLocalError,
    LocalKafka,
    default_data_dir,
)

__all__ = ["kafka"]

EXIT_NOT_RUNNING = 3


def _fail(exc: KafkaLocalError) -> CliError:
    """One error line; the evidence (tool output, broker log tail) before it."""
    if exc.detail:
        click.echo(exc.detail, err=True)
    return CliError(exc.message)


def _emit(payload: dict[str, object]) -> None:
    click.echo(json.dumps(payload, sort_keys=False))


def _setup_logging() -> None:
    # Only if nobody configured logging yet: progress lines for humans on stderr.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="vitals: %(message)s")


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="VITALS_KAFKA_DATA_DIR",
    default=default_data_dir,
    show_default="~/.local/share/vitals/kafka",
    show_envvar=True,
    help="Directory for the broker's configuration, storage, log and pid file.",
)
version_option = click.option(
    "--version",
    "version",
    default=DEFAULT_KAFKA_VERSION,
    show_default=True,
    help="Apache Kafka release (org.apache.kafka:kafka_2.13 on Maven Central).",
)


@click.group(name="kafka")
def kafka() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) without Docker.

    The jars are downloaded once with Maven into ~/.cache/vitals/kafka
    (env VITALS_KAFKA_CACHE); Java 17+ is required.
    """
    _setup_logging()


@kafka.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="VITALS_KAFKA_PORT",
    default=DEFAULT_PORT,
    show_default=True,
    show_envvar=True,
    help="PLAINTEXT listener port on 127.0.0.1.",
)
@click.option(
    "--controller-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_CONTROLLER_PORT,
    show_default=True,
    help="KRaft controller listener port on 127.0.0.1.",
)
@data_dir_option
@version_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    help="Seconds to wait for the broker to answer metadata.",
)
def up(port: int, controller_port: int, data_dir: Path, version: str, timeout: float) -> None:
    """Start the broker in the background and wait until it is ready.

    Prints {"bootstrap": "127.0.0.1:PORT", "pid": N, "data_dir": "..."} on
    stdout. If a broker from DATA_DIR already runs and is ready, says so and
    exits 0.
    """
    broker = LocalKafka(
        data_dir=data_dir, port=port, controller_port=controller_port, version=version
    )
    try:
        pid = broker.pid()
        if pid is not None:
            bootstrap = broker.running_bootstrap()
            # It may still be starting (another `up`): give it the same time.
            current = broker.status(timeout=timeout)
            if not current.ready:
                raise CliError(
                    f"a broker from {broker.data_dir} runs (pid {pid}) but {bootstrap} "
                    f"did not answer within {timeout:.0f}s; see {broker.log_path}"
                )
            click.echo(f"vitals: Kafka already running on {bootstrap} (pid {pid})", err=True)
            _emit({"bootstrap": bootstrap, "pid": pid, "data_dir": str(broker.data_dir)})
            return
        broker.start(timeout=timeout)
    except KafkaLocalError as exc:
        raise _fail(exc) from exc
    _emit({"bootstrap": broker.bootstrap, "pid": broker.pid(), "data_dir": str(broker.data_dir)})


@kafka.command()
@data_dir_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def down(data_dir: Path, timeout: float) -> None:
    """Stop the broker (SIGTERM, then SIGKILL). Exits 0 if it was not running."""
    broker = LocalKafka(data_dir=data_dir)
    try:
        stopped = broker.stop(timeout=timeout)
    except KafkaLocalError as exc:
        raise _fail(exc) from exc
    click.echo(
        "vitals: Kafka stopped" if stopped else f"vitals: no Kafka running from {broker.data_dir}",
        err=True,
    )


@kafka.command()
@data_dir_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Seconds to wait for a metadata answer when checking readiness.",
)
def status(data_dir: Path, timeout: float) -> None:
    """Print {"running", "ready", "pid", "bootstrap", "data_dir"} as one JSON line.

    Exit status 0 if the broker runs, 3 if not.
    """
    broker = LocalKafka(data_dir=data_dir)
    try:
        result = broker.status(timeout=timeout)
    except KafkaLocalError as exc:
        raise _fail(exc) from exc
    _emit(result.to_json())
    if not result.running:
        click.get_current_context().exit(EXIT_NOT_RUNNING)


@kafka.command()
@version_option
def fetch(version: str) -> None:
    """Download and cache the broker jars only (no broker is started).

    Prints {"version": ..., "libs": ...} on stdout.
    """
    # The data dir is irrelevant for fetching; LocalKafka just needs one.
    broker = LocalKafka(data_dir=default_data_dir(), version=version)
    try:
        libs = broker.ensure_jars()
    except KafkaLocalError as exc:
        raise _fail(exc) from exc
    _emit({"version": version, "libs": str(libs)})
