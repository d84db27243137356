"""Suite-wide fixtures. Tier-specific ones live in tests/<tier>/conftest.py."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

import pytest

from service.tools.kafka_local import LocalKafka, free_port
from tests.pg_fixture import history_db_url, pg_server  # noqa: F401  (shared fixtures)


def pytest_report_header() -> str:
    # Which scoring model this run imports (README, "Compiled model").
    import service.model.scoring

    expected = os.environ.get("VITALS_EXPECT_MODEL", "interpreted")
    return f"scoring model: {expected}, {service.model.scoring.__file__}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka broker for the whole session.

    ``KAFKA_BOOTSTRAP_SERVERS`` points at an existing broker; otherwise a local
    one (service/tools/kafka_local.py) starts on free ports in a temporary directory
    and is stopped at the end, by atexit if the session is interrupted, and by
    the kernel (parent-death signal) if pytest itself is killed.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalKafka(
        data_dir=tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        die_with_parent=True,
    )
    atexit.register(broker.stop, 10)
    broker.start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        atexit.unregister(broker.stop)
