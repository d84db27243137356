"""Run real ``vitals worker`` processes against the test broker.

Each test gets its own app id and topic prefix, so topics, consumer groups and
changelogs never collide between tests sharing the session broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from service.tools.child_process import (
    child_pids,
    free_port_range,
    spawn,
    stop_group,
    vitals_command,
    worker_env,
)

# free_port and http_get are re-exported: the integration tests import them from here.
from service.tools.child_process import free_port as free_port
from service.tools.child_process import http_get as http_get

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except AssertionError:
            raise  # a definite failure (e.g. the process died): stop waiting
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
    )


async def wait_for(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 60.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """The async twin of :func:`wait_until`: await ``condition`` until it
    returns a truthy value; fail after ``timeout`` (a slow condition still
    gets one last answer after the deadline, then fails)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Namespace:
    """Unique names for one test: app id (group) and topic prefix."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def app_id(self) -> str:
        return f"vitals-test-{self.token}"

    @property
    def topic_prefix(self) -> str:
        return f"t{self.token}."

    def topic(self, suffix: str) -> str:
        """Full topic name, e.g. ``topic("events.login")``."""
        return f"{self.topic_prefix}{suffix}"


@dataclass
class WorkerProcess:
    """One ``vitals worker`` subprocess with its own web port and data dir."""

    bootstrap: str
    namespace: Namespace
    data_dir: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"worker-{self.web_port}.log"

    def env(self) -> dict[str, str]:
        env = worker_env(
            os.environ,
            bootstrap=self.bootstrap,
            app_id=self.namespace.app_id,
            topic_prefix=self.namespace.topic_prefix,
            partitions=self.partitions,
            web_port=self.web_port,
            data_dir=self.data_dir / f"w{self.web_port}",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerProcess:
        self.process = spawn(vitals_command("worker"), self.env(), self.log_path)
        return self

    def wait_ready(self, timeout: float = 90.0) -> WorkerProcess:
        def ready() -> bool:
            self._check_alive()
            status, _ = http_get(f"{self.url}/readyz", timeout=2)
            return status == 200

        wait_until(ready, timeout=timeout, what=f"worker on :{self.web_port} to be ready")
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {self.process.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = http_get(f"{self.url}{path}")
        return status, json.loads(body) if body else None

    def metrics_text(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200
        return body.decode()

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.process is None:
            return None
        return stop_group(self.process, timeout)


def session_processes(session_id: int) -> list[int]:
    """Live (not zombie) processes of session ``session_id`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state, ppid, pgrp, session, ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


@dataclass
class PoolProcess(WorkerProcess):
    """``vitals worker --processes N``: one supervisor, N workers on consecutive ports.

    ``spawn`` starts the supervisor as the leader of a new session; its workers
    stay in that session (each in a process group of its own), so
    :func:`session_processes` of its pid lists everything it started.
    """

    processes: int = 2

    def __post_init__(self) -> None:
        self.web_port = free_port_range(self.processes)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.web_port + i}" for i in range(self.processes)]

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"pool-{self.web_port}.log"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["VITALS_DATA_DIR"] = str(self.data_dir / f"pool{self.web_port}")
        return env

    def start(self) -> PoolProcess:
        command = vitals_command("worker", "--processes", str(self.processes))
        self.process = spawn(command, self.env(), self.log_path)
        return self

    def wait_ready(self, timeout: float = 120.0) -> PoolProcess:
        def ready() -> bool:
            self._check_alive()
            return all(http_get(f"{url}/readyz", timeout=2)[0] == 200 for url in self.urls)

        wait_until(ready, timeout=timeout, what=f"{self.processes} pool processes to be ready")
        return self

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return child_pids(self.process.pid)
