"""Webhook delivery against a real local aiohttp server on 127.0.0.1.

Tests wait on conditions (the receiver notifies on every request), never on
sleeps; backoff and timeouts are made small.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from service.runtime.metrics import REGISTRY
from service.runtime.settings import Settings
from service.runtime.webhook import (
    WebhookDispatcher,
    backoff_delay,
    dispatcher_from_settings,
    redact_url,
)

WAIT_S = 10.0


def trigger(n: int) -> dict[str, Any]:
    return {
        "trigger_id": f"{n:032x}",
        "playbook": "escalation",
        "account_id": f"acct-{n}",
        "reason": "Moved from yellow to red: score 50.0 -> 40.0.",
        "as_of": "2024-05-10T00:00:00Z",
        "context": {"kind": "bucket_transition", "score": 40.0},
        "schema_version": 1,
    }


def deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value("vitals_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


@dataclass
class Hit:
    key: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # None until answered


#: (receiver, the request's hit, how many times this key arrived) -> HTTP status.
Plan = Callable[["Receiver", Hit, int], Awaitable[int]]


async def ok(receiver: Receiver, hit: Hit, n: int) -> int:
    return 200


@dataclass
class Receiver:
    """A webhook receiver that records every request and follows ``plan``."""

    url: str = ""
    plan: Plan = ok
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        hit = Hit(
            key=request.headers.get("Idempotency-Key", ""),
            attempt=int(request.headers.get("Vitals-Delivery-Attempt", "0")),
            headers=dict(request.headers),
            body=await request.read(),
        )
        n = sum(1 for h in self.hits if h.key == hit.key) + 1
        await self._record(hit)
        status = await self.plan(self, hit, n)
        hit.status = status
        await self._notify()
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def _record(self, hit: Hit) -> None:
        async with self.changed:
            self.hits.append(hit)
            self.changed.notify_all()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), WAIT_S)

    def arrivals(self, key: str | None = None) -> list[Hit]:
        return [h for h in self.hits if key is None or h.key == key]

    def successes(self, key: str | None = None) -> list[Hit]:
        return [h for h in self.arrivals(key) if h.status is not None and 200 <= h.status < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/secret-token", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port, chosen by the kernel
    site = web.SockSite(runner, sock)
    await site.start()
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/secret-token"
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


def dispatcher(url: str, **overrides: Any) -> WebhookDispatcher:
    options: dict[str, Any] = {
        "timeout_s": 2.0,
        "max_attempts": 5,
        "backoff_base_s": 0.005,
        "backoff_max_s": 0.02,
        "rng": random.Random(7),
        **overrides,
    }
    return WebhookDispatcher(url, **options)


class Counts:
    """Deltas of the process-wide WEBHOOK_DELIVERIES counter since creation."""

    def __init__(self) -> None:
        self.start = {o: deliveries(o) for o in ("delivered", "retried", "failed")}

    def __call__(self) -> dict[str, float]:
        return {o: deliveries(o) - v for o, v in self.start.items()}


# ================================================================ delivery


async def test_each_trigger_is_delivered_once_with_the_contract_headers(
    receiver: Receiver,
) -> None:
    counts = Counts()
    d = dispatcher(receiver.url)
    await d.start()
    try:
        triggers = [trigger(i) for i in range(3)]
        assert all(d.submit(t) for t in triggers)
        await receiver.wait_until(lambda: len(receiver.successes()) == 3)
    finally:
        await d.stop(drain_timeout=WAIT_S)
    for t in triggers:
        (hit,) = receiver.arrivals(t["trigger_id"])
        assert orjson.loads(hit.body) == t
        assert hit.attempt == 1
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["Idempotency-Key"] == t["trigger_id"]
        assert "Vitals-Signature" not in hit.headers
    assert (d.stats.submitted, d.stats.attempts, d.stats.delivered) == (3, 3, 3)
    assert counts() == {"delivered": 3, "retried": 0, "failed": 0}


async def test_three_failures_then_success_is_one_delivery_in_four_attempts(
    receiver: Receiver,
) -> None:
    async def fail_three_times(rec: Receiver, hit: Hit, n: int) -> int:
        return 500 if n <= 3 else 200

    receiver.plan = fail_three_times
    counts = Counts()
    d = dispatcher(receiver.url)
    await d.start()
    try:
        t = trigger(1)
        assert d.submit(t)
        await receiver.wait_until(lambda: len(receiver.successes()) == 1)
    finally:
        await d.stop(drain_timeout=WAIT_S)
    hits = receiver.arrivals(t["trigger_id"])
    assert [h.status for h in hits] == [500, 500, 500, 200]
    assert [h.attempt for h in hits] == [1, 2, 3, 4]
    assert {h.body for h in hits} == {orjson.dumps(t)}
    assert len(receiver.successes()) == 1
    assert (d.stats.attempts, d.stats.retried, d.stats.delivered, d.stats.failed) == (4, 3, 1, 0)
    assert counts() == {"delivered": 1, "retried": 3, "failed": 0}


@pytest.mark.parametrize(
    ("status", "max_attempts", "arrivals"),
    [(503, 3, 3), (429, 2, 2), (400, 5, 1), (404, 5, 1)],
)
async def test_failures_are_retried_or_given_up(
    receiver: Receiver, status: int, max_attempts: int, arrivals: int
) -> None:
    async def always(rec: Receiver, hit: Hit, n: int) -> int:
        return status

    receiver.plan = always
    counts = Counts()
    d = dispatcher(receiver.url, max_attempts=max_attempts)
    await d.start()
    assert d.submit(trigger(1))
    await receiver.wait_until(lambda: len(receiver.arrivals()) == arrivals)
    await d.stop(drain_timeout=WAIT_S)  # drains: the last answer is handled first
    assert len(receiver.arrivals()) == arrivals
    assert counts() == {"delivered": 0, "retried": arrivals - 1, "failed": 1}


async def test_a_slow_server_times_out_and_is_retried(receiver: Receiver) -> None:
    async def hang_first(rec: Receiver, hit: Hit, n: int) -> int:
        if n == 1:
            await rec.release.wait()  # answers only at teardown
        return 200

    receiver.plan = hang_first
    counts = Counts()
    d = dispatcher(receiver.url, timeout_s=0.5)
    await d.start()
    try:
        t = trigger(1)
        assert d.submit(t)
        await receiver.wait_until(lambda: len(receiver.successes()) == 1)
    finally:
        await d.stop(drain_timeout=WAIT_S)
    assert [h.attempt for h in receiver.arrivals(t["trigger_id"])] == [1, 2]
    assert (d.stats.retried, d.stats.delivered, d.stats.failed) == (1, 1, 0)
    assert counts() == {"delivered": 1, "retried": 1, "failed": 0}


async def test_connection_errors_are_retried_then_counted_failed() -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    counts = Counts()
    d = dispatcher(f"http://127.0.0.1:{port}/hook", max_attempts=2)
    await d.start()
    assert d.submit(trigger(1))
    await d.stop(drain_timeout=WAIT_S)
    assert (d.stats.attempts, d.stats.retried, d.stats.failed) == (2, 1, 1)
    assert counts() == {"delivered": 0, "retried": 1, "failed": 1}


async def test_signature_header_with_a_secret(receiver: Receiver) -> None:
    d = dispatcher(receiver.url, secret="s3cret")
    await d.start()
    try:
        assert d.submit(trigger(1))
        await receiver.wait_until(lambda: len(receiver.successes()) == 1)
    finally:
        await d.stop(drain_timeout=WAIT_S)
    (hit,) = receiver.arrivals()
    expected = hmac.new(b"s3cret", hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["Vitals-Signature"] == f"sha256={expected}"


# ====================================================== queue and shutdown


async def test_a_full_queue_never_blocks_submit(receiver: Receiver) -> None:
    async def hold(rec: Receiver, hit: Hit, n: int) -> int:
        await rec.release.wait()
        return 200

    receiver.plan = hold
    counts = Counts()
    d = dispatcher(receiver.url, queue_size=2, concurrency=1, timeout_s=WAIT_S)
    await d.start()
    try:
        assert d.submit(trigger(0))
        await receiver.wait_until(lambda: len(receiver.arrivals()) == 1)  # the worker is busy
        started = time.perf_counter()
        accepted = [d.submit(trigger(i)) for i in range(1, 8)]
        elapsed = time.perf_counter() - started
        assert accepted == [True, True] + [False] * 5
        assert elapsed < 0.5  # returns at once: nothing waits for the receiver
        assert d.pending == 2
        assert (d.stats.dropped, d.stats.failed) == (5, 5)
        receiver.release.set()
        await receiver.wait_until(lambda: len(receiver.successes()) == 3)
    finally:
        await d.stop(drain_timeout=WAIT_S)
    assert sorted(h.key for h in receiver.successes()) == [
        trigger(i)["trigger_id"] for i in range(3)
    ]
    assert counts() == {"delivered": 3, "retried": 0, "failed": 5}


async def test_stop_drains_the_queue(receiver: Receiver) -> None:
    d = dispatcher(receiver.url, concurrency=2)
    await d.start()
    triggers = [trigger(i) for i in range(20)]
    assert all(d.submit(t) for t in triggers)
    assert await d.stop(drain_timeout=WAIT_S) == 0
    # Everything queued before stop() was delivered by the time it returned.
    assert sorted(h.key for h in receiver.successes()) == sorted(t["trigger_id"] for t in triggers)
    assert (d.stats.delivered, d.stats.failed, d.pending) == (20, 0, 0)
    assert d.submit(trigger(99)) is False  # stopped: refused and counted
    assert (d.stats.dropped, d.stats.failed) == (1, 1)


async def test_stop_gives_up_after_the_drain_timeout(receiver: Receiver) -> None:
    async def hold(rec: Receiver, hit: Hit, n: int) -> int:
        await rec.release.wait()
        return 200

    receiver.plan = hold
    counts = Counts()
    d = dispatcher(receiver.url, concurrency=1, timeout_s=WAIT_S)
    await d.start()
    assert all(d.submit(trigger(i)) for i in range(3))
    await receiver.wait_until(lambda: len(receiver.arrivals()) == 1)
    assert d.undelivered == 3  # one being delivered, two queued
    left = await asyncio.wait_for(d.stop(drain_timeout=0.2), WAIT_S)
    # One cancelled in flight, two never sent: all counted failed, none delivered.
    assert left == 3
    assert (d.stats.delivered, d.stats.failed, d.pending, d.undelivered) == (0, 3, 0, 0)
    assert counts() == {"delivered": 0, "retried": 0, "failed": 3}


async def test_triggers_submitted_before_start_are_delivered(receiver: Receiver) -> None:
    d = dispatcher(receiver.url)
    assert d.submit(trigger(1))
    await d.start()
    await d.stop(drain_timeout=WAIT_S)
    assert len(receiver.successes()) == 1


def test_submit_needs_a_trigger_id() -> None:
    d = dispatcher("http://127.0.0.1:9/x")
    with pytest.raises(ValueError, match="trigger_id"):
        d.submit({"playbook": "x"})


# ================================================================== pieces


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (6, 4.0, 8.0), (50, 4.0, 8.0), (5000, 4.0, 8.0)],
)
def test_backoff_is_exponential_with_jitter_and_capped(
    attempt: int, low: float, high: float
) -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
    assert all(low <= x <= high for x in delays)
    assert len(set(delays)) > 100  # jittered


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/XYZ?token=abc", "https://hooks.example.com/..."),
        ("http://user:pw@127.0.0.1:8080/hook", "http://127.0.0.1:8080/..."),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "XYZ" not in repr(WebhookDispatcher(url)) and "pw" not in repr(WebhookDispatcher(url))


def test_dispatcher_from_settings() -> None:
    assert dispatcher_from_settings(Settings(webhook_url=None)) is None
    d = dispatcher_from_settings(
        Settings(webhook_url="http://127.0.0.1:1/h", webhook_timeout_s=1.5, webhook_max_attempts=3)
    )
    assert d is not None
    assert (d.url, d.timeout.total, d.max_attempts) == ("http://127.0.0.1:1/h", 1.5, 3)
