"""HTTP intake: request bodies into validated events, with the errors reported.

``POST /events`` must validate exactly like the Kafka path and produce nothing
when any item is bad, so the whole batch is checked before anything is sent.

A big invalid body must not cost more than it is worth: the errors listed are
the first :data:`MAX_LISTED_ERRORS` (with a count of the rest), so 8,000
invalid events no longer answer a 4 MB document; and
:func:`validate_batch_async` checks :data:`VALIDATE_CHUNK` items at a time,
returning to the event loop in between, so that the worker's other requests
and timers are served while it validates.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.decode import Rejected, validate_event
from schemas.events import TOPIC_TYPES, Event

__all__ = [
    "MAX_BATCH",
    "MAX_LISTED_ERRORS",
    "TYPE_TOPIC_KIND",
    "VALIDATE_CHUNK",
    "BatchResult",
    "BodyError",
    "ValidatedItem",
    "parse_events_body",
    "pulse_body_to_event",
    "validate_batch",
    "validate_batch_async",
]

#: event type -> topic kind (``login`` -> ``login``, ``survey`` -> ``engagement``...).
TYPE_TOPIC_KIND: dict[str, str] = {
    event_type: kind for kind, types in TOPIC_TYPES.items() for event_type in types
}

#: Largest number of events one request may carry.
MAX_BATCH = 10_000
#: Errors listed in a 400 answer; the rest are counted.
MAX_LISTED_ERRORS = 100
#: Items validated between two returns to the event loop (a few ms of work).
VALIDATE_CHUNK = 250


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, wrong shape, too many items)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ValidatedItem:
    event: Event
    topic_kind: str
    value: bytes


def parse_events_body(body: bytes, content_type: str) -> list[Any]:
    """One JSON object, a JSON array of objects, or NDJSON (``application/x-ndjson``).

    A line of NDJSON that is not JSON is named by its number (1-based, counting
    every line of the body).
    """
    if not body.strip():
        raise BodyError("empty", "the request body is empty")
    if content_type.split(";")[0].strip().lower() == "application/x-ndjson":
        items: list[Any] = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise BodyError(
                    "not_json", f"line {number} of the NDJSON body is not valid JSON: {exc}"
                ) from exc
            if len(items) > MAX_BATCH:
                raise BodyError("too_many", f"at most {MAX_BATCH} events per request")
    else:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BodyError("not_json", f"the body is not valid JSON: {exc}") from exc
        items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise BodyError("empty", "the batch holds no events")
    if len(items) > MAX_BATCH:
        raise BodyError("too_many", f"at most {MAX_BATCH} events per request, got {len(items)}")
    return items


@dataclass
class BatchResult:
    """The outcome of validating a batch: valid items, or the errors."""

    #: Every item, validated, when none is invalid (emptied at the first error).
    valid: list[ValidatedItem] = field(default_factory=list)
    #: The first ``max_listed`` errors: ``{index, reason, detail, errors}``.
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Every invalid item, listed or not.
    invalid: int = 0

    @property
    def unlisted(self) -> int:
        """Invalid items beyond the listed ones."""
        return self.invalid - len(self.errors)


def _validate_into(
    result: BatchResult,
    items: list[Any],
    start: int,
    *,
    now_ms: int,
    max_future_ms: int,
    max_listed: int,
) -> None:
    for index, item in enumerate(items, start=start):
        try:
            event = validate_event(
                item, topic_kind=None, key=None, now_ms=now_ms, max_future_ms=max_future_ms
            )
        except Rejected as rejected:
            result.invalid += 1
            result.valid.clear()
            if len(result.errors) < max_listed:
                result.errors.append(
                    {
                        "index": index,
                        "reason": rejected.reason,
                        "detail": rejected.detail,
                        "errors": rejected.errors,
                    }
                )
            continue
        if result.invalid:
            continue  # nothing will be produced: keep counting errors only
        # The producer's own JSON travels unchanged, as on the Kafka path.
        result.valid.append(ValidatedItem(event, TYPE_TOPIC_KIND[event.type], orjson.dumps(item)))


def validate_batch(
    items: list[Any], *, now_ms: int, max_future_ms: int, max_listed: int = MAX_LISTED_ERRORS
) -> BatchResult:
    """Validate every item; errors name the item index (the first ``max_listed``)."""
    result = BatchResult()
    _validate_into(
        result, items, 0, now_ms=now_ms, max_future_ms=max_future_ms, max_listed=max_listed
    )
    return result


async def validate_batch_async(
    items: list[Any],
    *,
    now_ms: int,
    max_future_ms: int,
    max_listed: int = MAX_LISTED_ERRORS,
    chunk: int = VALIDATE_CHUNK,
) -> BatchResult:
    """:func:`validate_batch`, ``chunk`` items at a time with a return to the loop between."""
    result = BatchResult()
    for start in range(0, len(items), chunk):
        if start:
            await asyncio.sleep(0)
        _validate_into(
            result,
            items[start : start + chunk],
            start,
            now_ms=now_ms,
            max_future_ms=max_future_ms,
            max_listed=max_listed,
        )
    return result


def pulse_body_to_event(account_id: str, body: Any, now_ms: int) -> dict[str, Any]:
    """The pulse event a ``POST /accounts/{id}/pulse`` body stands for.

    The body carries ``rating``, ``reason`` and optionally ``author``, ``expires_at``,
    ``event_id`` (for idempotent retries) and ``occurred_at``; the account comes
    from the path. Validation happens afterwards, like any event.
    """
    if not isinstance(body, dict):
        raise BodyError("not_object", "the body must be a JSON object")
    if "account_id" in body and body["account_id"] != account_id:
        raise BodyError("key_mismatch", "account_id in the body differs from the path")
    event: dict[str, Any] = {
        "event_id": body.get("event_id") or f"pulse-{uuid.uuid4()}",
        "account_id": account_id,
        "type": "pulse",
        "occurred_at": body.get("occurred_at", now_ms),
    }
    for name in ("rating", "reason", "author", "expires_at"):
        if name in body:
            event[name] = body[name]
    return event
