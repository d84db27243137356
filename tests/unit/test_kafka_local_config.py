"""The generated broker configuration (no Java, no broker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.tools.kafka_local import (
    LocalKafka,
    new_cluster_id,
    render_properties,
    server_properties,
)


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for what render_properties writes."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        props[key] = value.encode("latin-1").decode("unicode_escape")
    return props


@pytest.fixture
def written(tmp_path: Path) -> dict[str, str]:
    broker = LocalKafka(data_dir=tmp_path / "kafka", port=19092, controller_port=19093)
    return parse_properties(broker.write_config().read_text("utf-8"))


def test_single_node_kraft_on_loopback(written: dict[str, str]) -> None:
    assert written["process.roles"] == "broker,controller"
    assert written["node.id"] == "1"
    assert written["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert written["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert written["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert written["controller.listener.names"] == "CONTROLLER"


@pytest.mark.parametrize(
    "key",
    [
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ],
)
def test_internal_topics_need_one_replica(written: dict[str, str], key: str) -> None:
    assert written[key] == "1"


def test_tuned_for_tests(written: dict[str, str]) -> None:
    assert written["group.initial.rebalance.delay.ms"] == "0"
    assert written["auto.create.topics.enable"] == "false"
    assert written["num.partitions"] == "1"
    assert int(written["offsets.topic.num.partitions"]) <= 8


def test_large_messages_fit(written: dict[str, str]) -> None:
    # The integration tests send a 2 MiB value; the broker must accept it
    # and be able to replicate it.
    assert int(written["message.max.bytes"]) >= 8 * 1024 * 1024
    assert int(written["replica.fetch.max.bytes"]) >= int(written["message.max.bytes"])


def test_log_dirs_inside_the_data_dir(tmp_path: Path, written: dict[str, str]) -> None:
    assert Path(written["log.dirs"]) == (tmp_path / "kafka" / "data").resolve()


def test_render_escapes_for_java_properties() -> None:
    text = render_properties({"log.dirs": "/tmp/dätä\\x", "a key": "v"}, header="one\ntwo")
    assert text.splitlines() == [
        "# one",
        "# two",
        "log.dirs=/tmp/d\\u00e4t\\u00e4\\\\x",
        "a\\ key=v",
    ]
    assert parse_properties(text)["log.dirs"] == "/tmp/dätä\\x"


def test_server_properties_is_pure() -> None:
    a = server_properties(log_dir=Path("/x"), port=1, controller_port=2)
    assert a == server_properties(log_dir=Path("/x"), port=1, controller_port=2)


def test_cluster_id_format() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id)
