"""The main job: everything on local defaults, with the portfolio live in the terminal.

``vitals demo`` starts (or reuses) a local Kafka broker, creates the topics and
the SQLite history database, then runs three child processes, a worker, the
history sink and the simulator in live mode, and redraws a dashboard from the
worker's HTTP API and the output topics. Ctrl-C or SIGTERM (or ``--duration``)
stops the children, then the broker if the demo started it; no process is
left behind.

The demo runs as its own deployment (app id ``vitals-demo``, topic prefix
``vitals-demo.`` unless told otherwise), so that it never joins the consumer
group of another vitals on the same broker; it checks its ports before
starting anything; and whatever it prints from the topics goes through
:func:`shown`, so that ids and reasons cannot drive the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from service.runtime.settings import Settings
from service.tools.child_process import spawn, vitals_command, worker_env

__all__ = ["DEMO_APP_ID", "DEMO_TOPIC_PREFIX", "DemoError", "DemoOptions", "run_demo", "shown"]

#: The demo's consumer group and topic prefix: never those of a real deployment.
DEMO_APP_ID = "vitals-demo"
DEMO_TOPIC_PREFIX = "vitals-demo."


class DemoError(RuntimeError):
    """The demo cannot run as asked (one line for the command line)."""


def shown(text: object, width: int | None = None) -> str:
    """``text`` safe for a terminal: anything not printable (control characters,
    escape sequences, bidi overrides) as a Python escape; cut to ``width``."""
    value = str(text)
    if not value.isprintable():
        value = "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in value
        )
    if width is not None and len(value) > width:
        value = value[: max(0, width - 1)] + "…"
    return value


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) ``host:port``."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class DemoOptions:
    accounts: int = 200
    rate: float = 100.0
    #: Simulated seconds per wall second; None: what gives ``rate``.
    time_scale: float | None = None
    #: Share of deliberately invalid messages (they go to the dead-letter topic).
    invalid_rate: float = 0.005
    warmup_days: int = 30
    duration: float | None = None
    refresh: float = 2.0
    data_dir: Path = Path("var/demo")
    kafka_port: int = 9092
    reuse_kafka: bool = True


@dataclass
class Dashboard:
    """What the terminal shows; updated from HTTP and the output topics."""

    started: float = field(default_factory=time.monotonic)
    portfolio: dict[str, Any] = field(default_factory=dict)
    changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    triggers: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=6))
    change_count: int = 0
    trigger_count: int = 0
    score_count: int = 0
    scored_accounts: set[str] = field(default_factory=set)
    events: float = 0.0
    events_per_s: float = 0.0
    dlq: float = 0.0
    #: Where the worker serves the web UI (printed on every frame).
    ui_url: str = "http://127.0.0.1:6066/ui/"

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(time.monotonic() - self.started, 1),
            "events": int(self.events),
            "dead_lettered": int(self.dlq),
            "scores": self.score_count,
            "accounts_scored": len(self.scored_accounts),
            "bucket_changes": self.change_count,
            "playbook_triggers": self.trigger_count,
            "buckets": {
                name: slot.get("accounts", 0)
                for name, slot in self.portfolio.get("buckets", {}).items()
            },
        }

    def render(self, *, tty: bool) -> str:
        s = self.summary()
        buckets = self.portfolio.get("buckets", {})
        lines = [
            f"vitals demo  {s['seconds']:.0f}s  events {s['events']} ({self.events_per_s:.0f}/s)  "
            f"dead-lettered {s['dead_lettered']}  scores {s['scores']}",
            "",
            "portfolio   accounts        ARR   share",
        ]
        for name in ("green", "yellow", "red"):
            slot = buckets.get(name, {})
            lines.append(
                f"  {name:<8} {slot.get('accounts', 0):>9} {slot.get('arr', 0.0):>10.0f}"
                f"   {100 * slot.get('share', 0.0):5.1f}%"
            )
        if self.portfolio:
            target = 100 * self.portfolio.get("red_share_target", 0.0)
            lines.append(f"  red share target {target:.1f}%")
        lines += ["", f"latest bucket changes ({self.change_count} in all)"]
        for change in reversed(self.changes):
            drivers = ", ".join(
                f"{d.get('label') or d['metric']} {d['contribution_delta']:+.1f}"
                for d in change.get("drivers", [])[:3]
            )
            move = f"{shown(change['from_bucket']):>6} -> {shown(change['to_bucket']):<6}"
            account = shown(change["account_id"], 32)
            lines.append(f"  {account:<12} {move} {change['score']:5.1f}  {shown(drivers)}")
        lines += ["", f"playbook triggers ({self.trigger_count} in all)"]
        for trigger in reversed(self.triggers):
            account = shown(trigger["account_id"], 32)
            playbook = shown(trigger["playbook"], 32)
            lines.append(f"  {account:<12} {playbook:<16} {shown(trigger['reason'], 200)}")
        lines += [
            "",
            f"Web UI: {self.ui_url}   HTTP API: /portfolio, /accounts/<id>/health",
            "(Ctrl-C stops everything)",
        ]
        text = "\n".join(lines)
        return ("\x1b[H\x1b[2J" + text) if tty else text


class Children:
    """Child processes in their own process groups, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = spawn(vitals_command(*args), env, self.log_dir / f"{name}.log")
        self.procs.append((name, proc))
        # Written for operators (and the demo test) to check nothing outlives us.
        with (self.log_dir / "children.pids").open("a") as pids:
            pids.write(f"{name} {proc.pid}\n")
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None and proc.returncode != 0:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")

    def stop(self, timeout: float = 20.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _follow_outputs(settings: Settings, board: Dashboard, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.scores_topic,
        settings.bucket_changes_topic,
        settings.triggers_topic,
        **settings.aiokafka_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    value = orjson.loads(record.value)
                    if record.topic == settings.scores_topic:
                        board.score_count += 1
                        board.scored_accounts.add(value["account_id"])
                    elif record.topic == settings.bucket_changes_topic:
                        board.change_count += 1
                        board.changes.append(value)
                    else:
                        board.trigger_count += 1
                        board.triggers.append(value)
    finally:
        await consumer.stop()


async def _watch(
    settings: Settings,
    options: DemoOptions,
    children: Children,
    board: Dashboard,
    stop: asyncio.Event,
    out: IO[str],
) -> None:
    follower = asyncio.create_task(_follow_outputs(settings, board, stop))
    tty = out.isatty()
    last_events, last_time = 0.0, time.monotonic()
    deadline = None if options.duration is None else time.monotonic() + options.duration
    try:
        while not stop.is_set():
            children.check()
            with contextlib.suppress(OSError, ValueError):
                board.portfolio = await asyncio.to_thread(
                    _get_json, f"http://127.0.0.1:{settings.web_port}/portfolio"
                )
                text = await asyncio.to_thread(
                    lambda: (
                        urllib.request.urlopen(
                            f"http://127.0.0.1:{settings.web_port}/metrics", timeout=5
                        )
                        .read()
                        .decode()
                    )
                )
                board.events = _metric_sum(text, "vitals_events_consumed_total")
                board.dlq = _metric_sum(text, "vitals_dlq_records_total")
                now = time.monotonic()
                board.events_per_s = (board.events - last_events) / max(1e-6, now - last_time)
                last_events, last_time = board.events, now
            if tty or options.duration is None:
                print(board.render(tty=tty), file=out if tty else sys.stderr, flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.refresh)
    finally:
        stop.set()
        await follower
        if not tty:
            # A log or a test run still gets the final picture, once.
            print(board.render(tty=False), file=sys.stderr, flush=True)


def run_demo(settings: Settings, options: DemoOptions, out: IO[str] = sys.stdout) -> dict[str, Any]:
    """Run the demo until stopped; returns the final summary."""
    from service.history.db import migrate
    from service.runtime.topics import ensure_topics
    from service.tools.kafka_local import DEFAULT_CONTROLLER_PORT, LocalKafka, wait_ready

    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_in_use(settings.web_port):
        raise DemoError(
            f"port {settings.web_port} is in use (another vitals?): stop it, "
            "or choose another port with --web-port"
        )
    broker: LocalKafka | None = None
    try:
        wait_ready(settings.bootstrap_servers, 3)
        print(f"vitals demo: using Kafka at {settings.bootstrap_servers}", file=sys.stderr)
    except Exception:
        for port, option in ((options.kafka_port, "--kafka-port"), (DEFAULT_CONTROLLER_PORT, "")):
            if port_in_use(port):
                how = f"choose another with {option}" if option else "free it"
                raise DemoError(
                    f"port {port} is in use but no Kafka broker answers at "
                    f"{settings.bootstrap_servers}: {how}"
                ) from None
        broker = LocalKafka(data_dir=data_dir / "kafka", port=options.kafka_port)
        print(f"vitals demo: starting Kafka on 127.0.0.1:{options.kafka_port}", file=sys.stderr)
        broker.start(timeout=120)
        settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
    children = Children(data_dir)
    board = Dashboard(ui_url=f"http://127.0.0.1:{settings.web_port}/ui/")
    try:
        ensure_topics(settings)
        asyncio.run(migrate(settings.database_url))
        env = worker_env(
            os.environ,
            bootstrap=settings.bootstrap_servers,
            app_id=settings.app_id,
            topic_prefix=settings.topic_prefix,
            partitions=settings.partitions,
            web_port=settings.web_port,
            data_dir=data_dir / "worker",
        )
        env["VITALS_DATABASE_URL"] = settings.database_url
        env["VITALS_TIMER_INTERVAL_S"] = "2"
        # The simulated product's key features and KPI (the shipped demo
        # scorecard), unless the user chose a scorecard.
        env.setdefault("VITALS_SCORECARD_FILE", "demo")
        children.start("worker", ["worker"], env)
        children.start("history-sink", ["history-sink", "--no-migrate"], env)
        _wait_worker(settings, children)
        print(f"vitals demo: web UI at {board.ui_url}", file=sys.stderr, flush=True)
        simulate = [
            "simulate",
            "--mode",
            "live",
            "--accounts",
            str(options.accounts),
            "--rate",
            str(options.rate),
            "--warmup-days",
            str(options.warmup_days),
            "--invalid-rate",
            str(options.invalid_rate),
        ]
        if options.time_scale is not None:
            # Both given: the rate only caps what the time scale produces.
            simulate += ["--time-scale", str(options.time_scale)]
        children.start("simulator", simulate, env)
        stop = asyncio.Event()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await _watch(settings, options, children, board, stop, out)

        asyncio.run(main())
    finally:
        children.stop()
        if broker is not None:
            broker.stop()
    return board.summary()


def _wait_worker(settings: Settings, children: Children, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{settings.web_port}/readyz"
    while time.monotonic() < deadline:
        children.check()
        with contextlib.suppress(OSError, ValueError):
            if _get_json(url).get("ready"):
                return
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready within {timeout:.0f}s (see worker.log)")
