"""Issue 4 acceptance on the real broker: the HTTP API, routing between workers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import load_example
from service.processing.partitioning import account_partition
from tests.integration.workers import Namespace, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

TOKEN = "test-token-" + uuid.uuid4().hex


def request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return int(response.status), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return int(exc.code), json.loads(raw) if raw else None


async def poll(condition: Any, *, timeout: float = 60.0, what: str) -> Any:
    """Wait for a blocking ``condition`` (HTTP calls), run in a thread."""
    return await wait_for(
        lambda: asyncio.to_thread(condition), timeout=timeout, interval=0.2, what=what
    )


def login(account_id: str, **changes: Any) -> dict[str, Any]:
    event = orjson.loads(load_example("events", "login"))
    event.update(
        {
            "account_id": account_id,
            "event_id": uuid.uuid4().hex,
            "occurred_at": int(time.time() * 1000) - 60_000,
        }
    )
    event.update(changes)
    return dict(event)


async def count_messages(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


@pytest.fixture
def api_env() -> dict[str, str]:
    return {"VITALS_API_TOKEN": TOKEN}


async def test_post_events_validates_all_or_nothing(
    namespace: Namespace, worker_factory: Any, kafka_bootstrap: str, api_env: dict[str, str]
) -> None:
    worker: WorkerProcess = worker_factory(namespace, extra_env=api_env)
    await asyncio.to_thread(worker.wait_ready)
    url = f"{worker.url}/events"
    good = login("api-acct-1")

    status, body = request(url, method="POST", body=orjson.dumps(good))
    assert status == 401 and body["error"] == "unauthorized"

    bad_batch = [good, {**login("api-acct-1"), "user_id": 7}, {"type": "login"}]
    status, body = request(url, method="POST", body=orjson.dumps(bad_batch), token=TOKEN)
    assert status == 400
    assert [e["index"] for e in body["errors"]] == [1, 2]
    fields = {err["field"] for e in body["errors"] for err in e["errors"]}
    assert "user_id" in fields and "event_id" in fields

    status, body = request(url, method="POST", body=b"{not json", token=TOKEN)
    assert status == 400 and body["error"] == "not_json"
    big = orjson.dumps({**good, "padding": "x" * (2 * 1024 * 1024)})
    status, body = request(url, method="POST", body=big, token=TOKEN)
    assert status == 413
    assert await count_messages(kafka_bootstrap, namespace.topic("events.login")) == 0, (
        "rejected requests produce nothing"
    )

    batch = [good, login("api-acct-2")]
    status, body = request(url, method="POST", body=orjson.dumps(batch), token=TOKEN)
    assert status == 202 and body["accepted"] == 2
    ndjson = b"\n".join(orjson.dumps(login("api-acct-3")) for _ in range(3))
    status, body = request(
        url, method="POST", body=ndjson, token=TOKEN, content_type="application/x-ndjson"
    )
    assert status == 202 and body["accepted"] == 3
    assert await count_messages(kafka_bootstrap, namespace.topic("events.login")) == 5

    def scored() -> bool:
        status, body = request(f"{worker.url}/accounts/api-acct-3/health")
        return status == 200 and body["account_id"] == "api-acct-3"

    await poll(scored, what="api-acct-3 to have a score")
    status, body = request(f"{worker.url}/accounts/api-acct-3/state")
    assert body["counts"] == {"login": 3}
    status, body = request(f"{worker.url}/accounts/nobody/health")
    assert status == 404

    status, body = request(
        f"{worker.url}/accounts/api-acct-3/pulse",
        method="POST",
        body=orjson.dumps({"rating": "purple", "reason": ""}),
        token=TOKEN,
    )
    assert status == 400
    assert {e["field"] for e in body["errors"]} == {"rating", "reason"}
    status, body = request(
        f"{worker.url}/accounts/api-acct-3/pulse",
        method="POST",
        body=orjson.dumps({"rating": "red", "reason": "champion left"}),
        token=TOKEN,
    )
    assert status == 202

    def pulsed() -> bool:
        _, state = request(f"{worker.url}/accounts/api-acct-3/state")
        return bool(state and state["counts"].get("pulse") == 1)

    await poll(pulsed, what="the pulse to be applied")
    status, spec = request(f"{worker.url}/openapi.json")
    assert status == 200 and "/accounts/{account_id}/health" in spec["paths"]


async def test_any_worker_answers_for_any_account(
    namespace: Namespace,
    worker_factory: Any,
    producer: AIOKafkaProducer,
    api_env: dict[str, str],
) -> None:
    workers = [worker_factory(namespace, partitions=8, extra_env=api_env) for _ in range(2)]
    for worker in workers:
        await asyncio.to_thread(worker.wait_ready)

    def split_between_both() -> list[set[int]] | None:
        states = [request(f"{w.url}/readyz")[1] for w in workers]
        if not all(s and s["ready"] for s in states):
            return None
        owned = [set(s["account_partitions"]) for s in states]
        if all(owned) and owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == set(range(8)):
            return owned
        return None

    owned = await poll(split_between_both, timeout=90, what="two workers sharing 8 partitions")
    accounts = [f"route-{i}" for i in range(24)]
    for account in accounts:
        await producer.send_and_wait(
            namespace.topic("events.login"), orjson.dumps(login(account)), key=account.encode()
        )

    def everyone_scored() -> bool:
        return all(request(f"{workers[0].url}/accounts/{a}/health")[0] == 200 for a in accounts)

    await poll(everyone_scored, timeout=90, what="every account scored")
    crossings = 0
    for account in accounts:
        owner = 0 if account_partition(account.encode(), 8) in owned[0] else 1
        other = 1 - owner
        status, remote = request(f"{workers[other].url}/accounts/{account}/health")
        status_owner, local = request(f"{workers[owner].url}/accounts/{account}/health")
        assert status == status_owner == 200
        assert {k: v for k, v in remote.items() if k != "computed_at"} == {
            k: v for k, v in local.items() if k != "computed_at"
        }, "a non-owner answers with the owner's current score"
        crossings += 1
    assert crossings == len(accounts)
    assert {0, 1} == {0 if account_partition(a.encode(), 8) in owned[0] else 1 for a in accounts}
    status, portfolio = request(f"{workers[1].url}/portfolio")
    assert status == 200
    assert portfolio["workers"] == 2 and portfolio["complete"]
    assert portfolio["accounts"] == len(accounts)
