"""``vitals worker``: run one stream-processing worker."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from service.cli.main import CliError, settings_from_options


@click.command()
@click.option(
    "--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers (VITALS_BOOTSTRAP_SERVERS)."
)
@click.option("--web-port", type=int, help="HTTP port of this worker (VITALS_WEB_PORT).")
@click.option("--app-id", help="Consumer group / internal topic prefix (VITALS_APP_ID).")
@click.option("--topic-prefix", help="Prefix of every vitals topic (VITALS_TOPIC_PREFIX).")
@click.option(
    "--profile-to",
    type=click.Path(dir_okay=False, path_type=Path),
    hidden=True,
    help="Run under cProfile; SIGHUP writes the profile here and exits (vitals bench --profile).",
)
def worker(
    bootstrap_servers: str | None,
    web_port: int | None,
    app_id: str | None,
    topic_prefix: str | None,
    profile_to: Path | None,
) -> None:
    """Consume the input topics, keep account state, serve HTTP and /metrics.

    Runs until interrupted (Ctrl-C or SIGTERM), then stops within
    VITALS_SHUTDOWN_GRACE_S seconds (a second signal stops it at once) and
    logs one line about anything left undone; exit status 0 when nothing
    was, 1 when something was. All settings come from VITALS_* environment
    variables; options override them.
    """
    import logging

    logging.getLogger("aiokafka").setLevel(logging.NOTSET)
    settings = settings_from_options(
        bootstrap_servers=bootstrap_servers,
        web_port=web_port,
        app_id=app_id,
        topic_prefix=topic_prefix,
    )

    from service.model.playbooks import PlaybookError
    from service.model.scorecard import ScorecardError
    from service.runtime.topics import TopicError, ensure_topics
    from streams.topology import build_worker, worker_playbooks, worker_scorecard

    try:
        scorecard = worker_scorecard(settings)
        worker_playbooks(settings, scorecard)  # validate before connecting anywhere
    except (ScorecardError, PlaybookError, OSError) as exc:
        raise CliError(str(exc)) from exc
    try:
        ensure_topics(settings)
    except TopicError as exc:
        raise CliError(str(exc)) from exc

    # faust creates only the last folder of its data dir.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    top, _, shutdown = build_worker(settings, scorecard)
    from service.runtime.log_limit import limit_http_errors, limit_repeats
    from service.runtime.log_safety import log_thread_exceptions
    from streams.shutdown import VitalsWorker, run_worker

    # A broker outage must not flood the log (docs/reliability.md).
    limit_repeats(("aiokafka", "faust.transport"))
    # Nor may malformed HTTP requests, from anyone who can reach the port.
    limit_http_errors()
    log_thread_exceptions()
    # Results belong on stdout; faust's banner and logs go to stderr.
    runner = VitalsWorker(
        top.app,
        shutdown,
        loglevel=settings.log_level,
        stdout=sys.stderr,
        stderr=sys.stderr,
        quiet=True,
    )
    if profile_to is None:
        run_worker(runner)
    else:
        _profiled(lambda: run_worker(runner), profile_to)


def _profiled(run: Any, path: Path) -> None:
    """``run()`` under cProfile; SIGHUP writes the profile to ``path`` and exits.

    faust's own shutdown (SIGTERM) can wait a long time for buffered messages,
    and ``python -m cProfile`` only writes its file after a clean exit. (mode
    takes SIGUSR1 and SIGUSR2 for itself; SIGHUP is free in a detached worker.)
    """
    import cProfile
    import os
    import signal

    from service.tools.bench import PROFILE_SIGNAL

    profiler = cProfile.Profile()

    def dump(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(path)
        os._exit(0)

    signal.signal(PROFILE_SIGNAL, dump)
    profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
        profiler.dump_stats(path)
