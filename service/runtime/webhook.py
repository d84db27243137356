"""Optional delivery of playbook triggers to an HTTP webhook.

The stream publishes every trigger on ``vitals.playbooks.triggers`` (the
record of truth) and, when a webhook URL is configured, hands it to a
:class:`WebhookDispatcher`. The dispatcher never blocks the stream:
:meth:`~WebhookDispatcher.submit` only puts the trigger on a bounded queue
(a full queue drops it, counts it as failed and logs), and background worker
tasks POST it with retries.

Contract (docs/playbooks.md, "Webhook"):

* ``POST <url>``, body = the trigger JSON (the ``vitals.playbooks.triggers``
  message), ``Content-Type: application/json``;
* ``Idempotency-Key: <trigger_id>`` on every attempt, plus
  ``Vitals-Delivery-Attempt: <n>`` (1-based) and, with a secret,
  ``Vitals-Signature: sha256=<hex HMAC-SHA256 of the body>``;
* any 2xx is delivered; 408, 429, 5xx, connection errors and the per-attempt
  timeout are retried with exponential backoff and jitter, up to
  ``max_attempts`` attempts in all; any other status is a permanent failure;
* a trigger the dispatcher delivered is not sent again by it, but a crash or
  a lost response can make a trigger arrive twice (at-least-once): receivers
  drop duplicates by ``Idempotency-Key``.

Every attempt is counted in ``WEBHOOK_DELIVERIES``: ``delivered`` (a trigger
accepted), ``retried`` (a failed attempt that will be retried) or ``failed``
(a trigger given up: attempts exhausted, permanent error, queue full, or
still undelivered when :meth:`~WebhookDispatcher.stop` ran out of time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from service.runtime.metrics import WEBHOOK_DELIVERIES

if TYPE_CHECKING:
    from service.runtime.settings import Settings

__all__ = [
    "DeliveryStats",
    "WebhookDispatcher",
    "backoff_delay",
    "dispatcher_from_settings",
    "redact_url",
    "sign",
]

log = logging.getLogger("vitals.webhook")

#: Statuses worth another attempt besides 5xx: request timeout, rate limited.
_RETRY_STATUSES: Final = frozenset({408, 429})
#: A full queue is logged at most this often (seconds); every drop is counted.
_DROP_LOG_INTERVAL_S: Final = 10.0
_USER_AGENT: Final = "vitals-webhook/1"


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` only: webhook paths and queries often hold tokens."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def sign(secret: bytes, body: bytes) -> str:
    """The ``Vitals-Signature`` header value: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    Exponential (``base * 2**(attempt-1)``, capped at ``max_s``) with "equal
    jitter": a uniform draw from the upper half, so many dispatchers retrying
    the same receiver spread out but never retry immediately.
    """
    cap = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    draw = rng.random() if rng is not None else random.random()
    return cap / 2 + draw * cap / 2


@dataclass
class DeliveryStats:
    """This dispatcher's counts (the process-wide ones are in ``WEBHOOK_DELIVERIES``)."""

    submitted: int = 0
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    #: Part of ``failed``: refused by a full queue or after ``stop``.
    dropped: int = 0


class _Permanent(Exception):
    """The receiver answered with a status that retrying will not change."""


class _Retryable(Exception):
    """The receiver answered with a status worth retrying; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP date is rare for webhooks.
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class WebhookDispatcher:
    """Bounded queue + background workers POSTing triggers to one URL.

    Use from one event loop: ``await start()``, then ``submit()`` from the
    stream (never blocks, never raises for delivery problems), and
    ``await stop(drain_timeout)`` on shutdown.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        queue_size: int = 1000,
        concurrency: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        secret: str | bytes | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or queue_size < 1 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("max_attempts, queue_size and concurrency must be >= 1, timeout_s > 0")
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._session = session
        self._owns_session = session is None
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(queue_size)
        self._workers: list[asyncio.Task[None]] = []
        #: Triggers a worker task is delivering right now (taken off the queue).
        self._delivering = 0
        self._closed = False
        self._last_drop_log = float("-inf")
        self.stats = DeliveryStats()

    def __repr__(self) -> str:
        return (
            f"WebhookDispatcher({redact_url(self.url)}, pending={self.pending}, stats={self.stats})"
        )

    @property
    def pending(self) -> int:
        """Triggers waiting in the queue (not counting those being delivered)."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Open the HTTP session and start the workers (idempotent)."""
        if self._workers:
            return
        if self._closed:
            raise RuntimeError("a stopped WebhookDispatcher cannot be restarted")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._workers = [
            asyncio.create_task(self._work(), name=f"vitals-webhook-{i}")
            for i in range(self.concurrency)
        ]
        log.info(
            "webhook delivery to %s: %d workers, up to %d attempts",
            redact_url(self.url),
            self.concurrency,
            self.max_attempts,
        )

    def submit(self, trigger: Mapping[str, Any]) -> bool:
        """Queue ``trigger`` (a ``vitals.playbooks.triggers`` message) for delivery.

        Returns at once: ``True`` if queued, ``False`` if the queue is full or
        the dispatcher is stopping (counted as ``failed`` and logged). Raises
        ``ValueError`` only for a programming error (no ``trigger_id``).
        """
        key = trigger.get("trigger_id")
        if not isinstance(key, str) or not key:
            raise ValueError("a trigger needs a non-empty string trigger_id")
        self.stats.submitted += 1
        if self._closed:
            self._drop(key, "the dispatcher is stopping")
            return False
        # Serialise now: the caller may reuse the dict, and a bad value fails here.
        body = orjson.dumps(trigger)
        try:
            self._queue.put_nowait((key, body))
        except asyncio.QueueFull:
            self._drop(key, "the queue is full")
            return False
        return True

    @property
    def undelivered(self) -> int:
        """Triggers queued or being delivered: what a stop now would leave undelivered."""
        return self._queue.qsize() + self._delivering

    async def stop(self, drain_timeout: float = 10.0) -> int:
        """Stop accepting triggers, deliver the queued ones for at most
        ``drain_timeout`` seconds, then cancel the workers; anything still
        undelivered is counted as failed. Closes the session it opened.

        Returns how many triggers were left undelivered (queued or cancelled
        mid-delivery); the caller reports them (the worker does, in its one
        shutdown line), so this method does not log them.
        """
        self._closed = True
        left = 0
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_timeout)
            left += self._delivering
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self._fail()
            left += 1
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        return left

    # ------------------------------------------------------------ internals

    def _fail(self) -> None:
        self.stats.failed += 1
        WEBHOOK_DELIVERIES.labels("failed").inc()

    def _drop(self, key: str, why: str) -> None:
        self.stats.dropped += 1
        self._fail()
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "webhook: trigger %s not queued: %s (%d dropped so far)",
                key,
                why,
                self.stats.dropped,
            )

    async def _work(self) -> None:
        while True:
            key, body = await self._queue.get()
            self._delivering += 1
            try:
                await self._deliver(key, body)
            except asyncio.CancelledError:
                self._fail()  # stop() ran out of time mid-delivery
                raise
            except Exception:  # never let one trigger kill the worker
                log.exception("webhook: unexpected error delivering trigger %s", key)
                self._fail()
            finally:
                self._delivering -= 1
                self._queue.task_done()

    async def _deliver(self, key: str, body: bytes) -> None:
        for attempt in range(1, self.max_attempts + 1):
            self.stats.attempts += 1
            try:
                await self._post(key, body, attempt)
            except _Permanent as exc:
                log.warning("webhook: trigger %s rejected: %s; not retried", key, exc)
                self._fail()
                return
            except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
                problem = _describe(exc)
                if attempt == self.max_attempts:
                    log.warning(
                        "webhook: trigger %s failed after %d attempts: %s", key, attempt, problem
                    )
                    self._fail()
                    return
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)
                if isinstance(exc, _Retryable) and exc.retry_after is not None:
                    # Honour the receiver's Retry-After, within our own cap.
                    delay = max(delay, min(exc.retry_after, self.backoff_max_s))
                log.info(
                    "webhook: attempt %d for trigger %s failed (%s); retry in %.2fs",
                    attempt,
                    key,
                    problem,
                    delay,
                )
                self.stats.retried += 1
                WEBHOOK_DELIVERIES.labels("retried").inc()
                await asyncio.sleep(delay)
                continue
            self.stats.delivered += 1
            WEBHOOK_DELIVERIES.labels("delivered").inc()
            return

    async def _post(self, key: str, body: bytes, attempt: int) -> None:
        assert self._session is not None, "start() the dispatcher first"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            "Idempotency-Key": key,
            "Vitals-Delivery-Attempt": str(attempt),
        }
        if self._secret is not None:
            headers["Vitals-Signature"] = sign(self._secret, body)
        async with self._session.post(
            self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
        ) as response:
            # The body is never read: only the status matters, and a huge or
            # endless answer must not cost memory (the connection is closed).
            status = response.status
            retry_after = _retry_after(response.headers.get("Retry-After"))
        if 200 <= status < 300:
            return
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}", retry_after)
        raise _Permanent(f"HTTP {status}")


def _describe(exc: BaseException) -> str:
    # Never the exception text of aiohttp errors: some quote the URL, and
    # webhook URLs often carry a token.
    if isinstance(exc, _Retryable):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        return f"{type(exc).__name__} ({exc.os_error.strerror})"
    return type(exc).__name__


def dispatcher_from_settings(settings: Settings) -> WebhookDispatcher | None:
    """The dispatcher the settings ask for, or ``None`` without a webhook URL."""
    if not settings.webhook_url:
        return None
    return WebhookDispatcher(
        settings.webhook_url,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
    )
