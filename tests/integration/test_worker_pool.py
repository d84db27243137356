"""Issue 15, item 7 on the real broker: ``vitals worker --processes 2``.

Two workers of one group on one machine share the 4 partitions and the HTTP
routing; the pool stops as a whole, on a signal or when one process dies
(docs/operations.md, "Several processes per machine").
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.processing.partitioning import account_partition
from service.tools.worker_pool import EXIT_PROCESS_ENDED, KILL_MARGIN_S
from tests.integration.test_api import login, poll, request
from tests.integration.workers import Namespace, PoolProcess, session_processes

pytestmark = pytest.mark.integration

#: The workers' VITALS_SHUTDOWN_GRACE_S (the default).
GRACE_S = 10.0
#: Slack for process exit on a loaded 2-core machine.
MARGIN_S = 3.0
PARTITIONS = 4


@pytest.fixture
def pool_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Any]:
    started: list[PoolProcess] = []

    def start(namespace: Namespace, processes: int = 2) -> PoolProcess:
        pool = PoolProcess(
            bootstrap=kafka_bootstrap,
            namespace=namespace,
            data_dir=tmp_path,
            partitions=PARTITIONS,
            processes=processes,
        )
        started.append(pool.start())
        return pool

    yield start
    for pool in started:
        pool.stop()


def owned_partitions(pool: PoolProcess) -> list[set[int]] | None:
    """Each process's account partitions once every one is ready, owns some and none overlap."""
    states = [request(f"{url}/readyz")[1] for url in pool.urls]
    if not all(s and s["ready"] for s in states):
        return None
    owned = [set(s["account_partitions"]) for s in states]
    if (
        all(owned)
        and sum(map(len, owned)) == PARTITIONS
        and set().union(*owned) == set(range(PARTITIONS))
    ):
        return owned
    return None


def stop_and_time(pool: PoolProcess, signum: int) -> tuple[int, float]:
    """Signal the supervisor; (its exit status, seconds until it exited)."""
    assert pool.process is not None
    os.kill(pool.process.pid, signum)
    started = time.monotonic()
    status = pool.process.wait(timeout=GRACE_S * 6)
    return status, time.monotonic() - started


async def test_every_process_answers_for_every_account_and_sigterm_stops_all(
    namespace: Namespace, pool_factory: Any, producer: AIOKafkaProducer
) -> None:
    pool: PoolProcess = pool_factory(namespace)
    await asyncio.to_thread(pool.wait_ready)
    owned = await poll(lambda: owned_partitions(pool), timeout=90, what="both owning partitions")

    accounts = [f"pool-{i}" for i in range(24)]
    for account in accounts:
        await producer.send_and_wait(
            namespace.topic("events.login"), orjson.dumps(login(account)), key=account.encode()
        )
    first = pool.urls[0]

    def everyone_scored() -> bool:
        return all(request(f"{first}/accounts/{a}/health")[0] == 200 for a in accounts)

    await poll(everyone_scored, timeout=90, what="every account scored")
    owners = set()
    for account in accounts:
        partition = account_partition(account.encode(), PARTITIONS)
        owners.add(next(i for i, parts in enumerate(owned) if partition in parts))
        answers = [request(f"{url}/accounts/{account}/health") for url in pool.urls]
        assert [status for status, _ in answers] == [200, 200]
        bodies = [{k: v for k, v in body.items() if k != "computed_at"} for _, body in answers]
        assert bodies[0] == bodies[1], f"both processes answer alike for {account}"
    assert owners == {0, 1}, "the accounts are spread over both processes"
    for url in pool.urls:
        status, portfolio = request(f"{url}/portfolio")
        assert status == 200
        assert portfolio["workers"] == 2 and portfolio["complete"]
        assert portfolio["accounts"] == len(accounts), "every account counted once"

    assert pool.process is not None
    session = pool.process.pid
    assert len(session_processes(session)) == 3, "the supervisor and its two workers"
    status, took = await asyncio.to_thread(stop_and_time, pool, signal.SIGTERM)
    log = pool.log_path.read_text()
    assert status == 0, pool.log_tail()
    assert took <= GRACE_S + MARGIN_S
    assert session_processes(session) == [], "no process left behind"
    for i, url in enumerate(pool.urls, start=1):
        port = url.rsplit(":", 1)[1]
        assert f"w{i}:{port} | " in log and "SIGTERM received: stopping" in log
        assert log.count(f"w{i}:{port} | ") > 10, "each process's lines are prefixed"
        shutdown = [ln for ln in log.splitlines() if ln.startswith(f"w{i}:{port} | ")]
        assert any("shutdown: stopped" in ln and "nothing left undone" in ln for ln in shutdown)
    assert "pool: stopped" in log and "exit status 0" in log


async def test_a_killed_process_stops_the_pool(namespace: Namespace, pool_factory: Any) -> None:
    pool: PoolProcess = pool_factory(namespace)
    await asyncio.to_thread(pool.wait_ready)
    assert pool.process is not None
    session = pool.process.pid
    workers = pool.worker_pids()
    assert len(workers) == 2

    os.kill(workers[1], signal.SIGKILL)
    started = time.monotonic()
    status = await asyncio.to_thread(pool.process.wait, GRACE_S * 6)
    took = time.monotonic() - started

    log = pool.log_path.read_text()
    assert status == EXIT_PROCESS_ENDED, pool.log_tail()
    # The survivor's stop is bounded by its grace period, and the supervisor's by that
    # plus its margin.
    assert took <= GRACE_S + KILL_MARGIN_S + MARGIN_S
    assert session_processes(session) == [], "no process left behind"
    assert f"w2 (pid {workers[1]}, port {pool.web_port + 1}) ended by itself" in log
    assert "was killed by SIGKILL" in log
    survivor = [ln for ln in log.splitlines() if ln.startswith(f"w1:{pool.web_port} | ")]
    assert any("SIGTERM received: stopping" in ln for ln in survivor), "the other was stopped"
    assert any("shutdown: " in ln for ln in survivor)
    last = log.strip().splitlines()[-1]
    assert "because w2 ended by itself" in last and f"exit status {EXIT_PROCESS_ENDED}" in last
