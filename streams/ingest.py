"""The intake agent: raw input message -> validated event -> account state, or the DLQ.

Thin by design: decoding is ``schemas.decode``, state changes are
``service.account_state``; this module only moves bytes and counts outcomes.

Guarantees:
- nothing raises out of the loop for bad input (faust would ack and skip it):
  every message is applied, recognised as a duplicate / late event, or
  dead-lettered with a reason;
- a broker failure while writing the DLQ propagates and stops the worker, so
  the uncommitted offset is consumed again after restart (bad data versus
  broken infrastructure, STYLE.md item 6).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from schemas.decode import Rejected, decode_event
from service import metrics
from service.account_state import AccountState
from service.dead_letter import PROCESSING_ERROR, dead_letter_headers
from streams.app import Topology

log = logging.getLogger("vitals.ingest")


def install_ingest(top: Topology) -> Any:
    """Attach the intake agent to the app; returns the agent."""
    settings = top.settings
    kinds = settings.input_topics
    accounts = top.accounts
    max_bytes = settings.max_event_bytes
    max_future_ms = settings.max_future_ms

    async def dead_letter(message: Any, reason: str, detail: str) -> None:
        metrics.DLQ_RECORDS.labels(reason).inc()
        metrics.EVENTS_CONSUMED.labels(message.topic, "dead_lettered").inc()
        headers = dead_letter_headers(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
            detail=detail,
            original=message.headers,
        )
        await top.dlq.send(key=message.key, value=message.value, headers=headers)

    @top.app.agent(top.inputs, concurrency=1, name="vitals-ingest")
    async def ingest(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            started = time.perf_counter()
            now_ms = int(time.time() * 1000)
            try:
                decoded = decode_event(
                    message.value,
                    topic_kind=kinds.get(message.topic),
                    key=message.key,
                    now_ms=now_ms,
                    max_bytes=max_bytes,
                    max_future_ms=max_future_ms,
                )
            except Rejected as rejected:
                await dead_letter(message, rejected.reason, rejected.detail)
                continue
            try:
                key = decoded.account_id.encode()
                state = accounts.get(key)
                if state is None:
                    state = AccountState.new(decoded.account_id)
                outcome = state.apply(decoded)
                if outcome.value == "applied":
                    accounts[key] = state
            except Exception as exc:  # a bug must not cost the event: dead-letter it
                log.exception("processing failed for %s@%s", message.topic, message.offset)
                await dead_letter(message, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
                continue
            metrics.EVENTS_CONSUMED.labels(message.topic, outcome.value).inc()
            metrics.EVENT_TIME_LAG_SECONDS.observe(max(0.0, (now_ms - decoded.occurred_at) / 1000))
            metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)

    return ingest
