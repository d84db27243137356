"""Child ``vitals`` processes: environment, start, stop.

The demo, the benchmark and the integration tests run workers (and other
commands) as subprocesses. Each child gets its own process group, so that
stopping it also stops anything it started, and its output goes to a log
file, never to the parent's terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "child_pids",
    "free_port",
    "free_port_range",
    "http_get",
    "spawn",
    "stop_group",
    "vitals_command",
    "worker_env",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that were free a moment ago.

    For ``vitals worker --processes N``, which listens on a port and the next N-1.
    """
    for _ in range(attempts):
        first = free_port()
        if first + count - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"found no {count} consecutive free ports in {attempts} attempts")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command name, which may hold spaces and ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def worker_env(
    base: Mapping[str, str],
    *,
    bootstrap: str,
    app_id: str,
    topic_prefix: str,
    partitions: int,
    web_port: int,
    data_dir: Path,
) -> dict[str, str]:
    """``base`` plus the settings that place a worker: broker, group, topics, port, state dir."""
    env = dict(base)
    env.update(
        {
            "VITALS_BOOTSTRAP_SERVERS": bootstrap,
            "VITALS_APP_ID": app_id,
            "VITALS_TOPIC_PREFIX": topic_prefix,
            "VITALS_PARTITIONS": str(partitions),
            "VITALS_WEB_PORT": str(web_port),
            "VITALS_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def vitals_command(*args: str) -> list[str]:
    """The command line of ``vitals ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "service", *args]


def spawn(
    command: Sequence[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new process group, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the process group of ``process`` and wait; SIGKILL it after ``timeout``.

    Returns the exit code (negative: killed by that signal).
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return process.returncode
