"""Issue 4 acceptance: events -> bucket changes -> playbook triggers on the topic, in SQL
and at a webhook, with cooldowns holding back repeats."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from schemas.events import parse_timestamp
from service.history.db import create_engine, migrate
from service.history.models import PlaybookTriggerRow
from service.history.sink import run_history_sink
from service.model.playbooks import default_playbooks, parse_duration
from service.runtime.settings import Settings
from service.tools.simulate import generate_history
from tests.integration.workers import Namespace, free_port

pytestmark = pytest.mark.integration

FAILURES = 3


class Webhook:
    """A receiver that answers 500 to its first FAILURES requests, then 200."""

    def __init__(self) -> None:
        self.attempts = 0
        self.delivered: list[str] = []
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.json()
        assert request.headers["Idempotency-Key"] == body["trigger_id"]
        if self.attempts <= FAILURES:
            return web.Response(status=500)
        self.delivered.append(body["trigger_id"])
        return web.Response(status=204)


async def test_triggers_reach_topic_sql_and_webhook_once(
    namespace: Namespace,
    worker_factory: Any,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    hook = Webhook()
    server = web.Application()
    server.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()

    url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    await migrate(url)
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        app_id=namespace.app_id,
        topic_prefix=namespace.topic_prefix,
    )
    stop_sink = asyncio.Event()
    sink = asyncio.create_task(run_history_sink(settings, url, stop_sink))
    engine = create_engine(url)
    try:
        worker = worker_factory(
            namespace,
            extra_env={
                "VITALS_WEBHOOK_URL": f"http://127.0.0.1:{hook.port}/hook",
                "VITALS_WEBHOOK_MAX_ATTEMPTS": str(FAILURES + 2),
            },
        )
        await asyncio.to_thread(worker.wait_ready)
        now = int(time.time() * 1000)
        events = list(itertools.islice(generate_history(30, 60, now - 86_400_000, seed=3), 8000))
        futures = [
            await producer.send(namespace.topic(f"events.{e.topic_kind}"), e.value, key=e.key)
            for e in events
        ]
        await asyncio.gather(*futures)

        triggers: list[dict[str, Any]] = []
        consumer = AIOKafkaConsumer(
            namespace.topic("playbooks.triggers"),
            bootstrap_servers=kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:

            def consumed() -> float:
                total = 0.0
                for family in text_string_to_metric_families(worker.metrics_text()):
                    for sample in family.samples:
                        if sample.name == "vitals_events_consumed_total":
                            total += sample.value
                return total

            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    triggers.extend(orjson.loads(r.value) for r in records)
                done = await asyncio.to_thread(consumed) >= len(events)
                ids = [t["trigger_id"] for t in triggers]
                # Timer ticks may still add triggers after the last event: wait
                # for a moment where topic, webhook and SQL agree, and judge that
                # snapshot (no await between the check and the copy).
                if done and triggers and Counter(hook.delivered) == Counter(ids):
                    async with engine.connect() as conn:
                        rows = await conn.scalar(
                            select(func.count()).select_from(PlaybookTriggerRow)
                        )
                    if (
                        rows == len(triggers)
                        and Counter(hook.delivered) == Counter(ids)
                        and hook.attempts == len(hook.delivered) + FAILURES
                    ):
                        delivered, attempts = list(hook.delivered), hook.attempts
                        break
            else:
                raise AssertionError(
                    f"triggers={len(triggers)} delivered={len(hook.delivered)} "
                    f"attempts={hook.attempts}"
                )
        finally:
            await consumer.stop()

        assert len(ids) == len(set(ids)), "each trigger is published once"
        assert Counter(delivered) == Counter(ids), "one successful delivery per trigger"
        assert attempts == len(ids) + FAILURES, "the three failures were retried, once each"
        assert {t["playbook"] for t in triggers} & {"check-in", "escalation"}

        cooldowns = {p.name: parse_duration(p.cooldown) for p in default_playbooks().playbooks}
        fired: dict[tuple[str, str], list[int]] = defaultdict(list)
        for trigger in triggers:
            fired[(trigger["account_id"], trigger["playbook"])].append(
                parse_timestamp(trigger["as_of"])
            )
        for (account, playbook), times in fired.items():
            times.sort()
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            assert all(gap >= cooldowns[playbook] for gap in gaps), (account, playbook, gaps)
        suppressed = sum(
            sample.value
            for family in text_string_to_metric_families(worker.metrics_text())
            for sample in family.samples
            if sample.name == "vitals_playbook_suppressed_total"
        )
        assert suppressed > 0, "some repeats fell inside a cooldown and were held back"
    finally:
        stop_sink.set()
        await sink
        await engine.dispose()
        await runner.cleanup()
