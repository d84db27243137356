"""``vitals bench``: end-to-end throughput, latency and state size, on one broker and one data set.

One run measures, over the same simulated events on the same broker:

(a) **limit** -- a plain aiokafka consumer (``getmany``, large fetches) reading
    the input topics from the start and decoding every value with orjson: the
    ceiling for any Python consumer on this machine;
(b) **end to end** -- one ``vitals worker`` subprocess started *after* the events
    are in the topics; events/s = N / (CreateTime of the last score published -
    CreateTime of the first score published). The first score is published
    right after the first event is processed, so it marks "first event consumed";
    the rate from worker readiness is reported too;
(c) **latency** -- the caught-up worker gets new ``login`` / ``feature_use``
    events (occurred_at = the time they are handed to the producer) at a fixed
    offered rate; latency = CreateTime of the score whose ``as_of`` is the
    event's time, for that account, minus the event's time. If the worker does
    not keep up, a second run at a rate it sustains follows;
(d) **state** -- serialised ``AccountState`` bytes (the changelog record) of
    busy accounts (their latest changelog record) and of the same accounts
    after 91 days without events (``scoring.on_timer``), plus the worker's RSS
    growth per account;
(e) **Quix Streams** -- an equivalent per-account stateful count, when an
    interpreter with ``quixstreams`` is available (``--quix-python``);
(f) **machine** -- (b) again with ``vitals worker --processes N`` (N = the
    machine's cores by default, at most one per partition): N workers of one
    new group over the same events, run after (d) while the worker of (b)
    idles; the machine rate beside the one-process rate.

The pure helpers (percentiles, rates, targets, the table) are at the top and
unit-tested; the Kafka and subprocess parts follow.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from random import Random
from typing import Any, Final

import orjson

from service.tools.child_process import (
    child_pids,
    free_port,
    free_port_range,
    http_get,
    spawn,
    stop_group,
    vitals_command,
    worker_env,
)

__all__ = [
    "SCHEMA",
    "TARGETS",
    "BenchError",
    "BenchParams",
    "evaluate_targets",
    "history_days",
    "latency_summary",
    "machine_info",
    "machine_processes",
    "measure_machine",
    "percentile",
    "prometheus_sum",
    "rate",
    "render_table",
    "run_bench",
    "size_summary",
    "summarise_profile",
]

SCHEMA: Final = "vitals-bench/1"
DAY_MS: Final = 86_400_000
IDLE_DAYS: Final = 91
#: Simulated messages per account and day with the default persona mix (about 3.5).
_EVENTS_PER_ACCOUNT_DAY: Final = 3.0

#: name -> (comparison, threshold, meaning)
TARGETS: Final[dict[str, tuple[str, float, str]]] = {
    "end_to_end_events_per_s": (">=", 25_000.0, "end-to-end throughput >= 25,000 events/s"),
    "end_to_end_share_of_limit": (">=", 0.25, "end to end >= 25% of the consumer limit"),
    "latency_p99_ms_at_5k": ("<=", 250.0, "p99 event -> score <= 250 ms at 5,000 events/s"),
    "idle_state_bytes": ("<=", 2048.0, "<= 2 KB of state per idle account (max of sample)"),
    "worker_rss_mb_at_end": ("<=", 300.0, "worker RSS <= 300 MB at the end of the run"),
}
#: A latency run stops offering load once the worker is this many seconds behind.
BACKLOG_LIMIT_S: Final = 5.0
#: Makes a profiled worker write its profile and exit (mode owns SIGUSR1/SIGUSR2).
PROFILE_SIGNAL: Final = signal.SIGHUP
#: The timer's tick boundaries (UTC midnight), as the default scorecard rescores.
TICK_MS: Final = 86_400_000

#: The offered rate the latency target is defined at.
TARGET_RATE: Final = 5000.0


class BenchError(RuntimeError):
    """A benchmark step failed (one-line message)."""


# ----------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default).

    Raises ``ValueError`` for an empty sequence or ``q`` outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def rate(count: int, seconds: float) -> float | None:
    """``count / seconds``, or None when no time passed (a rate is then meaningless)."""
    if seconds <= 0 or not math.isfinite(seconds):
        return None
    return count / seconds


def score_latencies(
    sent: Sequence[tuple[str, int]], published: Mapping[str, Sequence[tuple[int, int]]]
) -> tuple[list[float], int]:
    """Latency (ms) of each sent ``(account, occurred_at)`` and how many were never scored.

    An event's latency runs from its ``occurred_at`` (stamped when handed to
    the producer) to the first score of its account that reflects it: the
    earliest publication among the account's scores with ``as_of >=
    occurred_at``. ``published`` maps an account to its scores as
    ``(as_of ms, publish time ms)``. A worker may publish only the newest
    score of an account per batch, so an event need not have a score of its
    own ``as_of``.
    """
    earliest_from: dict[str, tuple[list[int], list[int]]] = {}
    for account, scores in published.items():
        ordered = sorted(scores)
        as_ofs = [as_of for as_of, _ in ordered]
        suffix_min: list[int] = [0] * len(ordered)
        best = math.inf
        for i in range(len(ordered) - 1, -1, -1):
            best = min(best, ordered[i][1])
            suffix_min[i] = int(best)
        earliest_from[account] = (as_ofs, suffix_min)
    latencies: list[float] = []
    unscored = 0
    for account, occurred in sent:
        found = earliest_from.get(account)
        index = bisect.bisect_left(found[0], occurred) if found is not None else 0
        if found is None or index >= len(found[0]):
            unscored += 1
        else:
            latencies.append(float(found[1][index] - occurred))
    return latencies, unscored


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of latencies in milliseconds (None when empty)."""
    if not latencies_ms:
        return {
            "count": 0,
            "mean_ms": None,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "max_ms": None,
        }
    return {
        "count": len(latencies_ms),
        "mean_ms": round(sum(latencies_ms) / len(latencies_ms), 1),
        "p50_ms": round(percentile(latencies_ms, 50), 1),
        "p90_ms": round(percentile(latencies_ms, 90), 1),
        "p99_ms": round(percentile(latencies_ms, 99), 1),
        "max_ms": round(max(latencies_ms), 1),
    }


def size_summary(sizes: Sequence[int]) -> dict[str, float | int | None]:
    """count, mean, p50, p99 and max of byte sizes (None when empty)."""
    if not sizes:
        return {"count": 0, "mean": None, "p50": None, "p99": None, "max": None}
    return {
        "count": len(sizes),
        "mean": round(sum(sizes) / len(sizes), 1),
        "p50": round(percentile(sizes, 50), 1),
        "p99": round(percentile(sizes, 99), 1),
        "max": max(sizes),
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prometheus_sum(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is not None and match.group(1) == name:
            total += float(match.group(3))
    return total


def history_days(events: int, accounts: int) -> int:
    """Days of simulated history that hold at least ``events`` messages (1-365)."""
    if events < 1 or accounts < 1:
        raise ValueError("events and accounts must be >= 1")
    return max(1, min(365, math.ceil(events / (accounts * _EVENTS_PER_ACCOUNT_DAY)) + 1))


def _check(name: str, value: float | None, ok: bool | None, note: str = "") -> dict[str, Any]:
    comparison, threshold, meaning = TARGETS[name]
    return {
        "name": name,
        "target": f"{comparison} {threshold:g}",
        "meaning": meaning,
        "value": value,
        "pass": ok,
        "note": note,
    }


def _compare(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    comparison, threshold, _ = TARGETS[name]
    return value >= threshold if comparison == ">=" else value <= threshold


def evaluate_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Pass/fail of every target in :data:`TARGETS` for a result dictionary.

    ``pass`` is None when the value could not be measured. The latency target
    is judged on the first latency run; it fails when that run was offered
    another rate than 5,000 events/s, fell behind, or left events unscored.
    """
    checks: list[dict[str, Any]] = []
    e2e = (result.get("end_to_end") or {}).get("events_per_s")
    checks.append(_check("end_to_end_events_per_s", e2e, _compare("end_to_end_events_per_s", e2e)))
    share = (result.get("end_to_end") or {}).get("share_of_limit")
    checks.append(
        _check("end_to_end_share_of_limit", share, _compare("end_to_end_share_of_limit", share))
    )
    runs = (result.get("latency") or {}).get("runs") or []
    if runs:
        first = runs[0]
        p99 = first.get("p99_ms")
        ok = _compare("latency_p99_ms_at_5k", p99)
        notes = []
        if first.get("offered_rate") != TARGET_RATE:
            notes.append(f"offered {first.get('offered_rate'):g}/s, not 5000/s")
            ok = False if ok is not None else None
        if not first.get("sustained"):
            notes.append("the worker fell behind the offered rate")
            ok = False
        if first.get("unscored"):
            notes.append(f"{first['unscored']} events got no score in time")
            ok = False
        checks.append(_check("latency_p99_ms_at_5k", p99, ok, "; ".join(notes)))
    else:
        checks.append(_check("latency_p99_ms_at_5k", None, None, "not measured"))
    idle = ((result.get("state") or {}).get("idle_bytes") or {}).get("max")
    checks.append(_check("idle_state_bytes", idle, _compare("idle_state_bytes", idle)))
    rss_kb = (result.get("state") or {}).get("rss_done_kb")
    rss_mb = None if rss_kb is None else round(rss_kb / 1024, 1)
    checks.append(_check("worker_rss_mb_at_end", rss_mb, _compare("worker_rss_mb_at_end", rss_mb)))
    return checks


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(result: Mapping[str, Any]) -> str:
    """The human-readable summary of a result dictionary (plain text)."""
    lines: list[str] = []
    params = result.get("parameters", {})
    machine = result.get("machine", {})
    lines.append(
        f"vitals bench  {result.get('started_at', '')}  "
        f"{_fmt(params.get('events'))} events / {_fmt(params.get('accounts'))} accounts, "
        f"{params.get('partitions')} partitions"
    )
    lines.append(
        f"machine: {machine.get('cpu_model')} x{machine.get('cpu_cores')}, "
        f"{_fmt(machine.get('memory_mb'))} MB, Python {machine.get('python')}, "
        f"Kafka {machine.get('kafka_version')}, faust-streaming {machine.get('faust_version')}"
    )
    commit = machine.get("commit")
    lines.append(
        f"code: commit {commit[:12] if commit else 'unknown'}"
        f"{' with uncommitted changes' if machine.get('dirty') else ''}, "
        f"{machine.get('model', 'interpreted')} scoring model"
    )
    chosen = params.get("worker_settings") or {}
    if chosen:
        lines.append("worker settings: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    lines.append("")
    lines.append(f"{'measure':<44} {'value':>16}")
    lines.append("-" * 61)

    def row(name: str, value: Any, digits: int = 0, unit: str = "") -> None:
        text = _fmt(value, digits) + (f" {unit}" if unit and value is not None else "")
        lines.append(f"{name:<44} {text:>16}")

    limit = result.get("limit") or {}
    row("(a) limit: aiokafka getmany + orjson", limit.get("events_per_s"), 0, "ev/s")
    e2e = result.get("end_to_end") or {}
    row("(b) vitals end to end (first..last score)", e2e.get("events_per_s"), 0, "ev/s")
    row("    from worker readiness", e2e.get("events_per_s_from_ready"), 0, "ev/s")
    row("    seconds (first..last score)", e2e.get("seconds"), 1, "s")
    row("    scores published", e2e.get("scores_published"))
    row("    worker CPU per event", e2e.get("worker_cpu_ms_per_event"), 3, "ms")
    row("    CPU s worker / broker (ready..done)", None)
    lines[-1] = (
        f"{'    CPU s worker / broker (ready..done)':<44} "
        f"{_fmt(e2e.get('cpu_seconds_worker'), 1)}/{_fmt(e2e.get('cpu_seconds_broker'), 1)}"
        f" of {_fmt(e2e.get('cpu_wall_seconds'), 1)} s"
    )
    row("    reorder buffer peak (one partition)", e2e.get("reorder_buffer_peak_events"), 0, "ev")
    row("    (b) / (a)", e2e.get("share_of_limit"), 3)
    machine_rate = result.get("machine_rate") or {}
    if machine_rate.get("events_per_s") is not None:
        n = machine_rate.get("processes")
        row(f"(f) machine: {n} processes end to end", machine_rate.get("events_per_s"), 0, "ev/s")
        row("    from readiness of all", machine_rate.get("events_per_s_from_ready"), 0, "ev/s")
        speedup = machine_rate.get("speedup_over_one_process")
        row("    speed-up over one process (f)/(b)", speedup, 2)
        row("    worker CPU per event", machine_rate.get("worker_cpu_ms_per_event"), 3, "ms")
        lines.append(
            f"{'    CPU s workers / broker (ready..done)':<44} "
            f"{_fmt(machine_rate.get('cpu_seconds_workers'), 1)}/"
            f"{_fmt(machine_rate.get('cpu_seconds_broker'), 1)}"
            f" of {_fmt(machine_rate.get('cpu_wall_seconds'), 1)} s"
        )
    elif machine_rate:
        lines.append(f"(f) machine: {machine_rate.get('status', 'not run')}")
    for run in (result.get("latency") or {}).get("runs") or []:
        head = f"(c) latency @ {_fmt(run.get('offered_rate'))}/s offered"
        row(head, run.get("achieved_rate"), 0, "ev/s sent")
        lines.append(
            f"{'    p50 / p99 / max':<44} "
            f"{_fmt(run.get('p50_ms'))}/{_fmt(run.get('p99_ms'))}/{_fmt(run.get('max_ms'))} ms"
        )
        row("    worker kept up", "yes" if run.get("sustained") else "NO")
        row("    backlog at end of run", run.get("backlog_at_end"), 0, "events")
        row("    events without a score", run.get("unscored"))
    state = result.get("state") or {}
    busy = state.get("busy_bytes") or {}
    idle = state.get("idle_bytes") or {}
    lines.append(
        f"{'(d) state bytes, busy mean / max':<44} "
        f"{_fmt(busy.get('mean'))}/{_fmt(busy.get('max'))} B"
    )
    lines.append(
        f"{'    idle 91 days mean / max':<44} {_fmt(idle.get('mean'))}/{_fmt(idle.get('max'))} B"
    )
    row("    RSS growth per account", state.get("rss_growth_per_account"), 0, "B")
    row("    worker RSS at the end of (b)", state.get("rss_done_kb"), 0, "kB")
    quix = result.get("quix") or {}
    if quix.get("status") == "ok":
        row("(e) Quix Streams stateful count", quix.get("events_per_s"), 0, "ev/s")
    else:
        lines.append(f"(e) Quix Streams: {quix.get('status', 'not run')}")
    profile = result.get("profile")
    if profile:
        row("profiled worker (cProfile, slower)", profile.get("events_per_s"), 0, "ev/s")
    lines.append("")
    lines.append("targets:")
    for check in result.get("targets") or []:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[check.get("pass")]
        value = check.get("value")
        shown = _fmt(value, 3 if isinstance(value, float) and value < 10 else 0)
        note = f"  ({check['note']})" if check.get("note") else ""
        lines.append(f"  [{verdict}] {check['meaning']}: {shown}{note}")
    return "\n".join(lines) + "\n"


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a cProfile dump by cumulative and by self time."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]

    def label(func: tuple[str, int, str]) -> str:
        filename, line, name = func
        if filename == "~":
            return name
        short = filename
        for marker in ("site-packages/", "/lib/python3"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                break
        else:
            with contextlib.suppress(ValueError):
                short = str(Path(filename).resolve().relative_to(Path.cwd()))
        return f"{short}:{line}({name})"

    rows: list[dict[str, Any]] = [
        {
            "function": label(func),
            "ncalls": int(nc),
            "tottime_s": round(float(tt), 3),
            "cumtime_s": round(float(ct), 3),
        }
        for func, (_cc, nc, tt, ct, _callers) in raw.items()
    ]
    return {
        "total_s": round(total, 3),
        "by_cumulative": sorted(rows, key=lambda r: -r["cumtime_s"])[:top],
        "by_self": sorted(rows, key=lambda r: -r["tottime_s"])[:top],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_mb() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(kafka_version: str | None) -> dict[str, Any]:
    """CPU model, cores, memory, OS and the versions that matter for the numbers."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka_version": kafka_version or "unknown",
        "faust_version": _version("faust-streaming"),
        "aiokafka_version": _version("aiokafka"),
        "orjson_version": _version("orjson"),
        "uvloop": _version("uvloop"),
        **code_info(),
    }


def code_info() -> dict[str, Any]:
    """The commit the numbers belong to (``dirty``: uncommitted changes) and
    whether the scoring model is the compiled build (README, "Compiled model")."""
    from service.model import scoring  # the module a worker started from here imports

    root = Path(__file__).resolve().parents[2]
    commit: str | None = None
    dirty: bool | None = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            commit = head.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    compiled = not str(scoring.__file__).endswith(".py")
    return {"commit": commit, "dirty": dirty, "model": "compiled" if compiled else "interpreted"}


# ----------------------------------------------------------------- parameters


@dataclass
class BenchParams:
    """What one ``vitals bench`` run does (the CLI's options)."""

    events: int = 1_000_000
    accounts: int = 10_000
    seed: int = 7
    partitions: int = 4
    rate: float = TARGET_RATE
    latency_seconds: float = 30.0
    fallback_rate: float | None = None  # None: half the measured end-to-end rate
    bootstrap: str | None = None
    output: Path = Path("docs/bench/latest.json")
    table: Path | None = None
    profile: Path | None = None
    profile_events: int | None = None  # None: min(events, 100k)
    quix_python: str | None = None
    timeout: float = 3600.0
    keep: bool = False
    state_sample: int = 2000
    processes: int = 0  # (f): 0 = one per core (at most one per partition); 1 = skip (f)
    #: VITALS_* settings given to every worker the bench starts (``--worker-setting``).
    worker_settings: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["history_days"] = history_days(self.events, self.accounts)
        return data


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- processes


def _rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in kB (empty when unreadable)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (None when unreadable)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_delta(before: float | None, after: float | None) -> float | None:
    return round(after - before, 2) if before is not None and after is not None else None


@dataclass
class Worker:
    """One ``vitals worker`` subprocess (own process group, log file, data dir)."""

    bootstrap: str
    app_id: str
    topic_prefix: str
    partitions: int
    work_dir: Path
    profile_to: Path | None = None
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: > 1: ``vitals worker --processes N`` on ports web_port..web_port+N-1 (step f).
    processes: int = 1
    #: Worker settings (VITALS_* names) beyond the bench's own (``--worker-setting``).
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def urls(self) -> list[str]:
        """Every worker process's address (one unless ``processes`` > 1)."""
        return [f"http://127.0.0.1:{self.web_port + i}" for i in range(self.processes)]

    def worker_pids(self) -> list[int]:
        """The processes that do the work: the worker, or the pool's workers."""
        return child_pids(self.pid) if self.processes > 1 else [self.pid]

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"worker-{self.app_id}.log"

    def start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VITALS_")}
        env = worker_env(
            base,
            bootstrap=self.bootstrap,
            app_id=self.app_id,
            topic_prefix=self.topic_prefix,
            partitions=self.partitions,
            web_port=self.web_port,
            data_dir=self.work_dir / f"data-{self.app_id}",
        )
        # The simulator's product: key features and KPI configured, as in the demo.
        env["VITALS_SCORECARD_FILE"] = "demo"
        env.update(self.settings)
        if self.processes > 1:
            command = vitals_command("worker", "--processes", str(self.processes))
        elif self.profile_to is None:
            command = vitals_command("worker")
        else:
            command = vitals_command("worker", "--profile-to", str(self.profile_to))
        self.process = spawn(command, env, self.log_path)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"worker {self.app_id} exited with {self.process.returncode}: "
                f"{self._last_log_line()} (log: {self.log_path})"
            )

    def _last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln]
            if lines:
                return lines[-1].strip()[:300]
        return "(no log)"

    def metrics(self) -> str:
        """The /metrics text of every process, one after the other (sums add up)."""
        texts = []
        for url in self.urls:
            status, body = http_get(f"{url}/metrics")
            if status != 200:
                raise BenchError(f"GET {url}/metrics answered {status}")
            texts.append(body.decode())
        return "\n".join(texts)

    def ready(self) -> bool:
        self.check_alive()
        try:
            return all(http_get(f"{url}/readyz", timeout=2)[0] == 200 for url in self.urls)
        except OSError:
            return False

    def dump_profile(self, timeout: float = 60.0) -> int | None:
        """Signal a profiled worker: it writes its profile and exits at once."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, PROFILE_SIGNAL)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return self.stop(timeout=5)
        return self.process.returncode

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the process group and wait; SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        return stop_group(self.process, timeout)


# ----------------------------------------------------------------- the run


@dataclass
class _Ctx:
    params: BenchParams
    bootstrap: str
    work_dir: Path
    progress: Progress
    broker_pid: int | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[Worker] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"bench{self.token}."

    def settings(self) -> Any:
        from service.runtime.settings import load_settings

        return load_settings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.prefix,
            app_id=f"vitals-bench-{self.token}",
            partitions=self.params.partitions,
        )

    def new_worker(self, name: str, profile_to: Path | None = None, processes: int = 1) -> Worker:
        worker = Worker(
            bootstrap=self.bootstrap,
            app_id=f"vitals-bench-{self.token}-{name}",
            topic_prefix=self.prefix,
            partitions=self.params.partitions,
            work_dir=self.work_dir,
            profile_to=profile_to,
            processes=processes,
            settings=dict(self.params.worker_settings),
        )
        if processes > 1:
            worker.web_port = free_port_range(processes)
        self.workers.append(worker)
        worker.start()
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=20)


async def _wait_for(
    condition: Callable[[], Any], within: float, what: str, interval: float = 0.25
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def _produce_history(ctx: _Ctx, settings: Any) -> tuple[int, list[str], float]:
    """Produce the first N simulated events; return (count, account ids, seconds)."""
    from service.tools.simulate import generate_history, produce

    params = ctx.params
    days = history_days(params.events, params.accounts)
    end_ms = int(time.time() * 1000) - 60_000
    seen: dict[str, None] = {}

    def events() -> Iterable[Any]:
        for event in itertools.islice(
            generate_history(params.accounts, days, end_ms, params.seed), params.events
        ):
            seen[event.account_id] = None
            yield event

    def report(sent: int, seconds: float) -> None:
        ctx.progress(f"produced {sent:,} events ({sent / max(seconds, 1e-9):,.0f}/s)")

    started = time.monotonic()
    count = await produce(events(), settings, progress=report)
    seconds = time.monotonic() - started
    if count < params.events:
        raise BenchError(
            f"the simulation gave only {count:,} events; use more --accounts or fewer --events"
        )
    return count, list(seen), seconds


async def _input_partitions(settings: Any) -> list[Any]:
    from aiokafka.structs import TopicPartition

    return [
        TopicPartition(topic, partition)
        for topic in settings.input_topics
        for partition in range(settings.partitions)
    ]


async def measure_limit(ctx: _Ctx, settings: Any, total: int) -> dict[str, Any]:
    """(a) aiokafka getmany + orjson.loads + a per-account count, from the start."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        **settings.aiokafka_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=100,
        max_poll_records=None,
    )
    await consumer.start()
    counts: dict[bytes, int] = {}
    loads = orjson.loads
    try:
        tps = await _input_partitions(settings)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        deadline = time.monotonic() + ctx.params.timeout
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            for records in batches.values():
                for record in records:
                    loads(record.value)
                    key = record.key
                    counts[key] = counts.get(key, 0) + 1
                seen += len(records)
            if time.monotonic() > deadline:
                raise BenchError(f"limit consumer read only {seen:,} of {total:,} events")
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {
        "events": seen,
        "seconds": round(seconds, 3),
        "events_per_s": round(rate(seen, seconds) or 0.0),
        "accounts": len(counts),
    }


async def _event_score_edges(
    settings: Any, start: Mapping[Any, int] | None = None
) -> tuple[int | None, int | None, int]:
    """(first, last, count) of the score messages (from ``start``, default the
    beginning): the earliest CreateTime of any score and the latest of a score
    an *event* caused.

    Scores whose ``as_of`` is on a tick boundary (UTC midnight) are timer
    re-evaluations of silent accounts; the worker sends the last of them only
    once it has been idle for ``VITALS_CLOCK_IDLE_S`` plus up to one timer
    interval, which is not processing time.
    """
    from schemas.events import parse_timestamp

    if start is None:
        start = {tp: 0 for tp in await _end_offsets(settings, settings.scores_topic)}
    first: int | None = None
    last: int | None = None
    count = 0
    for (_, as_of), at in (await _score_times(settings, start, earliest=False)).items():
        count += 1
        first = at if first is None else min(first, at)
        if parse_timestamp(as_of) % TICK_MS and (last is None or at > last):
            last = at
    return first, last, count


def _consumed(worker: Worker) -> float:
    from_metrics = prometheus_sum(worker.metrics(), "vitals_events_consumed_total")
    return from_metrics


async def _settle(worker: Worker, within: float = 30.0) -> float:
    """Wait until the published-score counter stops moving; return it."""
    last = -1.0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(worker.metrics)
        now = prometheus_sum(text, "vitals_score_updates_total")
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)
    return last


async def _wait_consumed(
    ctx: _Ctx, worker: Worker, target: int, within: float, label: str
) -> float:
    """Poll /metrics until ``vitals_events_consumed_total`` reaches ``target``."""
    started = time.monotonic()
    next_report = started + 5.0
    last = 0.0
    while True:
        worker.check_alive()
        try:
            last = await asyncio.to_thread(_consumed, worker)
        except (OSError, BenchError):
            last = last
        if last >= target:
            return time.time()
        now = time.monotonic()
        if now - started > within:
            raise BenchError(
                f"{label}: worker consumed {last:,.0f} of {target:,} events in {within:.0f} s"
            )
        if now >= next_report:
            ctx.progress(f"{label}: consumed {last:,.0f}/{target:,} after {now - started:,.0f} s")
            next_report = now + 5.0
        await asyncio.sleep(0.2)


async def measure_end_to_end(
    ctx: _Ctx, settings: Any, total: int, limit: dict[str, Any]
) -> tuple[Worker, dict[str, Any], dict[str, Any]]:
    """(b) start a worker after the events are in, time first..last score published."""
    worker = ctx.new_worker("e2e")
    started_wall = time.time()
    await _wait_for(worker.ready, 180.0, "the worker to be ready", interval=0.1)
    ready_wall = time.time()
    cpu_worker = _cpu_seconds(worker.pid)
    cpu_broker = _cpu_seconds(ctx.broker_pid)
    rss_ready = _rss_kb(worker.pid)
    consumed_at_ready = await asyncio.to_thread(_consumed, worker)
    ctx.progress(
        f"worker ready after {ready_wall - started_wall:.1f} s "
        f"(consumed {consumed_at_ready:,.0f} so far, RSS {rss_ready.get('VmRSS', 0):,} kB)"
    )
    done_wall = await _wait_consumed(ctx, worker, total, ctx.params.timeout, "end to end")
    cpu_worker = _cpu_delta(cpu_worker, _cpu_seconds(worker.pid))
    cpu_broker = _cpu_delta(cpu_broker, _cpu_seconds(ctx.broker_pid))
    cpu_wall = time.time() - ready_wall
    scores_published = await _settle(worker)
    first, last, score_messages = await _event_score_edges(settings)
    rss_done = _rss_kb(worker.pid)
    buffer_peak = prometheus_sum(
        await asyncio.to_thread(worker.metrics), "vitals_reorder_buffer_peak_events"
    )
    if first is None or last is None:
        raise BenchError("the worker published no scores")
    seconds = (last - first) / 1000.0
    from_ready = last / 1000.0 - ready_wall
    e2e_rate = rate(total, seconds)
    limit_rate = limit.get("events_per_s") or 0
    result = {
        "events": total,
        "seconds": round(seconds, 3),
        "events_per_s": round(e2e_rate) if e2e_rate is not None else None,
        "events_per_s_from_ready": round(rate(total, from_ready) or 0.0),
        "events_per_s_from_start": round(rate(total, last / 1000.0 - started_wall) or 0.0),
        "ready_after_s": round(ready_wall - started_wall, 3),
        "consumed_at_ready": int(consumed_at_ready),
        "first_score_at": _iso(first),
        "last_score_at": _iso(last),
        "all_consumed_seen_at": _iso(int(done_wall * 1000)),
        "scores_published": int(scores_published),
        "score_messages": score_messages,
        "share_of_limit": round(e2e_rate / limit_rate, 4) if e2e_rate and limit_rate else None,
        "t0_choice": "CreateTime of the first score message (first event processed)",
        "t_end_choice": "CreateTime of the last score caused by an event (not a tick)",
        "cpu_seconds_worker": cpu_worker,
        "cpu_seconds_broker": cpu_broker,
        "cpu_wall_seconds": round(cpu_wall, 3),
        "worker_cpu_ms_per_event": round(cpu_worker * 1000 / total, 3) if cpu_worker else None,
        "reorder_buffer_peak_events": int(buffer_peak),
    }
    memory = {"rss_ready_kb": rss_ready, "rss_done_kb": rss_done}
    return worker, result, memory


async def _committed_inputs(settings: Any, group: str, admin: Any = None) -> int:
    """Input messages ``group`` has committed, summed over the input topics."""
    from aiokafka.admin import AIOKafkaAdminClient

    client = admin or AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    if admin is None:
        await client.start()
    try:
        offsets = await client.list_consumer_group_offsets(group)
    finally:
        if admin is None:
            await client.close()
    inputs = set(settings.input_topics)
    return sum(max(0, meta.offset) for tp, meta in offsets.items() if tp.topic in inputs)


async def _wait_committed(
    ctx: _Ctx, settings: Any, worker: Worker, target: int, within: float
) -> float:
    """Poll the group's committed input offsets until they add up to ``target``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        started = time.monotonic()
        next_report = started + 5.0
        while True:
            worker.check_alive()
            done = await _committed_inputs(settings, worker.app_id, admin)
            if done >= target:
                return time.time()
            now = time.monotonic()
            if now - started > within:
                raise BenchError(
                    f"machine: the processes committed {done:,} of {target:,} events "
                    f"in {within:.0f} s"
                )
            if now >= next_report:
                ctx.progress(f"machine: committed {done:,}/{target:,} after {now - started:,.0f} s")
                next_report = now + 5.0
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _cpu_total(pids: Sequence[int]) -> float | None:
    """CPU seconds of several processes together (None when one is unreadable)."""
    total = 0.0
    for pid in pids:
        seconds = _cpu_seconds(pid)
        if seconds is None:
            return None
        total += seconds
    return total


async def measure_machine(
    ctx: _Ctx,
    settings: Any,
    total: int,
    processes: int,
    limit: Mapping[str, Any],
    one_process: Mapping[str, Any],
) -> dict[str, Any]:
    """(f) (b) again with ``vitals worker --processes N``: a new group of N workers.

    Measured like (b), over the same ``total`` events (nothing else may be in
    the input topics yet), from the first score this group publishes to the
    last one an event caused; the pool is stopped afterwards. The end is seen
    in the group's committed offsets, not in ``vitals_events_consumed_total``:
    after a rebalance between the processes (they may join the group one
    after the other) the new owner reads again what was not committed, and
    the counter counts those events twice.
    """
    from service.tools.worker_pool import machine_cores

    start = await _end_offsets(settings, settings.scores_topic)
    pool = ctx.new_worker("machine", processes=processes)
    started_wall = time.time()
    await _wait_for(
        pool.ready, 240.0, f"the {processes} worker processes to be ready", interval=0.1
    )
    ready_wall = time.time()
    pids = pool.worker_pids()
    if len(pids) != processes:
        raise BenchError(f"expected {processes} worker processes, found {len(pids)}")
    cpu_workers = _cpu_total(pids)
    cpu_broker = _cpu_seconds(ctx.broker_pid)
    committed_at_ready = await _committed_inputs(settings, pool.app_id)
    ctx.progress(
        f"(f) {processes} processes ready after {ready_wall - started_wall:.1f} s "
        f"({committed_at_ready:,} events committed so far)"
    )
    done_wall = await _wait_committed(ctx, settings, pool, total, ctx.params.timeout)
    cpu_workers = _cpu_delta(cpu_workers, _cpu_total(pids))
    cpu_broker = _cpu_delta(cpu_broker, _cpu_seconds(ctx.broker_pid))
    cpu_wall = time.time() - ready_wall
    scores_published = await _settle(pool)
    rss_kb = [_rss_kb(pid).get("VmRSS") for pid in pids]
    first, last, score_messages = await _event_score_edges(settings, start)
    await asyncio.to_thread(pool.stop, 30.0)
    if first is None or last is None:
        raise BenchError("the worker processes published no scores")
    seconds = (last - first) / 1000.0
    machine_rate = rate(total, seconds)
    one_rate = one_process.get("events_per_s")
    limit_rate = limit.get("events_per_s")
    return {
        "processes": processes,
        "cores": machine_cores(),
        "command": f"vitals worker --processes {processes}",
        "events": total,
        "seconds": round(seconds, 3),
        "events_per_s": round(machine_rate) if machine_rate is not None else None,
        # The events still to process once every process owned its partitions.
        "events_per_s_from_ready": round(
            rate(total - committed_at_ready, last / 1000.0 - ready_wall) or 0.0
        ),
        "speedup_over_one_process": (
            round(machine_rate / one_rate, 2) if machine_rate and one_rate else None
        ),
        "share_of_limit": (
            round(machine_rate / limit_rate, 4) if machine_rate and limit_rate else None
        ),
        "ready_after_s": round(ready_wall - started_wall, 3),
        "committed_at_ready": committed_at_ready,
        "first_score_at": _iso(first),
        "last_score_at": _iso(last),
        "all_committed_seen_at": _iso(int(done_wall * 1000)),
        "scores_published": int(scores_published),
        "score_messages": score_messages,
        "cpu_seconds_workers": cpu_workers,
        "cpu_seconds_broker": cpu_broker,
        "cpu_wall_seconds": round(cpu_wall, 3),
        "worker_cpu_ms_per_event": (round(cpu_workers * 1000 / total, 3) if cpu_workers else None),
        "rss_done_kb": rss_kb,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def _live_events(
    accounts: Sequence[str], deadline: float, sent: list[tuple[str, int]], tag: str
) -> AsyncIterator[Any]:
    """New valid login / feature_use events stamped with the wall clock at hand-over."""
    from service.tools.simulate import SimEvent

    rng = Random(tag)
    n = 0
    features = ("campaigns", "newsletters", "templates", "automation", "reports")
    while time.monotonic() < deadline:
        account = accounts[rng.randrange(len(accounts))]
        now_ms = int(time.time() * 1000)
        # One input topic per account, so an account's events stay in order
        # (two topics of one partition are read in no fixed order).
        if zlib.crc32(account.encode()) % 2:
            kind = "feature-use"
            value: dict[str, Any] = {
                "event_id": f"{account}-{tag}-{n}",
                "account_id": account,
                "type": "feature_use",
                "occurred_at": now_ms,
                "user_id": f"u{rng.randint(1, 5)}",
                "feature": features[rng.randrange(len(features))],
                "count": 1,
            }
        else:
            kind = "login"
            value = {
                "event_id": f"{account}-{tag}-{n}",
                "account_id": account,
                "type": "login",
                "occurred_at": now_ms,
                "user_id": f"u{rng.randint(1, 5)}",
            }
        n += 1
        sent.append((account, now_ms))
        yield SimEvent(kind, account.encode(), orjson.dumps(value), now_ms, account, "bench")


async def _score_times(
    settings: Any, start_offsets: Mapping[Any, int], *, earliest: bool = True
) -> dict[tuple[str, str], int]:
    """(account id, as_of) -> earliest (or with ``earliest=False``, latest)
    CreateTime of the scores after ``start_offsets``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        **settings.aiokafka_kwargs(),
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    out: dict[tuple[str, str], int] = {}
    try:
        tps = list(start_offsets)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, start_offsets[tp])
        remaining = {tp for tp in tps if ends[tp] > start_offsets[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=2000, max_records=50_000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    score = orjson.loads(record.value)
                    key = (score["account_id"], score["as_of"])
                    seen = out.get(key)
                    if seen is None or (record.timestamp < seen) == earliest:
                        out[key] = record.timestamp
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def _end_offsets(settings: Any, topic: str) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def latency_run(
    ctx: _Ctx,
    settings: Any,
    worker: Worker,
    accounts: Sequence[str],
    offered: float,
    consumed_before: int,
) -> dict[str, Any]:
    """(c) one run at a fixed offered rate; returns its numbers."""
    from schemas.events import parse_timestamp
    from service.tools.simulate import produce

    seconds = ctx.params.latency_seconds
    start_offsets = await _end_offsets(settings, settings.scores_topic)
    sent: list[tuple[str, int]] = []
    tag = f"lat{ctx.token}{int(offered)}"
    ctx.progress(f"latency: offering {offered:,.0f} events/s for {seconds:g} s")
    started = time.monotonic()
    stop = asyncio.Event()
    max_backlog = max(1000.0, offered * BACKLOG_LIMIT_S)
    worst = 0

    async def watch() -> None:
        # Stop offering load once the worker is BACKLOG_LIMIT_S seconds behind:
        # the run has shown it cannot keep up, and the catch-up stays bounded.
        nonlocal worst
        while not stop.is_set():
            await asyncio.sleep(0.5)
            with contextlib.suppress(OSError, BenchError):
                done = await asyncio.to_thread(_consumed, worker)
                worst = max(worst, int(len(sent) - (done - consumed_before)))
                if worst > max_backlog:
                    ctx.progress(f"latency: backlog {worst:,} events: stopping this run early")
                    stop.set()

    watcher = asyncio.create_task(watch())
    try:
        produced = await produce(
            _live_events(accounts, started + seconds, sent, tag), settings, rate=offered, stop=stop
        )
    finally:
        stop.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    elapsed = time.monotonic() - started
    del sent[produced:]  # events the generator made but the producer did not send
    consumed_at_end = int(await asyncio.to_thread(_consumed, worker))
    backlog = max(0, consumed_before + produced - consumed_at_end)
    catch_up_timeout = max(120.0, seconds * 10)
    ctx.progress(f"latency: sent {produced:,}; backlog {backlog:,}; waiting for the worker")
    caught_up = True
    try:
        await _wait_consumed(
            ctx, worker, consumed_before + produced, catch_up_timeout, "latency catch-up"
        )
    except BenchError:
        caught_up = False
    await _settle(worker)
    times = await _score_times(settings, start_offsets)
    published: dict[str, list[tuple[int, int]]] = {}
    for (account, as_of), at in times.items():
        published.setdefault(account, []).append((parse_timestamp(as_of), at))
    latencies, unscored = score_latencies(sent, published)
    summary = latency_summary(latencies)
    sustained = caught_up and backlog <= max(100.0, offered * 0.5) and worst <= max_backlog
    return {
        "offered_rate": offered,
        "duration_s": round(elapsed, 3),
        "produced": produced,
        "achieved_rate": round(rate(produced, elapsed) or 0.0),
        "backlog_at_end": backlog,
        "max_backlog_seen": worst,
        "stopped_early": elapsed < seconds * 0.98,
        "sustained": sustained,
        "unscored": unscored,
        **summary,
        "consumed_after": consumed_before + produced if caught_up else None,
    }


async def measure_state(
    ctx: _Ctx, settings: Any, worker: Worker, memory: dict[str, Any], accounts: int
) -> dict[str, Any]:
    """(d) changelog record sizes (busy), after 91 idle days, and RSS growth per account."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from service.model.account_state import AccountState
    from service.model.scorecard import shipped_scorecard
    from service.model.scoring import on_timer

    topic = f"{worker.app_id}-accounts-changelog"
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_kwargs(),
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    latest: dict[bytes, bytes] = {}
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        per_partition = max(1, ctx.params.state_sample // len(tps))
        remaining = set()
        for tp in tps:
            start = max(begins[tp], ends[tp] - per_partition * 4)
            if ends[tp] > start:
                consumer.seek(tp, start)
                remaining.add(tp)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=2000, max_records=20_000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    if record.value is not None:
                        latest[record.key] = record.value
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    scorecard = shipped_scorecard("demo")  # the worker's (Worker.start)
    busy: list[int] = []
    idle: list[int] = []
    sample = list(latest.items())[: ctx.params.state_sample]
    for _key, value in sample:
        busy.append(len(value))
        state = AccountState.from_bytes(value)
        # The worker drops the Kafka positions of a state at its next write
        # once they are committed (an idle account is rewritten at its next
        # daily tick), so an idle account carries none.
        state.positions.clear()
        since = state.last_event_at or state.scored_at or 0
        on_timer(state, since + IDLE_DAYS * DAY_MS, scorecard)
        idle.append(len(state.to_bytes()))
    rss_ready = memory["rss_ready_kb"].get("VmRSS")
    rss_done = memory["rss_done_kb"].get("VmRSS")
    tracked = prometheus_sum(await asyncio.to_thread(worker.metrics), "vitals_accounts_tracked")
    holders = int(tracked) or accounts
    growth = (rss_done - rss_ready) * 1024 if rss_ready and rss_done else None
    return {
        "changelog_topic": topic,
        "sampled_accounts": len(sample),
        "busy_bytes": size_summary(busy),
        "idle_bytes": size_summary(idle),
        "idle_days": IDLE_DAYS,
        "rss_ready_kb": rss_ready,
        "rss_done_kb": rss_done,
        "rss_peak_kb": memory["rss_done_kb"].get("VmHWM"),
        "accounts_tracked": holders,
        "rss_growth_per_account": round(growth / holders) if growth is not None else None,
        "rss_note": (
            "RSS at readiness (the worker may already have consumed a little) to RSS after "
            "all events; includes faust's in-memory table, the changelog producer buffers "
            "and Python allocator slack"
        ),
    }


_QUIX_SCRIPT: Final = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
try:
    import quixstreams
    from quixstreams import Application
except Exception as exc:
    print(json.dumps({"status": f"not installed: {type(exc).__name__}: {exc}"}))
    sys.exit(0)
app = Application(
    broker_address=cfg["bootstrap"],
    consumer_group=cfg["group"],
    auto_offset_reset="earliest",
    state_dir=cfg["state_dir"],
    loglevel="WARNING",
    consumer_extra_config={"fetch.max.bytes": 67108864, "max.partition.fetch.bytes": 16777216},
)
seen = {"n": 0, "first": None, "last": None}
target = cfg["events"]

def count(value, state):
    n = state.get("count", 0) + 1
    state.set("count", n)
    seen["n"] += 1
    if seen["first"] is None:
        seen["first"] = time.perf_counter()
    if seen["n"] >= target:
        seen["last"] = time.perf_counter()
        app.stop()

for name in cfg["topics"]:
    topic = app.topic(name, key_deserializer="str", value_deserializer="json")
    sdf = app.dataframe(topic)
    sdf.update(count, stateful=True)
started = time.perf_counter()
app.run(timeout=cfg["idle_timeout"])
end = seen["last"] or time.perf_counter()
first = seen["first"] or started
print(json.dumps({
    "status": "ok" if seen["n"] >= target else f"incomplete: {seen['n']} of {target}",
    "version": quixstreams.__version__,
    "events": seen["n"],
    "seconds": round(end - first, 3),
    "seconds_with_startup": round(end - started, 3),
}))
"""


async def measure_quix(ctx: _Ctx, settings: Any, total: int) -> dict[str, Any]:
    """(e) per-account stateful count with Quix Streams in another interpreter."""
    python = ctx.params.quix_python or sys.executable
    try:
        check = await asyncio.to_thread(
            subprocess.run,
            [python, "-c", "import quixstreams; print(quixstreams.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return {"status": f"not installed: cannot run {python}: {exc.strerror}"}
    if check.returncode != 0:
        why = (check.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"status": f"not installed: {why} (in {python}; see --quix-python)"}
    script = ctx.work_dir / "quix_count.py"
    script.write_text(_QUIX_SCRIPT)
    config = {
        "bootstrap": ctx.bootstrap,
        "group": f"quix-bench-{ctx.token}",
        "state_dir": str(ctx.work_dir / "quix-state"),
        "topics": list(settings.input_topics),
        "events": total,
        "idle_timeout": 30.0,
    }
    ctx.progress(
        f"quix: counting {total:,} events per account with quixstreams {check.stdout.strip()}"
    )
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [python, str(script), json.dumps(config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=ctx.params.timeout,
            cwd=ctx.work_dir,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no result within {ctx.params.timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"status": f"failed: {why[:300]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("seconds"):
        result["events_per_s"] = round(rate(int(result["events"]), result["seconds"]) or 0.0)
    result["interpreter"] = python
    result["what"] = (
        "one StreamingDataFrame per input topic: JSON-decode, state count per key (RocksDB "
        "store with changelog topics), at-least-once"
    )
    return result


async def profile_worker(ctx: _Ctx, settings: Any, events: int) -> dict[str, Any]:
    """A fresh worker under cProfile over the same topics; stopped after ``events``."""
    assert ctx.params.profile is not None
    path = ctx.params.profile.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    worker = ctx.new_worker("profile", profile_to=path)
    await _wait_for(worker.ready, 240.0, "the profiled worker to be ready", interval=0.2)
    started = time.time()
    ctx.progress(f"profile: worker under cProfile, stopping after {events:,} events")
    done = await _wait_consumed(ctx, worker, events, ctx.params.timeout, "profile")
    code = await asyncio.to_thread(worker.dump_profile, 60.0)
    if not path.is_file():
        return {"status": f"no profile written (worker exit code {code})"}
    summary = summarise_profile(path)
    return {
        "status": "ok",
        "file": str(path),
        "events": events,
        "seconds_ready_to_done": round(done - started, 3),
        "events_per_s": round(rate(events, done - started) or 0.0),
        **summary,
    }


async def _run(ctx: _Ctx, kafka_version: str | None) -> dict[str, Any]:
    from service.runtime.topics import ensure_topics_async

    params = ctx.params
    settings = ctx.settings()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(kafka_version),
        "parameters": {**params.to_json(), "bootstrap": ctx.bootstrap, "topic_prefix": ctx.prefix},
    }
    t0 = time.monotonic()
    await ensure_topics_async(settings)
    ctx.progress(f"producing {params.events:,} events over {params.accounts:,} accounts")
    total, accounts, produce_s = await _produce_history(ctx, settings)
    result["produce"] = {
        "events": total,
        "accounts": len(accounts),
        "seconds": round(produce_s, 3),
        "events_per_s": round(rate(total, produce_s) or 0.0),
    }
    ctx.progress(f"produced {total:,} events in {produce_s:.1f} s; (a) limit consumer")
    result["limit"] = await measure_limit(ctx, settings, total)
    ctx.progress(f"(a) limit: {result['limit']['events_per_s']:,} events/s")

    ctx.progress("(e) Quix Streams")
    result["quix"] = await measure_quix(ctx, settings, total)
    ctx.progress(f"(e) quix: {result['quix'].get('events_per_s', result['quix']['status'])}")

    ctx.progress("(b) end to end: starting a vitals worker")
    worker, e2e, memory = await measure_end_to_end(ctx, settings, total, result["limit"])
    result["end_to_end"] = e2e
    ctx.progress(f"(b) end to end: {e2e['events_per_s']:,} events/s over {e2e['seconds']:.1f} s")

    ctx.progress("(d) state size")
    result["state"] = await measure_state(ctx, settings, worker, memory, len(accounts))

    # (f) before (c) adds events to the input topics, so it reads the same
    # events as (b). The worker of (b) has caught up and idles meanwhile.
    processes = machine_processes(params)
    if processes > 1:
        ctx.progress(f"(f) machine rate: vitals worker --processes {processes}")
        result["machine_rate"] = await measure_machine(
            ctx, settings, total, processes, result["limit"], e2e
        )
        ctx.progress(
            f"(f) machine rate: {result['machine_rate']['events_per_s']:,} events/s "
            f"with {processes} processes"
        )
    else:
        result["machine_rate"] = {
            "processes": 1,
            "status": "skipped: one process per machine (one core, one partition or "
            "--processes 1): the machine rate is (b)",
        }

    runs: list[dict[str, Any]] = []
    consumed = total
    first = await latency_run(ctx, settings, worker, accounts, params.rate, consumed)
    runs.append(first)
    consumed = first["consumed_after"] or int(await asyncio.to_thread(_consumed, worker))
    if not first["sustained"] or (first["p99_ms"] or math.inf) > TARGETS["latency_p99_ms_at_5k"][1]:
        fallback = params.fallback_rate or max(
            50.0, math.floor((e2e["events_per_s"] or 100) * 0.5 / 50) * 50
        )
        if fallback < params.rate:
            ctx.progress(f"(c) not sustained at {params.rate:,.0f}/s: again at {fallback:,.0f}/s")
            second = await latency_run(ctx, settings, worker, accounts, fallback, consumed)
            runs.append(second)
    result["latency"] = {
        "runs": runs,
        "method": (
            "events stamped occurred_at = wall clock when handed to the producer (linger 20 ms);"
            " latency = CreateTime of the first score of the same account with as_of >="
            " occurred_at (the first that reflects the event), minus occurred_at"
        ),
    }
    result["state"]["rss_after_latency_kb"] = _rss_kb(worker.pid).get("VmRSS")
    await asyncio.to_thread(worker.stop, 15.0)

    if params.profile is not None:
        events = params.profile_events or min(total, 100_000)
        result["profile"] = await profile_worker(ctx, settings, events)
    else:
        result["profile"] = None
    result["duration_s"] = round(time.monotonic() - t0, 1)
    result["targets"] = evaluate_targets(result)
    result["pass"] = all(check["pass"] for check in result["targets"])
    return result


def machine_processes(params: BenchParams) -> int:
    """Worker processes of step (f): ``--processes``, 0 = one per core, at most one
    per partition. Raises :class:`BenchError` for more processes than partitions."""
    from service.tools.worker_pool import PoolError, machine_cores, resolve_processes

    try:
        return resolve_processes(
            params.processes, cores=machine_cores(), partitions=params.partitions
        )
    except PoolError as exc:
        raise BenchError(str(exc).replace("VITALS_PARTITIONS", "--partitions")) from exc


def run_bench(params: BenchParams, progress: Progress = _stderr) -> dict[str, Any]:
    """Run every step; start (and always stop) a local broker unless ``bootstrap`` is given.

    Raises :class:`BenchError` (one line) on failure. Workers and the broker
    are stopped on every exit path, Ctrl-C included.
    """
    from service.tools.kafka_local import DEFAULT_KAFKA_VERSION, KafkaLocalError, LocalKafka

    work_dir = Path(tempfile.mkdtemp(prefix="vitals-bench-"))
    kafka: LocalKafka | None = None
    ctx: _Ctx | None = None
    try:
        if params.bootstrap:
            bootstrap = params.bootstrap
            kafka_version: str | None = None
        else:
            kafka = LocalKafka(
                data_dir=work_dir / "kafka",
                port=free_port(),
                controller_port=free_port(),
                die_with_parent=True,
            )
            progress(f"starting a local Kafka {DEFAULT_KAFKA_VERSION} in {kafka.data_dir}")
            try:
                kafka.start()
            except KafkaLocalError as exc:
                raise BenchError(exc.message) from exc
            bootstrap = kafka.bootstrap
            kafka_version = kafka.version
        ctx = _Ctx(params, bootstrap, work_dir, progress, kafka.pid() if kafka else None)
        try:
            return asyncio.run(_run(ctx, kafka_version))
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if ctx is not None:
            ctx.stop_workers()
        if kafka is not None:
            progress("stopping the local Kafka")
            with contextlib.suppress(KafkaLocalError):
                kafka.stop()
        if params.keep:
            progress(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
