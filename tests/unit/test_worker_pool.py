"""``vitals worker --processes N``: the plan, the exit status and the supervisor.

The supervisor is run here over small stand-in processes (no Kafka): how it
forwards signals, prefixes output and stops the pool is the same whatever the
processes do. tests/integration/test_worker_pool.py runs it over real workers.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.runtime.settings import load_settings
from service.tools.child_process import child_pids, free_port_range
from service.tools.worker_pool import (
    EXIT_PROCESS_ENDED,
    EXIT_UNDONE,
    KILL_MARGIN_S,
    Member,
    PoolError,
    WorkerPool,
    describe_exit,
    member_env,
    plan_members,
    pool_status,
    ports_in_use,
    resolve_processes,
)

# ----------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    ("requested", "cores", "partitions", "expected"),
    [
        (1, 8, 4, 1),
        (3, 2, 4, 3),  # explicit: more processes than cores is allowed
        (4, 2, 4, 4),
        (0, 2, 4, 2),  # auto: one per core
        (0, 8, 4, 4),  # ... but not more than the partitions
        (0, 1, 4, 1),
    ],
)
def test_resolve_processes(requested: int, cores: int, partitions: int, expected: int) -> None:
    assert resolve_processes(requested, cores=cores, partitions=partitions) == expected


def test_more_processes_than_partitions_is_refused() -> None:
    with pytest.raises(PoolError, match=r"more than the 4 partitions.*at most 4"):
        resolve_processes(5, cores=8, partitions=4)


def test_plan_members_ports_and_data_dirs(tmp_path: Path) -> None:
    members = plan_members(3, web_port=7000, data_dir=tmp_path)
    assert [(m.name, m.port, m.data_dir) for m in members] == [
        ("w1", 7000, tmp_path / "w1"),
        ("w2", 7001, tmp_path / "w2"),
        ("w3", 7002, tmp_path / "w3"),
    ]


@pytest.mark.parametrize(
    ("count", "port", "message"),
    [(2, 0, "fixed VITALS_WEB_PORT"), (3, 65534, "past 65535"), (0, 6066, "at least one")],
)
def test_plan_members_refuses(count: int, port: int, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        plan_members(count, web_port=port, data_dir=Path("var"))


def test_member_env_places_each_process() -> None:
    member = Member(2, 7001, Path("/data/w2"))
    env = member_env(
        {"PATH": "/bin", "VITALS_WEB_PORT": "1", "VITALS_WORKER_PROCESSES": "auto"},
        member,
        {"VITALS_APP_ID": "group"},
    )
    assert env["PATH"] == "/bin"
    assert env["VITALS_APP_ID"] == "group"
    assert env["VITALS_WEB_PORT"] == "7001"
    assert env["VITALS_DATA_DIR"] == "/data/w2"
    assert env["VITALS_WORKER_PROCESSES"] == "1", "a process of the pool is a single worker"


@pytest.mark.parametrize(
    ("raw", "expected"), [("auto", 0), ("AUTO", 0), ("0", 0), ("3", 3), ("1", 1)]
)
def test_worker_processes_setting(raw: str, expected: int) -> None:
    assert load_settings(worker_processes=raw).worker_processes == expected


@pytest.mark.parametrize("raw", ["two", "-1", "1.5", "2000"])
def test_worker_processes_setting_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="worker_processes"):
        load_settings(worker_processes=raw)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "7"], "--processes 7 is more than the 4 partitions"),
        (["--processes", "two"], "VITALS_WORKER_PROCESSES (worker_processes): must be a number"),
        (["--processes", "2", "--profile-to", "x.prof"], "--profile-to profiles one worker"),
        (["--processes", "2", "--web-port", "0"], "needs a fixed VITALS_WEB_PORT"),
    ],
)
def test_worker_command_refuses_in_one_line(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before anything connects (the broker here does not exist)."""
    from click.testing import CliRunner

    from service.cli.main import main

    monkeypatch.setenv("VITALS_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("VITALS_PARTITIONS", "4")
    monkeypatch.setenv("VITALS_WORKER_PROCESSES", "1")
    result = CliRunner().invoke(main, ["worker", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitals: error: ") and message in lines[0]


def test_worker_command_names_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from service.cli.main import main

    first = free_port_range(3)
    monkeypatch.setenv("VITALS_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with socket.socket() as server:
        server.bind(("127.0.0.1", first + 2))
        server.listen()
        result = CliRunner().invoke(main, ["worker", "--processes", "3", "--web-port", str(first)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"vitals: error: port {first + 2} is in use (another vitals?): --processes 3 uses "
        f"ports {first}-{first + 2}; stop it, or choose another --web-port"
    )


def test_ports_in_use_finds_a_listener() -> None:
    first = free_port_range(2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", first + 1))
        server.listen()
        assert ports_in_use("127.0.0.1", [first, first + 1]) == [first + 1]
    assert ports_in_use("127.0.0.1", [first, first + 1]) == []


def test_free_port_range_is_consecutive_and_free() -> None:
    first = free_port_range(4)
    assert ports_in_use("127.0.0.1", list(range(first, first + 4))) == []


# ----------------------------------------------------------------- the exit status


@pytest.mark.parametrize(
    ("codes", "ended", "second", "expected"),
    [
        ([0, 0], False, None, 0),
        ([0, 1], False, None, EXIT_UNDONE),
        ([0, -9], False, None, EXIT_UNDONE),  # killed at the deadline
        ([-9, 0], True, None, EXIT_PROCESS_ENDED),
        ([1, 0], True, None, EXIT_PROCESS_ENDED),
        ([143, 143], False, signal.SIGTERM, 128 + signal.SIGTERM),
    ],
)
def test_pool_status(codes: list[int], ended: bool, second: int | None, expected: int) -> None:
    assert pool_status(codes, ended_by_itself=ended, second_signal=second) == expected


def test_describe_exit() -> None:
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


# ----------------------------------------------------------------- the supervisor

#: A stand-in for a worker: says it is up, then behaves as $STANDIN says.
STANDIN = r"""
import os, signal, sys
mode = os.environ["STANDIN"]
port = os.environ["VITALS_WEB_PORT"]
def stop(signum, frame):
    print(f"stopping on {signal.Signals(signum).name}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "deaf" else stop)
signal.signal(signal.SIGINT, stop)
print(f"up on {port}", flush=True)
if mode == "crash":
    print("crashing", flush=True)
    sys.exit(5)
while True:
    signal.pause()
"""


class Output(io.StringIO):
    """The supervisor's stderr, readable while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def pool_of(modes: list[str], tmp_path: Path, grace_s: float = 5.0) -> tuple[WorkerPool, Output]:
    members = plan_members(len(modes), web_port=7100, data_dir=tmp_path)
    out = Output()
    pool = WorkerPool(
        members,
        command=[sys.executable, "-c", STANDIN],
        env_for=lambda m: member_env(os.environ, m, {"STANDIN": modes[m.index - 1]}),
        grace_s=grace_s,
        out=out,
    )
    return pool, out


@pytest.fixture
def signal_when() -> Iterator[Callable[[Callable[[], bool], int], None]]:
    """Send a signal to this process (the supervisor) from a thread once a condition holds."""
    threads: list[threading.Thread] = []

    def arrange(condition: Callable[[], bool], signum: int) -> None:
        def run() -> None:
            wait_for(condition)
            os.kill(os.getpid(), signum)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield arrange
    for thread in threads:
        thread.join(timeout=30)


def test_a_signal_is_forwarded_once_to_every_process(
    tmp_path: Path, signal_when: Callable[[Callable[[], bool], int], None]
) -> None:
    pool, out = pool_of(["serve", "serve", "serve"], tmp_path)
    up = ("w1:7100 | up on 7100", "w2:7101 | up on 7101", "w3:7102 | up on 7102")
    signal_when(lambda: all(line in out.text() for line in up), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)

    status = pool.run()

    text = out.text()
    assert status == 0
    for name, port in (("w1", 7100), ("w2", 7101), ("w3", 7102)):
        assert f"{name}:{port} | stopping on SIGTERM" in text
        assert text.count(f"{name}:{port} | stopping on") == 1
    assert "pool: SIGTERM received: stopping 3 processes" in text
    assert "exit status 0" in text.splitlines()[-1]
    assert all(r.process.poll() is not None for r in pool.running)
    assert signal.getsignal(signal.SIGTERM) is before, "handlers are restored"


def test_a_process_that_ends_stops_the_others(tmp_path: Path) -> None:
    pool, out = pool_of(["serve", "crash"], tmp_path)

    status = pool.run()

    text = out.text()
    assert status == EXIT_PROCESS_ENDED
    assert "w2:7101 | crashing" in text
    assert "pool: w2 (pid" in text and "ended by itself (exited with status 5)" in text
    assert "w1:7100 | stopping on SIGTERM" in text
    assert "because w2 ended by itself (exited with status 5)" in text.splitlines()[-1]


def test_a_process_that_does_not_stop_is_killed_after_the_grace_period(
    tmp_path: Path, signal_when: Callable[[Callable[[], bool], int], None]
) -> None:
    grace = 0.5
    pool, out = pool_of(["serve", "deaf"], tmp_path, grace_s=grace)
    signal_when(lambda: "w2:7101 | up on 7101" in out.text(), signal.SIGTERM)

    started = time.monotonic()
    status = pool.run()
    took = time.monotonic() - started

    text = out.text()
    assert status == EXIT_UNDONE
    assert "w2 (pid" in text and "still running past the deadline: killing it" in text
    assert "w2 was killed by SIGKILL" in text.splitlines()[-1]
    assert took < grace + KILL_MARGIN_S + 5


def test_a_second_signal_stops_at_once(
    tmp_path: Path, signal_when: Callable[[Callable[[], bool], int], None]
) -> None:
    pool, out = pool_of(["deaf", "deaf"], tmp_path, grace_s=60)
    signal_when(lambda: "w2:7101 | up on 7101" in out.text(), signal.SIGTERM)
    signal_when(lambda: "pool: SIGTERM received" in out.text(), signal.SIGTERM)

    started = time.monotonic()
    status = pool.run()

    assert status == 128 + signal.SIGTERM
    assert "pool: second SIGTERM: stopping every process at once" in out.text()
    assert time.monotonic() - started < KILL_MARGIN_S + 10, "not the 60 s grace period"


def test_processes_die_with_the_supervisor(tmp_path: Path) -> None:
    """A supervisor killed by SIGKILL leaves no process behind (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux only")
    driver = f"""
import os, sys
from pathlib import Path
from service.tools.worker_pool import WorkerPool, member_env, plan_members
members = plan_members(2, web_port=7100, data_dir=Path({str(tmp_path)!r}))
pool = WorkerPool(members, command=[sys.executable, "-c", {STANDIN!r}],
    env_for=lambda m: member_env(os.environ, m, {{"STANDIN": "serve"}}), grace_s=60)
sys.exit(pool.run())
"""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", driver], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: len(child_pids(supervisor.pid)) == 2)
        children = child_pids(supervisor.pid)
    finally:
        supervisor.kill()
        supervisor.wait()

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"  # ended; its new parent has not reaped it yet

    wait_for(lambda: all(gone(pid) for pid in children))
