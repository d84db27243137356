"""Fixtures for tests that run real workers against the session broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.workers import Namespace, WorkerProcess


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


@pytest.fixture
def worker_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers for one test; every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(namespace: Namespace, **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(
            bootstrap=kafka_bootstrap,
            namespace=namespace,
            data_dir=tmp_path,
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer with default (murmur2) partitioning."""
    # Idempotent: a retried produce request must not write an event twice,
    # since the tests count every event (duplicates are tested on purpose).
    client = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        max_request_size=4 * 1024 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
