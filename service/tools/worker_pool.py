"""``vitals worker --processes N``: N worker processes of one consumer group on one machine.

A worker's stream processing runs on one core (one Python interpreter), so a
machine with more cores runs more workers. Each process of the pool is an
ordinary ``vitals worker``: one faust app, one member of the consumer group
``VITALS_APP_ID``, its own HTTP server and data dir. Process ``wI`` (I = 1..N)
listens on ``VITALS_WEB_PORT + I - 1`` and keeps its files in
``VITALS_DATA_DIR/wI``; it announces ``VITALS_WEB_HOST:<its port>`` to the
group, so faust's routing sends a per-account request to whichever process
owns the account, and ``/portfolio`` gathers every process's share: any
process answers for every account, the first port as well as the others.

The supervisor (this module, the ``vitals worker`` process itself):

- starts the N processes, each in a process group of its own, so a Ctrl-C on
  the terminal reaches the supervisor alone and every process gets each
  signal once, from the supervisor; and each tied to the supervisor's life
  (Linux: a process gets SIGTERM when the supervisor dies, even by SIGKILL);
- forwards SIGINT and SIGTERM to every process: the first starts each one's
  bounded stop (``VITALS_SHUTDOWN_GRACE_S``), a second stops them at once; a
  process still running ``KILL_MARGIN_S`` after the grace period is killed;
  SIGUSR1 (the task list) is forwarded too;
- when a process ends by itself (a crash, an out-of-memory kill, a ``kill
  -9``), stops all the others the same way and exits with
  :data:`EXIT_PROCESS_ENDED`: a machine never goes on serving with part of its
  processes unnoticed. Restarting is the process manager's job (systemd
  ``Restart=``, Docker ``restart:``, Kubernetes), which restarts the whole set
  with back-off; meanwhile Kafka moves the partitions to the group's other
  members, if any;
- copies every line a process writes to its own stderr, prefixed with the
  process's name and port (``w2:6067 | ...``).

Exit status: 0 when every process stopped with nothing left undone, 1 when
one left something undone (its ``shutdown:`` line says what), 3
(:data:`EXIT_PROCESS_ENDED`) when a process ended by itself, 128 + the signal
number after a second signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, TextIO

__all__ = [
    "EXIT_PROCESS_ENDED",
    "EXIT_UNDONE",
    "KILL_MARGIN_S",
    "Member",
    "PoolError",
    "WorkerPool",
    "describe_exit",
    "machine_cores",
    "member_env",
    "plan_members",
    "pool_status",
    "ports_in_use",
    "resolve_processes",
]

#: Exit status when a process left something undone (as a single worker's).
EXIT_UNDONE: Final = 1
#: Exit status when a process of the pool ended by itself and the others were stopped.
EXIT_PROCESS_ENDED: Final = 3
#: Seconds past the grace period after which a process still running is killed.
KILL_MARGIN_S: Final = 2.0
#: How often the supervisor looks at its processes and at the signals received.
POLL_S: Final = 0.1
#: Signals that stop the pool.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

#: The supervisor's own log records look like a worker's (mode's format).
LOG_FORMAT: Final = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"

log = logging.getLogger("vitals.pool")


class PoolError(ValueError):
    """A pool that cannot be started as asked (one-line message)."""


# ----------------------------------------------------------------- pure helpers


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_processes(requested: int, *, cores: int, partitions: int) -> int:
    """The number of processes to run for ``VITALS_WORKER_PROCESSES=requested``.

    0 (``auto``) means one per core, but no more than the partitions: a
    process beyond them would get no partition. An explicit count larger than
    the partitions is a :class:`PoolError`.
    """
    if requested < 0:
        raise PoolError(f"--processes must be 0 (auto) or more, got {requested}")
    if requested == 0:
        return max(1, min(cores, partitions))
    if requested > partitions:
        raise PoolError(
            f"--processes {requested} is more than the {partitions} partitions "
            f"(VITALS_PARTITIONS): a process beyond them gets no partition; "
            f"use at most {partitions}"
        )
    return requested


@dataclass(frozen=True)
class Member:
    """One process of the pool: its name, HTTP port and data dir."""

    index: int  # 1-based
    port: int
    data_dir: Path

    @property
    def name(self) -> str:
        return f"w{self.index}"


def plan_members(count: int, *, web_port: int, data_dir: Path) -> list[Member]:
    """Processes ``w1..wN`` on ports ``web_port..web_port+N-1``, data in ``data_dir/wI``."""
    if count < 1:
        raise PoolError(f"a pool needs at least one process, got {count}")
    if web_port == 0:
        raise PoolError(
            f"--processes {count} needs a fixed VITALS_WEB_PORT (not 0): "
            f"the processes listen on it and the next {count - 1}"
        )
    last = web_port + count - 1
    if last > 65535:
        raise PoolError(
            f"--processes {count} from VITALS_WEB_PORT={web_port} needs ports up to "
            f"{last}, past 65535; choose a lower --web-port"
        )
    return [
        Member(index=i + 1, port=web_port + i, data_dir=data_dir / f"w{i + 1}")
        for i in range(count)
    ]


def member_env(
    base: Mapping[str, str], member: Member, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The environment of one process: ``base``, ``overrides``, then its own port and data dir.

    Every process runs as a single worker (``VITALS_WORKER_PROCESSES=1``).
    """
    env = dict(base)
    env.update(overrides)
    env.update(
        {
            "VITALS_WEB_PORT": str(member.port),
            "VITALS_DATA_DIR": str(member.data_dir),
            "VITALS_WORKER_PROCESSES": "1",
            # Log lines reach the supervisor as they are written.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def describe_exit(code: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL`` (``code`` as Popen gives it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def pool_status(codes: Sequence[int], *, ended_by_itself: bool, second_signal: int | None) -> int:
    """The pool's exit status from its processes' exit codes (see the module docstring).

    A process killed by a signal during a stop (the supervisor's SIGKILL at
    the deadline) left its work undone.
    """
    if second_signal is not None:
        return 128 + second_signal
    if ended_by_itself:
        return EXIT_PROCESS_ENDED
    return 0 if all(code == 0 for code in codes) else EXIT_UNDONE


def ports_in_use(host: str, ports: Sequence[int]) -> list[int]:
    """The ``ports`` something already listens on at ``host`` (the address the workers bind).

    Raises :class:`PoolError` when ``host`` cannot be bound at all.
    """
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise PoolError(f"cannot resolve VITALS_WEB_BIND={host!r}: {exc.strerror}") from exc
    taken = []
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As aiohttp binds: a port whose old connections linger is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise PoolError(
                        f"cannot listen on {host}:{port} (VITALS_WEB_BIND): {exc.strerror}"
                    ) from exc
                taken.append(port)
    return taken


# ----------------------------------------------------------------- processes


def _parent_death_signal(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux; elsewhere nothing)."""
    prctl: Callable[..., int] | None = None
    with contextlib.suppress(OSError, AttributeError):
        # Looked up before the fork: the child only makes the call.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def tie() -> None:
        if prctl is not None:
            prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return tie


@dataclass
class _Running:
    member: Member
    process: subprocess.Popen[bytes]
    code: int | None = None


class WorkerPool:
    """Runs ``members`` as ``command`` processes until a signal or one of them ends.

    ``env_for`` gives each member's environment; ``grace_s`` is the workers'
    ``VITALS_SHUTDOWN_GRACE_S``. ``run`` blocks and returns the exit status;
    it installs signal handlers, so call it from the main thread.
    """

    def __init__(
        self,
        members: Sequence[Member],
        *,
        command: Sequence[str],
        env_for: Callable[[Member], Mapping[str, str]],
        grace_s: float,
        out: TextIO | None = None,
    ) -> None:
        self.members = list(members)
        self.command = list(command)
        self.env_for = env_for
        self.grace_s = grace_s
        self.out = out if out is not None else sys.stderr
        self.running: list[_Running] = []
        self._signals: list[int] = []
        self._stopping_since: float | None = None
        self._kill_at: float | None = None
        self._killed = False
        self._ended_first: _Running | None = None
        self._second_signal: int | None = None
        self._handler = logging.StreamHandler(self.out)
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))

    # -- the run --------------------------------------------------------------

    def run(self) -> int:
        """Start every process, supervise them, stop them; the pool's exit status."""
        log.addHandler(self._handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        previous = {signum: signal.getsignal(signum) for signum in (*STOP_SIGNALS, signal.SIGUSR1)}
        for signum in previous:
            signal.signal(signum, self._on_signal)
        pumps: list[threading.Thread] = []
        try:
            self._start_all()
            # Threads only after every fork: a child forked while another
            # thread holds a lock could inherit it held.
            for running in self.running:
                assert running.process.stdout is not None
                pump = threading.Thread(
                    target=self._pump,
                    args=(running.member, running.process.stdout),
                    name=f"pool-log-{running.member.name}",
                    daemon=True,
                )
                pump.start()
                pumps.append(pump)
            self._announce()
            self._supervise()
        finally:
            # Ctrl-C or an error in the supervisor itself: nothing may outlive it.
            for running in self.running:
                if running.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(running.process.pid, signal.SIGKILL)
                    running.process.wait()
            for pump in pumps:
                pump.join(timeout=5)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        status = self._report()
        log.removeHandler(self._handler)
        return status

    def _start_all(self) -> None:
        tie = _parent_death_signal(os.getpid())
        for member in self.members:
            process = subprocess.Popen(
                self.command,
                env=dict(self.env_for(member)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Its own group: terminal signals reach the supervisor only,
                # which forwards each one once.
                process_group=0,
                preexec_fn=tie,
            )
            self.running.append(_Running(member, process))

    def _announce(self) -> None:
        first, last = self.members[0], self.members[-1]
        pids = ", ".join(f"{r.member.name} pid {r.process.pid}" for r in self.running)
        log.info(
            "pool: %d worker processes on ports %d-%d (%s); each answers for every "
            "account; log lines are prefixed 'wI:port |'",
            len(self.members),
            first.port,
            last.port,
            pids,
        )

    def _supervise(self) -> None:
        while True:
            while self._signals:
                self._handle_signal(self._signals.pop(0))
            for running in self.running:
                if running.code is None:
                    code = running.process.poll()
                    if code is not None:
                        running.code = code
                        self._on_exit(running)
            if all(running.code is not None for running in self.running):
                return
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self._kill_remaining()
            time.sleep(POLL_S)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only noted here: the loop acts on it (logging from a signal handler
        # could re-enter a write the main thread was in the middle of).
        self._signals.append(signum)

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            self._forward(signum)
            return
        if self._stopping_since is None:
            log.info(
                "pool: %s received: stopping %d processes; %g s (VITALS_SHUTDOWN_GRACE_S) "
                "to finish, send it again to stop them at once",
                name,
                len(self.running),
                self.grace_s,
            )
            self._begin_stop(signum)
        elif self._second_signal is None:
            log.warning("pool: second %s: stopping every process at once", name)
            self._second_signal = signum
            self._forward(signum)
            self._kill_at = time.monotonic() + KILL_MARGIN_S

    def _on_exit(self, running: _Running) -> None:
        assert running.code is not None
        member = running.member
        what = f"{member.name} (pid {running.process.pid}, port {member.port})"
        if self._stopping_since is None:
            self._ended_first = running
            others = sum(1 for r in self.running if r.code is None)
            log.error(
                "pool: %s ended by itself (%s): stopping the other %d processes (the pool "
                "never serves with part of its processes; restart it as a whole)",
                what,
                describe_exit(running.code),
                others,
            )
            self._begin_stop(signal.SIGTERM)
        else:
            log.info("pool: %s %s", what, describe_exit(running.code))

    def _begin_stop(self, signum: int) -> None:
        self._stopping_since = time.monotonic()
        self._kill_at = self._stopping_since + self.grace_s + KILL_MARGIN_S
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for running in self.running:
            if running.code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signum)

    def _kill_remaining(self) -> None:
        if self._killed:
            return
        self._killed = True
        for running in self.running:
            if running.code is None:
                log.warning(
                    "pool: %s (pid %d) still running past the deadline: killing it",
                    running.member.name,
                    running.process.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)

    def _pump(self, member: Member, stream: IO[bytes]) -> None:
        """Copy a process's output to ours, a line at a time, prefixed with its name."""
        prefix = f"{member.name}:{member.port} | "
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            # The log handler's lock keeps whole lines of all sources apart.
            with self._handler.lock or contextlib.nullcontext():
                try:
                    self.out.write(prefix + line + "\n")
                    self.out.flush()
                except (OSError, ValueError):  # our stderr is gone: keep draining the pipe
                    continue
        stream.close()

    def _report(self) -> int:
        killed = -int(signal.SIGKILL)
        codes = [r.code if r.code is not None else killed for r in self.running]
        status = pool_status(
            codes,
            ended_by_itself=self._ended_first is not None,
            second_signal=self._second_signal,
        )
        took = (
            f" {time.monotonic() - self._stopping_since:.1f} s after the stop began"
            if self._stopping_since is not None
            else ""
        )
        each = ", ".join(
            f"{r.member.name} {describe_exit(c)}" for r, c in zip(self.running, codes, strict=True)
        )
        cause = ""
        if self._ended_first is not None:
            first = self._ended_first
            assert first.code is not None
            cause = f" because {first.member.name} ended by itself ({describe_exit(first.code)}),"
        level = logging.INFO if status == 0 else logging.WARNING
        log.log(level, "pool: stopped%s%s (%s); exit status %d", cause, took, each, status)
        return status
