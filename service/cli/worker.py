"""``vitals worker``: run one stream-processing worker."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from service.cli.main import CliError, settings_from_options

if TYPE_CHECKING:
    from service.runtime.settings import Settings
    from service.tools.worker_pool import Member


@click.command()
@click.option(
    "--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers (VITALS_BOOTSTRAP_SERVERS)."
)
@click.option(
    "--web-port",
    type=int,
    help="HTTP port of this worker, of the first with --processes (VITALS_WEB_PORT).",
)
@click.option("--app-id", help="Consumer group / internal topic prefix (VITALS_APP_ID).")
@click.option("--topic-prefix", help="Prefix of every vitals topic (VITALS_TOPIC_PREFIX).")
@click.option(
    "--processes",
    metavar="N|auto",
    help="Worker processes on this machine, one consumer of the group each, on ports "
    "--web-port to --web-port+N-1 (any of them answers for every account); 0 or auto: one "
    "per core, at most one per partition (VITALS_WORKER_PROCESSES, default 1).",
)
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
    processes: str | None,
    profile_to: Path | None,
) -> None:
    """Consume the input topics, keep account state, serve HTTP and /metrics.

    Runs until interrupted (Ctrl-C or SIGTERM), then stops within
    VITALS_SHUTDOWN_GRACE_S seconds (a second signal stops it at once) and
    logs one line about anything left undone; exit status 0 when nothing
    was, 1 when something was. All settings come from VITALS_* environment
    variables; options override them.

    With --processes N (N > 1) this process supervises N workers: it forwards
    signals to them, prefixes their log lines with their name and port, and
    when one ends by itself stops the others and exits 3 (docs/operations.md,
    "Several processes per machine").
    """
    import logging

    logging.getLogger("aiokafka").setLevel(logging.NOTSET)
    settings = settings_from_options(
        bootstrap_servers=bootstrap_servers,
        web_port=web_port,
        app_id=app_id,
        topic_prefix=topic_prefix,
        worker_processes=processes,
    )
    # Usage errors and taken ports before connecting anywhere.
    count = _processes(settings)
    if count > 1 and profile_to is not None:
        raise CliError("--profile-to profiles one worker: use it without --processes")
    members = _plan_pool(settings, count) if count > 1 else None

    from service.model.playbooks import PlaybookError
    from service.model.scorecard import ScorecardError
    from service.runtime.topics import TopicError, ensure_topics
    from streams.topology import (
        build_worker,
        install_gc_policy,
        worker_playbooks,
        worker_scorecard,
    )

    try:
        scorecard = worker_scorecard(settings)
        worker_playbooks(settings, scorecard)  # validate before connecting anywhere
    except (ScorecardError, PlaybookError, OSError) as exc:
        raise CliError(str(exc)) from exc
    try:
        ensure_topics(settings)
    except TopicError as exc:
        raise CliError(str(exc)) from exc
    if members is not None:
        sys.exit(_run_pool(settings, members))

    # faust creates only the last folder of its data dir.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    top, _, shutdown = build_worker(settings, scorecard)
    gc_policy = install_gc_policy(top, settings)
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
    gc_policy.install()  # last: what start-up made is frozen
    if profile_to is None:
        run_worker(runner)
    else:
        _profiled(lambda: run_worker(runner), profile_to)


def _processes(settings: Settings) -> int:
    """How many workers to run here (``auto`` resolved); 1 runs in this process."""
    from service.tools.worker_pool import PoolError, machine_cores, resolve_processes

    if settings.worker_processes == 1:
        return 1
    try:
        return resolve_processes(
            settings.worker_processes, cores=machine_cores(), partitions=settings.partitions
        )
    except PoolError as exc:
        raise CliError(str(exc)) from exc


def _plan_pool(settings: Settings, count: int) -> list[Member]:
    """The pool's processes, once their ports are known to be free."""
    from service.tools.worker_pool import PoolError, plan_members, ports_in_use

    try:
        members = plan_members(count, web_port=settings.web_port, data_dir=settings.data_dir)
        taken = ports_in_use(settings.web_bind, [m.port for m in members])
    except PoolError as exc:
        raise CliError(str(exc)) from exc
    if taken:
        raise CliError(
            f"port {taken[0]} is in use (another vitals?): --processes {count} uses ports "
            f"{members[0].port}-{members[-1].port}; stop it, or choose another --web-port"
        )
    return members


def _run_pool(settings: Settings, members: list[Member]) -> int:
    """Run ``members`` as workers under a supervisor; its exit status."""
    import os

    from service.tools.child_process import vitals_command
    from service.tools.worker_pool import WorkerPool, member_env

    # What the options set reaches the processes through their environment.
    overrides = {
        "VITALS_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "VITALS_APP_ID": settings.app_id,
        "VITALS_TOPIC_PREFIX": settings.topic_prefix,
    }
    pool = WorkerPool(
        members,
        command=vitals_command("worker"),
        env_for=lambda member: member_env(os.environ, member, overrides),
        grace_s=settings.shutdown_grace_s,
    )
    return pool.run()


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
