"""``vitals bench``: throughput, latency and state size of the worker, in one run.

See :mod:`service.tools.bench` for what is measured and docs/benchmark.md for how to
read the numbers. The table goes to stdout, progress to stderr, the full result
as JSON to ``--output``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType

import click

from service.cli.main import CliError

__all__ = ["bench"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Simulated events to produce and process.",
)
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Simulated accounts the events belong to.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Partitions of the bench topics (VITALS_PARTITIONS of the worker).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=5000.0,
    show_default=True,
    help="Offered rate (events/s) of the latency run.",
)
@click.option(
    "--latency-seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Length of each latency run.",
)
@click.option(
    "--fallback-rate",
    type=click.FloatRange(min=1),
    default=None,
    help="Rate of the second latency run when the first is not sustained "
    "[default: half the end-to-end rate].",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Use this Kafka cluster instead of starting a local broker.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("docs/bench/latest.json"),
    show_default=True,
    help="Result JSON file.",
)
@click.option(
    "--table",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the table to this file.",
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Afterwards, run a fresh worker under cProfile over the same events and "
    "write its stats here (summary in the JSON).",
)
@click.option(
    "--profile-events",
    type=click.IntRange(min=1),
    default=None,
    help="Events the profiled worker processes [default: min(events, 100000)].",
)
@click.option(
    "--quix-python",
    default=None,
    help="Interpreter with quixstreams installed for step (e) [default: this one].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=10),
    default=3600.0,
    show_default=True,
    help="Longest wait (s) for any one step.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Worker processes of step (f), the machine rate (vitals worker --processes N); "
    "0: one per core, at most one per partition; 1: skip (f).",
)
@click.option(
    "--worker-setting",
    "worker_settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A worker setting for every worker the bench starts, e.g. "
    "VITALS_BUFFER_MAX_EVENTS=5000 (repeatable; recorded in the JSON). The bench sets "
    "the connection, topics, app id, port and scorecard itself.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, broker data).")
@click.option(
    "--pipeline",
    is_flag=True,
    help="Only the in-process path without Kafka: microseconds per event per stage "
    "(decode, order, apply, rescore, playbooks, outputs, changelog) over --accounts "
    "accounts (default here: 500) and 30 days of the simulator's history.",
)
def bench(
    events: int,
    accounts: int,
    seed: int,
    partitions: int,
    rate: float,
    latency_seconds: float,
    fallback_rate: float | None,
    bootstrap: str | None,
    output: Path,
    table: Path | None,
    profile: Path | None,
    profile_events: int | None,
    quix_python: str | None,
    timeout: float,
    processes: int,
    worker_settings: tuple[str, ...],
    keep: bool,
    pipeline: bool,
) -> None:
    """Benchmark one worker: (a) consumer limit, (b) end-to-end events/s,
    (c) event -> score latency at a fixed rate, (d) state bytes per account,
    (e) Quix Streams for comparison, (f) the machine rate: (b) with N worker
    processes on this machine; then check the targets.

    Starts a local Kafka in a temporary directory (stopped at the end, also on
    Ctrl-C) unless --bootstrap is given; topics get a fresh prefix either way.
    Exit status 0 even when a target is missed: read "pass" in the JSON.
    """
    if pipeline:
        _pipeline(accounts, seed, output)
        return
    from service.tools.bench import (
        BenchError,
        BenchParams,
        machine_processes,
        render_table,
        run_bench,
    )

    chosen: dict[str, str] = {}
    for item in worker_settings:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("VITALS_") or name != name.strip().upper():
            raise CliError(f"--worker-setting {item!r}: expected VITALS_NAME=VALUE")
        chosen[name] = value
    params = BenchParams(
        events=events,
        accounts=accounts,
        seed=seed,
        partitions=partitions,
        rate=rate,
        latency_seconds=latency_seconds,
        fallback_rate=fallback_rate,
        bootstrap=bootstrap,
        output=output,
        table=table,
        profile=profile,
        profile_events=profile_events,
        quix_python=quix_python,
        timeout=timeout,
        keep=keep,
        processes=processes,
        worker_settings=chosen,
    )
    try:
        machine_processes(params)  # before anything runs: more processes than partitions
    except BenchError as exc:
        raise CliError(str(exc)) from exc
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_bench(params)
    except BenchError as exc:
        raise CliError(str(exc).splitlines()[0]) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = render_table(result)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        if table is not None:
            table.parent.mkdir(parents=True, exist_ok=True)
            table.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write results: {exc}") from exc
    click.echo(text, nl=False)
    click.echo(f"bench: result written to {output}", err=True)


def _pipeline(accounts: int, seed: int, output: Path | None) -> None:
    """``--pipeline``: the in-process stage table (stdout) and its JSON (``--output``)."""
    import json

    from service.tools.bench_pipeline import measure, render

    source = click.get_current_context().get_parameter_source("accounts")
    chosen = accounts if source is click.core.ParameterSource.COMMANDLINE else 500
    result = measure(
        chosen, 30, seed, progress=lambda text: click.echo(f"vitals bench: {text}", err=True)
    )
    click.echo(render(result))
    explicit = click.get_current_context().get_parameter_source("output")
    if output is not None and explicit is click.core.ParameterSource.COMMANDLINE:
        output.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
