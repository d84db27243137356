"""A throw-away PostgreSQL server for the session, and a history-DB URL fixture.

``pg_server`` finds Debian's server binaries (``/usr/lib/postgresql/*/bin``,
newest version; ``VITALS_PG_BIN`` overrides) and skips with the reason when
they are missing (``apt-get install postgresql`` provides them). It runs
``initdb`` and ``postgres`` on a free port bound to 127.0.0.1 with trust auth,
the unix socket and data in a fresh temporary directory. As root the server
runs as the ``postgres`` system user (PostgreSQL refuses to run as root). It is
stopped at session end, by atexit if the session is interrupted, and by the
kernel (parent-death signal) if pytest itself is killed.

``history_db_url`` is parametrised over ``sqlite`` and ``postgresql``: a fresh,
empty database per test (a SQLite file in ``tmp_path``, or a new PostgreSQL
database on the session server).

Use from a test module with ``from tests.pg_fixture import history_db_url,
pg_server`` (pytest finds imported fixtures); it could move to
``tests/conftest.py`` when more modules need it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.tools.kafka_local import free_port

__all__ = ["PgServer", "find_pg_bin", "history_db_url", "pg_server"]

_SERVER_USER = "postgres"


def find_pg_bin() -> Path | None:
    """The ``bin`` directory holding ``initdb``, ``pg_ctl`` and ``postgres``, if any."""
    override = os.environ.get("VITALS_PG_BIN")
    candidates = [Path(override)] if override else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name)) or (0,)

    candidates += sorted(
        (path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda bin_dir: version(bin_dir / "initdb"),
        reverse=True,
    )
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    return None


def _die_with_parent() -> None:
    """In the child, after dropping privileges: a fast shutdown when pytest dies."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


@dataclass
class PgServer:
    """One running PostgreSQL server (trust auth on 127.0.0.1)."""

    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @staticmethod
    def _server_user() -> str | None:
        """Who runs initdb and postgres: ``postgres`` as root, else ourselves (``None``)."""
        return _SERVER_USER if os.geteuid() == 0 else None

    def _run(self, *args: str, as_server: bool = False) -> None:
        user = self._server_user() if as_server else None
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
            cwd=self.root,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{output}")

    def start(self, timeout: float = 60.0) -> PgServer:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            as_server=True,
        )
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        watch_parent = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=_die_with_parent if watch_parent else None,
                user=self._server_user(),
                group=self._server_user(),
                extra_groups=[] if self._server_user() else None,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def new_database(self) -> str:
        """Create an empty database; its ``postgresql+asyncpg://`` URL."""
        name = f"vitals_{uuid.uuid4().hex[:12]}"
        self._run(
            str(self.bin_dir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown, then remove the data directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session (skips when PostgreSQL is not installed)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb, "
            "pg_ctl, postgres; or VITALS_PG_BIN): install Debian's postgresql package"
        )
    pytest.importorskip("asyncpg", reason="the asyncpg driver is needed for PostgreSQL")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            pytest.skip("running as root without a 'postgres' system user to run the server")
    # Not under pytest's basetemp: its directories are private to the current user.
    server = PgServer(bin_dir=bin_dir, root=Path(tempfile.mkdtemp(prefix="vitals-pg-")))
    atexit.register(server.stop, 10)
    try:
        server.start()
    except BaseException:
        server.stop()
        atexit.unregister(server.stop)
        raise
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty history database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.new_database()
