"""A single-node Apache Kafka broker (KRaft) on loopback, without Docker.

For development and the integration tests. The broker jars come from Maven
Central through ``deploy/kafka/pom.xml`` and are cached outside the repository;
the broker then runs as a detached ``java`` process with its own process group,
its configuration, storage, log and pid file in one data directory::

    <data_dir>/server.properties   written on every start
    <data_dir>/data/               log.dirs (topics and the KRaft metadata log)
    <data_dir>/broker.log          stdout/stderr of the JVM (previous start: .1)
    <data_dir>/broker.pid          pid of the running JVM

Contract: ``start()`` returns only when the broker answers a metadata request
listing itself (an open port is not enough), otherwise it stops what it started
and raises :class:`KafkaLocalError` with the tail of the broker log. Every
failure of the environment (no Java, no Maven, a busy port, a download error)
is a :class:`KafkaLocalError` whose message says what to fix.

POSIX only (process groups, ``fcntl``). Progress goes to the ``vitals.kafka``
logger.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_KAFKA_VERSION",
    "DEFAULT_PORT",
    "KafkaLocalError",
    "KafkaStatus",
    "LocalKafka",
    "default_cache_root",
    "default_data_dir",
    "find_java",
    "free_port",
    "new_cluster_id",
    "render_properties",
    "server_properties",
    "wait_ready",
    "wait_ready_async",
]

logger = logging.getLogger("vitals.kafka")

# Newest release at the time of writing; aiokafka 0.14 negotiates every request
# version through ApiVersions and all the APIs it uses are in this broker's
# supported ranges (checked with a probe and tests/integration/test_kafka_local.py).
DEFAULT_KAFKA_VERSION: Final = "4.4.0"
DEFAULT_PORT: Final = 9092
DEFAULT_CONTROLLER_PORT: Final = 9093
LOOPBACK: Final = "127.0.0.1"

_REPO_ROOT: Final = Path(__file__).resolve().parents[2]
POM_PATH: Final = _REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J2_PATH: Final = _REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"

# Small heap for a 2-core development machine; exit rather than limp on OOM.
# log4j's own shutdown hook would race Kafka's and cut the shutdown log short.
DEFAULT_JVM_OPTIONS: Final = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dlog4j2.shutdownHookEnabled=false",
)
MIN_JAVA_VERSION: Final = 17
_MARKER_NAME: Final = "libs.complete"
_MAVEN_TIMEOUT_S: Final = 900.0
_LOG_TAIL_LINES: Final = 40

_T = TypeVar("_T")


class KafkaLocalError(RuntimeError):
    """The local broker cannot be fetched, started, reached or stopped.

    ``message`` is one line saying what went wrong; ``detail`` holds the
    evidence (tool output, the tail of the broker log), if any.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}\n{self.detail}" if self.detail else self.message


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    """What :meth:`LocalKafka.status` found in a data directory."""

    running: bool
    ready: bool
    pid: int | None
    bootstrap: str | None
    data_dir: Path

    def to_json(self) -> dict[str, object]:
        return {
            "running": self.running,
            "ready": self.ready,
            "pid": self.pid,
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
        }


# --------------------------------------------------------------------------
# Locations


def _xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def default_cache_root() -> Path:
    """Root of the jar cache: ``$VITALS_KAFKA_CACHE`` or ``~/.cache/vitals/kafka``.

    Jars of version V live in ``<root>/<V>/libs``.
    """
    override = os.environ.get("VITALS_KAFKA_CACHE")
    if override:
        return Path(override).expanduser()
    return _xdg_dir("XDG_CACHE_HOME", ".cache") / "vitals" / "kafka"


def default_data_dir() -> Path:
    """``$VITALS_KAFKA_DATA_DIR`` or ``~/.local/share/vitals/kafka``."""
    override = os.environ.get("VITALS_KAFKA_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return _xdg_dir("XDG_DATA_HOME", ".local/share") / "vitals" / "kafka"


# --------------------------------------------------------------------------
# Configuration (pure)


def server_properties(
    *,
    log_dir: Path,
    port: int,
    controller_port: int,
    host: str = LOOPBACK,
    node_id: int = 1,
) -> dict[str, str]:
    """Broker configuration of a combined broker+controller KRaft node.

    Tuned for tests: every internal topic has one replica and a min ISR of 1,
    few offsets/transaction partitions so the first group or transaction is
    ready quickly, no initial rebalance delay, no auto-created topics (the
    application creates its topics on purpose), and messages up to 8 MiB.
    """
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "message.max.bytes": "8388608",
        "replica.fetch.max.bytes": "10485760",
        # Two cores: the defaults (3 network, 8 I/O threads) only add contention.
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def _escape_property(text: str, *, key: bool) -> str:
    """Escape for ``java.util.Properties.load`` (ISO-8859-1 with \\u escapes)."""
    out: list[str] = []
    for index, char in enumerate(text):
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif char == " " and (key or index == 0):
            out.append("\\ ")
        elif key and char in "=:#!":
            out.append("\\" + char)
        elif code < 0x20 or code > 0x7E:
            units = char.encode("utf-16-be")
            out.extend(f"\\u{units[i : i + 2].hex()}" for i in range(0, len(units), 2))
        else:
            out.append(char)
    return "".join(out)


def render_properties(props: Mapping[str, str], *, header: str | None = None) -> str:
    """Render a Java properties file, one ``key=value`` line per entry."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [
        f"{_escape_property(k, key=True)}={_escape_property(v, key=False)}"
        for k, v in props.items()
    ]
    return "\n".join(lines) + "\n"


def _parse_listener_ports(text: str) -> tuple[int, int] | None:
    """(PLAINTEXT port, CONTROLLER port) from a server.properties we wrote."""
    match = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)$", text, re.M)
    return (int(match.group(1)), int(match.group(2))) if match else None


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 UUID, no padding).

    Like Kafka's ``Uuid.randomUuid`` it never starts with ``-``, which the
    storage tool's argument parser would take for an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


# --------------------------------------------------------------------------
# Small helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``port``. SO_REUSEADDR like the JVM, so the
    TIME_WAIT leftovers of a broker that just stopped do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
        return False


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise KafkaLocalError(f"bootstrap servers must look like host:port, got {bootstrap!r}")
    return host.strip("[]"), int(port)


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even inside a running loop
    (then in a worker thread with its own loop, since a loop cannot nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vitals-kafka") as pool:
        return pool.submit(asyncio.run, factory()).result()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(data.splitlines()[-lines:]) or "(broker log is empty)"


def _log_error(path: Path) -> str | None:
    """The last ERROR line of a broker log and its root cause, on one line."""
    text = _tail(path, lines=400)
    errors = re.findall(r"^\[[^\]]+\] (?:ERROR|FATAL) +(.*)$", text, re.M)
    causes = re.findall(r"^Caused by: (.*)$", text, re.M)
    parts = [part.strip() for part in (errors[-1:] + causes[-1:]) if part.strip()]
    return "; ".join(parts) if parts else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so parallel test sessions download once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# Tools


def find_java() -> str:
    """Path of a ``java`` of version 17 or newer (``$JAVA_HOME`` first)."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise KafkaLocalError(
            f"Java is missing: no 'java' on PATH and no $JAVA_HOME/bin/java; "
            f"Kafka 4 needs Java {MIN_JAVA_VERSION}+ (e.g. apt-get install openjdk-17-jre-headless)"
        )
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaLocalError(f"cannot run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise KafkaLocalError(f"cannot tell the Java version of {java}: {result.stderr.strip()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_402" style
        major = int(match.group(2))
    if major < MIN_JAVA_VERSION:
        raise KafkaLocalError(
            f"Java {major} at {java} is too old: Kafka 4 needs Java {MIN_JAVA_VERSION}+"
        )
    return java


def _find_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError(
            "Maven is missing: no 'mvn' on PATH; it is needed once to download the "
            "Kafka jars (e.g. apt-get install maven), or set VITALS_KAFKA_CACHE to a "
            "directory that already holds them"
        )
    return mvn


def _set_parent_death_signal() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# --------------------------------------------------------------------------
# Readiness


async def wait_ready_async(
    bootstrap: str,
    within: float,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.25,
) -> None:
    """Return once a metadata request to ``bootstrap`` lists at least one broker.

    Polls until ``within`` seconds have passed (then :class:`KafkaLocalError`)
    or ``alive()`` turns false (the broker process died: also an error).
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    host, port = _split_bootstrap(bootstrap)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last_error = "port closed"
    while True:
        if alive is not None and not alive():
            raise KafkaLocalError(f"the broker process exited before {bootstrap} was ready")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise KafkaLocalError(
                f"Kafka at {bootstrap} not ready after {within:.0f}s ({last_error})"
            )
        # Probe the port first: aiokafka logs every refused connection as an error.
        if await loop.run_in_executor(None, _port_open, host, port, min(remaining, 1.0)):
            request_ms = max(1000, int(min(remaining, 10.0) * 1000))
            admin = AIOKafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="vitals-kafka-ready",
                request_timeout_ms=request_ms,
            )
            try:
                await asyncio.wait_for(admin.start(), min(remaining, 10.0))
                cluster = await asyncio.wait_for(admin.describe_cluster(), min(remaining, 10.0))
                if cluster.get("brokers"):
                    return
                last_error = "metadata lists no broker yet"
            except (KafkaError, OSError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            finally:
                await admin.close()
        await asyncio.sleep(interval)


def wait_ready(bootstrap: str, timeout: float) -> None:
    """Blocking :func:`wait_ready_async` (usable inside a running event loop too)."""
    _run_coroutine(lambda: wait_ready_async(bootstrap, timeout))


# --------------------------------------------------------------------------
# The broker


@dataclass
class LocalKafka:
    """A single-node KRaft broker+controller listening on 127.0.0.1.

    ``start``/``stop`` also work across processes: the pid file in
    ``data_dir`` says which JVM belongs to it (``vitals kafka up`` in one shell,
    ``vitals kafka down`` in another).
    """

    data_dir: Path
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    version: str = DEFAULT_KAFKA_VERSION
    cache_root: Path | None = None
    jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS
    # Linux: the JVM gets SIGTERM when the starting process dies (test runs).
    # The kernel ties this to the starting *thread*, so it applies only when
    # start() runs on the main thread.
    die_with_parent: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    # -- paths ---------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def libs_dir(self) -> Path:
        return (self.cache_root or default_cache_root()) / self.version / "libs"

    # -- jars ------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """Download the broker jars unless cached; return the ``libs`` directory.

        A marker file written after a successful download makes an interrupted
        one start over; it records the pom's hash, so editing the pom refetches.
        """
        libs = self.libs_dir
        marker = libs.parent / _MARKER_NAME
        pom_hash = _sha256(POM_PATH) if POM_PATH.is_file() else None
        with _file_lock(libs.parent / ".lock"):
            if self._cache_complete(libs, marker, pom_hash):
                logger.debug("Kafka %s jars cached in %s", self.version, libs)
                return libs
            if pom_hash is None:
                raise KafkaLocalError(
                    f"{POM_PATH} is missing: fetching Kafka needs a source checkout of "
                    "vitals installed in editable mode (pip install -e .)"
                )
            mvn = _find_maven()
            staging = libs.parent / f"libs.partial-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            marker.unlink(missing_ok=True)
            logger.info("downloading Kafka %s jars with Maven into %s", self.version, libs)
            started = time.monotonic()
            command = [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(POM_PATH),
                f"-Dkafka.version={self.version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ]
            try:
                result = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=_MAVEN_TIMEOUT_S,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise KafkaLocalError(
                    f"Maven did not finish downloading Kafka {self.version} "
                    f"in {_MAVEN_TIMEOUT_S:.0f}s"
                ) from exc
            jars = sorted(staging.glob("*.jar")) if staging.is_dir() else []
            if result.returncode != 0 or not any(
                j.name.startswith(f"kafka_2.13-{self.version}") for j in jars
            ):
                shutil.rmtree(staging, ignore_errors=True)
                output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
                lines = output.strip().splitlines()
                first_error = next((ln for ln in lines if ln.startswith("[ERROR] ")), "")
                raise KafkaLocalError(
                    f"Maven could not fetch org.apache.kafka:kafka_2.13:{self.version} "
                    f"(exit {result.returncode}): {first_error.removeprefix('[ERROR] ')}",
                    "\n".join(lines[-20:]) or None,
                )
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
            marker.write_text(
                json.dumps({"version": self.version, "pom_sha256": pom_hash, "jars": len(jars)})
                + "\n"
            )
            logger.info(
                "fetched %d jars for Kafka %s in %.1fs",
                len(jars),
                self.version,
                time.monotonic() - started,
            )
            return libs

    def _cache_complete(self, libs: Path, marker: Path, pom_hash: str | None) -> bool:
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(recorded, dict) or recorded.get("version") != self.version:
            return False
        if pom_hash is not None and recorded.get("pom_sha256") != pom_hash:
            logger.info("deploy/kafka/pom.xml changed since the jars were fetched: refetching")
            return False
        return (libs / f"kafka_2.13-{self.version}.jar").is_file()

    # -- lifecycle -------------------------------------------------------------

    def is_formatted(self) -> bool:
        return (self.log_dir / "meta.properties").is_file()

    def write_config(self) -> Path:
        """(Re)write ``server.properties`` for the current ports."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = server_properties(
            log_dir=self.log_dir, port=self.port, controller_port=self.controller_port
        )
        header = f"Written by vitals (service/tools/kafka_local.py) for Kafka {self.version}."
        self.properties_path.write_text(render_properties(props, header=header), "utf-8")
        return self.properties_path

    def _format_storage(self, java: str, libs: Path) -> None:
        cluster_id = new_cluster_id()
        logger.info("formatting %s (cluster id %s)", self.log_dir, cluster_id)
        # A static quorum (controller.quorum.voters) is formatted without --standalone.
        command = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={LOG4J2_PATH}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.properties_path),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=180, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaLocalError("formatting the Kafka storage timed out") from exc
        if result.returncode != 0 or not self.is_formatted():
            lines = (result.stdout + result.stderr).strip().splitlines()
            raise KafkaLocalError(
                f"kafka.tools.StorageTool format failed (exit {result.returncode})"
                + (f": {lines[-1]}" if lines else ""),
                "\n".join(lines[-20:]) or None,
            )

    def start(self, timeout: float = 90) -> None:
        """Start the broker in the background and wait until it serves metadata.

        Raises :class:`KafkaLocalError` if it is already running from this data
        directory, a port is taken, or it is not ready within ``timeout`` seconds
        (then the process is stopped again).
        """
        pid = self.pid()
        if pid is not None:
            raise KafkaLocalError(
                f"a broker from {self.data_dir} is already running (pid {pid}); stop it first"
            )
        if not LOG4J2_PATH.is_file():
            raise KafkaLocalError(f"{LOG4J2_PATH} is missing (needs a source checkout)")
        if self.port == self.controller_port:
            raise KafkaLocalError("port and controller port must differ")
        java = find_java()
        libs = self.ensure_jars()
        for name, port in (("port", self.port), ("controller port", self.controller_port)):
            if _port_in_use(LOOPBACK, port):
                raise KafkaLocalError(
                    f"{name} {port} on {LOOPBACK} is in use (another broker?); "
                    "choose another with --port/--controller-port"
                )
        self.write_config()
        if not self.is_formatted():
            self._format_storage(java, libs)

        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        command = [
            java,
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={LOG4J2_PATH}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties_path),
        ]
        logger.info(
            "starting Kafka %s on %s (log: %s)", self.version, self.bootstrap, self.log_path
        )
        started = time.monotonic()
        tie_to_parent = (
            self.die_with_parent and threading.current_thread() is threading.main_thread()
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_set_parent_death_signal if tie_to_parent else None,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        try:
            _run_coroutine(lambda: wait_ready_async(self.bootstrap, timeout, alive=self._alive_now))
        except KafkaLocalError as exc:
            code = self._proc.poll()
            self.stop(timeout=10)
            status = f"exit code {code}" if code is not None else "stopped"
            cause = _log_error(self.log_path)
            raise KafkaLocalError(
                f"{exc.message} ({status})" + (f": {cause}" if cause else ""),
                f"last lines of {self.log_path}:\n{_tail(self.log_path)}",
            ) from None
        except BaseException:
            self.stop(timeout=10)
            raise
        logger.info(
            "Kafka ready on %s after %.1fs (pid %d)",
            self.bootstrap,
            time.monotonic() - started,
            self._proc.pid,
        )

    def _alive_now(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30) -> bool:
        """Stop the broker: SIGTERM to its process group, SIGKILL after ``timeout``.

        Returns whether a broker was running. Always removes the pid file.
        """
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            self._reap()
            return False
        logger.info("stopping Kafka (pid %d)", pid)
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            logger.warning("Kafka (pid %d) ignored SIGTERM for %.0fs: killing it", pid, timeout)
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10):
                raise KafkaLocalError(f"Kafka (pid {pid}) survived SIGKILL")
        self.pid_path.unlink(missing_ok=True)
        self._reap()
        return True

    def _signal(self, pid: int, signum: signal.Signals) -> None:
        try:
            # The JVM leads its own session; signal the group in case it forked.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    pass
            elif not _pid_alive(pid):
                return True
            else:
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                return False

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def pid(self) -> int | None:
        """Pid of this data directory's running broker, else None.

        The pid file is trusted only if that process is alive and is a
        ``kafka.Kafka`` JVM started with this data directory's configuration
        (guards against a stale file and a reused pid).
        """
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _cmdline(pid)
        if cmdline is not None and not (
            "kafka.Kafka" in cmdline and str(self.properties_path) in cmdline
        ):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def running_bootstrap(self) -> str:
        """Bootstrap address from the ``server.properties`` in use (the running
        broker may have been started with other ports than this object's)."""
        try:
            ports = _parse_listener_ports(self.properties_path.read_text("utf-8"))
        except OSError:
            ports = None
        return f"{LOOPBACK}:{ports[0]}" if ports else self.bootstrap

    def status(self, timeout: float = 5) -> KafkaStatus:
        """Whether the broker runs and answers metadata within ``timeout`` seconds."""
        pid = self.pid()
        if pid is None:
            return KafkaStatus(False, False, None, None, self.data_dir)
        bootstrap = self.running_bootstrap()
        try:
            wait_ready(bootstrap, timeout)
            ready = True
        except KafkaLocalError:
            ready = False
        return KafkaStatus(True, ready, pid, bootstrap, self.data_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); /proc tells (Linux only).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline(pid: int) -> str | None:
    """The command line of ``pid``, or None if it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        pass
    if sys.platform == "linux":
        return None
    try:
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None
